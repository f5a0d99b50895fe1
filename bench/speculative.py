"""Prompt-lookup drafting on real code: how often the model accepts the drafts, and what it saves.

    python bench/speculative.py --model demo
    python bench/speculative.py --model .cache/random-fim-neox-1.3b --positions 6 --context 512

Cursors sit a third of the way into lines of held-out code (the standard-library files that the
demo model's training left out, `training/data_manifest.json`). At each, the server's pipeline
(prompt, engine, stops) completes with drafting on and off; the tokens must be identical. Reports
draft acceptance, tokens per decode pass and decode time per token, side by side in one run.
Random weights accept almost nothing: that run shows what failed drafts cost.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.typing_latency import machine  # noqa: E402
from fim_lsp.documents import Cursor  # noqa: E402
from fim_lsp.pipeline import Completer  # noqa: E402
from fim_lsp.settings import Settings  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MANIFEST = ROOT / "training" / "data_manifest.json"


def cursors(count: int, seed: int = 0) -> list[Cursor]:
    """`count` cursors a third of the way into non-blank lines of held-out stdlib files."""
    files = [f["path"] for f in json.loads(MANIFEST.read_text())["files"] if f["split"] == "val"]
    rng = random.Random(seed)
    found: list[Cursor] = []
    while len(found) < count:
        path = STDLIB / rng.choice(files)
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        starts = [i + 1 for i, char in enumerate(text) if char == "\n"]
        start = rng.choice(starts[: len(starts) - 1] or [0])
        line = text[start : text.find("\n", start)]
        if len(line.strip()) < 12:
            continue
        indent = len(line) - len(line.lstrip())
        at = start + indent + (len(line) - indent) // 3
        found.append(Cursor(text[:at], text[at:], "python"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo")
    parser.add_argument("--positions", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    base = Settings(
        model=args.model,
        max_new_tokens=args.max_new_tokens,
        context_length=args.context,
        max_time_ms=0,
        multiline="always",
    )
    completer = Completer.load(base)
    totals = {"on": dict.fromkeys(("tokens", "decode_ms", "steps", "drafted", "accepted"), 0.0)}
    totals["off"] = dict(totals["on"])
    mismatches = 0
    for cursor in cursors(args.positions):
        outputs = {}
        for mode, draft in (("on", args.draft_tokens), ("off", 0)):
            completer.settings = Settings(**{**vars(base), "draft_tokens": draft})
            completer.backend.cache.clear()  # type: ignore[attr-defined]  # both start from the same cold cache
            done = completer.complete(cursor)
            outputs[mode] = done.raw
            total = totals[mode]
            total["tokens"] += done.generated_tokens
            total["decode_ms"] += done.timings_ms.get("decode", 0.0)
            # Each decode pass yields one token plus the draft tokens it accepted.
            total["steps"] += max(0, done.generated_tokens - 1 - done.accepted_tokens)
            total["drafted"] += done.drafted_tokens
            total["accepted"] += done.accepted_tokens
        mismatches += outputs["on"] != outputs["off"]
    result = {
        "machine": machine(),
        "model": args.model,
        "precision": completer.about["quantization"],
        "positions": args.positions,
        "max_new_tokens": args.max_new_tokens,
        "draft_tokens": args.draft_tokens,
        "mismatches": mismatches,
        "totals": totals,
    }
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "speculative-" + Path(args.model).name
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"{name}.md").write_text(text)
    print(text)


def report(result: dict) -> str:
    on, off = result["totals"]["on"], result["totals"]["off"]

    def per_token(total: dict) -> float:
        return total["decode_ms"] / max(1.0, total["tokens"] - result["positions"])

    m = result["machine"]
    acceptance = on["accepted"] / on["drafted"] if on["drafted"] else 0.0
    return "\n".join(
        [
            f"# Prompt-lookup drafting: {result['model']}",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, transformers "
            f"{m['transformers']}. {result['precision']}.",
            f"{result['positions']} cursors in held-out stdlib code, up to {result['max_new_tokens']} "
            f"tokens each, greedy, drafts of up to {result['draft_tokens']} tokens.",
            "",
            "| drafting | tokens | decode passes | tokens per pass | decode ms per token |",
            "|---|---|---|---|---|",
            *(
                f"| {mode} | {t['tokens']:.0f} | {t['steps']:.0f} | "
                f"{(t['tokens'] - result['positions']) / max(1.0, t['steps']):.2f} | {per_token(t):.1f} |"
                for mode, t in (("on", on), ("off", off))
            ),
            "",
            f"- drafts: {on['drafted']:.0f} tokens proposed, {on['accepted']:.0f} accepted "
            f"({acceptance:.0%})",
            f"- decode time per token, off / on: **{per_token(off) / per_token(on):.2f}x**",
            f"- completions that differ between on and off: {result['mismatches']} (must be 0)",
            "",
        ]
    )


if __name__ == "__main__":
    main()
