"""HumanEval-infilling: run problems through the server's pipeline, execute them, report pass@k.

Also the check that needs no model: each problem's canonical middle followed by what models
typically run on with, executed with post-processing on and off.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import json
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fim_lsp.document import Cursor
from fim_lsp.gate import Mode
from fim_lsp.postprocess import Finisher, Suggestion

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
MEMORY_BYTES = 4 << 30  # address space a program may use
KS = (1, 10)
RATES = ("pass@1", "pass@10", "exact_match")
COLUMNS = ("benchmark", "model", "problems", "samples", "temperature", *RATES, "seconds")


# Runs before every program: a memory limit, no network, and no killing, forking or deleting.
GUARD = f"""
import os, resource, shutil, socket, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BYTES}, {MEMORY_BYTES}))
def _refused(*args, **kwargs):
    raise PermissionError("not allowed while evaluating")
socket.socket = socket.create_connection = socket.getaddrinfo = _refused
for _name in ("system", "kill", "killpg", "fork", "forkpty", "execv", "execve", "putenv",
              "remove", "unlink", "rmdir", "removedirs", "rename", "replace", "chmod", "chdir"):
    setattr(os, _name, _refused)
shutil.rmtree = shutil.move = subprocess.Popen = subprocess.run = _refused
"""

# The batch worker: one process executes many programs, each in a fresh namespace under a timer.
# It answers one line per program on the stdout it started with; the programs' output is discarded.
WORKER = (
    GUARD
    + """
import json, signal, io
_answers = sys.stdout
def _expired(signum, frame):
    raise TimeoutError("time limit")
signal.signal(signal.SIGALRM, _expired)
for _line in sys.stdin:
    _job = json.loads(_line)
    sys.stdout = sys.stderr = io.StringIO()
    _error = ""
    try:
        signal.setitimer(signal.ITIMER_REAL, _job["timeout"])
        exec(compile(_job["source"], "<program>", "exec"), {"__name__": "__main__"})
    except SystemExit as _exit:
        _error = "" if _exit.code in (None, 0) else "SystemExit"
    except BaseException as _exception:
        _error = type(_exception).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    _answers.write(json.dumps(_error) + "\\n")
    _answers.flush()
"""
)


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


@cache
def network_sandbox() -> list[str]:
    """`unshare -n` when this machine lets us drop the network that way, else nothing."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    try:
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [unshare, "-n"] if probe.returncode == 0 else []


def run_program(source: str, timeout: float = TIMEOUT_S) -> Outcome:
    """Run `source` in its own Python process in a fresh temporary folder, without network."""
    with tempfile.TemporaryDirectory(prefix="fim-lsp-eval-") as folder:
        Path(folder, "program.py").write_text(GUARD + source, encoding="utf-8")
        command = [*network_sandbox(), sys.executable, "-I", "program.py"]
        process = subprocess.Popen(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
            return Outcome(False, "timeout")
    if process.returncode == 0:
        return Outcome(True)
    last = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return Outcome(False, last[0].split(":")[0] or f"exit status {process.returncode}")


class Worker:
    """A Python process that executes programs one after another (see WORKER)."""

    def __init__(self, folder: str):
        self.process = subprocess.Popen(
            [*network_sandbox(), sys.executable, "-I", "-c", WORKER],
            cwd=folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def run(self, source: str, timeout: float) -> Outcome | None:
        """The program's outcome, or None when the worker did not answer in time (or died)."""
        assert self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps({"source": source, "timeout": timeout}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        # The worker's own timer fires first; this margin covers programs that catch it.
        ready, _, _ = select.select([self.process.stdout], [], [], timeout + 1)
        answer = self.process.stdout.readline() if ready else ""
        if not answer:
            return None
        error = json.loads(answer)
        return Outcome(not error, "timeout" if error == "TimeoutError" else error)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()


def run_programs(sources: Iterable[str], timeout: float = TIMEOUT_S) -> Iterator[Outcome]:
    """Outcomes of many programs, faster than `run_program` each: one worker process runs them,
    each in a fresh namespace; a worker that hangs or dies is replaced. Use it for trusted
    programs (the canonical solutions and their variants); programs share the process."""
    with tempfile.TemporaryDirectory(prefix="fim-lsp-eval-") as folder:
        worker = Worker(folder)
        try:
            for source in sources:
                outcome = worker.run(source, timeout)
                if outcome is None:
                    worker.close()
                    worker = Worker(folder)
                    outcome = Outcome(False, "timeout")
                yield outcome
        finally:
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
    completer: Completer, problem: Problem, mode: Mode, samples: int, timeout: float
) -> list[Sample]:
    results = []
    for _ in range(samples):
        completion = completer.complete(problem.cursor, mode=mode)
        outcome = run_program(problem.program(completion.text, completion.replace_chars), timeout)
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
) -> dict[str, Any]:
    """Complete every problem `samples` times through the server's pipeline; the JSON report."""
    mode = SUBSETS[subset][1]
    started = time.perf_counter()
    per_problem = []
    for done, problem in enumerate(problems, 1):
        per_problem.append(sample_problem(completer, problem, mode, samples, timeout))
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
    outcomes = dict(zip(unique, run_programs(unique, timeout), strict=True))
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
    parser = subparsers.add_parser("eval", help="measure completion quality on HumanEval-infilling")
    benchmarks = parser.add_subparsers(
        title="benchmarks", metavar="BENCHMARK", dest="benchmark", required=True
    )
    model = benchmarks.add_parser(
        "humaneval-infilling",
        help="complete each problem with the model, run its tests, report pass@k",
        description="Complete each problem through the server's own prompt, engine and "
        "post-processing; execute the programs (one process each, time limit, no network); "
        "report pass@1, pass@10 (with --samples 10 or more) and exact match.",
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
        "only the tokenizer of --model (demo: the one shipped in the package).",
    )
    add_data_flags(check)
    check.add_argument("--model", default=argparse.SUPPRESS, help="whose tokenizer to use")
    check.set_defaults(run=run)
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
    if args.benchmark == "postprocess-check":
        from fim_lsp.engine import EngineError, resolve_model
        from fim_lsp.prompt import FimTokenizer, TokenizerError

        try:
            folder = resolve_model(settings.model, tokenizer_only=True)
            tokenizer = FimTokenizer.from_file(folder / "tokenizer.json")
        except (EngineError, TokenizerError) as error:
            print(f"fim-lsp eval: {error}", file=sys.stderr)
            return 1
        rates = check_postprocessing(problems, SUBSETS[args.subset][1], tokenizer)
        report: dict[str, Any] = {"subset": args.subset, "problems": len(problems), "rates": rates}
        table = check_markdown(args.subset, rates)
    else:
        if args.samples < 1:
            print("fim-lsp eval: --samples must be at least 1", file=sys.stderr)
            return 1
        from fim_lsp.engine import EngineError
        from fim_lsp.pipeline import Completer

        try:
            completer = Completer.load(settings)
        except EngineError as error:
            print(f"fim-lsp eval: {error}", file=sys.stderr)
            return 1
        report = evaluate(completer, problems, args.subset, args.samples, args.timeout)
        table = markdown(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table)
    return 0
