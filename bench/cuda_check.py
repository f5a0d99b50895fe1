"""Checks and timings for a machine with an NVIDIA GPU: the engine's int8 on CUDA.

    python bench/cuda_check.py [--full] [--out FOLDER]

On a tiny random model, for each int8 backend on CUDA (weight-only and bitsandbytes): every
linear layer is replaced, a reused KV cache gives a cold run's tokens, and drafts verified in one
pass keep the greedy tokens (drafts from an oracle that gets every third token wrong, so both
acceptance and rejection run). Also which backend the engine picks, with its measurements.

With --full, a random model with FIM-NeoX-1.3B's dimensions, for int8 weight-only, int8
bitsandbytes and fp16, one after the other: load time, GPU memory (peak while loading, after
loading, peak while running), and medians of the time to first token of a 1,000-token prompt
(cold), decode per token, and a keystroke's time to first token, warm (5 new tokens after a
cached prompt) and cold. Writes cuda-check.md to --out.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.typing_latency import machine  # noqa: E402
from fim_lsp.backend import GenerationOptions  # noqa: E402
from fim_lsp.engine import choose, load_engine  # noqa: E402
from fim_lsp.engine.linear import WeightOnlyInt8Linear  # noqa: E402
from tests import tiny_model  # noqa: E402

VOCAB = 50280
PROMPT = [50277, *([1545, 4868, 9, 89, 13, 340, 10] * 6), 50278, 1545, 4868, 50279]
WEIGHT_ONLY, BITSANDBYTES = "weight-only", "bitsandbytes"  # choices.INT8_LAYERS names
SETUPS = [("int8", WEIGHT_ONLY), ("int8", BITSANDBYTES), ("none", None)]


def run(engine, prompt: list[int], count: int, drafts: int = 0, reuse: bool = True):
    """Greedy tokens without an end token (drafting off unless asked)."""
    return engine.generate(prompt, GenerationOptions(count, -1, 0.0, drafts, reuse))


def int8_layers(engine) -> int:
    import bitsandbytes as bnb

    kinds = (WeightOnlyInt8Linear, bnb.nn.Linear8bitLt)
    return sum(isinstance(m, kinds) for m in engine.model.modules())


def drafts_keep_greedy(engine, new_tokens: int = 24) -> tuple[bool, int, int]:
    engine.cache.clear()
    expected = run(engine, PROMPT, new_tokens, drafts=0).ids

    def oracle(ids: list[int], limit: int) -> list[int]:
        done = len(ids) - len(PROMPT)
        draft = expected[done : done + min(limit, 4)]
        return [t if (done + i) % 3 else t + 1 for i, t in enumerate(draft)]

    engine.draft = oracle
    engine.cache.clear()
    drafted = run(engine, PROMPT, new_tokens, drafts=8)
    del engine.draft
    return drafted.ids == expected, drafted.accepted, drafted.drafted


def tiny_checks(folder: Path) -> list[str]:
    lines = []
    for backend in (WEIGHT_ONLY, BITSANDBYTES):
        engine, cold = (
            load_engine(str(folder), VOCAB, "cuda", "int8", int8_backend=backend) for _ in range(2)
        )
        run(engine, PROMPT, 16)
        same = []
        for edited in ([*PROMPT[:-1], 13, 340, 50279], [*PROMPT[:-2], 50279]):
            warm, fresh = (
                run(engine, edited, 16),
                run(cold, edited, 16),
            )
            same.append(f"{warm.ids == fresh.ids} ({warm.cached_tokens} cached)")
        exact, accepted, drafted = drafts_keep_greedy(engine)
        lines.append(
            f"- {backend}: {int8_layers(engine)} int8 layers of 9; reuse == cold: {', '.join(same)}; "
            f"drafts == greedy: {exact} ({accepted} of {drafted} accepted)"
        )
    lines.append(f"- the engine picks: {choose('cuda', 'int8').reason}")
    return lines


def timed_setup(folder: Path, quantization: str, backend: str | None) -> dict[str, float]:
    random.seed(0)
    prompt = [random.randrange(2, 50000) for _ in range(1000)]
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    engine = load_engine(
        str(folder), VOCAB, device="cuda", quantization=quantization, int8_backend=backend
    )
    result = {"load_s": time.perf_counter() - started}
    result["load_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    result["loaded_gb"] = torch.cuda.memory_allocated() / 1e9
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # warm-up: first calls of each shape pay one-time costs
        engine.cache.clear()
        run(engine, prompt, 4)
        run(engine, [*prompt[:-3], 7, 8, 9, 10, 11], 2)
    first, decode, warm, cold = [], [], [], []
    for round_ in range(5):
        engine.cache.clear()
        generation = run(engine, prompt, 33)
        first.append(generation.timings_ms["prefill"])
        decode.append(generation.timings_ms["decode"] / 32)
        keystroke = [*prompt[:-3], 7 + round_, 8, 9, 10, 11]
        warm.append(run(engine, keystroke, 1).timings_ms["total"])
        engine.cache.clear()
        cold.append(run(engine, keystroke, 1).timings_ms["total"])
    result |= {
        "first_token_1000_ms": statistics.median(first),
        "decode_ms": statistics.median(decode),
        "warm_keystroke_ms": statistics.median(warm),
        "cold_keystroke_ms": statistics.median(cold),
        "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
    }
    del engine
    return result


def full_size_table(folder: Path) -> list[str]:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=50304, max_position_embeddings=1024, rotary_pct=0.25, bos_token_id=0,
        eos_token_id=0, tie_word_embeddings=False, **tiny_model.FULL,
    )  # fmt: skip
    with torch.device("cuda"):
        GPTNeoXForCausalLM(config).to(torch.float16).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tiny_model.fim_tokenizer_json())
    lines = [
        "| setup | load | GPU memory: loading peak, loaded, running peak | first token, 1,000-token prompt | decode per token "
        "| keystroke, warm | keystroke, cold |",
        "|---|---|---|---|---|---|---|",
    ]
    for quantization, backend in SETUPS:
        r = timed_setup(folder, quantization, backend)
        name = f"int8 {backend}" if backend else "fp16"
        lines.append(
            f"| {name} | {r['load_s']:.1f} s | {r['load_peak_gb']:.2f}, {r['loaded_gb']:.2f}, {r['peak_gb']:.2f} GB | {r['first_token_1000_ms']:.1f} ms "
            f"| {r['decode_ms']:.1f} ms | {r['warm_keystroke_ms']:.1f} ms | {r['cold_keystroke_ms']:.1f} ms |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="also time a full-size random model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch")
    lines = [
        "# CUDA check",
        "",
        f"{torch.cuda.get_device_name(0)}; "
        + ", ".join(f"{key} {value}" for key, value in machine().items()),
        "",
        "Tiny random model:",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        lines += tiny_checks(tiny_model.build(Path(scratch) / "tiny"))
        print("\n".join(lines), flush=True)
        if args.full:
            lines += ["", "Random model with FIM-NeoX-1.3B's dimensions, medians of 5 runs:", ""]
            lines += full_size_table(Path(scratch) / "full")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda-check.md").write_text("\n".join(lines) + "\n")
    print(f"report: {args.out / 'cuda-check.md'}")


if __name__ == "__main__":
    main()
