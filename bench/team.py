"""Team server: N users typing at once, each through a fim-lsp process of their own, against one
vLLM server; beside it the same replay with every user on their local engine.

    fim-lsp serve-vllm --model MODEL --api-key KEY             # on the GPU box (README: A shared GPU server)
    FIM_LSP_API_KEY=KEY python bench/team.py --url http://gpu-box:8000 --model MODEL
    python bench/team.py --url ... --model MODEL --no-local    # the team server alone

MODEL is the same hub id or folder on both sides (each fim-lsp process reads its tokenizer from
it, and loads it for the local replay). A random model with FIM-NeoX-1.3B's dimensions serves as
well as the real one (speed does not depend on weight values): `python tests/tiny_model.py --full
FOLDER` builds one.

Each user is a real `fim-lsp serve` over stdio, as an editor starts it: it opens a standard
library file (bench/typing_latency.py's scenarios, in turn) and retypes a line of it, one key at
a time: a didChange and an inline completion request per key, the next key --pause seconds after
the answer. Team: `--backend URL --fallback none` and a cache salt of its own (as each user has);
local: `--backend local` with the weights in --local-quantization (by default fp32, as the server
runs them, so that both replays generate the same tokens). Every answer goes through the server's
gate, prompt, stop rules and post-processing as in an editor.

Per backend and number of users: keystroke-to-answer p50/p95 (measured by the client),
keystroke-to-first-token p50/p95 (the answer's time less the server's decoding after its first
token, from the server's `completion` log line), the share of prompt tokens served from a cache
(from the same lines; for the team server also from vLLM's own counters), and answers per second.
Writes bench/out/team.md and team.json.
"""

from __future__ import annotations

import argparse
import itertools
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
from fim_lsp.serve_vllm import TESTED  # noqa: E402
from fim_lsp.team import TeamBackend  # noqa: E402
from tests.reliability.wire import (  # noqa: E402
    StdioServer,
    did_open,
    initialize,
    inline,
    notification,
)

SERVER = [sys.executable, "-m", "fim_lsp", "serve"]
READY_TIMEOUT_S = 600  # N local engines loading at once on a small machine


@dataclass
class Keystroke:
    user: int
    answer_ms: float  # keystroke to the answer: request, gate, prompt, prefill, decode, reply
    first_token_ms: float  # keystroke to the first token: the answer less decoding after it
    prompt_tokens: int
    cached_tokens: int
    generated_tokens: int
    stop_reason: str  # "typed-through" and "speculated": answered without running the model


WITHOUT_A_RUN = ("typed-through", "speculated")


class User:
    """One simulated user: a fim-lsp process of their own, a file, and a line to retype."""

    def __init__(self, number: int, flags: list[str], log: Path):
        self.number = number
        relative, self.typed = SCENARIOS[number % len(SCENARIOS)]
        self.source = (STDLIB / relative).read_text()
        self.uri = f"file:///bench/user{number}/{relative}"
        self.server = StdioServer(log, *flags, command=SERVER)
        self.ids = itertools.count(1)

    def start(self) -> None:
        msg_id = next(self.ids)
        self.server.send(initialize(msg_id))
        self.server.answer(msg_id, timeout=READY_TIMEOUT_S)
        self.server.send(notification("initialized", {}))
        self.server.wait_ready(self.ids, timeout=READY_TIMEOUT_S)
        self.server.send(did_open(self.uri, self.source))

    def type_line(self, keystrokes: int, pause_s: float) -> list[Keystroke]:
        lines = self.source.split("\n")
        line = lines.index(self.typed)
        indent = len(self.typed) - len(self.typed.lstrip())
        done: list[Keystroke] = []
        for count in range(1, min(keystrokes, len(self.typed) - indent) + 1):
            typed = self.typed[: indent + count]
            text = "\n".join([*lines[:line], typed, *lines[line + 1 :]])
            change = {
                "textDocument": {"uri": self.uri, "version": count + 1},
                "contentChanges": [{"text": text}],
            }
            logged = len(self.completions())
            started = time.perf_counter()
            self.server.send(notification("textDocument/didChange", change))
            msg_id = next(self.ids)
            self.server.send(inline(msg_id, self.uri, line, len(typed)))
            answer = self.server.answer(msg_id, timeout=120)
            answer_ms = (time.perf_counter() - started) * 1000
            if "error" in answer:
                raise SystemExit(f"user {self.number}: {answer['error']}")
            # The server logs each answer just before it sends it; a gated key logs nothing.
            if len(stats := self.completions()) > logged:
                timings = stats[-1]["timings_ms"]
                after_first = timings.get("total", 0.0) - timings.get("prefill", 0.0)
                done.append(
                    Keystroke(
                        self.number,
                        answer_ms=answer_ms,
                        first_token_ms=answer_ms - max(0.0, after_first),
                        prompt_tokens=stats[-1]["prompt_tokens"],
                        cached_tokens=stats[-1]["cached_tokens"],
                        generated_tokens=stats[-1]["generated_tokens"],
                        stop_reason=stats[-1]["stop_reason"],
                    )
                )
            time.sleep(pause_s)
        return done

    def completions(self) -> list[dict]:
        """The server's `completion {...}` log lines so far, parsed."""
        with self.server.arrived:
            messages = [n["params"]["message"] for n in self.server.notifications
                        if n.get("method") == "window/logMessage"]  # fmt: skip
        return [json.loads(m.split(" ", 1)[1]) for m in messages if m.startswith("completion {")]

    def stop(self) -> None:
        self.server.close()


def flags(args: argparse.Namespace, backend: str, salt: str) -> list[str]:
    common = [
        "--model", args.model, "--max-new-tokens", str(args.max_new_tokens),
        "--context-length", str(args.context + args.max_new_tokens),
        "--max-time-ms", "0", "--debounce-ms", "0",
    ]  # fmt: skip
    if backend == "team":
        return [*common, "--backend", args.url, "--fallback", "none", "--cache-salt", salt]
    return [*common, "--backend", "local", "--quantization", args.local_quantization]


def run_users(
    count: int, backend: str, args: argparse.Namespace, round_: int
) -> tuple[list[Keystroke], float]:
    """`count` users typing at once on `backend`; their keystrokes and the typing's wall time."""
    logs = args.out / "team-logs"
    logs.mkdir(parents=True, exist_ok=True)
    users = [
        User(n, flags(args, backend, f"bench-{os.getpid()}-{round_}-{n}"),
             logs / f"{backend}-{count}-user{n}.log")
        for n in range(count)
    ]  # fmt: skip
    try:
        for user in users:
            user.start()
        results: list[list[Keystroke]] = [[] for _ in users]
        failures: list[BaseException] = []
        barrier = threading.Barrier(count)

        def type_(user: User) -> None:
            barrier.wait()
            try:
                results[user.number] = user.type_line(args.keystrokes, args.pause)
            except (AssertionError, SystemExit) as error:  # unanswered, or an error answer
                failures.append(error)

        threads = [threading.Thread(target=type_, args=(user,)) for user in users]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall_s = time.perf_counter() - started
    finally:
        for user in users:
            user.stop()
    if failures:
        raise SystemExit(f"{len(failures)} of {count} users failed on {backend}: {failures[0]}")
    return [keystroke for done in results for keystroke in done], wall_s


def server_cache_counters(server: TeamBackend) -> tuple[float, float]:
    """The server's prefix-cache hits and queries so far, in tokens (vLLM's /metrics)."""
    text = server.client.get("/metrics").text

    def total(name: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
        )

    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


def bench(args: argparse.Namespace) -> dict:
    server = TeamBackend(args.url) if args.url else None
    served = server.served_models() if server else []
    version = server.client.get("/version").json().get("version", "?") if server else "-"
    backends = (["team"] if server else []) + (["local"] if args.local else [])
    if not backends:
        raise SystemExit("nothing to replay: give --url, or leave --local on")
    rows = []
    for round_, (count, backend) in enumerate(itertools.product(args.users, backends)):
        print(f"{count} users typing, {backend}", file=sys.stderr)
        share = None
        if server is not None and backend == "team":
            hits, queries = server_cache_counters(server)
        keystrokes, wall_s = run_users(count, backend, args, round_)
        if server is not None and backend == "team":
            hits_after, queries_after = server_cache_counters(server)
            share = (hits_after - hits) / max(1.0, queries_after - queries)
        rows.append(
            {
                "users": count,
                "backend": backend,
                "wall_s": wall_s,
                "server_cache_share": share,
                "keystrokes": [asdict(keystroke) for keystroke in keystrokes],
            }
        )
    return {
        "url": args.url,
        "served": [asdict(model) for model in served],
        "vllm": version,
        "client": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "local_quantization": args.local_quantization,
        "context": args.context,
        "max_new_tokens": args.max_new_tokens,
        "keystrokes": args.keystrokes,
        "pause_s": args.pause,
        "rows": rows,
    }


def report(result: dict) -> str:
    lines = [
        "# Team server: users typing at once, each through fim-lsp, against one vLLM; and on "
        "their local engines",
        "",
        f"Server: {result['url'] or 'none'}, vLLM {result['vllm']}, serving "
        f"{', '.join(m['name'] for m in result['served']) or '-'}; client: {result['client']}; model "
        f"{result['model']} (local engine: quantization {result['local_quantization']}). Up to "
        f"{result['context']} prompt tokens, at most {result['max_new_tokens']} tokens per "
        f"answer, {result['keystrokes']} keys per user, {result['pause_s'] * 1000:.0f} ms between "
        "an answer and the next key.",
        "",
        "| users | backend | keys answered | (without a model run) | prompt tokens p50 "
        "| answer p50 ms | p95 ms | first token p50 ms | p95 ms | prompt tokens from cache "
        "| (server counters) | answers/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        done = row["keystrokes"]
        runs = [k for k in done if k["stop_reason"] not in WITHOUT_A_RUN]
        first = [k["first_token_ms"] for k in runs]
        answer = [k["answer_ms"] for k in done]
        share = sum(k["cached_tokens"] for k in runs) / max(
            1, sum(k["prompt_tokens"] for k in runs)
        )
        counters = row["server_cache_share"]
        lines.append(
            f"| {row['users']} | {row['backend']} | {len(done)} | {len(done) - len(runs)} "
            f"| {percentile([k['prompt_tokens'] for k in runs], 0.5):.0f} "
            f"| {percentile(answer, 0.5):.0f} | {percentile(answer, 0.95):.0f} "
            f"| {percentile(first, 0.5):.0f} | {percentile(first, 0.95):.0f} | {share:.0%} "
            f"| {'-' if counters is None else f'{counters:.0%}'} "
            f"| {len(done) / row['wall_s']:.1f} |"
        )
    lines += [
        "",
        "Answer: from sending the keystroke's didChange to the inline completion's answer, as an "
        "editor waits for it, every answer counted; the rest over the answers that ran the "
        "model (not those typed through a shown suggestion or speculated while idle). First "
        "token: the answer less the server's decoding after the first token (its log line). "
        "The first key of each user is a cold prompt; the others append to "
        "it and reuse the cache (the server's prefix cache; the local engine's KV cache). "
        f"Tested vLLM builds: {TESTED}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", help="the vLLM server (FIM_LSP_API_KEY: its key); none: local only"
    )
    parser.add_argument("--model", required=True, help="hub id or folder, on both sides")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--local", action=argparse.BooleanOptionalAction, default=True,
                        help="also replay with every user on their local engine")  # fmt: skip
    parser.add_argument("--local-quantization", default="none", choices=["none", "int8"])
    parser.add_argument("--context", type=int, default=1000, help="prompt tokens around the cursor")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--keystrokes", type=int, default=24, help="per user")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds after each answer")
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
