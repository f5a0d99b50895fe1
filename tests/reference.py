"""Float64 references of the C kernels' arithmetic, and the normalised error the tests bound.

Each SIMD path is compared with these (ggml's way), not with another library's vectorised
result, whose last bits depend on the CPU it runs on."""

from __future__ import annotations

import math

import torch


def normalised_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """||got - expected|| / ||expected||, in float64."""
    expected = expected.double()
    return float((got.double() - expected).norm() / expected.norm())


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x / 2 (1 + erf(x / sqrt 2)), by math.erf in float64."""
    values = [v / 2 * (1 + math.erf(v / math.sqrt(2))) for v in x.double().flatten().tolist()]
    return torch.tensor(values, dtype=torch.float64).view(x.shape)


def quantized_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """linear.c's activations: each row to 0..127 around a zero point, with its fp32 scale.
    Returns (q, zero, scale), q and zero as float64 integers."""
    low = x.amin(dim=1).clamp(max=0)
    high = x.amax(dim=1).clamp(min=0)
    scale = (high - low) / 127  # float32, as in the kernel
    scale[scale == 0] = 1
    inverse = 1 / scale
    zero = torch.round(-low * inverse)
    q = (torch.round(x * inverse[:, None]) + zero[:, None]).clamp(0, 127)
    return q.double(), zero.double(), scale


def quantized_product(weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor):
    """x W^T + b after linear.c's quantization, in float64: weights symmetric per output row,
    activations per row around a zero point, products summed exactly."""
    step = weight.abs().amax(dim=1) / 127
    step[step == 0] = 1
    w = torch.round(weight / step[:, None]).clamp(-127, 127)
    q, zero, scale = quantized_rows(x)
    exact = (q - zero[:, None]) @ w.double().T
    out = exact * scale.double()[:, None] * step.double()[None, :]
    return out + (0 if bias is None else bias.double())


def causal_attention(query, keys, values, scaling):
    """[1, new, heads, dim]: causal softmax attention of the last `new` tokens, in float64.
    query [1, heads, new, dim]; keys, values [1, heads, tokens, dim]."""
    new, total = query.shape[2], keys.shape[2]
    scores = query.double() @ keys.double().mT * scaling
    positions = torch.arange(total)
    seen = positions[None, :] <= positions[-new:, None]  # new token i at total - new + i
    scores = scores.masked_fill(~seen, -torch.inf)
    return (torch.softmax(scores, dim=-1) @ values.double()).transpose(1, 2)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    x = x.double()
    mean = x.mean(dim=-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * weight.double() + bias.double()
