"""Checks to run on a machine with an NVIDIA GPU: bitsandbytes 8-bit on CUDA through the engine.

    python bench/cuda_check.py [--full]

On a tiny random model: the layers are bitsandbytes Linear8bitLt, a reused KV cache gives the
same tokens as a cold run, and prompt-lookup drafts keep the greedy tokens. With --full, also a
random model with FIM-NeoX-1.3B's dimensions: load time, GPU memory, prefill of 1,000 tokens,
decode per token and a warm keystroke, for int8 and for fp16.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fim_lsp.engine import load_engine
from tests import tiny_model

VOCAB = 50280


def tiny_checks(folder: Path) -> None:
    import bitsandbytes as bnb

    engine = load_engine(str(folder), VOCAB, device="cuda", quantization="int8")
    cold = load_engine(str(folder), VOCAB, device="cuda", quantization="int8", reuse_cache=False)
    layers = sum(isinstance(m, bnb.nn.Linear8bitLt) for m in engine.model.modules())
    print(f"{engine.precision.reason}: {layers} Linear8bitLt layers")
    prompt = [50277, *([1545, 4868, 9, 89, 13, 340, 10] * 6), 50278, 1545, 4868, 50279]
    engine.generate(prompt, 16, end_id=-1)
    for edited in ([*prompt[:-1], 13, 340, 50279], [*prompt[:-2], 50279]):
        warm, fresh = engine.generate(edited, 16, end_id=-1), cold.generate(edited, 16, end_id=-1)
        print(f"reuse == cold: {warm.ids == fresh.ids} ({warm.cached_tokens} cached)")
    engine.draft_tokens = 0
    plain = engine.generate(prompt, 32, end_id=-1).ids
    engine.draft_tokens = 8
    drafted = engine.generate(prompt, 32, end_id=-1)
    print(
        f"drafts == greedy: {drafted.ids == plain} ({drafted.accepted}/{drafted.drafted} accepted)"
    )


def full_size_timings(folder: Path) -> None:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=50304, max_position_embeddings=1024, rotary_pct=0.25, bos_token_id=0,
        eos_token_id=0, tie_word_embeddings=False, **tiny_model.FULL,
    )  # fmt: skip
    with torch.device("cuda"):
        GPTNeoXForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    (folder / "tokenizer.json").write_text(tiny_model.fim_tokenizer_json())
    torch.cuda.empty_cache()
    random.seed(0)
    prompt = [random.randrange(2, 50000) for _ in range(1000)]
    keystroke = [*prompt[:-3], 7, 8, 9, 10, 11]
    for quantization in ("int8", "none"):
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        engine = load_engine(str(folder), VOCAB, device="cuda", quantization=quantization)
        load_s = time.perf_counter() - started
        engine.draft_tokens = 0
        engine.generate(prompt[:100], 2, end_id=-1)  # warm-up
        engine.cache.clear()
        run = engine.generate(prompt, 33, end_id=-1)
        warm = engine.generate(keystroke, 1, end_id=-1)
        engine.cache.clear()
        cold = engine.generate(keystroke, 1, end_id=-1)
        print(
            f"{quantization}: load {load_s:.1f} s, GPU peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB, "
            f"prefill 1000 {run.timings_ms['prefill']:.0f} ms, decode {run.timings_ms['decode'] / 32:.1f} ms/token, "
            f"keystroke to first token {warm.timings_ms['total']:.0f} ms warm, {cold.timings_ms['total']:.0f} ms cold"
        )
        del engine
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="also time a full-size random model")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        tiny_checks(tiny_model.build(Path(scratch) / "tiny"))
        if args.full:
            full_size_timings(Path(scratch) / "full")


if __name__ == "__main__":
    main()
