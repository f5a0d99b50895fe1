"""An editing session replayed through the real server over stdio: reuse off, today's code and the new one, side by side.

    python bench/editing_session.py --baseline ../baseline   # full: 2 rounds
    python bench/editing_session.py ... --report bench/reports/editing-session-DATE.md
    python bench/editing_session.py --quick                        # a shorter session, one round
    python bench/editing_session.py --model demo --quick           # a smoke run (tests/test_bench.py)

The session (SESSION) edits real standard-library files as a user does: bursts of keystrokes at
one spot, moves to other lines, switches between files, returns to earlier spots, a newline and
an indented line, and accepts: the suggestion shown is applied as an editor applies it (didChange
putting its text over its range) and the next one is asked for at once, as VS Code does. One
inline completion request per keystroke, answered before the next key; `--pause` seconds between
keys, `--think` seconds before a move, a switch or an accept (reading the suggestion).

Each setup (SETUPS) runs its own server: this checkout with `cacheReuse` off (every keystroke
prefills its whole prompt), today's code (`--baseline`: a folder, or a git revision extracted
into .cache/; by default bc9e029, before the caches of several prompts and the bounded cold
answer; it loads through transformers' low-memory path, which needs `pip install accelerate`),
and this checkout as it is. The setups play each step of the session in turn (the order
rotates), while the other servers are stopped (SIGSTOP): each server lives the session's own
timeline, pauses included (in which it may work in the background), none takes the CPU from
another's measurement, and the machine's drift hits all of them alike. After the session each
server is restarted: ready time on a second start, and the first keystroke after it.

The machine's floors are sampled between steps, with every server stopped: the memory read rate
(bench/floor.py) and the int8 GEMM rates of [256, 2048] x [2048, 2048] (torch._int_mm and the
engine's own kernel). The full-size random model (speed does not depend on weight values) is
given the 2,048 positions FIM-NeoX-1.3B was trained on; each server uses its own default context
length within them (today's 2048, this checkout's 1024 on a CPU) unless `--context-length` sets
one for all. Writes bench/out/editing_session.md and .json (`--report`: the markdown also
there), and each server's log in bench/out/editing_session-logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lsprotocol import types

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.floor import ReadRate, int8_gemm_rates, layer_weights  # noqa: E402
from bench.typing_latency import (  # noqa: E402
    STDLIB,
    BenchClient,
    machine,
    percentile,
    random_model,
    server_peak_rss_gb,
    start_server,
)
from fim_lsp.documents import Document, Place, content  # noqa: E402
from fim_lsp.settings import Settings  # noqa: E402

BASELINE = "bc9e029"  # the landed code before #18's caches of several prompts and cold budget
UTF16 = "utf-16"  # the position encoding a client that offers none gets
GEMM_ROWS = 256  # tokens of a prefill chunk (engine/generate.py's PREFILL_CHUNK)

# Where the user types: (file in the standard library, a line of it that the user retypes).
SPOTS = {
    "wrap": ("textwrap.py", "        chunks = self._split_chunks(text)"),
    "wrap_chunks": ("textwrap.py", "        lines = []"),
    "dedent": ("textwrap.py", "    margin = None"),
    "circular": ("json/encoder.py", "        if self.check_circular:"),
    "items": ("json/encoder.py", "        for key, value in items:"),
    "bisect": ("bisect.py", "            if key(a[mid]) < x:"),
    "insort": ("bisect.py", "        lo = bisect_left(a, key(x), lo, hi, key=key)"),
}
NEXT_LINE = "result = self.combine(chunks, width=None)"  # typed after a newline
# A spot's name: a burst of keystrokes there; "accept": take the suggestion shown (typing on
# until one shows); "newline": Enter, then a burst on the new, indented line.
SESSION = [
    "wrap", "accept", "newline",
    "wrap_chunks",  # a move to another line
    "circular", "newline",  # a switch to another file
    "items", "accept",
    "wrap",  # back to the first file and spot
    "wrap_chunks",  # a return within the file
    "bisect", "accept",  # a small file (about 1,000 tokens)
    "insort",
    "items",
    "circular",
    "dedent",
]  # fmt: skip
QUICK_SESSION = ["wrap", "accept", "newline", "wrap_chunks", "circular", "wrap", "wrap_chunks"]
ACCEPT_TRIES = 3  # keystrokes typed, at most, until a suggestion shows to accept

# What each kind of request is, for the report; the first key of a burst has the burst's kind.
KINDS = {
    "first": "first key of the session",
    "key": "keystroke at the same spot (warm)",
    "move": "first key after a move to a new line",
    "return": "first key after a return to an earlier line",
    "switch": "first key after a switch to another file",
    "switch back": "first key after a switch back to an earlier spot",
    "newline": "Enter (a new, indented line)",
    "accept": "right after an accept",
    "restart": "first key after a restart",
}


@dataclass(frozen=True)
class Setup:
    name: str
    what: str  # for the report
    checkout: Path  # whose fim_lsp runs
    options: dict  # initializationOptions beside the common ones
    keys: int  # keystrokes per burst
    # Only the bursts' first keys (and the restart), no accept or newline: with reuse off
    # every request costs its whole prompt alike.
    bursts_only: bool = False


@dataclass
class Answer:
    setup: str
    round: int
    kind: str
    spot: str
    latency_ms: float
    shown: bool  # a suggestion came back
    stats: dict  # the server's `completion {...}` log line ({} when it logged none)


@dataclass
class Start:
    setup: str
    round: int
    restart: bool  # a second start (the model's files read before)
    ready_s: float
    peak_rss_gb: float


@dataclass
class Spot:
    """Where a user types in one file: the cursor there and the characters still to type."""

    file: str
    line: int = -1  # not visited yet
    index: int = 0
    typing: Iterator[str] = field(default_factory=lambda: iter(()))


class Editor:
    """One setup's editor: its server, the open files, the cursor; it plays steps of the session."""

    def __init__(self, setup: Setup, args: argparse.Namespace, round_number: int):
        self.setup, self.args, self.round = setup, args, round_number
        self.client: BenchClient | None = None
        self.documents = {
            file: Document((STDLIB / file).read_text(), "python", 1)
            for file in dict.fromkeys(file for file, _ in SPOTS.values())
        }
        self.spots = {name: Spot(file) for name, (file, _) in SPOTS.items()}
        self.here: str | None = None  # the spot of the cursor
        self.shown: types.InlineCompletionItem | None = None
        self.answers: list[Answer] = []
        self.starts: list[Start] = []
        self.log: list[str] = []  # the server's log lines, all servers of this editor
        self.skipped_accepts = 0

    # ---- the server ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a server (timed to ready) and open the files in it, as an editor does."""
        logs = self.args.out / "editing_session-logs"
        logs.mkdir(parents=True, exist_ok=True)
        name = f"{self.setup.name.replace(' ', '-')}-round{self.round}-start{len(self.starts) + 1}"
        log_file = logs / f"{name}.log"
        log_file.unlink(missing_ok=True)
        options = {"maxNewTokens": self.args.max_new_tokens} | self.setup.options
        started = time.perf_counter()
        self.client = await start_server(
            self.args.model, self.args.quantization, self.args.context_length,
            self.setup.checkout, "--log-file", str(log_file), options=options,
        )  # fmt: skip
        ready_s = time.perf_counter() - started
        restart = bool(self.starts)
        peak_rss_gb = server_peak_rss_gb(self.client)
        self.starts.append(Start(self.setup.name, self.round, restart, ready_s, peak_rss_gb))
        for file, document in self.documents.items():
            self.client.text_document_did_open(
                types.DidOpenTextDocumentParams(
                    types.TextDocumentItem(
                        self.uri(file), "python", document.version, document.text
                    )
                )
            )

    async def stop(self) -> None:
        if self.client is None:
            return
        client, self.client = self.client, None
        self.signal(client, signal.SIGCONT)
        self.log += client.lines
        with contextlib.suppress(Exception):  # a server that died already
            await asyncio.wait_for(client.shutdown_async(None), 60)
            client.exit(None)
        if (server := client._server) is not None:
            try:
                await asyncio.wait_for(server.wait(), 30)
            except asyncio.TimeoutError:
                server.kill()
        await client.stop()

    def freeze(self) -> None:
        """Stop the server's process (its threads, background work included) until `thaw`."""
        self.signal(self.client, signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(self.client, signal.SIGCONT)

    @staticmethod
    def signal(client: BenchClient | None, number: int) -> None:
        server = client._server if client else None
        if server is not None and server.returncode is None:
            os.kill(server.pid, number)

    def uri(self, file: str) -> str:
        return f"file:///bench/{file}"

    # ---- the session ---------------------------------------------------------------------------

    async def play(self, step: str) -> None:
        if step in ("accept", "newline") and self.setup.bursts_only:
            return
        if step == "accept":
            await self.accept()
        elif step == "newline":
            await self.newline()
        elif step == "restart":
            await self.restart()
        else:
            await self.visit(step)

    async def visit(self, name: str) -> None:
        """Move the cursor to spot `name` (emptying its line at the first visit) and type there."""
        spot = self.spots[name]
        previous = self.spots[self.here] if self.here else None
        if previous is None:
            kind = "first"
        elif previous.file == spot.file:
            kind = "return" if spot.line >= 0 else "move"
        else:
            kind = "switch back" if spot.line >= 0 else "switch"
        await asyncio.sleep(self.args.think)
        self.here = name
        if spot.line < 0:  # the user deletes the line, to write it again
            document = self.documents[spot.file]
            spot.line = [content(line) for line in document.lines].index(SPOTS[name][1])
            text = content(document.lines[spot.line])
            indent = len(text) - len(text.lstrip())
            spot.index = indent
            spot.typing = itertools.cycle(text[indent:])
            await self.edit(Place(spot.line, indent), Place(spot.line, len(text)), "")
        for key in range(self.setup.keys):
            await self.type_key(kind if key == 0 else "key")

    async def type_key(self, kind: str) -> None:
        spot = self.spots[self.current()]
        await self.edit(
            Place(spot.line, spot.index), Place(spot.line, spot.index), next(spot.typing)
        )
        await self.ask(kind)

    async def newline(self) -> None:
        """Enter at the cursor, indented as an editor indents (deeper after a colon), then a burst."""
        spot = self.spots[self.current()]
        line = content(self.documents[spot.file].lines[spot.line])[: spot.index]
        indent = line[: len(line) - len(line.lstrip())] + ("    " if line.endswith(":") else "")
        cursor = Place(spot.line, spot.index)
        await self.edit(cursor, cursor, "\n" + indent)
        spot.typing = itertools.cycle(NEXT_LINE)
        await self.ask("newline")
        for _ in range(self.setup.keys):
            await self.type_key("key")

    async def accept(self) -> None:
        """Take the suggestion shown (typing on until one shows), and ask again at once."""
        for _ in range(ACCEPT_TRIES):
            if self.shown is not None:
                break
            await self.type_key("key")
        if (item := self.shown) is None:
            self.skipped_accepts += 1
            return
        await asyncio.sleep(self.args.think)  # reading it
        document = self.documents[self.spots[self.current()].file]
        text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
        spot = self.spots[self.current()]
        start = end = Place(spot.line, spot.index)
        if item.range is not None:
            start = document.place(item.range.start, UTF16)
            end = document.place(item.range.end, UTF16)
        await self.edit(start, end, text)
        await self.ask("accept")

    def current(self) -> str:
        assert self.here is not None, "the session starts with a spot"
        return self.here

    async def edit(self, start: Place, end: Place, text: str) -> None:
        """Replace the text between `start` and `end` with `text` (didChange); the cursor goes to
        its end, and the spots below move with the lines it adds."""
        assert self.client is not None
        spot = self.spots[self.current()]
        document = self.documents[spot.file]
        change = types.TextDocumentContentChangePartial(
            range=types.Range(document.position(start, UTF16), document.position(end, UTF16)),
            text=text,
        )
        document.apply(change, UTF16)
        document.version += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(document.version, self.uri(spot.file)),
                [change],
            )
        )
        added = text.count("\n") - (end.line - start.line)
        for other in self.spots.values():
            if other is not spot and other.file == spot.file and other.line > start.line:
                other.line += added
        lines = text.split("\n")
        spot.line = start.line + len(lines) - 1
        spot.index = (start.index if len(lines) == 1 else 0) + len(lines[-1])

    async def ask(self, kind: str) -> None:
        """An inline completion request at the cursor, answered before the next key."""
        assert self.client is not None
        spot = self.spots[self.current()]
        uri = self.uri(spot.file)
        position = self.documents[spot.file].position(Place(spot.line, spot.index), UTF16)
        seen = len(self.client.stats)
        started = time.perf_counter()
        answer = await self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=position,
                context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
            )
        )
        latency_ms = (time.perf_counter() - started) * 1000
        items = answer.items if isinstance(answer, types.InlineCompletionList) else answer or []
        self.shown = items[0] if items else None
        stats: dict = next((s for s in reversed(self.client.stats[seen:]) if s["uri"] == uri), {})
        self.answers.append(
            Answer(
                self.setup.name, self.round, kind, self.current(), latency_ms, bool(items), stats
            )
        )
        print(f"  {self.setup.name}: {kind} {latency_ms:,.0f} ms", file=sys.stderr)
        await asyncio.sleep(self.args.pause)

    async def restart(self) -> None:
        """The editor closes and opens again (`--restarts` times, each start timed), then a key
        where the cursor was."""
        for _ in range(self.args.restarts):
            await self.stop()
            self.shown = None
            await self.start()
        await self.type_key("restart")


async def run_session(args: argparse.Namespace, setups: list[Setup]) -> dict:
    """Every round: start the setups' servers, play the session step by step, each step by every
    setup in turn (the others stopped), restart each; floors sampled between steps."""
    began = time.perf_counter()
    main = asyncio.current_task()
    assert main is not None
    for ending in (signal.SIGINT, signal.SIGTERM):  # servers stopped mid-run are ended below
        asyncio.get_running_loop().add_signal_handler(ending, main.cancel)
    rate = ReadRate()
    floors: list[dict] = []
    editors: list[Editor] = []
    done: list[Editor] = []
    try:
        for round_number in range(1, args.rounds + 1):
            editors = [Editor(setup, args, round_number) for setup in setups]
            for editor in rotated(editors, round_number):
                print(f"round {round_number}: starting {editor.setup.name}", file=sys.stderr)
                await editor.start()
                editor.freeze()
            for number, step in enumerate([*args.session, "restart"]):
                print(
                    f"round {round_number}, step {number + 1}: {step} "
                    f"({time.perf_counter() - began:.0f} s)",
                    file=sys.stderr,
                )
                for editor in rotated(editors, number + round_number):
                    editor.thaw()
                    await editor.play(step)
                    editor.freeze()
                floors.append(sample_floors(rate))
            for editor in editors:
                await editor.stop()
            done += editors
            editors = []
    finally:
        for editor in editors:  # after a failure: no server is left stopped
            await editor.stop()
    return {
        "answers": [asdict(answer) for editor in done for answer in editor.answers],
        "starts": [asdict(start) for editor in done for start in editor.starts],
        "skipped_accepts": {
            setup.name: sum(e.skipped_accepts for e in done if e.setup == setup) for setup in setups
        },
        "logs": {
            f"{editor.setup.name} round {editor.round}": [
                line for line in editor.log if not line.startswith("completion ")
            ]
            for editor in done
        },
        "floors": floors,
    }


def rotated(editors: list[Editor], by: int) -> list[Editor]:
    by %= len(editors)
    return editors[by:] + editors[:by]


def sample_floors(rate: ReadRate) -> dict:
    """Bytes per second read, and int8 ops per second of each GEMM path (or why it cannot run)."""
    return {"read_bytes_s": rate.sample(), "int8_ops_s": int8_gemm_rates(GEMM_ROWS)}


# ---- setup -------------------------------------------------------------------------------------


def checkout(baseline: str) -> Path:
    """The code of `baseline`: a folder as it is, or a git revision extracted into .cache/ once."""
    if Path(baseline).is_dir():
        return Path(baseline).resolve()
    folder = ROOT / ".cache" / f"checkout-{baseline}"
    if not (folder / "fim_lsp").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", baseline], capture_output=True, check=False
        )
        if archive.returncode:
            raise SystemExit(
                f"cannot extract {baseline} from git ({archive.stderr.decode().strip()}): "
                "pass --baseline FOLDER, a checkout of it"
            )
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def trained_context_model(model: Path) -> Path:
    """The random full-size model with the 2,048 positions FIM-NeoX-1.3B was trained on: its
    hub config says 1024, which the engine corrects for the hub id only. Its files, linked."""
    folder = model.with_name(model.name + "-2048")
    folder.mkdir(exist_ok=True)
    for file in model.iterdir():
        if file.name != "config.json" and not (folder / file.name).exists():
            (folder / file.name).symlink_to(file.resolve())
    config = json.loads((model / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 2048}))
    return folder


def make_setups(args: argparse.Namespace) -> list[Setup]:
    return [
        Setup(
            "reuse off",
            "this checkout, cacheReuse false, coldBudgetMs 0: every request prefills its prompt; "
            "the first key of each burst, and the restart",
            ROOT, {"cacheReuse": False, "coldBudgetMs": 0}, 1, bursts_only=True,
        ),
        Setup("today", f"{args.baseline}: its defaults", checkout(args.baseline), {}, args.keys),
        Setup(
            "new",
            "this checkout: its defaults (contextLength the device's, cacheMemoryMb 1024, "
            f"coldBudgetMs {Settings().cold_budget_ms})",
            ROOT, {}, args.keys,
        ),
    ]  # fmt: skip


# ---- the report --------------------------------------------------------------------------------


def summary(result: dict, setup: str) -> dict:
    """The figures of one setup: latency per kind of request, starts, and where time goes."""
    answers = [a for a in result["answers"] if a["setup"] == setup]
    session = [a["latency_ms"] for a in answers if a["kind"] != "restart"]
    by_kind = {
        kind: [a for a in answers if a["kind"] == kind]
        for kind in KINDS
        if any(a["kind"] == kind for a in answers)
    }
    starts = [s for s in result["starts"] if s["setup"] == setup]
    restarts = [s["ready_s"] for s in starts if s["restart"]]
    return {
        "session": latency(session),
        "moves": latency([a["latency_ms"] for a in answers if a["kind"] in ("move", "return")]),
        "kinds": {kind: profile(found) for kind, found in by_kind.items()},
        "first_start_s": next((s["ready_s"] for s in starts if not s["restart"]), None),
        "restart_s": median(restarts),
        "restart_range": f"{min(restarts):.1f}-{max(restarts):.1f}" if restarts else "-",
        "peak_rss_gb": max((s["peak_rss_gb"] for s in starts), default=None),
        "cold_prefill_ms_per_token": median(
            [
                a["stats"]["timings_ms"]["prefill"] / new
                for a in answers
                if (new := new_tokens(a)) >= 128
            ]
        ),
    }


def latency(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9)}


def new_tokens(answer: dict) -> int:
    """Prompt tokens that the request prefilled (0 when it ran no prefill: typed-through or
    speculated answers)."""
    stats = answer["stats"]
    if not stats or "prefill" not in stats["timings_ms"]:
        return 0
    return stats["prompt_tokens"] - stats["cached_tokens"]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def profile(answers: list[dict]) -> dict:
    """Latency of some requests and, from the server's log lines, what they ran."""
    logged = [a for a in answers if a["stats"]]
    timings = [a["stats"]["timings_ms"] for a in logged]
    return latency([a["latency_ms"] for a in answers]) | {
        "prompt_tokens": median([a["stats"]["prompt_tokens"] for a in logged]),
        "new_tokens": median([new_tokens(a) for a in logged]),
        "prefill_ms": median([t["prefill"] for t in timings if "prefill" in t]),
        "decode_ms": median([t["decode"] for t in timings if "decode" in t]),
        "generated": median([a["stats"]["generated_tokens"] for a in logged]),
        "short_context": sum(bool(a["stats"].get("context")) for a in logged),
        "stop_reasons": dict(Counter(a["stats"]["stop_reason"] for a in logged)),
        "shown": sum(a["shown"] for a in answers),
    }


def floors_summary(result: dict, config: dict | None) -> dict:
    """Medians of the floor samples, and what they make of a prefilled token."""
    samples = result["floors"]
    read = median([s["read_bytes_s"] for s in samples]) or float("nan")
    gemm: dict[str, float | str] = {}
    for name in samples[0]["int8_ops_s"] if samples else []:
        rates = [s["int8_ops_s"][name] for s in samples]
        numbers = [r for r in rates if isinstance(r, float)]
        gemm[name] = statistics.median(numbers) if numbers else rates[0]
    best = max((r for r in gemm.values() if isinstance(r, float)), default=float("nan"))
    return {
        "read_gb_s": read / 1e9,
        "gemm_gop_s": {name: r / 1e9 if isinstance(r, float) else r for name, r in gemm.items()},
        "prefill_floor_ms_per_token": 2 * layer_weights(config) / best * 1000 if config else None,
        "samples": len(samples),
    }


def report(result: dict) -> str:
    m, args = result["machine"], result["args"]
    setups = [s["name"] for s in result["setups"]]
    sums = {name: summary(result, name) for name in setups}
    floors = result["floor"]

    def row(label: str, values: list[str], goal: str = "") -> str:
        return f"| {label} | {' | '.join(values)} | {goal} |"

    def ms(value: float | None) -> str:
        return "-" if value is None or value != value else f"{value:,.0f}"

    def kind_p50(kind: str) -> list[str]:
        cells = []
        for name in setups:
            found = sums[name]["kinds"].get(kind)
            cells.append(f"{ms(found['p50'])} ({found['n']})" if found else "-")
        return cells

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        "# Editing session through LSP",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads); Python "
        f"{m['python']}, torch {m['torch']}, transformers {m['transformers']}. Shared with other "
        "work: the setups play each step in turn (rotating order), the others stopped, so that "
        "drift hits all alike.",
        f"Model: {result['model']} ({args['quantization']}), contextLength "
        f"{args['context_length'] or 'each server default (see the prompt tokens below)'}, "
        f"maxNewTokens {args['max_new_tokens']}, maxTimeMs 0, "
        f"debounceMs 0. {args['rounds']} round(s) of {len(args['session'])} steps: "
        f"{', '.join(args['session'])}, then {args.get('restarts', 1)} restart(s), each timed, and "
        f"a key. {args['pause']} s between keys, "
        f"{args['think']} s before a move, a switch or an accept.",
        "",
        "| setup | code and options | keys per burst |",
        "|---|---|---|",
        *[f"| {s['name']} | {s['what']} | {s['keys']} |" for s in result["setups"]],
        "",
        "Keystroke to answer, ms: p50 (requests).",
        "",
        f"| | {' | '.join(setups)} | goal |",
        f"|---|{'---|' * len(setups)}---|",
        row(
            "session p50 (requests)",
            [f"{ms(sums[n]['session']['p50'])} ({sums[n]['session']['n']})" for n in setups],
        ),
        row("session p90", [ms(sums[n]["session"]["p90"]) for n in setups], "≤ 1,500"),
        row(
            "first key after a move (new line or return), p50",
            [f"{ms(sums[n]['moves']['p50'])} ({sums[n]['moves']['n']})" for n in setups],
            "≤ 1,500",
        ),
        *[row(KINDS[kind], kind_p50(kind)) for kind in ("move", "return", "switch", "switch back")],
        row(KINDS["key"], kind_p50("key"), "no slower than today"),
        row(KINDS["accept"], kind_p50("accept")),
        row(KINDS["newline"], kind_p50("newline")),
        row(KINDS["restart"], kind_p50("restart")),
        row("first start to ready, s", [seconds(sums[n]["first_start_s"]) for n in setups]),
        row(
            "restart to ready, s: p50 (range)",
            [f"{seconds(sums[n]['restart_s'])} ({sums[n]['restart_range']})" for n in setups],
            "≤ 3",
        ),
        row(
            "peak RSS at load, GB",
            [f"{sums[n]['peak_rss_gb']:.2f}" if sums[n]["peak_rss_gb"] else "-" for n in setups],
            "≤ 2.7",
        ),
        "",
        "## Goals (2-core CPU, full-size 8-bit model), for the new code",
        *goals(sums),
        "",
        "## Where the time goes",
        "From the server's `completion {...}` log line of each answer: prompt tokens, tokens "
        "not in a cache (new), prefill and decode ms, tokens generated (p50 of each); answers "
        "from a shorter prompt than the full context (short); how decoding stopped.",
        "",
        "| setup | request | n | p50 ms | p90 ms | prompt | new | prefill ms | decode ms "
        "| generated | short | stop reasons | shown |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {kind} | {p['n']} | {ms(p['p50'])} | {ms(p['p90'])} "
            f"| {ms(p['prompt_tokens'])} | {ms(p['new_tokens'])} | {ms(p['prefill_ms'])} "
            f"| {ms(p['decode_ms'])} | {ms(p['generated'])} | {p['short_context']} "
            f"| {', '.join(f'{k} {v}' for k, v in p['stop_reasons'].items())} | {p['shown']} |"
            for name in setups
            for kind, p in sums[name]["kinds"].items()
        ],
        "",
        f"Accepts skipped (no suggestion within {ACCEPT_TRIES} keys): "
        + ", ".join(f"{name} {count}" for name, count in result["skipped_accepts"].items())
        + ".",
        "",
        "## The machine's floors, measured in this run",
        f"Medians of {floors['samples']} samples, one after each step with every server stopped.",
        f"- memory read: {floors['read_gb_s']:.1f} GB/s (bench/floor.py's ReadRate)",
        *[
            f"- int8 GEMM [{GEMM_ROWS}, 2048] x [2048, 2048], {name}: "
            + (f"{rate:.0f} GOP/s" if isinstance(rate, float) else rate)
            for name, rate in floors["gemm_gop_s"].items()
        ],
        f"- faster of torch._int_mm and the engine's kernel: {faster(floors['gemm_gop_s'])}",
        f"- prefill floor at the fastest int8 GEMM: "
        f"{ms_per_token(floors['prefill_floor_ms_per_token'])} per prompt token (2 ops per "
        "weight of the layers' products); cold prefill measured through the server (requests with 128 or "
        "more new tokens, p50): "
        + ", ".join(
            f"{name} {ms_per_token(sums[name]['cold_prefill_ms_per_token'])}" for name in setups
        ),
        "",
        "## Reproduce",
        "```",
        result["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


def goals(sums: dict) -> list[str]:
    new, today = sums.get("new"), sums.get("today")
    if new is None:
        return ["- (the new setup did not run)"]

    def verdict(value: float | None, limit: float | None) -> str:
        if value is None or limit is None or value != value:
            return "not measured"
        return "met" if value <= limit else "not met"

    warm, warm_today = new["kinds"].get("key", {}), (today or {}).get("kinds", {}).get("key", {})
    return [
        f"- session p90 {new['session']['p90']:,.0f} ms ≤ 1,500: "
        f"{verdict(new['session']['p90'], 1500)}",
        f"- first key after a move p50 {new['moves']['p50']:,.0f} ms ≤ 1,500: "
        f"{verdict(new['moves']['p50'], 1500)}",
        f"- warm keystroke p50 {warm.get('p50', float('nan')):,.0f} ms, today "
        f"{warm_today.get('p50', float('nan')):,.0f} ms: "
        f"{verdict(warm.get('p50'), warm_today.get('p50'))} (no slower than today)",
        f"- restart to ready {new['restart_s'] or float('nan'):.1f} s ≤ 3 s: "
        f"{verdict(new['restart_s'], 3)}",
    ]


def faster(gemm: dict[str, float | str]) -> str:
    int_mm, ours = gemm.get("torch._int_mm"), gemm.get("Int8Linear (C kernel)")
    if not isinstance(int_mm, float) or not isinstance(ours, float):
        return "not both measured"
    if int_mm > ours:
        return f"torch._int_mm, {int_mm / ours:.2f}x the engine's kernel"
    return f"the engine's kernel (Int8Linear), {ours / int_mm:.2f}x torch._int_mm"


def ms_per_token(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms/token"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="default: the full-size random model")
    parser.add_argument("--quantization", default="int8", choices=["int8", "none"])
    parser.add_argument(
        "--context-length", type=int, help="for every server (default: each server's own)"
    )
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--keys", type=int, default=8, help="keystrokes per burst")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--restarts", type=int, default=3, help="timed restarts per round (the median is reported)"
    )
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between keys")
    parser.add_argument("--think", type=float, default=1.0, help="seconds before a move or accept")
    parser.add_argument(
        "--baseline", default=BASELINE, help="today's code: a checkout folder or a git revision"
    )
    parser.add_argument("--quick", action="store_true", help="a shorter session, 2 keys, 1 round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--report", type=Path, help="also write the markdown report here (bench/reports/...)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the report again from --out's .json"
    )
    args = parser.parse_args()
    saved = args.out / "editing_session.json"
    if args.report_only:
        write_report(json.loads(saved.read_text()), args.out, args.report)
        return
    command = " ".join(["python", "bench/editing_session.py", *sys.argv[1:]])
    args.session = QUICK_SESSION if args.quick else SESSION
    if args.quick:
        args.keys, args.rounds, args.restarts = min(args.keys, 2), 1, 1
    args.model = args.model or str(trained_context_model(random_model()))
    # Absolute: today's server runs in its own folder, and finds its log file and model there.
    if Path(args.model).is_dir():
        args.model = str(Path(args.model).resolve())
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    setups = make_setups(args)
    started = time.perf_counter()
    result = {
        "machine": machine(),
        "command": command,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": os.path.relpath(args.model, ROOT) if Path(args.model).is_dir() else args.model,
        "model_config": model_config(args.model),
        "setups": [asdict(s) | {"checkout": str(s.checkout)} for s in setups],
        **asyncio.run(run_session(args, setups)),
    }
    result["wall_s"] = time.perf_counter() - started
    saved.write_text(json.dumps(result, indent=1))  # the measurements first, whatever follows
    write_report(result, args.out, args.report)


def write_report(result: dict, out: Path, also: Path | None = None) -> None:
    """Add the summary to the run's .json and write the markdown report beside it (and to
    `also`, such as bench/reports/editing-session-DATE.md)."""
    result["floor"] = floors_summary(result, result["model_config"])
    result["summary"] = {s["name"]: summary(result, s["name"]) for s in result["setups"]}
    (out / "editing_session.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (out / "editing_session.md").write_text(text)
    if also is not None:
        also.parent.mkdir(parents=True, exist_ok=True)
        also.write_text(text)
    print(text)


def model_config(model: str) -> dict | None:
    """The config of the model in a folder, or of the demo model; None for a hub id."""
    from fim_lsp.engine.loading import DEMO_MODEL

    config = (DEMO_MODEL if model == "demo" else Path(model)) / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None


if __name__ == "__main__":
    main()
