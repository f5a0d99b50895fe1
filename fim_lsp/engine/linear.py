"""int8 linear layers: for a CPU run by the C kernel `linear.c`, for a GPU weight-only.

Weights are quantized once at load, symmetric, one scale per output channel.

On a CPU, decoding reads every weight once per token, so it runs at the speed the weights stream
from memory; a prefill chunk is compute bound, and runs on register tiles over all its tokens
(gemm.c: AVX-512 VNNI where the CPU has it, else AVX2). Measured on 97 layers of FIM-NeoX-1.3B's shapes, one token (bench/reports/
decode-profile-2026-11-26-int8-kernel.md): the kernel at 1.15-1.2x the time a plain sum takes to
read the same bytes, torch's dynamic int8 layers (fbgemm) at 1.25-1.4x; since its work is shared
out by taking from each other (shares.h), 1.09-1.16x (decode-profile-2026-11-26-huge-pages.md).
It also quantizes each token's activations on their own (fbgemm: one scale per call),
so a token's output is the same alone or in a batch, which keeps speculative decoding exact, and
its weights have one scale per output channel (fbgemm's default: one per matrix).

On a GPU, `WeightOnlyInt8Linear`: int8 weights, computed in fp16.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from fim_lsp.engine import abi, memory
from fim_lsp.engine.abi import GROUP, PANEL
from fim_lsp.engine.native import NativeError, problem


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W in int8 (one scale per output), x and y fp32, on a CPU."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        packed, scale, sums = quantize(weight)
        self.hold(packed, scale, sums, None if bias is None else bias.detach().float().clone())

    def hold(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        sums: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> None:
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("sums", sums)
        self.register_buffer("bias", bias)
        # What the C kernels read the weights through; kept current, never replaced, since a
        # decode step's layers point at it.
        self.kernel_weights = abi.Weights()
        self.point_kernel()

    @classmethod
    def from_buffers(
        cls,
        in_features: int,
        packed: torch.Tensor,
        scale: torch.Tensor,
        sums: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> Int8Linear:
        """The layer of buffers that quantizing made before (the weight cache's), as they are:
        `packed` should be from memory.empty, as quantize() allocates it."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.out_features, layer.in_features = len(scale), in_features
        layer.hold(packed, scale, sums, bias)
        return layer

    def point_kernel(self) -> None:
        """Set kernel_weights to the buffers as they are now."""
        bias = None if self.bias is None else self.bias.data_ptr()
        weights = self.kernel_weights
        weights.k, weights.n = self.in_features, self.out_features
        weights.packed, weights.scale = self.packed.data_ptr(), self.scale.data_ptr()
        weights.sum, weights.bias = self.sums.data_ptr(), bias

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.point_kernel()  # the buffers may have moved
        return self

    @classmethod
    def from_float(cls, layer: torch.nn.Linear) -> Int8Linear:
        return cls(layer.weight.detach(), layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_kernel(load_kernel(), self, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def run_kernel(library: ctypes.CDLL, layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, layer.in_features).float().contiguous()
    out = rows.new_empty(rows.shape[0], layer.out_features)
    run_into(library, layer, rows, out, torch.get_num_threads())
    return out.view(*x.shape[:-1], layer.out_features)


def run_into(
    library: ctypes.CDLL,
    layer: Int8Linear,
    rows: torch.Tensor,
    out: torch.Tensor,
    threads: int,
    fused: abi.Fused | None = None,
) -> None:
    """out = rows W^T + b, with what `fused` adds; rows [m, in] and out [m, out], contiguous
    fp32 (not checked: the callers make them so)."""
    status = library.fim_linear_i8(
        rows.data_ptr(), rows.shape[0], ctypes.byref(layer.kernel_weights), out.data_ptr(),
        None if fused is None else ctypes.byref(fused), threads,
    )  # fmt: skip
    abi.check(status, "fim_linear_i8")


def quantize(weight: torch.Tensor, rows_at_once: int = 4096):
    """(packed int8 weights in linear.c's layout, fp32 scale per output, int32 sum per output).

    Symmetric, per output channel. Done `rows_at_once` outputs at a time, so that quantizing the
    output layer (50304 x 2048) needs tens of MB of scratch, not its fp32 size again.
    """
    outputs, inputs = weight.shape
    padded = -(-inputs // GROUP) * GROUP
    # On huge pages, as decode steps stream it; every panel is written below, padding included.
    packed = memory.empty((-(-outputs // PANEL), padded // GROUP, PANEL, GROUP), torch.int8)
    scale = torch.empty(outputs)
    sums = torch.empty(outputs, dtype=torch.int32)
    for start in range(0, outputs, rows_at_once):  # a multiple of PANEL: whole panels each time
        values, step = per_channel(weight[start : start + rows_at_once])
        rows = len(values)
        q = torch.zeros(-(-rows // PANEL) * PANEL, padded, dtype=torch.int8)
        q[:rows, :inputs] = values
        scale[start : start + rows] = step
        sums[start : start + rows] = q[:rows].sum(dim=1, dtype=torch.int32)
        panels = q.view(-1, PANEL, padded // GROUP, GROUP).transpose(1, 2)
        packed[start // PANEL : start // PANEL + len(panels)] = panels
    return packed, scale, sums


def per_channel(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's int8 values and fp32 step: symmetric, its largest magnitude maps to 127."""
    rows = rows.float()
    largest = rows.abs().amax(dim=1)
    step = (largest / 127).masked_fill_(largest == 0, 1.0)
    return torch.round(rows / step[:, None]).clamp_(-127, 127).to(torch.int8), step


class WeightOnlyInt8Linear(torch.nn.Module):
    """y = x W^T + b with W kept in int8 (one scale per output) and widened to x's dtype for each
    product, for a GPU. A decode step there is bound by kernel launches more than by reading
    weights, so this runs near fp16's speed with half its memory; bitsandbytes' LLM.int8, which
    also quantizes the activations, decoded 10x slower than fp16 on an H100 (bench/cuda_check.py).
    Activations stay in full precision, so a token's output does not depend on its batch's other
    tokens through quantization."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        values, step = per_channel(weight)
        self.register_buffer("weight", values)
        self.register_buffer("scale", step[:, None].to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().to(weight.dtype))

    @classmethod
    def from_buffers(
        cls, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> WeightOnlyInt8Linear:
        """The layer of buffers that quantizing made before (the weight cache's), as they are."""
        layer = cls.__new__(cls)
        torch.nn.Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape
        layer.register_buffer("weight", weight)
        layer.register_buffer("scale", scale)
        layer.register_buffer("bias", bias)
        return layer

    @classmethod
    def from_float(cls, layer: torch.nn.Linear) -> WeightOnlyInt8Linear:
        return cls(layer.weight.detach(), layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # int8 times the scale's dtype promotes to that dtype: one kernel widens and scales.
        return torch.nn.functional.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def kernel_problem() -> str | None:
    """Why the C int8 kernel cannot run here, or None when it is built, loaded and checked."""
    return problem(load_kernel)


def kernel_isa() -> str:
    """The ISA the C kernel's products run on (abi.ISAS), where it runs."""
    return abi.isa(load_kernel())


@functools.cache
def load_kernel() -> ctypes.CDLL:
    """The C library with the int8 kernel checked; raises NativeError."""
    library = abi.load()
    check(library)
    return library


def check(library: ctypes.CDLL) -> None:
    """Compare the kernel with fp32 on a small case, once: a wrong kernel must not run."""
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(37, 21)  # sizes off the kernel's multiples: padding is exercised
    with torch.no_grad():
        layer.weight.copy_(torch.randn(21, 37, generator=generator))
        x = torch.randn(5, 37, generator=generator)
        got, expected = run_kernel(library, Int8Linear.from_float(layer), x), layer(x)
    if not torch.allclose(got, expected, rtol=0.05, atol=0.05 * expected.abs().max().item()):
        raise NativeError("the int8 kernel's result differs from torch's")
