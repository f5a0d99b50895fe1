"""Where a decode step's time goes, for the full-size 8-bit model on this machine, against the floor.

    python bench/decode_profile.py [--model FOLDER] [--context 1000] [--steps 16]

Prefills `--context` tokens of real code, then times one-token decode steps (no drafting) with the
engine's growing KV cache and with transformers' DynamicCache, alternating, in the same run; then
profiles steps with torch.profiler and groups their time by kind of operator. Writes
bench/out/decode_profile.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import sysconfig
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import DynamicCache
from transformers.cache_utils import Cache

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.floor import measure_floor  # noqa: E402
from bench.typing_latency import RANDOM_MODEL, machine  # noqa: E402
from fim_lsp.engine import load_engine  # noqa: E402
from fim_lsp.engine.kv_cache import GrowingLayer  # noqa: E402
from tests import tiny_model  # noqa: E402

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "json" / "encoder.py"
# Operator name fragments -> what they are, first match wins.
KINDS = [
    ("linear_dynamic", "int8 linear layers (weights)"),
    ("scaled_dot_product", "attention"),
    ("aten::cat", "KV cache append (cat/copy)"),
    ("aten::copy_", "KV cache append (cat/copy)"),
    ("layer_norm", "layer norms"),
    ("gelu", "GELU"),
    ("embedding", "embedding"),
]
CACHES: dict[str, Callable[[], Cache]] = {
    "growing (fim-lsp)": lambda: Cache(layer_class_to_replicate=GrowingLayer),
    "DynamicCache (torch.cat)": DynamicCache,
}


def decode_steps(engine, prompt: list[int], steps: int, cache: Callable[[], Cache]) -> list[float]:
    """Seconds per one-token decode step after prefilling `prompt` into a fresh cache."""
    engine.cache.clear()
    engine.cache.kv = cache()
    logits = engine.prefill(prompt, threading.Event())
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        logits = engine.forward([int(torch.argmax(logits[-1]))])
        times.append(time.perf_counter() - started)
    return times


def profile(engine, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per decode step by kind of operator (self time), continuing the cache; and
    the operators that make up "everything else"."""
    token = engine.cache.ids[-1]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            token = int(torch.argmax(engine.forward([token])[-1]))
    by_kind: dict[str, float] = defaultdict(float)
    others: dict[str, float] = {}
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / steps
        kind = next((k for fragment, k in KINDS if fragment in event.key), "everything else")
        by_kind[kind] += ms
        if kind == "everything else":
            others[event.key] = ms
    top = dict(sorted(others.items(), key=lambda item: -item[1])[:8])
    return dict(sorted(by_kind.items(), key=lambda item: -item[1])), top


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=RANDOM_MODEL)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if args.model == RANDOM_MODEL and not (RANDOM_MODEL / "model.safetensors").is_file():
        tiny_model.build(RANDOM_MODEL, tiny_model.FULL, dtype="bfloat16")
    engine = load_engine(str(args.model), 50280, device="cpu", quantization="int8")
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    prompt = tokenizer.encode(SOURCE.read_text()).ids[: args.context]

    times: dict[str, list[float]] = defaultdict(list)
    with torch.inference_mode():
        for _ in range(2):  # alternate, so drift in the machine's speed hits both
            for name, cache in CACHES.items():
                times[name] += decode_steps(engine, prompt, args.steps, cache)
        decode_steps(engine, prompt, 1, CACHES["growing (fim-lsp)"])
        kinds, others = profile(engine, args.steps)
    floor = measure_floor(args.model / "config.json", len(prompt), int8_lm_head=True)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    result = {
        "machine": machine(),
        "model": os.path.relpath(args.model, ROOT),
        "precision": engine.precision.reason,
        "context": len(prompt),
        "decode_ms": medians,
        "profile_ms": kinds,
        "everything_else_ms": others,
        "floor": floor,
    }
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_profile.json").write_text(json.dumps(result, indent=1))
    (args.out / "decode_profile.md").write_text(text)
    print(text)


def report(result: dict) -> str:
    m, floor = result["machine"], result["floor"]
    floor_ms = floor["decode_floor_ms"]
    weights_ms = floor["weight_bytes"] / floor["read_gb_s"] / 1e6
    kv_ms = floor["kv_bytes"] / floor["read_gb_s"] / 1e6
    profiled = sum(result["profile_ms"].values())
    lines = [
        "# Decode step profile",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads); torch {m['torch']}, "
        f"transformers {m['transformers']}. Model: {result['model']}, {result['precision']}.",
        f"One token after {result['context']} prompt tokens; medians of the steps of two alternating runs.",
        "",
        f"Floor: {floor['weight_bytes'] / 1e9:.2f} GB of weights ({weights_ms:.0f} ms) + "
        f"{floor['kv_bytes'] / 1e6:.0f} MB of KV cache ({kv_ms:.0f} ms) read at "
        f"{floor['read_gb_s']:.1f} GB/s = **{floor_ms:.0f} ms**.",
        "",
        "| KV cache | ms per token | x floor |",
        "|---|---|---|",
        *(
            f"| {name} | {ms:.0f} | {ms / floor_ms:.2f} |"
            for name, ms in result["decode_ms"].items()
        ),
        "",
        f"## Where a step goes (torch.profiler self time, growing cache, {profiled:.0f} ms per step profiled)",
        "",
        "| operators | ms per step | share |",
        "|---|---|---|",
        *(
            f"| {kind} | {ms:.1f} | {ms / profiled:.0%} |"
            for kind, ms in result["profile_ms"].items()
        ),
        "",
        "Largest in everything else: "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in result["everything_else_ms"].items()),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
