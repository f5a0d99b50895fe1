"""HumanEval-infilling: run problems through the server's pipeline, execute them, report pass@k.

Also the check that needs no model: each problem's canonical middle followed by what models
typically run on with, executed with post-processing on and off.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fim_lsp import sandbox
from fim_lsp.documents import Cursor
from fim_lsp.errors import FimLspError
from fim_lsp.gate import Mode
from fim_lsp.postprocess import Finisher, Suggestion
from fim_lsp.sandbox import Isolation, Limits, Sandbox

if TYPE_CHECKING:
    from fim_lsp.pipeline import Completer
    from fim_lsp.prompt import FimTokenizer
    from fim_lsp.settings import Settings

SUBSETS = {
    "single-line": ("HumanEval-SingleLineInfilling.jsonl.gz", Mode.SINGLE_LINE),
    "multi-line": ("HumanEval-MultiLineInfilling.jsonl.gz", Mode.MULTI_LINE),
    "random-span": ("HumanEval-RandomSpanInfilling.jsonl.gz", Mode.MULTI_LINE),
    "random-span-light": ("HumanEval-RandomSpanInfillingLight.jsonl.gz", Mode.MULTI_LINE),
}
TIMEOUT_S = 10.0  # per program
# The canonical programs all run in under 0.25 s here; a variant past this is stuck in a loop.
CHECK_TIMEOUT_S = 2.0
KS = (1, 10)
RATES = ("pass@1", "pass@10", "exact_match")
COLUMNS = ("benchmark", "model", "problems", "samples", "temperature", *RATES, "seconds")
# What a worker and the programs it runs may use; each program also gets its time limit + 1 s
# of CPU. The worker's own CPU time covers a whole batch: about a millisecond a program.
LIMITS = Limits(
    cpu_seconds=3600,
    memory_bytes=4 << 30,
    processes=32,
    file_bytes=64 << 20,
    tmp_bytes=256 << 20,
)
WORKER_MARGIN_S = 1.0  # past a program's time limit, how long its worker may take to answer
WORKER_START_S = 30.0  # for the sandbox and the worker to start
SANDBOX_HELP = (
    "The generated programs are untrusted: a worker runs them one after another in a sandbox "
    "(bubblewrap where installed, else unshare) with new mount, PID, network, IPC and UTS "
    "namespaces and a new user namespace, or as nobody when started by root. It sees /usr and "
    "the Python install read-only, its own /proc and a minimal /dev, and nothing else of the "
    f"file system; a private {LIMITS.tmp_bytes >> 20} MiB tmpfs is its /tmp and working folder; "
    "it has no network (loopback at most) and sees and signals only its own processes (what a "
    "program leaves running is killed after it). Each program has its time limit (the worker is "
    "killed 1 s past it) and that + 1 s of CPU time; every process is held to "
    f"{LIMITS.cpu_seconds // 60} minutes of CPU time, {LIMITS.memory_bytes >> 30} GiB of address "
    f"space, files of {LIMITS.file_bytes >> 20} MiB and {LIMITS.processes} processes. Where no "
    "sandbox works, eval refuses to run unless --unsafe-no-sandbox: then only those limits "
    "apply (the process limit not to root), and the programs run with your full rights."
)

# The worker, run in the sandbox: it says "ready", then executes programs (JSON lines on stdin)
# one after another, each in a fresh namespace, and answers a line per program on its stdout:
# [error, its own CPU seconds so far], error "" when the program passed, else the exception's
# name, "exit status N" or "timeout". Its stdin and stdout are moved away from the programs'
# (both /dev/null). Each program gets its time limit as a timer and that + 1 s of CPU as the
# soft limit (SIGXCPU ends the worker, and it is replaced). The guard is
# human-eval's reliability_guard: it stops accidents, not a program that means harm; the
# sandbox does. Isolated (argument "isolated"), after each program the worker kills every other
# process it can: in its own PID namespace, whatever the program left running.
WORKER = r"""
import json, math, os, resource, shutil, signal, socket, subprocess, sys

def refused(*args, **kwargs):
    raise PermissionError("not allowed while evaluating")

def expired(signum, frame):
    raise TimeoutError("time limit")

def outcome(source, timeout):
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (min(math.ceil(used + timeout) + 1, hard), hard))
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        code = stop.code
        code = 0 if code is None else code & 255 if isinstance(code, int) else 1
        return f"exit status {code}" if code else ""
    except TimeoutError:
        return "timeout"
    except BaseException as exception:
        return type(exception).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return ""

isolated = sys.argv[1:] == ["isolated"]
jobs, answers = os.fdopen(os.dup(0)), os.fdopen(os.dup(1), "w")
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
kill, waitpid = os.kill, os.waitpid
signal.signal(signal.SIGALRM, expired)
socket.socket = socket.create_connection = socket.getaddrinfo = refused
for name in ("system", "kill", "killpg", "fork", "forkpty", "execv", "execve", "putenv",
             "remove", "unlink", "rmdir", "removedirs", "rename", "replace", "chmod", "chdir"):
    setattr(os, name, refused)
shutil.rmtree = shutil.move = subprocess.Popen = subprocess.run = refused
answers.write("ready\n")
answers.flush()
for line in jobs:
    job = json.loads(line)
    error = outcome(job["source"], job["timeout"])
    if isolated:
        try:
            kill(-1, signal.SIGKILL)
        except OSError:
            pass
    try:
        while waitpid(-1, os.WNOHANG)[0]:  # what the program forked and left
            pass
    except ChildProcessError:
        pass
    answers.write(json.dumps([error, sum(resource.getrusage(resource.RUSAGE_SELF)[:2])]) + "\n")
    answers.flush()
"""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prefix: str
    suffix: str
    middle: str  # the canonical solution
    test: str
    entry_point: str

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.prefix, self.suffix, "python")

    def program(self, text: str, replace_chars: int = 0, cursor: Cursor | None = None) -> str:
        """The program with `text` inserted at the cursor (the problem's own, or `cursor` in the
        same source), over `replace_chars` of the suffix."""
        cursor = cursor or self.cursor
        return (
            f"{cursor.prefix}{text}{cursor.suffix[replace_chars:]}\n{self.test}\n"
            f"check({self.entry_point})\n"
        )


@dataclass(frozen=True)
class Outcome:
    passed: bool
    error: str = ""  # the exception's name, "timeout", or the exit status


# ---- data -------------------------------------------------------------------------------------


def load_problems(data: Path, subset: str, limit: int | None = None) -> list[Problem]:
    """The problems of `subset` from the HumanEval-infilling files in the folder `data`."""
    file_name, _ = SUBSETS[subset]
    path = data / file_name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data must be the HumanEval-infilling folder")
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            problems.append(
                Problem(
                    row["task_id"],
                    row["prompt"],
                    row["suffix"],
                    row["canonical_solution"],
                    row["test"],
                    row["entry_point"],
                )
            )
            if limit is not None and len(problems) == limit:
                break
    return problems


# ---- running programs -------------------------------------------------------------------------


def run_program(
    source: str, timeout: float = TIMEOUT_S, isolation: Isolation | None = None
) -> Outcome:
    """Run `source` in a sandbox of its own (see `run_programs`)."""
    return next(run_programs([source], timeout, isolation))


class WorkerError(RuntimeError):
    """The sandboxed worker did not start."""


class Worker:
    """A sandboxed Python process that runs programs one after another (see WORKER)."""

    def __init__(self, isolation: Isolation):
        isolated = [] if isolation is Isolation.NONE else ["isolated"]
        self.sandbox = Sandbox(
            [sys.executable, "-I", "-c", WORKER, *isolated],
            LIMITS,
            isolation,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.cpu_seconds = 0.0  # its own, which the programs it ran spent
        stdout = self.sandbox.process.stdout
        assert stdout
        ready, _, _ = select.select([stdout], [], [], WORKER_START_S)
        if not (ready and stdout.readline() == "ready\n"):
            self.close()
            raise WorkerError(
                f"the program runner did not start in its sandbox ({isolation.value}) "
                f"within {WORKER_START_S:.0f} s"
            )

    def run(self, source: str, timeout: float) -> Outcome | None:
        """The program's outcome, or None when the worker did not answer in time (or died)."""
        process = self.sandbox.process
        assert process.stdin and process.stdout
        try:
            process.stdin.write(json.dumps({"source": source, "timeout": timeout}) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            return None
        ready, _, _ = select.select([process.stdout], [], [], timeout + WORKER_MARGIN_S)
        answer = process.stdout.readline() if ready else ""
        if not answer:
            return None
        error, self.cpu_seconds = json.loads(answer)
        return Outcome(not error, error)

    def close(self) -> None:
        self.sandbox.close()


def run_programs(
    sources: Iterable[str], timeout: float = TIMEOUT_S, isolation: Isolation | None = None
) -> Iterator[Outcome]:
    """Outcomes of many programs, each in a fresh namespace, run one after another by a worker
    in a sandbox (see SANDBOX_HELP); a worker that dies or stops answering is replaced.
    `isolation`: by default the best this machine has (sandbox.Unavailable when none works)."""
    isolation = sandbox.detect() if isolation is None else isolation
    worker: Worker | None = None
    try:
        for source in sources:
            worker = worker or Worker(isolation)
            outcome = worker.run(source, timeout)
            if outcome is None or worker.cpu_seconds > LIMITS.cpu_seconds / 2:
                # Dead, stuck, or half its CPU time spent: the next program gets a new one.
                worker.close()
                worker = None
            yield Outcome(False, "timeout") if outcome is None else outcome
    finally:
        if worker:
            worker.close()


# ---- scoring ----------------------------------------------------------------------------------


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased estimate of pass@k from `samples` tries of which `correct` passed:
    1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if samples < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, not {samples}")
    return 1.0 - math.comb(samples - correct, k) / math.comb(samples, k)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---- the model evaluation ---------------------------------------------------------------------


@dataclass
class Sample:
    text: str
    replace_chars: int
    raw: str
    passed: bool
    error: str
    exact: bool  # the document is the canonical one (blank lines and trailing spaces aside)


def sample_problem(
    completer: Completer,
    problem: Problem,
    mode: Mode,
    samples: int,
    timeout: float,
    isolation: Isolation | None = None,
) -> list[Sample]:
    results = []
    for _ in range(samples):
        completion = completer.complete(problem.cursor, mode=mode)
        program = problem.program(completion.text, completion.replace_chars)
        outcome = run_program(program, timeout, isolation)
        document = problem.prefix + completion.text + problem.suffix[completion.replace_chars :]
        results.append(
            Sample(
                completion.text,
                completion.replace_chars,
                completion.raw,
                outcome.passed,
                outcome.error,
                same_code(document, problem.prefix + problem.middle + problem.suffix),
            )
        )
    return results


def same_code(a: str, b: str) -> bool:
    # A suggestion on an empty line leaves the line's own newline in place where the canonical
    # middle brings one more: the same code, one blank line apart.
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    return lines(a) == lines(b)


def score(per_problem: Sequence[Sequence[Sample]]) -> dict[str, float]:
    samples = min((len(results) for results in per_problem), default=0)
    scores = {
        f"pass@{k}": mean([pass_at_k(len(r), sum(s.passed for s in r), k) for r in per_problem])
        for k in KS
        if samples >= k
    }
    scores["exact_match"] = mean([mean([s.exact for s in r]) for r in per_problem])
    return scores


def progress_bar(done: int, total: int, note: str) -> None:
    """One line on stderr, redrawn in place (stdout carries the report)."""
    filled = 30 * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{' ' * (30 - filled)}] {done}/{total} {note}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def evaluate(
    completer: Completer,
    problems: Sequence[Problem],
    subset: str,
    samples: int,
    timeout: float = TIMEOUT_S,
    progress: Callable[[int, int, str], None] = progress_bar,
    isolation: Isolation | None = None,
) -> dict[str, Any]:
    """Complete every problem `samples` times through the server's pipeline; the JSON report."""
    mode = SUBSETS[subset][1]
    started = time.perf_counter()
    per_problem = []
    for done, problem in enumerate(problems, 1):
        per_problem.append(sample_problem(completer, problem, mode, samples, timeout, isolation))
        passed = sum(any(s.passed for s in results) for results in per_problem)
        progress(done, len(problems), f"problems ({passed} solved)")
    settings = completer.settings
    return {
        "benchmark": f"humaneval-infilling/{subset}",
        "model": settings.model,
        "problems": len(problems),
        "samples": samples,
        "temperature": settings.temperature,
        "max_new_tokens": settings.max_new_tokens,
        "mode": mode.value,
        **score(per_problem),
        "seconds": round(time.perf_counter() - started, 1),
        "results": [
            {"task_id": problem.task_id, "samples": [dataclasses.asdict(s) for s in results]}
            for problem, results in zip(problems, per_problem, strict=True)
        ],
    }


def markdown(report: dict[str, Any]) -> str:
    """The report's headline numbers as a markdown table."""
    columns = [key for key in COLUMNS if key in report]
    # Rates to four places, as the model card gives them; everything else as it is.
    cells = [f"{report[key]:.4f}" if key in RATES else str(report[key]) for key in columns]
    return "\n".join(
        [f"| {' | '.join(columns)} |", "|" + "---|" * len(columns), f"| {' | '.join(cells)} |"]
    )


# ---- the post-processing check ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A problem, a cursor in it, and what a model might have produced there."""

    variant: str
    problem: Problem
    cursor: Cursor
    raw: str

    def program(self, text: str, replace_chars: int) -> str:
        return self.problem.program(text, replace_chars, self.cursor)


# A run-on into code at a file's outer level that no stop string catches (the dedent must).
OUTER_CODE = "\n\nprint({0.entry_point}())\n"


def run_on_cases(problem: Problem) -> list[Case]:
    """The canonical middle alone, and followed by typical run-ons: the suffix's next lines; the
    suffix's first line and then new code at the outer level (the model leaves the function);
    the last line looping; and where they apply, the cursor after an auto-closed bracket and an
    editor's cursor on an empty indented line."""
    suffix_head = "".join(problem.suffix.splitlines(keepends=True)[:3])
    last_line = problem.middle.splitlines(keepends=True)[-1] if problem.middle else ""
    if last_line and not last_line.endswith("\n"):
        last_line = "\n" + last_line.lstrip("\n")
    cases = [
        Case("canonical", problem, problem.cursor, problem.middle),
        Case("suffix run-on", problem, problem.cursor, problem.middle + suffix_head),
        Case("suffix line, then outer code", problem, problem.cursor, leaves(problem)),
        Case("looping last line", problem, problem.cursor, problem.middle + last_line * 4),
    ]
    optional = [auto_closed_case(problem, suffix_head), *editor_cursor_cases(problem)]
    return cases + [case for case in optional if case]


def leaves(problem: Problem, middle: str | None = None) -> str:
    """The middle, the suffix up to its first line of code, then code at the outer level: the
    model writes the line that is already below and leaves the function."""
    lines = problem.suffix.splitlines(keepends=True)
    first_code = next((n for n, line in enumerate(lines) if line.strip()), len(lines))
    upto = "".join(lines[: first_code + 1])
    upto += "" if upto.endswith("\n") or not upto else "\n"
    return (problem.middle if middle is None else middle) + upto + OUTER_CODE.format(problem)


def editor_cursor_cases(problem: Problem) -> list[Case]:
    """Where the middle is whole lines of one indented block: the cursor on an empty line that
    the editor indented as the middle's first line, with the line's newline right of it. The
    model writes the middle without that indentation, alone and running on. (A middle that
    leaves its first line's block is more than the one block a suggestion there offers.)"""
    middle = problem.middle
    indent = middle[: len(middle) - len(middle.lstrip(" \t"))]
    at_line_start = problem.prefix == "" or problem.prefix.endswith("\n")
    one_block = all(line.startswith(indent) for line in middle.splitlines() if line.strip())
    if not (indent and middle.strip() and middle.endswith("\n") and at_line_start and one_block):
        return []
    cursor = Cursor(problem.prefix + indent, "\n" + problem.suffix, "python")
    own = middle[len(indent) :]
    return [
        Case("editor cursor", problem, cursor, own),
        Case("editor cursor, run-on", problem, cursor, leaves(problem, own)),
    ]


def auto_closed_case(problem: Problem, suffix_head: str) -> Case | None:
    """The cursor after the opening bracket of the middle's last line's final `)`/`]`/`}`, with
    the editor's auto-closed bracket right of it; the model writes the rest of the line, bracket
    included, then runs on into the suffix."""
    middle = problem.middle.rstrip("\n")
    line_start = middle.rfind("\n") + 1
    line = middle[line_start:]
    if not line.endswith((")", "]", "}")):
        return None
    pairs = {")": "(", "]": "[", "}": "{"}
    depth = 0
    for index in range(len(line) - 1, -1, -1):
        if line[index] == line[-1]:
            depth += 1
        elif line[index] == pairs[line[-1]]:
            depth -= 1
            if depth == 0:
                break
    else:
        return None
    opened = line_start + index + 1
    closer = line[-1]
    tail = problem.middle[len(middle) :]  # the middle's own newline, when it has one
    cursor = Cursor(
        problem.prefix + problem.middle[:opened],
        closer + tail + problem.suffix,
        "python",
    )
    return Case("auto-closed bracket", problem, cursor, problem.middle[opened:] + suffix_head)


def finish(case: Case, mode: Mode, tokenizer: FimTokenizer) -> Suggestion | None:
    """What the server shows when the model generates `case.raw`: its tokens fed one by one
    to the server's Finisher, stopping where the server stops."""
    finisher = Finisher(tokenizer.decode, case.cursor.normalized(), mode)
    generated: list[int] = []
    for token in tokenizer.encode(case.raw):
        generated.append(token)
        if finisher.should_stop(generated):
            break
    return finisher.suggestion(generated)


def check_postprocessing(
    problems: Sequence[Problem],
    mode: Mode,
    tokenizer: FimTokenizer,
    timeout: float = CHECK_TIMEOUT_S,
    isolation: Isolation | None = None,
) -> dict[str, dict[str, float]]:
    """Pass rates per variant, with post-processing ("on") and with the raw text ("off")."""
    cases = [case for problem in problems for case in run_on_cases(problem)]
    pairs = []  # (variant, program with post-processing, program with the raw text)
    for case in cases:
        suggestion = finish(case, mode, tokenizer)
        text, replace_chars = (suggestion.text, suggestion.replace_chars) if suggestion else ("", 0)
        pairs.append((case.variant, case.program(text, replace_chars), case.program(case.raw, 0)))
    # Many variants end as the same program: run each program once.
    unique = sorted({program for _, on, off in pairs for program in (on, off)})
    outcomes = dict(zip(unique, run_programs(unique, timeout, isolation), strict=True))
    rates = {
        variant: rates_of([(on, off) for v, on, off in pairs if v == variant], outcomes)
        for variant in dict.fromkeys(variant for variant, _, _ in pairs)
    }
    rates["all"] = rates_of([(on, off) for _, on, off in pairs], outcomes)
    return rates


def rates_of(pairs: Sequence[tuple[str, str]], outcomes: dict[str, Outcome]) -> dict[str, float]:
    return {
        "cases": len(pairs),
        "on": mean([outcomes[on].passed for on, _ in pairs]),
        "off": mean([outcomes[off].passed for _, off in pairs]),
    }


def check_markdown(subset: str, rates: dict[str, dict[str, float]]) -> str:
    lines = [
        f"Post-processing check, HumanEval-infilling {subset}: programs that pass",
        "",
        "| variant | cases | post-processing on | off |",
        "|---|---|---|---|",
    ]
    for variant, rate in rates.items():
        lines.append(f"| {variant} | {rate['cases']} | {rate['on']:.4f} | {rate['off']:.4f} |")
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------


def add_parser(
    subparsers: Any, add_settings: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.ArgumentParser:
    """`eval humaneval-infilling` and `eval postprocess-check`; `add_settings` adds the shared
    settings flags (--model, --temperature, --max-new-tokens...) to the first."""
    parser = subparsers.add_parser(
        "eval",
        help="measure completion quality on HumanEval-infilling",
        description=f"Measure completion quality on HumanEval-infilling. {SANDBOX_HELP}",
    )
    benchmarks = parser.add_subparsers(
        title="benchmarks", metavar="BENCHMARK", dest="benchmark", required=True
    )
    model = benchmarks.add_parser(
        "humaneval-infilling",
        help="complete each problem with the model, run its tests, report pass@k",
        description="Complete each problem through the server's own prompt, engine and "
        "post-processing; run the programs with the problem's tests; report pass@1, pass@10 "
        f"(with --samples 10 or more) and exact match. {SANDBOX_HELP}",
    )
    add_data_flags(model)
    model.add_argument("--samples", type=int, default=1, help="completions per problem")
    model.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per program")
    if add_settings:
        add_settings(model)
    model.set_defaults(run=run)
    check = benchmarks.add_parser(
        "postprocess-check",
        help="no model: canonical middles plus typical run-ons, post-processing on and off",
        description="Feed each problem's canonical middle, alone and followed by what models "
        "run on with, token by token through the server's post-processing (stopping where the "
        "server stops); execute the programs with the suggestion and with the raw text. Needs "
        f"only the tokenizer of --model (demo: the one shipped in the package). {SANDBOX_HELP}",
    )
    add_data_flags(check)
    check.add_argument("--model", default=argparse.SUPPRESS, help="whose tokenizer to use")
    check.set_defaults(run=run)
    for benchmark in (model, check):
        benchmark.add_argument(
            "--unsafe-no-sandbox",
            action="store_true",
            help="run the programs without a sandbox, with your full rights (rlimits only)",
        )
    return parser


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subset", choices=SUBSETS, default="single-line")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder with the HumanEval-*Infilling.jsonl.gz files",
    )
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the `eval` benchmark that `args` names; the markdown table goes to stdout."""
    try:
        problems = load_problems(args.data, args.subset, args.limit)
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as error:
        print(f"fim-lsp eval: {error}", file=sys.stderr)
        return 1
    isolation = choose_isolation(args.unsafe_no_sandbox)
    if isolation is None:
        return 1
    if args.benchmark == "postprocess-check":
        from fim_lsp.engine import resolve_model
        from fim_lsp.prompt import FimTokenizer

        try:
            folder = resolve_model(settings.model, tokenizer_only=True)
            tokenizer = FimTokenizer.from_file(folder / "tokenizer.json")
        except FimLspError as error:
            print(f"fim-lsp eval: {error}", file=sys.stderr)
            return 1
        rates = check_postprocessing(
            problems, SUBSETS[args.subset][1], tokenizer, isolation=isolation
        )
        report: dict[str, Any] = {"subset": args.subset, "problems": len(problems), "rates": rates}
        table = check_markdown(args.subset, rates)
    else:
        if args.samples < 1:
            print("fim-lsp eval: --samples must be at least 1", file=sys.stderr)
            return 1
        from fim_lsp.pipeline import Completer

        try:
            completer = Completer.load(settings)
        except FimLspError as error:
            print(f"fim-lsp eval: {error}", file=sys.stderr)
            return 1
        report = evaluate(
            completer, problems, args.subset, args.samples, args.timeout, isolation=isolation
        )
        table = markdown(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table)
    return 0


def choose_isolation(unsafe: bool) -> Isolation | None:
    """The sandbox for the programs; None, after saying why, when none works and not `unsafe`."""
    if unsafe:
        print(
            "fim-lsp eval: warning: --unsafe-no-sandbox: the generated programs run with your "
            "full rights: they can read, change and delete your files, reach the network and "
            "start processes that outlive them; only the rlimits hold them",
            file=sys.stderr,
        )
        return Isolation.NONE
    try:
        return sandbox.detect()
    except sandbox.Unavailable as error:
        print(
            f"fim-lsp eval: refusing to run the generated programs: {error}; or pass "
            "--unsafe-no-sandbox to run them with your full rights",
            file=sys.stderr,
        )
        return None
