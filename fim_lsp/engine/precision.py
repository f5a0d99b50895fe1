"""Device, dtype and quantization: decided in exactly one function, from explicit settings.

Which int8 path is fast depends on the device and the processor, so `choose_precision` times the
candidates on a small matrix and keeps the faster one.
- CUDA: int8 weights computed in fp16 (`linear.WeightOnlyInt8Linear`), against bitsandbytes'
  LLM.int8, which quantizes activations too and decoded 10x slower than fp16 on an H100.
- CPU: our C kernel (`linear.py`; AVX2, and AVX-512 VNNI where the CPU has it): decodes faster
  than torch's dynamic int8 layers, and prefills as fast as oneDNN's int8 GEMM (about 750 GOP/s
  on 2 cores of an AVX-512 VNNI AMD EPYC, bench/reports/prefill-floor-2026-12-03.md; about
  200-250 GOP/s with AVX2 only);
- where it cannot run (no compiler, no AVX2): torch's dynamic int8 layers (fbgemm; about 100
  GOP/s on that EPYC). `torch.ao.quantization` is deprecated, but no maintained int8 path is as
  fast on CPU (torchao's eager int8 was 10x slower here);
- bitsandbytes runs on CPUs with `torch._int_mm`, fast with AVX-512 VNNI (measured on an Ice Lake
  Xeon: 760-890 GOP/s) but a slow fallback elsewhere (0.1-3 GOP/s on the EPYC).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fim_lsp.engine import linear
from fim_lsp.engine.errors import EngineError

BITSANDBYTES, TORCH_DYNAMIC, C_KERNEL = "bitsandbytes", "torch-dynamic", "c-kernel"
WEIGHT_ONLY = "weight-only"


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype  # of everything that is not an 8-bit matrix
    int8: str | None  # which int8 linear layers: one of the names above, or None
    reason: str

    @property
    def quantization(self) -> str:
        return f"int8 ({self.int8})" if self.int8 else "none"


def choose_precision(device: str, quantization: str, int8: str | None = None) -> Precision:
    """The one place where device, dtype and quantization are decided, from explicit settings.

    `int8` forces one backend (for tests and benchmarks); by default the faster one wins.
    """
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise EngineError(
            "device is set to cuda but torch sees no CUDA GPU (torch "
            f"{torch.__version__}); set device to auto or cpu, or install a CUDA build of torch"
        )
    target = "cuda" if cuda and device in ("auto", "cuda") else "cpu"
    # CPU: fp32 around the 8-bit matrices (CPUs without AMX have no fast fp16/bf16 matmul).
    dtype = torch.float16 if target == "cuda" else torch.float32
    if quantization == "none":
        return Precision(target, dtype, None, f"quantization none: {dtype} weights on {target}")
    if int8 == BITSANDBYTES:
        if problem := int8_problem(target):
            raise EngineError(f"{problem}; or set quantization to none (about 4x the memory)")
        quiet_bitsandbytes()
        return Precision(
            target, dtype, BITSANDBYTES, f"8-bit bitsandbytes linear layers on {target}"
        )
    if int8 == WEIGHT_ONLY:
        return Precision(target, dtype, int8, f"8-bit {int8} linear layers on {target}")
    if target == "cuda":
        if int8 is not None:
            raise EngineError(f"the {int8} int8 layers run on a CPU only")
        ours, missing = WEIGHT_ONLY, None
    else:
        missing = linear.kernel_problem()
        if int8 == C_KERNEL and missing:
            raise EngineError(f"the C int8 kernel cannot run here: {missing}")
        if int8 in (C_KERNEL, TORCH_DYNAMIC):
            return Precision("cpu", dtype, int8, f"8-bit {named(int8)} linear layers on cpu")
        ours = TORCH_DYNAMIC if missing else C_KERNEL
    rates = int8_rates(ours, target, dtype)
    best = max(rates, key=lambda name: rates[name])
    measured = ", ".join(f"{name} {rate:.1f} GOP/s" for name, rate in rates.items())
    if missing:
        measured += f"; no C kernel: {missing}"
    if best == BITSANDBYTES:
        quiet_bitsandbytes()
    return Precision(
        target, dtype, best, f"8-bit {named(best)} linear layers on {target} (measured {measured})"
    )


def named(int8: str) -> str:
    """The int8 backend's name for the log: the C kernel's with the ISA its products run on."""
    return f"{int8} ({linear.kernel_isa()})" if int8 == C_KERNEL else int8


def quiet_bitsandbytes() -> None:
    # bitsandbytes warns on every forward pass that it casts fp32 activations to fp16 to
    # quantize them: expected here, and it would flood the log.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def int8_problem(device: str) -> str | None:
    """Why bitsandbytes 8-bit cannot run on `device` here, or None when a tiny layer runs."""
    try:
        import bitsandbytes as bnb
    except Exception as error:  # a broken install raises more than ImportError
        return f"bitsandbytes cannot be imported ({error}): pip install 'bitsandbytes>=0.50'"
    try:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
        layer(torch.randn(2, 64, device=device, dtype=torch.float16))
    except Exception as error:
        return f"bitsandbytes {bnb.__version__} 8-bit does not run on {device} here ({error})"
    return None


def int8_rates(
    ours: str,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokens: int = 16,
    width: int = 1024,
) -> dict[str, float]:
    """GOP/s of `ours` and of bitsandbytes where it works, on a [tokens, width] x [width, width]
    product on `device` (about 0.1 s in all, even where one path is slow)."""
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        ours: quantize_linear(torch.nn.Linear(width, width, device=device, dtype=dtype), ours)
    }
    if int8_problem(device) is None:
        import bitsandbytes as bnb

        quiet_bitsandbytes()
        layers[BITSANDBYTES] = bnb.nn.Linear8bitLt(width, width, has_fp16_weights=False).to(device)
    # Interleaved, best of five: other work on the machine slows single runs, never speeds them
    # up, and a busy moment at startup must not pick a backend 20x slower for the whole session.
    times: dict[str, list[float]] = {name: [] for name in layers}
    with torch.inference_mode():
        for layer in layers.values():
            layer(x)
        for _ in range(5):
            for name, layer in layers.items():
                started = time.perf_counter()
                layer(x)
                if device == "cuda":
                    torch.cuda.synchronize()  # the GPU's work, not just its launch
                times[name].append(time.perf_counter() - started)
    return {name: 2 * tokens * width * width / min(runs) / 1e9 for name, runs in times.items()}


def quantize_linear(layer: torch.nn.Linear, int8: str) -> torch.nn.Module:
    """The int8 version of `layer` for backend `int8` (C_KERNEL, TORCH_DYNAMIC or WEIGHT_ONLY)."""
    if int8 == C_KERNEL:
        return linear.Int8Linear.from_float(layer)
    if int8 == WEIGHT_ONLY:
        return linear.WeightOnlyInt8Linear.from_float(layer)
    # torch's dynamic int8: activations quantized per call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the module docstring
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        layer.qconfig = torch.ao.quantization.default_dynamic_qconfig  # type: ignore[assignment]
        return torch.ao.nn.quantized.dynamic.Linear.from_float(layer.float())
