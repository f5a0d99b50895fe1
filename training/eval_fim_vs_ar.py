"""Compare infilling (SPM prompt) with left-to-right prompting on HumanEval single-line infilling.

    python training/eval_fim_vs_ar.py --data PATH/HumanEval-SingleLineInfilling.jsonl.gz

Both modes decode greedily and keep the first generated line (plus its newline, as the canonical
middle has one), so they are scored the same way: exact match of the line (indentation included:
it is Python), and pass@1 of `prompt + completion + suffix + test + check(entry_point)` run in a
subprocess. `<|endoftext|>` is barred as the first token in both modes: the hole is never empty,
and a left-to-right prompt ending in a newline would otherwise often end at once (its training
text ends at line ends), leaving an empty line that passes wherever the line was not needed. A third measure
needs no decoding: the loss (nats per token) of the canonical line after each prompt, which shows
whether the model reads the suffix even where its greedy line is wrong either way; it is also
measured with the suffix left out of the SPM prompt, to tell the suffix's share from the format's.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import AutoModelForCausalLM


def spm_ids(tok: Tokenizer, prefix: str, suffix: str, budget: int) -> list[int]:
    """`<|SUF|> suffix <|PRE|> prefix <|MID|>`, cut to `budget` tokens around the cursor."""
    suf, pre = tok.encode(suffix).ids, tok.encode(prefix).ids
    room = budget - 3
    keep_suf = min(len(suf), room // 2)  # the suffix's head, the prefix's tail: nearest the hole
    keep_pre = room - keep_suf
    return [
        tok.token_to_id("<|SUF|>"),
        *suf[:keep_suf],
        tok.token_to_id("<|PRE|>"),
        *pre[-keep_pre:],
        tok.token_to_id("<|MID|>"),
    ]


def ar_ids(tok: Tokenizer, prefix: str, budget: int) -> list[int]:
    """Plain left-to-right: the prefix's last `budget` tokens, no sentinels."""
    return tok.encode(prefix).ids[-budget:]


def line_enders(tok: Tokenizer) -> list[int]:
    """<|endoftext|> and every token whose text holds a newline: decoding stops at any of them."""
    newline = [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i])]
    return [tok.token_to_id("<|endoftext|>"), *newline]


@torch.no_grad()
def first_line(model, tok: Tokenizer, ids: list[int], max_new: int, stop: list[int]) -> str:
    """Greedy decode until a stop token or max_new tokens; return the first generated line."""
    ids_t = torch.tensor([ids], device=model.device)
    out = model.generate(
        ids_t,
        attention_mask=torch.ones_like(ids_t),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=stop,
        begin_suppress_tokens=[tok.token_to_id("<|endoftext|>")],  # the hole is never empty
        pad_token_id=stop[0],
    )
    return tok.decode(out[0, len(ids) :].tolist()).split("\n")[0]


@torch.no_grad()
def middle_loss(model, context: list[int], middle: list[int]) -> float:
    """Mean negative log-likelihood, in nats per token, of `middle` right after `context`."""
    ids = torch.tensor([context + middle], device=model.device)
    logits = model(input_ids=ids).logits[0, len(context) - 1 : -1]
    return torch.nn.functional.cross_entropy(logits, ids[0, len(context) :]).item()


def passes(program: str, timeout: float) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.py"
        path.write_text(program)
        try:
            run = subprocess.run(
                [sys.executable, str(path)], cwd=tmp, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return False
    return run.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, required=True, help="HumanEval-SingleLineInfilling.jsonl.gz"
    )
    parser.add_argument("--model", type=Path, default=Path("fim_lsp/models/demo"))
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per test program")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write per-problem results (JSON)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(args.model / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = model.to(args.device).eval()
    budget = model.config.max_position_embeddings - args.max_new_tokens
    with gzip.open(args.data, "rt") as f:
        rows = [json.loads(line) for line in f][: args.limit]

    stop = line_enders(tok)
    started = time.time()
    results = []
    for row in tqdm(rows, file=sys.stderr, desc="eval"):
        result = {"task_id": row["task_id"]}
        prompts = {
            "fim": spm_ids(tok, row["prompt"], row["suffix"], budget),
            "ar": ar_ids(tok, row["prompt"], budget),
        }
        middle = tok.encode(row["canonical_solution"]).ids[: args.max_new_tokens]
        for mode, ids in prompts.items():
            line = first_line(model, tok, ids, args.max_new_tokens, stop)
            program = (
                row["prompt"]
                + line
                + "\n"
                + row["suffix"]
                + "\n"
                + row["test"]
                + f"\ncheck({row['entry_point']})\n"
            )
            result[mode] = {
                "completion": line,
                "exact": line.rstrip() == row["canonical_solution"].rstrip(),
                "passed": passes(program, args.timeout),
                "middle_loss": middle_loss(model, ids, middle),
            }
        without_suffix = spm_ids(tok, row["prompt"], "", budget)
        result["fim_without_suffix_middle_loss"] = middle_loss(model, without_suffix, middle)
        results.append(result)

    summary = {"problems": len(results), "seconds": round(time.time() - started, 1)}
    for mode in ("fim", "ar"):
        for metric in ("exact", "passed"):
            hits = sum(r[mode][metric] for r in results)
            summary[f"{mode}_{metric}"] = (
                f"{hits}/{len(results)} ({100 * hits / len(results):.1f}%)"
            )
        losses = [r[mode]["middle_loss"] for r in results]
        summary[f"{mode}_middle_loss"] = round(sum(losses) / len(losses), 3)
    losses = [r["fim_without_suffix_middle_loss"] for r in results]
    summary["fim_without_suffix_middle_loss"] = round(sum(losses) / len(losses), 3)
    summary["fim_lower_loss_than_ar"] = sum(
        r["fim"]["middle_loss"] < r["ar"]["middle_loss"] for r in results
    )
    summary["fim_lower_loss_than_without_suffix"] = sum(
        r["fim"]["middle_loss"] < r["fim_without_suffix_middle_loss"] for r in results
    )
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
