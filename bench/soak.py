"""Simulated editing through the real server over stdio for N minutes: memory and latency per minute.

    python bench/soak.py                          # 60 minutes on the demo model
    python bench/soak.py --minutes 10
    python bench/soak.py --model PATH --quantization int8
    python bench/soak.py --report bench/reports/soak-DATE.md
    python bench/soak.py --report-only --out DIR  # the report again from DIR/soak.json

A user types in several real source files (standard library modules): a line is cleared and
typed back a key at a time, each key a didChange and an inline completion request. Most requests
are waited for, as when the user reads the suggestion; some are superseded by the next key;
some are cancelled with $/cancelRequest as the next key comes, as VS Code does. The user moves to
other lines and files, opens and closes documents, and changes live settings now and then, and
stops to think for 2-8 s after a tenth of the keys (a typist's pace, not a stress test: about a
quarter of a core with the demo model). A status request every few seconds shows whether the
event loop ever stalls.

Every request must be answered exactly once. Per minute: the server's resident memory, request
latencies and what became of the requests. Verdict: RSS growth from the end of the warm-up to the
end (goal under 5%) and unanswered requests (goal 0). Writes bench/out/soak.md and soak.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.typing_latency import cpu_name  # noqa: E402
from tests.reliability.editing import Document, Editor, p99, stdlib_files  # noqa: E402
from tests.reliability.wire import (  # noqa: E402
    StdioServer,
    initialize,
    key,
    notification,
    request,
)

GOAL_GROWTH_PERCENT = 5.0
OPEN_DOCUMENTS = 6  # kept open at a time; the oldest is closed when a new one opens
OPEN_EVERY_S = 45.0  # on average
CONFIGURE_EVERY_S = 90.0  # on average
STATUS_EVERY_S = 5.0
# What the user does after a key (weights): waits for the suggestion, types on before it comes
# (the server supersedes the request), or types on and the editor cancels the request.
AFTER_KEY = {"waited": 60, "superseded": 25, "cancelled": 15}
# Of keys: the user stops to think or read for THINK_S seconds (a typist's pauses; they keep
# the soak's load that of one user, about a quarter of a core with the demo model).
THINK_SHARE = 0.1
THINK_S = (2.0, 8.0)
MOVE_SHARE = 0.03  # of keys: the cursor jumps to another line
SWITCH_SHARE = 0.02  # of keys: to another open document
LIVE_SETTINGS: dict[str, list[object]] = {
    "maxNewTokens": [16, 32, 64],
    "multiline": ["auto", "never", "always"],
    "debounceMs": [0, 30, 60],
}
ANSWER_TIMEOUT_S = 60.0


@dataclass
class Minute:
    minute: int
    rss_mib: float = 0.0  # at the end of the minute
    rss_max_mib: float = 0.0
    cpu_cores: float = 0.0  # the server's CPU time in the minute / its length
    keys: int = 0
    opened: int = 0
    closed: int = 0
    settings: list[str] = field(default_factory=list)
    requests: list[int] = field(default_factory=list)  # ids of the requests sent this minute
    status_ms: list[float] = field(default_factory=list)


class Typist:
    """The simulated user: decides each next action and sends it through an `Editor`."""

    def __init__(
        self, server: StdioServer, rng: random.Random, files: list[Path], think_share: float
    ) -> None:
        self.server = server
        self.think_share = think_share
        self.rng = rng
        self.editor = Editor(server, rng)
        self.files = files
        self.opened = 0  # documents opened so far: each gets a URI of its own
        self.ids = 0
        self.intent: dict[tuple[str, object], str] = {}  # request key -> AFTER_KEY's choice
        self.current: Document = self.open()
        for _ in range(OPEN_DOCUMENTS - 1):
            self.open()

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    def open(self) -> Document:
        """A new document (a fresh URI, so that per-document state must be freed on close)."""
        path = self.files[self.opened % len(self.files)]
        self.opened += 1
        return self.editor.open(path, uri=f"file:///soak/{self.opened}/{path.name}")

    def churn(self, minute: Minute) -> None:
        """Close the least recently opened document other than the current one; open another."""
        oldest = next(d for d in self.editor.documents.values() if d is not self.current)
        self.editor.close(oldest)
        self.open()
        minute.closed += 1
        minute.opened += 1

    def configure(self, minute: Minute) -> None:
        name = self.rng.choice(list(LIVE_SETTINGS))
        value = self.rng.choice(LIVE_SETTINGS[name])
        self.editor.configure(**{name: value})
        minute.settings.append(f"{name}={value}")

    def key(self, minute: Minute) -> None:
        """One key, its request, and what the user does next."""
        if self.rng.random() < SWITCH_SHARE:
            self.current = self.rng.choice(list(self.editor.documents.values()))
        if self.rng.random() < MOVE_SHARE:
            self.editor.move(self.current)
        self.editor.type_key(self.current)
        msg_id = self.next_id()
        self.editor.request(msg_id, self.current)
        intent = self.rng.choices(list(AFTER_KEY), weights=list(AFTER_KEY.values()))[0]
        self.intent[key(msg_id)] = intent
        minute.keys += 1
        minute.requests.append(msg_id)
        if intent == "waited":
            self.server.wait(lambda: key(msg_id) in self.server.answers, ANSWER_TIMEOUT_S)
            time.sleep(self.rng.uniform(0.1, 1.0))  # reading the suggestion
        elif intent == "superseded":
            time.sleep(self.rng.uniform(0.03, 0.2))  # a typing gap
        else:
            time.sleep(self.rng.uniform(0.03, 0.2))
            self.editor.cancel(msg_id)
        if self.rng.random() < self.think_share:
            time.sleep(self.rng.uniform(*THINK_S))

    def status(self, minute: Minute) -> None:
        """The status request: answered by the event loop alone, so its latency shows stalls."""
        msg_id = f"status-{self.next_id()}"
        sent = time.monotonic()
        answer = self.server.call(msg_id, "fimLsp/status", timeout=ANSWER_TIMEOUT_S)
        assert "result" in answer, answer
        minute.status_ms.append((self.server.answered_at[key(msg_id)] - sent) * 1000)


def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    command = [sys.executable, "-m", "fim_lsp", "serve", "--model", args.model,
               "--quantization", args.quantization, "--cache-memory-mb", str(args.cache_memory_mb)]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    with StdioServer(args.out / "soak-server.log", command=command) as server:
        server.send(initialize("init"), notification("initialized", {}))
        server.answer("init")
        server.wait_ready(iter(range(10**9, 10**9 + 10**6)), timeout=600)
        started_rss = server.rss_mib()
        typist = Typist(server, rng, stdlib_files(args.files, rng), args.think_share)
        minutes = run(typist, args.minutes * 60)
        answered = typist.editor.wait_for_answers(timeout=ANSWER_TIMEOUT_S)
        server.send(request("shutdown", "shutdown"), notification("exit"))
        exit_code = server.exit_code(timeout=30)
    log = (args.out / "soak-server.log").read_text(errors="replace")
    return {
        "command": " ".join(sys.argv),
        "model": args.model,
        "quantization": args.quantization,
        "cache_memory_mb": args.cache_memory_mb,
        "seed": args.seed,
        "think_share": args.think_share,
        "warm_up_minutes": args.warm_up,
        "machine": machine(load),
        "rss_ready_mib": started_rss,
        "all_answered_in_time": answered,
        "exit_code": exit_code,
        "tracebacks": log.count("Traceback"),
        "minutes": [summary(minute, typist) for minute in minutes],
        "totals": totals(typist),
    }


def run(typist: Typist, seconds: float) -> list[Minute]:
    """Type for `seconds`; a Minute per minute of it."""
    rng, server = typist.rng, typist.server
    started = time.monotonic()
    minutes = [Minute(0)]
    next_status = started
    next_open = started + rng.expovariate(1 / OPEN_EVERY_S)
    next_configure = started + rng.expovariate(1 / CONFIGURE_EVERY_S)

    cpu_at = [(started, cpu_seconds(server.process.pid))]

    def sample_cpu() -> None:
        now, cpu = time.monotonic(), cpu_seconds(server.process.pid)
        minutes[-1].cpu_cores = (cpu - cpu_at[-1][1]) / (now - cpu_at[-1][0])
        cpu_at.append((now, cpu))

    def sample_rss() -> None:
        rss = server.rss_mib()
        minutes[-1].rss_mib = rss
        minutes[-1].rss_max_mib = max(minutes[-1].rss_max_mib, rss)

    while (now := time.monotonic()) < started + seconds:
        if now >= started + 60 * len(minutes):
            sample_rss()
            sample_cpu()
            print(f"minute {len(minutes)}: RSS {minutes[-1].rss_mib:.1f} MiB, "
                  f"CPU {minutes[-1].cpu_cores:.2f} cores", file=sys.stderr, flush=True)  # fmt: skip
            minutes.append(Minute(len(minutes)))
        minute = minutes[-1]
        if now >= next_status:
            typist.status(minute)
            sample_rss()
            next_status = now + STATUS_EVERY_S
        if now >= next_open:
            typist.churn(minute)
            next_open = now + rng.expovariate(1 / OPEN_EVERY_S)
        if now >= next_configure:
            typist.configure(minute)
            next_configure = now + rng.expovariate(1 / CONFIGURE_EVERY_S)
        typist.key(minute)
    sample_rss()
    sample_cpu()
    return minutes


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) a process has used so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(minute: Minute, typist: Typist) -> dict:
    """A minute's figures, once every answer is in."""
    editor = typist.editor
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    for msg_id in minute.requests:
        if key(msg_id) in typist.server.answered_at:
            latencies[typist.intent[key(msg_id)]].append(editor.latency_ms(msg_id))
    figures = asdict(minute)
    del figures["requests"], figures["status_ms"]
    return figures | {
        "requests": len(minute.requests),
        "fates": dict(editor.fates(minute.requests).counts),
        "waited_p50_ms": median(latencies["waited"]),
        "waited_p99_ms": p99(latencies["waited"]),
        "stale_p99_ms": p99(latencies["superseded"] + latencies["cancelled"]),
        "status_max_ms": max(minute.status_ms, default=float("nan")),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def totals(typist: Typist) -> dict:
    fates = typist.editor.fates()
    waited = [
        typist.editor.latency_ms(msg_id)
        for (_, msg_id), intent in typist.intent.items()
        if intent == "waited" and key(msg_id) in typist.server.answered_at
    ]
    return {
        "waited_p50_ms": median(waited),
        "waited_p99_ms": p99(waited),
        "requests": sum(fates.counts.values()),
        "fates": dict(fates.counts),
        "intents": dict(collections.Counter(typist.intent.values())),
        "cancels_sent": len(typist.editor.cancelled),
        "documents_opened": typist.opened,
    }


def machine(load_at_start: tuple[float, float, float]) -> dict:
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_start": load_at_start[0],
        "load_average_end": os.getloadavg()[0],
    }


def verdict(result: dict) -> dict:
    """RSS growth after the warm-up (%), and every request answered once."""
    minutes = result["minutes"]
    warm = minutes[min(result["warm_up_minutes"], len(minutes)) - 1]["rss_mib"]
    end = minutes[-1]["rss_mib"]
    growth = (end - warm) / warm * 100
    fates = result["totals"]["fates"]
    bad = {name: fates.get(name, 0) for name in ("unanswered", "answered twice or more", "error")}
    passed = (
        growth < GOAL_GROWTH_PERCENT
        and not any(bad.values())
        and result["exit_code"] == 0
        and not result["tracebacks"]
    )
    # Growth over the second half of the run: a leak goes on at its pace, memory used by design
    # (a cache budget filling at the user's pace, the allocator's pools) levels off.
    half = minutes[max(len(minutes) // 2 - 1, 0)]["rss_mib"]
    return {"rss_warm_mib": warm, "rss_end_mib": end, "growth_percent": growth,
            "rss_half_mib": half, "second_half_growth_percent": (end - half) / half * 100, **bad,
            "passed": passed}  # fmt: skip


def report(result: dict) -> str:
    m, v, t = result["machine"], result["verdict"], result["totals"]
    warm_up = result["warm_up_minutes"]
    lines = [
        f"# Soak: {len(result['minutes'])} minutes of simulated editing through the real server",
        "",
        f"Command: `{result['command']}` (model {result['model']}, quantization "
        f"{result['quantization']}, cacheMemoryMb {result['cache_memory_mb']}, seed {result['seed']}, "
        f"a pause of "
        f"{THINK_S[0]:.0f}-{THINK_S[1]:.0f} s after {result['think_share']:.0%} of keys).",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average "
        f"{m['load_average_start']:.1f} at the start, {m['load_average_end']:.1f} at the end.",
        "",
        f"**Verdict: {'PASS' if v['passed'] else 'FAIL'}.** RSS after the warm-up (end of minute "
        f"{warm_up} to the end): {v['rss_warm_mib']:.1f} -> {v['rss_end_mib']:.1f} MiB, "
        f"**{v['growth_percent']:+.2f}%** (goal under {GOAL_GROWTH_PERCENT:.0f}%). Requests: "
        f"{t['requests']:,}, **{v['unanswered']} unanswered**, {v['answered twice or more']} "
        f"answered twice or more, {v['error']} errors; server exit code {result['exit_code']}, "
        f"{result['tracebacks']} tracebacks in its log.",
        "",
        f"RSS over the second half (end of minute {max(len(result['minutes']) // 2, 1)} to the "
        f"end): {v['rss_half_mib']:.1f} -> {v['rss_end_mib']:.1f} MiB, "
        f"{v['second_half_growth_percent']:+.2f}% (not part of the verdict: it tells a leak, "
        "which goes on at its pace, from memory used by design that levels off).",
        "",
        f"Latency of the requests the user waited for, whole run: p50 "
        f"**{t['waited_p50_ms']:.0f} ms**, p99 **{t['waited_p99_ms']:.0f} ms**.",
        "",
        f"RSS when the model was ready: {result['rss_ready_mib']:.1f} MiB. Requests by what the "
        f"user did next: {t['intents']}; answers: {t['fates']}; {t['cancels_sent']:,} cancels "
        f"sent; {t['documents_opened']} documents opened.",
        "",
        f"Server CPU: {statistics.mean(row['cpu_cores'] for row in result['minutes']):.2f} "
        "cores on average.",
        "",
        "| minute | RSS MiB (end) | RSS max | CPU cores | keys | waited p50 ms | waited p99 ms "
        "| stale p99 ms | status max ms | suggestions | empty | cancelled | open/close | settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["minutes"]:
        fates = row["fates"]
        lines.append(
            f"| {row['minute'] + 1} | {row['rss_mib']:.1f} | {row['rss_max_mib']:.1f} "
            f"| {row['cpu_cores']:.2f} "
            f"| {row['keys']} | {row['waited_p50_ms']:.0f} | {row['waited_p99_ms']:.0f} "
            f"| {row['stale_p99_ms']:.0f} | {row['status_max_ms']:.0f} "
            f"| {fates.get('suggestion', 0)} | {fates.get('empty', 0)} "
            f"| {fates.get('cancelled', 0)} | {row['opened']}/{row['closed']} "
            f"| {', '.join(row['settings'])} |"
        )
    lines += [
        "",
        "Latencies are from sending a request to its answer. *Waited*: requests the user waited "
        "for (the suggestion a user sees). *Stale*: requests superseded by the next key or "
        "cancelled, answered at once by design. *Status*: `fimLsp/status`, answered by the event "
        "loop alone; its maximum shows the longest stall of the loop.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--warm-up", type=int, default=5, help="minutes before RSS is compared")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--quantization", default="none", choices=["int8", "none"])
    # The KV caches of recent prompts are memory used by design, up to this budget. The demo
    # model's caches take up to a few MB each: 16 MB fills within the warm-up, so that growth
    # after it is not the budget filling (64 MB filled over half an hour: RSS +14.7%,
    # bench/reports/soak-2026-12-03.md).
    parser.add_argument("--cache-memory-mb", type=int, default=16)
    parser.add_argument("--files", type=int, default=24, help="standard library modules typed in")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--think-share", type=float, default=THINK_SHARE,
                        help="share of keys after which the user pauses 2-8 s (0: a stress test)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="folder for soak.json, soak.md and the server's log")  # fmt: skip
    parser.add_argument("--report", type=Path, help="also write the markdown report here")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report again from --out's soak.json")  # fmt: skip
    args = parser.parse_args()
    result = json.loads((args.out / "soak.json").read_text()) if args.report_only else soak(args)
    result["verdict"] = verdict(result)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "soak.md").write_text(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    print(text)
    sys.exit(0 if result["verdict"]["passed"] else 1)


if __name__ == "__main__":
    main()
