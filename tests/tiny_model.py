"""Build the small random FIM models that the tests and benchmarks load through the real loading path."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
TOKENIZER_20B = SHARED / "assets" / "tokenizer" / "20B_tokenizer.json"
SENTINELS = ("<|SUF|>", "<|PRE|>", "<|MID|>")

# FIM-NeoX-1.3B's hub config (vocab padded to 50304; positions probably 1024) at toy width.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
# The full model's dimensions, for benchmarks: speed does not depend on weight values.
FULL = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=16, intermediate_size=8192)


def fim_tokenizer_json() -> str:
    """The GPT-NeoX-20B tokenizer plus the three FIM sentinels (ids 50277-50279), as the model has them."""
    from tokenizers import AddedToken, Tokenizer

    tokenizer = Tokenizer.from_file(str(TOKENIZER_20B))
    tokenizer.add_tokens([AddedToken(s, normalized=True, special=False) for s in SENTINELS])
    return tokenizer.to_str()


def build(folder: Path, size: dict[str, int] = TINY, seed: int = 0, dtype: str = "float32") -> Path:
    """Save a randomly initialised GPTNeoXForCausalLM and its tokenizer into `folder`."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50304,
        max_position_embeddings=1024,
        rotary_pct=0.25,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
        **size,
    )
    model = GPTNeoXForCausalLM(config).to(getattr(torch, dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(fim_tokenizer_json())
    (folder / "fim_lsp_test_model.json").write_text(json.dumps({"seed": seed, **size}))
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--full", action="store_true", help="full FIM-NeoX-1.3B dimensions (bf16)")
    args = parser.parse_args()
    if args.full:
        build(args.folder, FULL, dtype="bfloat16")
    else:
        build(args.folder)
    print(args.folder)
