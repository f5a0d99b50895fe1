"""Peak and final memory of loading a model through the engine, as the server does; and with
--starts, a first start (weight cache empty) against a second (weight cache warm).

    python bench/load_memory.py [--model FOLDER] [--quantization int8|none]
    python bench/load_memory.py --starts [--model FOLDER] [--report FILE.md]
    python bench/load_memory.py --side-by-side [--model FOLDER] [--rounds N]

Defaults to the full-size random model that bench/typing_latency.py builds in .cache/.

--starts runs two fresh processes one after the other, each loading as the server does
(`Completer.load`: the tokenizer, the int8 layers chosen as at any start, the engine) and then
answering one completion: the first with this model's weight cache entry deleted, so that it
quantizes and writes the entry; the second reading the entry. Each reports the time from its
process start (before the interpreter runs) to the engine ready and to the completer ready,
its first completion, its peak RSS (ru_maxrss) while loading, and its decode speed (ms per
token, the best of three greedy runs of 32 tokens without drafts) to show that weights read
from the cache decode no slower than weights quantized in the process.

--side-by-side loads the model twice in one process, quantized now and from the weight cache,
and times greedy decoding (32 tokens after a 200-token prompt, no drafts) on each in turn, a
round at a time: the fairer comparison of decode speed on a machine that other work shares.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fim_lsp.engine import load_engine  # noqa: E402

RANDOM_MODEL = ROOT / ".cache" / "random-fim-neox-1.3b"
# The first completion: in this file, this line removed but for its indentation, the cursor after
# it (bench/typing_latency.py's first scenario, before the first keystroke).
SCENARIO = ("json/encoder.py", "        if self.check_circular:")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(RANDOM_MODEL))
    parser.add_argument("--quantization", default="int8", choices=["int8", "none"])
    parser.add_argument("--starts", action="store_true", help="a first and a second start")
    parser.add_argument("--report", type=Path, help="with --starts: also write this markdown")
    parser.add_argument("--side-by-side", action="store_true", help="decode: quantized vs cached")
    parser.add_argument("--rounds", type=int, default=10, help="with --side-by-side")
    parser.add_argument("--start", choices=["first", "second"], help=argparse.SUPPRESS)
    parser.add_argument("--since", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.start:
        print(json.dumps(one_start(args)))
    elif args.starts:
        starts(args)
    elif args.side_by_side:
        side_by_side(args)
    else:
        in_process(args)


def in_process(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    engine = load_engine(args.model, 50280, device="cpu", quantization=args.quantization)
    seconds = time.perf_counter() - started
    print(
        f"{engine.precision.reason}: loaded in {seconds:.1f} s, RSS {rss_gb():.2f} GB, "
        f"peak {peak_gb():.2f} GB"
    )


def side_by_side(args: argparse.Namespace) -> None:
    import os
    import statistics

    from fim_lsp.backend import GenerationOptions
    from fim_lsp.engine import weight_cache

    def loaded(cache: str, messages: list[str]):
        os.environ[weight_cache.SWITCH] = cache
        return load_engine(
            args.model, 50280, "cpu", args.quantization, lambda m, p: messages.append(m)
        )

    loaded("on", [])  # writes the entry where there is none
    engines = {"quantized now": loaded("off", [])}
    messages: list[str] = []
    engines["from the cache"] = loaded("on", messages)
    if not any("from the weight cache" in message for message in messages):
        sys.exit(f"the second load did not read the weight cache: {messages}")
    prompt = list(range(1000, 1200))
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            generation = engine.generate(prompt, GenerationOptions(32, -1, 0.0, 0, False, 1024))
            times[name].append(generation.timings_ms["decode"] / (len(generation.ids) - 1))
    print("| decode (ms/token) | best | median | all |\n|---|---|---|---|")
    for name, runs in times.items():
        every = ", ".join(f"{ms:.1f}" for ms in runs)
        print(f"| {name} | {min(runs):.1f} | {statistics.median(runs):.1f} | {every} |")


def rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1e6


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def starts(args: argparse.Namespace) -> None:
    results = []
    for start in ("first", "second"):
        since = time.time()
        command = [sys.executable, __file__, "--start", start, "--since", str(since)]
        command += ["--model", args.model, "--quantization", args.quantization]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the {start} start failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{start} start: {json.dumps(results[-1])}", file=sys.stderr)
    table = markdown(results, args)
    print(table)
    if args.report:
        args.report.write_text(table)


def one_start(args: argparse.Namespace) -> dict:
    """One start in this fresh process (--since: when its parent started it)."""
    from lsprotocol import types

    from fim_lsp.backend import GenerationOptions
    from fim_lsp.documents import Document
    from fim_lsp.engine import choose, weight_cache
    from fim_lsp.pipeline import Completer
    from fim_lsp.settings import Settings

    imported = time.time()
    settings = Settings(model=args.model, device="cpu", quantization=args.quantization)
    if args.start == "first":
        precision = choose(settings.device, settings.quantization)
        entry = weight_cache.entry_for(Path(args.model), precision, None)
        if entry is not None:
            entry.path.unlink(missing_ok=True)
    marks: dict[str, float] = {}
    seen: list[str] = []

    def progress(message: str, percentage: int | None) -> None:
        if message == "model ready":
            marks["engine"] = time.time()
            marks["peak_at_ready"] = peak_gb()
        elif message.startswith("caching the quantized weights"):
            marks["caching"] = time.time()
        seen.append(message)

    completer = Completer.load(settings, progress)
    ready = time.time()
    peak_loading = peak_gb()
    lines = (Path(sysconfig.get_paths()["stdlib"]) / SCENARIO[0]).read_text().split("\n")
    line = lines.index(SCENARIO[1])
    indent = len(SCENARIO[1]) - len(SCENARIO[1].lstrip())
    lines[line] = SCENARIO[1][:indent]  # the line to type, at its indentation
    document = Document("\n".join(lines), "python")
    place = document.place(types.Position(line, indent), "utf-16")
    completion = completer.complete(document.cursor(place))
    answered = time.time()
    engine = completer.backend
    prompt = completion.prompt_ids[-200:]
    ms_per_token = []
    for _ in range(3):
        options = GenerationOptions(32, -1, 0.0, 0, False, 1024, None)
        generation = engine.generate(prompt, options)  # type: ignore[call-arg]
        ms_per_token.append(generation.timings_ms["decode"] / (len(generation.ids) - 1))
    return {
        "start": args.start,
        "cached": any("from the weight cache" in message for message in seen)
        and not any("caching the quantized" in message for message in seen),
        "about": completer.about,
        "imports_s": imported - args.since,
        "engine_ready_s": marks["engine"] - args.since,
        "writing_entry_s": marks["engine"] - marks.get("caching", marks["engine"]),
        "ready_s": ready - args.since,
        "first_completion_s": answered - args.since,
        "first_completion_ms": completion.timings_ms.get("total"),
        "peak_rss_at_engine_ready_gb": marks["peak_at_ready"],
        "peak_rss_loading_gb": peak_loading,
        "rss_after_gb": rss_gb(),
        "decode_ms_per_token": min(ms_per_token),
        "decode_ms_per_token_runs": ms_per_token,
    }


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    rows = [
        (
            "engine ready, tokenizer loaded before (s from process start)",
            "engine_ready_s",
            "{:.2f}",
        ),
        ("  of which writing the cache entry (s)", "writing_entry_s", "{:.2f}"),
        ("completer ready (s)", "ready_s", "{:.2f}"),
        ("first completion answered (s)", "first_completion_s", "{:.2f}"),
        ("  of which the completion itself (ms)", "first_completion_ms", "{:.0f}"),
        ("imports done (s)", "imports_s", "{:.2f}"),
        ("peak RSS at engine ready (GB)", "peak_rss_at_engine_ready_gb", "{:.2f}"),
        ("peak RSS at completer ready (GB)", "peak_rss_loading_gb", "{:.2f}"),
        ("RSS after the decode runs (GB)", "rss_after_gb", "{:.2f}"),
        ("decode, best of 3 (ms/token)", "decode_ms_per_token", "{:.1f}"),
    ]
    lines = [
        f"Model: {args.model} ({results[0]['about'].get('quantization')}, "
        f"{results[0]['about'].get('decode_steps')}); {platform.processor() or platform.machine()}",
        "",
        "| | first start (cache empty) | second start (cache warm) |",
        "|---|---|---|",
        f"| weights | {'cache' if results[0]['cached'] else 'quantized'} | "
        f"{'cache' if results[1]['cached'] else 'quantized'} |",
    ]
    for title, key, number in rows:
        lines.append(f"| {title} | " + " | ".join(number.format(r[key]) for r in results) + " |")
    runs = [", ".join(f"{ms:.1f}" for ms in r["decode_ms_per_token_runs"]) for r in results]
    lines.append(f"| decode runs (ms/token) | {runs[0]} | {runs[1]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
