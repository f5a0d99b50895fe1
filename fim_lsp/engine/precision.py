"""Device, dtype and quantization: decided in exactly one function, from explicit settings.

int8 on CUDA is bitsandbytes (`load_in_8bit`). On a CPU there are two int8 paths and which one is
fast depends on the processor, so `choose_precision` times both on a small matrix and keeps the
faster one:
- bitsandbytes runs on CPUs with `torch._int_mm`, fast with AVX-512 VNNI (measured on an Ice Lake
  Xeon: 760-890 GOP/s) but a slow fallback elsewhere (0.1-3 GOP/s on an AVX2-only AMD EPYC);
- torch's dynamic int8 linear layers (fbgemm/x86 kernels, also on AVX2; about 100 GOP/s on that
  EPYC, 1.3x faster decode than bitsandbytes on the Xeon). `torch.ao.quantization` is deprecated,
  but no maintained int8 path is as fast on CPU (torchao's eager int8 was 10x slower here).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fim_lsp.engine.errors import EngineError

BITSANDBYTES, TORCH_DYNAMIC = "bitsandbytes", "torch-dynamic"


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype  # of everything that is not an 8-bit matrix
    int8: str | None  # which int8 linear layers: BITSANDBYTES, TORCH_DYNAMIC, or None
    reason: str

    @property
    def quantization(self) -> str:
        return f"int8 ({self.int8})" if self.int8 else "none"


def choose_precision(device: str, quantization: str, int8: str | None = None) -> Precision:
    """The one place where device, dtype and quantization are decided, from explicit settings.

    `int8` forces one CPU backend (for tests and benchmarks); by default the faster one wins.
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
    if target == "cuda" or int8 == BITSANDBYTES:
        if problem := int8_problem(target):
            raise EngineError(f"{problem}; or set quantization to none (about 4x the memory)")
        quiet_bitsandbytes()
        return Precision(
            target, dtype, BITSANDBYTES, f"8-bit bitsandbytes linear layers on {target}"
        )
    if int8 == TORCH_DYNAMIC:
        return Precision("cpu", dtype, TORCH_DYNAMIC, "8-bit torch dynamic linear layers on cpu")
    rates = int8_rates()
    best = max(rates, key=lambda name: rates[name])
    measured = ", ".join(f"{name} {rate:.1f} GOP/s" for name, rate in rates.items())
    if best == BITSANDBYTES:
        quiet_bitsandbytes()
    return Precision("cpu", dtype, best, f"8-bit {best} linear layers on cpu (measured {measured})")


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


def int8_rates(tokens: int = 16, width: int = 1024) -> dict[str, float]:
    """GOP/s of each CPU int8 linear layer that works here, on a [tokens, width] x [width, width]
    product (about 0.1 s in all, even where one path is slow)."""
    x = torch.randn(tokens, width)
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        TORCH_DYNAMIC: quantize_linear(torch.nn.Linear(width, width))
    }
    if int8_problem("cpu") is None:
        import bitsandbytes as bnb

        quiet_bitsandbytes()
        layers[BITSANDBYTES] = bnb.nn.Linear8bitLt(width, width, has_fp16_weights=False).to("cpu")
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
                times[name].append(time.perf_counter() - started)
    return {name: 2 * tokens * width * width / min(runs) / 1e9 for name, runs in times.items()}


def quantize_linear(layer: torch.nn.Linear) -> torch.nn.Module:
    """torch's dynamic int8 version of `layer`: int8 weights, activations quantized per call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the module docstring
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        layer.qconfig = torch.ao.quantization.default_dynamic_qconfig  # type: ignore[assignment]
        return torch.ao.nn.quantized.dynamic.Linear.from_float(layer.float())
