"""Team server: N simulated users typing at once against one vLLM server.

    fim-lsp serve-vllm --model MODEL --api-key KEY             # on the GPU box (README: A shared GPU server)
    FIM_LSP_API_KEY=KEY python bench/team.py --url http://gpu-box:8000 --model MODEL

MODEL is the same hub id or folder on both sides (the tokenizer comes from it here). A random
model with FIM-NeoX-1.3B's dimensions serves as well as the real one (speed does not depend on
weight values): `python tests/tiny_model.py --full FOLDER` builds one.

Each user retypes a line of real code (bench/typing_latency.py's scenarios, in turn), one
keystroke every --pause seconds after the previous answer, each with its own cache salt as
fim-lsp sends it. Every keystroke builds its prompt as the server does (gate, SPM prompt within
the budget) and asks the team backend for --max-new-tokens tokens; stop rules are left out, as
random weights make them meaningless, so every answer streams the full count. Reports, per
number of users: keystroke-to-first-token and keystroke-to-answer p50/p95, and the share of
prompt tokens served from the server's prefix cache. Writes bench/out/team.md and team.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.typing_latency import SCENARIOS, STDLIB, percentile  # noqa: E402
from fim_lsp.backend import Backend, BackendUnavailable, GenerationOptions  # noqa: E402
from fim_lsp.documents import Cursor  # noqa: E402
from fim_lsp.pipeline import plan  # noqa: E402
from fim_lsp.prompt import FimTokenizer  # noqa: E402
from fim_lsp.serve_vllm import TESTED  # noqa: E402
from fim_lsp.settings import Settings  # noqa: E402
from fim_lsp.team import TeamBackend  # noqa: E402


@dataclass
class Keystroke:
    user: int
    first_token_ms: float  # keystroke to first token: prompt built, sent, prefilled, streamed back
    answer_ms: float  # keystroke to the last token
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int


@dataclass
class Typist:
    """One simulated user: a file, a line to retype, and a backend of their own."""

    number: int
    source: str
    line: int
    typed: str
    backend: Backend

    def type_line(
        self, tokenizer: FimTokenizer, settings: Settings, keystrokes: int, pause_s: float
    ) -> list[Keystroke]:
        lines = self.source.split("\n")
        indent = self.typed[: len(self.typed) - len(self.typed.lstrip())]
        above, below = "\n".join(lines[: self.line]), "\n".join(lines[self.line + 1 :])
        options = GenerationOptions(settings.max_new_tokens, tokenizer.eot_id)
        done: list[Keystroke] = []
        for count in range(1, keystrokes + 1):
            typed = self.typed[: len(indent) + count]
            started = time.perf_counter()
            cursor = Cursor(f"{above}\n{typed}", f"\n{below}", "python")
            _, prompt = plan(tokenizer, settings, cursor)
            if prompt is not None:  # the gate may say no, as in the server
                generation = self.backend.generate(
                    prompt.ids, options, lambda ids: False, threading.Event()
                )
                answer_ms = (time.perf_counter() - started) * 1000
                prompt_ms = answer_ms - generation.timings_ms["total"]  # gate, prompt building
                done.append(
                    Keystroke(
                        self.number,
                        first_token_ms=prompt_ms + generation.timings_ms["prefill"],
                        answer_ms=answer_ms,
                        prompt_tokens=generation.prompt_tokens,
                        cached_tokens=generation.cached_tokens,
                        generated_tokens=len(generation.ids),
                    )
                )
            time.sleep(pause_s)
        return done


def run_users(
    count: int, args: argparse.Namespace, tokenizer: FimTokenizer, settings: Settings, round_: int
) -> tuple[list[Keystroke], float]:
    """`count` users typing at once; their keystrokes and the wall time of the run."""
    typists = []
    for number in range(count):
        relative, typed = SCENARIOS[number % len(SCENARIOS)]
        source = (STDLIB / relative).read_text()
        salt = f"bench-{os.getpid()}-{round_}-{number}"  # no user reads another's cache
        backend = TeamBackend(
            args.url,
            cache_salt=salt,
            first_token_timeout_s=args.timeout,
            stall_timeout_s=args.timeout,
        )
        typists.append(Typist(number, source, source.split("\n").index(typed), typed, backend))
    results: list[list[Keystroke]] = [[] for _ in typists]
    failures: list[BaseException] = []
    start = threading.Barrier(count)

    def user(typist: Typist) -> None:
        start.wait()
        try:
            results[typist.number] = typist.type_line(
                tokenizer, settings, args.keystrokes, args.pause
            )
        except BackendUnavailable as error:
            failures.append(error)

    threads = [threading.Thread(target=user, args=(typist,)) for typist in typists]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} of {count} users failed: {failures[0]}")
    return [keystroke for done in results for keystroke in done], time.perf_counter() - started


def server_cache_counters(server: TeamBackend) -> tuple[float, float]:
    """The server's prefix-cache hits and queries so far, in tokens (vLLM's /metrics)."""
    text = server.client.get("/metrics").text

    def total(name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )

    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


def bench(args: argparse.Namespace) -> dict:
    tokenizer = FimTokenizer.from_file(model_folder(args.model) / "tokenizer.json")
    settings = Settings(
        context_length=args.context + args.max_new_tokens, max_new_tokens=args.max_new_tokens
    )
    server = TeamBackend(args.url)
    served = server.served_models()
    version = server.client.get("/version").json().get("version", "?")
    rows = []
    for round_, count in enumerate(args.users):
        print(f"{count} users typing", file=sys.stderr)
        hits, queries = server_cache_counters(server)
        keystrokes, wall_s = run_users(count, args, tokenizer, settings, round_)
        hits_after, queries_after = server_cache_counters(server)
        rows.append(
            {
                "users": count,
                "wall_s": wall_s,
                "server_cache_share": (hits_after - hits) / max(1.0, queries_after - queries),
                "keystrokes": [asdict(keystroke) for keystroke in keystrokes],
            }
        )
    return {
        "url": args.url,
        "served": [asdict(model) for model in served],
        "vllm": version,
        "client": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "context": args.context,
        "max_new_tokens": args.max_new_tokens,
        "pause_s": args.pause,
        "rows": rows,
    }


def model_folder(model: str) -> Path:
    from fim_lsp.engine import resolve_model

    return resolve_model(model, tokenizer_only=True)


def report(result: dict) -> str:
    lines = [
        "# Team server: users typing at once against one vLLM",
        "",
        f"Server: {result['url']}, vLLM {result['vllm']}, serving "
        f"{', '.join(m['name'] for m in result['served'])}; client: {result['client']}, "
        f"tokenizer from {result['model']}. Up to {result['context']} prompt tokens, "
        f"{result['max_new_tokens']} tokens per answer, {result['pause_s'] * 1000:.0f} ms between "
        "an answer and the next keystroke.",
        "",
        "| users | keystrokes | prompt tokens p50 | first token p50 ms | p95 ms | answer p50 ms "
        "| p95 ms | prompt tokens from cache (answers) | (server counters) | answers/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        done = row["keystrokes"]
        first = [k["first_token_ms"] for k in done]
        answer = [k["answer_ms"] for k in done]
        prompt_tokens = sum(k["prompt_tokens"] for k in done)
        share = sum(k["cached_tokens"] for k in done) / max(1, prompt_tokens)
        lines.append(
            f"| {row['users']} | {len(done)} "
            f"| {percentile([k['prompt_tokens'] for k in done], 0.5):.0f} "
            f"| {percentile(first, 0.5):.0f} "
            f"| {percentile(first, 0.95):.0f} | {percentile(answer, 0.5):.0f} "
            f"| {percentile(answer, 0.95):.0f} | {share:.0%} | {row['server_cache_share']:.0%} "
            f"| {len(done) / row['wall_s']:.1f} |"
        )
    lines += [
        "",
        "First token: from the keystroke (prompt built by fim-lsp) to the first streamed token. "
        "The first keystroke of each user is a cold prompt; the others append to it and reuse the "
        f"server's prefix cache. Tested vLLM builds: {TESTED}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="the vLLM server (FIM_LSP_API_KEY: its key)")
    parser.add_argument("--model", required=True, help="hub id or folder, for the tokenizer")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--context", type=int, default=1000, help="prompt tokens around the cursor")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--keystrokes", type=int, default=24, help="per user")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds after each answer")
    parser.add_argument("--timeout", type=float, default=30, help="first and next token, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    result = bench(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "team.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "team.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
