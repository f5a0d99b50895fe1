"""What each context length costs on this machine, to choose contextLength's CPU default.

    python bench/context_length.py [--model FOLDER] [--contexts 512 1024 1536 2048]

For the full-size 8-bit model (the C step) and each context: the prefill of that many tokens of
real code from an empty cache (what growing to the full context after a move costs, in the
background), a warm keystroke (one new token after them, then 8 greedy decode steps: what a user
waits for while typing), and the memory its KV cache takes (what `cacheMemoryMb` divides among
the prompts kept). Rounds alternate the contexts, so that every context sees the same machine.
Writes bench/out/context_length.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the server runs (cli.main)
import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode_profile import SOURCE  # noqa: E402
from bench.typing_latency import RANDOM_MODEL, machine  # noqa: E402
from fim_lsp.engine import load_engine  # noqa: E402
from tests import tiny_model  # noqa: E402

KEYSTROKE_TOKENS = 8  # decode steps after the keystroke's new token


def code_ids(count: int) -> list[int]:
    """`count` token ids of real Python (the stdlib's json encoder, repeated as needed)."""
    tokenizer = Tokenizer.from_str(tiny_model.fim_tokenizer_json())
    ids = tokenizer.encode(SOURCE.read_text()).ids
    return (ids * (count // len(ids) + 1))[:count]


def measure(engine, prompt: list[int]) -> tuple[float, float]:
    """Seconds to prefill `prompt` from an empty cache; seconds for a keystroke after it."""
    engine.cache.clear()
    with torch.inference_mode():
        started = time.perf_counter()
        engine.prefill(prompt, threading.Event())
        prefilled = time.perf_counter()
        token = 7
        for _ in range(1 + KEYSTROKE_TOKENS):
            token = int(torch.argmax(engine.forward([token])[-1]))
        typed = time.perf_counter()
    return prefilled - started, typed - prefilled


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=RANDOM_MODEL)
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 1536, 2048])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()

    engine = load_engine(str(args.model), 50280, "cpu", "int8", int8_backend="c-kernel")
    assert engine.step is not None, engine.step_problem
    longest = max(args.contexts)
    ids = code_ids(longest)
    measure(engine, ids[:256])  # warm-up: first-touch of the weights and the cache buffers
    prefills: dict[int, list[float]] = {context: [] for context in args.contexts}
    keystrokes: dict[int, list[float]] = {context: [] for context in args.contexts}
    for _ in range(args.rounds):
        for context in args.contexts:
            prefill_s, keystroke_s = measure(engine, ids[:context])
            prefills[context].append(prefill_s)
            keystrokes[context].append(keystroke_s)
    kv_mb = {
        context: 2 * engine.model.shape.layers * engine.model.shape.width * 2 * context / 2**20
        for context in args.contexts
    }
    shortest = min(args.contexts)
    rows = [
        "| context | prefill from empty (s) | ms per prompt token | keystroke: 1 + 8 tokens (ms) "
        "| vs shortest | KV cache (MB) |",
        "|---|---|---|---|---|---|",
    ]
    results = {}
    for context in args.contexts:
        prefill_s = statistics.median(prefills[context])
        keystroke_ms = statistics.median(keystrokes[context]) * 1000
        ratio = keystroke_ms / (statistics.median(keystrokes[shortest]) * 1000)
        results[context] = {
            "prefill_s": prefill_s,
            "keystroke_ms": keystroke_ms,
            "keystroke_vs_shortest": ratio,
            "kv_mb": kv_mb[context],
        }
        rows.append(
            f"| {context} | {prefill_s:.2f} | {prefill_s * 1000 / context:.2f} | "
            f"{keystroke_ms:.0f} | {ratio:.2f}x | {kv_mb[context]:.0f} |"
        )
    report = "\n".join(
        [
            "# Context length: what each costs",
            "",
            f"Machine: {machine()}; model {args.model.name}, {engine.precision.reason}.",
            f"Medians of {args.rounds} rounds, contexts alternating within each round.",
            "",
            *rows,
            "",
            f"Command: `python bench/context_length.py --contexts "
            f"{' '.join(map(str, args.contexts))} --rounds {args.rounds}`",
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "context_length.md").write_text(report + "\n")
    (args.out / "context_length.json").write_text(json.dumps(results, indent=1))
    print(report)


if __name__ == "__main__":
    main()
