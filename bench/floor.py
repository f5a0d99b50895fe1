"""The machine's floor for this model: memory read bandwidth (decode) and int8 matmul rate (prefill)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from fim_lsp.engine import memory
from fim_lsp.engine.choices import C_KERNEL, TORCH_DYNAMIC


def timed(work, repeats: int = 5) -> float:
    """Median seconds of `work()` after one warm-up run."""
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


class ReadRate:
    """Memory read bandwidth, sampled on demand beside the runs it is the floor of: bytes per
    second read from `size_bytes` of fp32 weights by the faster of a matrix-vector product (what
    decoding does) and a plain sum (here often 20-30% faster than MKL's GEMV)."""

    def __init__(self, size_bytes: int = 1 << 30):
        # On huge pages where the system has them, like the engine's weights and cache: they
        # read faster, so the floor is the stricter for it.
        self.weights = memory.empty((size_bytes // 4 // 4096, 4096), torch.float32).normal_()
        self.vector = torch.randn(4096)

    def sample(self) -> float:
        times = []
        for read in (lambda: torch.mv(self.weights, self.vector), self.weights.sum):
            started = time.perf_counter()
            read()
            times.append(time.perf_counter() - started)
        return self.weights.nbytes / min(times)


def read_bandwidth(size_bytes: int = 1 << 30, samples: int = 5) -> float:
    """Bytes per second: the median of `samples` samples of ReadRate."""
    rate = ReadRate(size_bytes)
    return statistics.median(rate.sample() for _ in range(samples))


def int8_gemm_rates(rows: int = 256, width: int = 2048, out: int = 2048) -> dict[str, float | str]:
    """Ops per second of an int8 product [rows, width] x [width, out] by each CPU int8 path, or
    why it cannot run here: torch._int_mm (int8 in, int32 out; oneDNN, what bitsandbytes runs
    on CPUs), and the engine's layers (fp32 in and out, activations quantized per call): the C
    kernel (Int8Linear) and torch's dynamic int8 layers."""
    ops = 2 * rows * width * out
    rates: dict[str, float | str] = {}
    a = torch.randint(-128, 127, (rows, width), dtype=torch.int8)
    b = torch.randint(-128, 127, (out, width), dtype=torch.int8).t()  # weights as [out, in]
    try:
        # One product of 32 rows first: off AVX-512 VNNI it is a slow fallback (0.1-3 GOP/s)
        # that would take many seconds at full size.
        started = time.perf_counter()
        torch._int_mm(a[:32], b)
        probe = 2 * 32 * width * out / (time.perf_counter() - started)
        rates["torch._int_mm"] = probe if probe < 3e9 else ops / timed(lambda: torch._int_mm(a, b))
    except RuntimeError as error:
        rates["torch._int_mm"] = f"does not run here ({error})"
    x = torch.randn(rows, width)
    for int8, name in ((C_KERNEL, "Int8Linear (C kernel)"), (TORCH_DYNAMIC, "torch dynamic int8")):
        if problem := int8.problem("cpu"):
            rates[name] = problem
            continue
        layer = int8.quantize(torch.nn.Linear(width, out))
        with torch.inference_mode():
            rates[name] = ops / timed(lambda: layer(x))  # noqa: B023
    return rates


def int8_ops_per_second(tokens: int = 256, width: int = 2048, out: int = 8192) -> float:
    """The fastest of the CPU int8 products here (see int8_gemm_rates)."""
    rates = int8_gemm_rates(tokens, width, out).values()
    return max(rate for rate in rates if isinstance(rate, float))


def layer_weights(config: dict) -> int:
    """Weights in the products of a GPT-NeoX's layers: per layer qkv (3 d^2) + attention output
    (d^2) + MLP (2 x 4 d^2) = 12 d^2; a prefilled token costs 2 ops per weight."""
    return config["num_hidden_layers"] * 12 * config["hidden_size"] ** 2


def measure_floor(
    model_config: Path,
    context: int,
    int8: bool = True,
    int8_lm_head: bool = False,
    bandwidth: float | None = None,
    kv_itemsize: int = 4,
) -> dict:
    """Floors for one decode step and one prefilled token of the model in `model_config`.

    `int8_lm_head`: the CPU int8 layers quantize the output layer too; bitsandbytes keeps it fp32.
    `bandwidth`: bytes per second read, if measured already (beside the runs it is a floor for).
    `kv_itemsize`: bytes per cached key or value (2 for the engine's fp16 cache on a CPU).
    """
    config = json.loads(model_config.read_text())
    width, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    weights = layer_weights(config)
    weight_bytes = weights * (1 if int8 else 4) + vocab * width * (1 if int8_lm_head else 4)
    kv_bytes = 2 * layers * width * kv_itemsize * context  # keys and values
    bandwidth = bandwidth or read_bandwidth()
    int8_rate = int8_ops_per_second()
    return {
        "read_gb_s": bandwidth / 1e9,
        "int8_gops": int8_rate / 1e9,
        "weight_bytes": weight_bytes,
        "kv_bytes": kv_bytes,
        "decode_floor_ms": (weight_bytes + kv_bytes) / bandwidth * 1000,
        "prefill_floor_ms_per_token": 2 * weights / int8_rate * 1000,
    }
