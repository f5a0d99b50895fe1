"""Where a decode step's time goes, for the full-size 8-bit model on this machine, against the floor.

    python bench/decode_profile.py [--model FOLDER] [--context 1000] [--blocks 6]

Prefills `--context` tokens of real code for four setups (SETUPS): the engine's (the C step: the
C int8 kernel and an fp16 KV cache read by the C attention kernel, one C call per layer); the
same int8 kernel through the model's torch modules (neox.py, sdpa on the same cache); the
fallback where the C kernels cannot run (torch's dynamic int8 layers, an fp32 cache, sdpa); and
transformers' defaults (its GPTNeoXForCausalLM with torch's int8 layers, DynamicCache, sdpa).
Then times blocks of one-token decode steps (no drafting) of each in turn, with a sample of the
memory bandwidth after each round, so that every block is compared with the floor of its moment
on this shared machine.
Last, profiles steps with torch.profiler and groups their time by kind of operator. Writes
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
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.floor import ReadRate, measure_floor  # noqa: E402
from bench.typing_latency import RANDOM_MODEL, machine, random_model  # noqa: E402
from fim_lsp.engine import attention, linear, load_engine  # noqa: E402
from fim_lsp.engine.choices import torch_dynamic_layer  # noqa: E402

SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "json" / "encoder.py"
# Operator name fragments -> what they are, first match wins.
KINDS = [
    ("fim_lsp::layer", "C layers (int8 products and attention, one call each)"),
    ("linear_dynamic", "int8 linear layers (weights)"),
    ("fim_lsp::linear", "int8 linear layers (weights)"),
    ("fim_lsp::attention", "attention"),
    ("scaled_dot_product", "attention"),
    ("bmm", "attention"),
    ("softmax", "attention"),
    ("aten::cat", "KV cache append (cat/copy)"),
    ("aten::copy_", "KV cache append (cat/copy)"),
    ("layer_norm", "layer norms"),
    ("gelu", "GELU"),
    ("embedding", "embedding"),
]
OURS = "fim-lsp: C step (C int8 kernel; fp16 cache, C attention)"
THROUGH_MODULES = "the same int8 kernel through torch modules; fp16 cache, sdpa"
FALLBACK = "fallback without C kernels: torch int8 (fbgemm); fp32 cache, sdpa"
TRANSFORMERS = "transformers' defaults: torch int8; DynamicCache (torch.cat), sdpa"
SETUPS = (OURS, THROUGH_MODULES, FALLBACK, TRANSFORMERS)
KV_ITEMSIZE = {OURS: 2, THROUGH_MODULES: 2, FALLBACK: 4, TRANSFORMERS: 4}  # fp16 or fp32


class Transformers:
    """transformers' GPTNeoXForCausalLM with torch's int8 layers, as a user of it would run it:
    the reference the engine started from."""

    def __init__(self, folder: Path):
        from transformers import AutoModelForCausalLM, DynamicCache

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        for name, module in list(self.model.named_modules()):
            if type(module) is torch.nn.Linear:
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent), child, torch_dynamic_layer(module))
        self.new_cache = DynamicCache
        self.cache = DynamicCache()
        self.step = None

    def prefill(self, ids: list[int], cancel: threading.Event) -> torch.Tensor:
        self.cache = self.new_cache()
        return self.forward(ids)

    def forward(self, ids: list[int], keep: int = 1) -> torch.Tensor:
        out = self.model(input_ids=torch.tensor([ids]), cache=self.cache, use_cache=True)
        return out.logits[0, -keep:]


def setups(folder: Path) -> dict[str, Any]:
    """Each setup's engine, with its own cache."""
    ours = load_engine(str(folder), 50280, "cpu", "int8", int8_backend="c-kernel")
    through_modules = load_engine(str(folder), 50280, "cpu", "int8", int8_backend="c-kernel")
    through_modules.step = None
    fallback = load_engine(str(folder), 50280, "cpu", "int8", int8_backend="torch-dynamic")
    return {
        OURS: ours,
        THROUGH_MODULES: through_modules,
        FALLBACK: fallback,
        TRANSFORMERS: Transformers(folder),
    }


def prefill(engine, prompt: list[int]) -> tuple[float, int]:
    """Prefill `prompt` into a fresh cache; the seconds that took, and the next token."""
    if hasattr(engine.cache, "clear"):
        engine.cache.clear()
    started = time.perf_counter()
    logits = engine.prefill(prompt, threading.Event())
    return time.perf_counter() - started, int(torch.argmax(logits[-1]))


def profile(engine, steps: int) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per decode step by kind of operator (self time), continuing the cache; and
    the operators that make up "everything else"."""
    token = int(engine.cache.ids[-1])
    # The kernels are no torch operators: name their calls for the profiler.
    kernels = {module: module.run_kernel for module in (attention, linear)}
    for module, run_kernel in kernels.items():
        name = f"fim_lsp::{module.__name__.rpartition('.')[2]}"
        module.run_kernel = recorded(run_kernel, name)  # type: ignore[attr-defined]
    if engine.step:  # the step calls the kernels itself: a call per layer, and the output layer
        engine.step.layer = recorded(engine.step.layer, "fim_lsp::layer")
        engine.step.linear = recorded(engine.step.linear, "fim_lsp::linear")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            token = int(torch.argmax(engine.forward([token])[-1]))
    for module, run_kernel in kernels.items():
        module.run_kernel = run_kernel  # type: ignore[attr-defined]
    if engine.step:
        del engine.step.layer, engine.step.linear
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


def recorded(function, name: str):
    def run(*args):
        with torch.profiler.record_function(name):
            return function(*args)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=RANDOM_MODEL)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2, help="prefills of each setup")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of decode steps per setup")
    parser.add_argument("--block-steps", type=int, default=8, help="decode steps per block")
    parser.add_argument("--profile-steps", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if args.model == RANDOM_MODEL:
        random_model()
    engines = setups(args.model)
    tokenizer = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    prompt = tokenizer.encode(SOURCE.read_text()).ids[: args.context]

    next_tokens = {}
    prefills: dict[str, list[float]] = defaultdict(list)
    times: dict[str, list[float]] = defaultdict(list)
    bandwidths = []
    with torch.inference_mode():
        for _ in range(args.rounds):  # alternate, so that drift in the machine's speed hits all
            for setup, engine in engines.items():
                seconds, next_tokens[setup] = prefill(engine, prompt)
                prefills[setup].append(seconds)
        # Blocks of consecutive steps (as a completion runs them) of each setup in turn, with a
        # sample of the bandwidth after each round of blocks: each block is compared with the
        # floor of its moment, since the machine's speed drifts (it is shared).
        rate = ReadRate()
        for _ in range(args.blocks):
            for setup, engine in engines.items():
                block = []
                for _ in range(args.block_steps):
                    started = time.perf_counter()
                    logits = engine.forward([next_tokens[setup]])
                    block.append(time.perf_counter() - started)
                    next_tokens[setup] = int(torch.argmax(logits[-1]))
                times[setup].append(statistics.median(block))
            bandwidths.append(rate.sample())
        kinds, others = profile(engines[OURS], args.profile_steps)
    floor = measure_floor(
        args.model / "config.json",
        len(prompt),
        int8_lm_head=True,
        bandwidth=statistics.median(bandwidths),
        kv_itemsize=KV_ITEMSIZE[OURS],
    )
    # Each setup against the bytes it reads: the fp32 caches read twice the KV bytes.
    floor_bytes = {
        setup: floor["weight_bytes"] + floor["kv_bytes"] * KV_ITEMSIZE[setup] // KV_ITEMSIZE[OURS]
        for setup in SETUPS
    }
    ratios = {
        setup: statistics.median(
            seconds * bandwidth / floor_bytes[setup]
            for seconds, bandwidth in zip(values, bandwidths, strict=True)
        )
        for setup, values in times.items()
    }
    result = {
        "machine": machine(),
        "model": os.path.relpath(args.model, ROOT),
        "precision": engines[OURS].precision.reason,
        "context": len(prompt),
        "blocks": args.blocks,
        "block_steps": args.block_steps,
        "decode_ms": {name: statistics.median(values) * 1000 for name, values in times.items()},
        "decode_x_floor": ratios,
        "prefill_s": {name: statistics.median(values) for name, values in prefills.items()},
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
        f"{result['blocks']} blocks of {result['block_steps']} one-token steps of each setup after "
        f"{result['context']} prompt tokens, alternating, with a bandwidth sample after each round (one block of each): "
        "ms is the median of the blocks' median step, x floor the median of the blocks' ratios to "
        "the floor of their moment; the floor below uses the median bandwidth.",
        "",
        f"Floor: {floor['weight_bytes'] / 1e9:.2f} GB of weights ({weights_ms:.0f} ms) + "
        f"{floor['kv_bytes'] / 1e6:.0f} MB of fp16 KV cache ({kv_ms:.0f} ms) read at "
        f"{floor['read_gb_s']:.1f} GB/s = **{floor_ms:.0f} ms**. The fp32 caches read twice the "
        f"KV bytes: their floor is {floor_ms + kv_ms:.0f} ms, and their x floor is against it.",
        "",
        f"| setup | decode ms per token | x floor | prefill {result['context']} tokens |",
        "|---|---|---|---|",
        *(
            f"| {name} | {ms:.0f} | {result['decode_x_floor'][name]:.2f} | "
            f"{result['prefill_s'][name]:.1f} s |"
            for name, ms in result["decode_ms"].items()
        ),
        "",
        f"## Where a step goes (torch.profiler self time, fim-lsp's setup, {profiled:.0f} ms per step profiled)",
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
