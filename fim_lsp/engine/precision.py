"""Device, dtype and quantization: decided in exactly one function, from explicit settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from fim_lsp.engine.errors import EngineError


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype  # of everything that is not an 8-bit matrix
    int8: bool  # linear layers quantized to 8 bits by bitsandbytes
    reason: str

    @property
    def quantization(self) -> str:
        return "int8" if self.int8 else "none"


def choose_precision(device: str, quantization: str) -> Precision:
    """The one place where device, dtype and quantization are decided, from explicit settings."""
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise EngineError(
            "device is set to cuda but torch sees no CUDA GPU (torch "
            f"{torch.__version__}); set device to auto or cpu, or install a CUDA build of torch"
        )
    target = "cuda" if cuda and device in ("auto", "cuda") else "cpu"
    # CPU: fp32 around the 8-bit matrices (this CPU class has no fast fp16/bf16 matmul).
    dtype = torch.float16 if target == "cuda" else torch.float32
    if quantization == "none":
        return Precision(target, dtype, False, f"quantization none: {dtype} weights on {target}")
    problem = int8_problem(target)
    if problem:
        raise EngineError(f"{problem}; or set quantization to none (uses about 4x the memory)")
    # bitsandbytes warns on every forward pass that it casts fp32 activations to fp16 to
    # quantize them: expected here, and it would flood the log.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    return Precision(target, dtype, True, f"8-bit bitsandbytes linear layers on {target}")


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
