"""The HumanEval-infilling harness: data, running programs, pass@k, reports, and a tiny-model run."""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from pathlib import Path

import pytest

from fim_lsp import cli
from fim_lsp.evaluate import (
    OUTER_CODE,
    SUBSETS,
    Outcome,
    Problem,
    auto_closed_case,
    check_markdown,
    editor_cursor_cases,
    finish,
    leaves,
    load_problems,
    markdown,
    pass_at_k,
    run_on_cases,
    run_program,
    run_programs,
    same_code,
)
from fim_lsp.gate import Mode
from fim_lsp.postprocess import Suggestion
from fim_lsp.prompt import FimTokenizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "assets" / "human-eval-infilling"

PROBLEM = Problem(
    task_id="Toy/0",
    prefix="def unique(l):\n",
    suffix="\n",
    middle="    return sorted(set(l))\n",
    test="def check(f):\n    assert f([3, 1, 3]) == [1, 3]\n",
    entry_point="unique",
)


def needs_data() -> None:
    if not DATA.is_dir():
        pytest.skip(f"needs {DATA} (the shared assets folder beside the repo)")


@pytest.mark.parametrize(
    ("samples", "correct", "k", "expected"),
    [
        (10, 0, 1, 0.0),
        (10, 10, 1, 1.0),
        (10, 3, 1, 0.3),
        (10, 1, 10, 1.0),
        (20, 2, 10, 1 - math.comb(18, 10) / math.comb(20, 10)),
        (15, 14, 10, 1.0),  # fewer failures than k: every draw of k holds a pass
    ],
)
def test_pass_at_k(samples: int, correct: int, k: int, expected: float) -> None:
    assert pass_at_k(samples, correct, k) == pytest.approx(expected)


def test_pass_at_k_needs_k_samples() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        pass_at_k(5, 1, 10)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("x = 1\n\ny = 2\n", "x = 1\ny = 2", True),
        ("x = 1  \n", "x = 1\n", True),
        ("x = 1\n", "    x = 1\n", False),
        ("x = 1\n", "x = 2\n", False),
    ],
)
def test_same_code(a: str, b: str, same: bool) -> None:
    assert same_code(a, b) is same


def test_problem_program_inserts_and_replaces() -> None:
    program = PROBLEM.program("    return x", replace_chars=1)
    assert program.startswith("def unique(l):\n    return x\ndef check(f):")
    assert program.endswith("check(unique)\n")


@pytest.mark.parametrize(
    ("source", "outcome"),
    [
        ("x = 1\n", Outcome(True)),
        ("assert 1 == 2\n", Outcome(False, "AssertionError")),
        ("import sys\nsys.exit(3)\n", Outcome(False, "exit status 3")),
        ("while True:\n    pass\n", Outcome(False, "timeout")),
        (
            "import socket\nsocket.create_connection(('127.0.0.1', 9))\n",
            Outcome(False, "PermissionError"),
        ),
        ("import os\nos.system('true')\n", Outcome(False, "PermissionError")),
        ("x = bytearray(8 << 30)\n", Outcome(False, "MemoryError")),
    ],
)
def test_run_program(source: str, outcome: Outcome) -> None:
    assert run_program(source, timeout=1.0) == outcome


def test_run_program_starts_in_an_empty_folder() -> None:
    assert run_program("import os\nassert os.listdir('.') == []\n").passed


def test_run_programs_isolates_and_survives_hangs() -> None:
    stubborn = "while True:\n    try:\n        while True: pass\n    except BaseException: pass\n"
    sources = [
        "x = 1\n",
        "assert x == 1\n",  # a fresh namespace: the last program's x is gone
        "while True: pass\n",
        stubborn,  # catches the time limit: the worker is replaced
        "import sys\nsys.exit(0)\n",
        "assert True\n",
    ]
    outcomes = list(run_programs(sources, timeout=0.5))
    assert outcomes == [
        Outcome(True),
        Outcome(False, "NameError"),
        Outcome(False, "timeout"),
        Outcome(False, "timeout"),
        Outcome(True),
        Outcome(True),
    ]


def write_subset(folder: Path, subset: str, rows: list[dict]) -> None:
    with gzip.open(folder / SUBSETS[subset][0], "wt", encoding="utf-8") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))


def test_load_problems(tmp_path: Path) -> None:
    rows = [
        {
            "task_id": f"T/{n}",
            "prompt": "p",
            "suffix": "s",
            "canonical_solution": "m",
            "test": "t",
            "entry_point": "e",
        }
        for n in range(3)
    ]
    write_subset(tmp_path, "multi-line", rows)
    problems = load_problems(tmp_path, "multi-line")
    assert [p.task_id for p in problems] == ["T/0", "T/1", "T/2"]
    assert problems[0] == Problem("T/0", "p", "s", "m", "t", "e")
    assert len(load_problems(tmp_path, "multi-line", limit=2)) == 2
    with pytest.raises(FileNotFoundError, match="--data"):
        load_problems(tmp_path, "single-line")


@pytest.mark.parametrize(
    ("subset", "count"),
    [
        ("single-line", 1033),
        ("multi-line", 5815),
        ("random-span", 1640),
        ("random-span-light", 164),
    ],
)
def test_the_real_files_load(subset: str, count: int) -> None:
    needs_data()
    problems = load_problems(DATA, subset)
    assert len(problems) == count
    assert run_program(problems[0].program(problems[0].middle)).passed


def test_auto_closed_case() -> None:
    case = auto_closed_case(PROBLEM, "")
    assert case is not None
    assert case.cursor.prefix.endswith("return sorted(")
    assert case.cursor.suffix.startswith(")\n")
    assert case.raw == "set(l))\n"
    assert case.program("set(l)", 0) == PROBLEM.program(PROBLEM.middle)


def test_run_on_cases() -> None:
    variants = {case.variant: case.raw for case in run_on_cases(PROBLEM)}
    assert variants["canonical"] == PROBLEM.middle
    assert variants["suffix run-on"] == PROBLEM.middle + "\n"
    assert variants["suffix line, then outer code"] == PROBLEM.middle + "\n\n\nprint(unique())\n"
    assert variants["looping last line"] == PROBLEM.middle * 5
    assert {"auto-closed bracket", "editor cursor", "editor cursor, run-on"} <= set(variants)


def test_the_outer_code_run_on_repeats_the_suffix_up_to_its_first_line_of_code() -> None:
    problem = dataclasses.replace(PROBLEM, suffix="\n    return x\n    y = 1\n")
    assert leaves(problem) == PROBLEM.middle + "\n    return x\n" + OUTER_CODE.format(problem)


def test_editor_cursor_cases() -> None:
    """The cursor on an empty line the editor indented, the line's own newline right of it."""
    cases = {case.variant: case for case in editor_cursor_cases(PROBLEM)}
    alone = cases["editor cursor"]
    assert (alone.cursor.prefix, alone.cursor.suffix) == ("def unique(l):\n    ", "\n\n")
    assert alone.raw == "return sorted(set(l))\n"
    assert alone.program("return sorted(set(l))", 0) == PROBLEM.program(PROBLEM.middle)
    assert cases["editor cursor, run-on"].raw.startswith(alone.raw + "\n")
    # a middle that starts mid-line, or a cursor that is not at a line start: no such case
    assert editor_cursor_cases(dataclasses.replace(PROBLEM, middle="sorted(l)")) == []
    assert editor_cursor_cases(dataclasses.replace(PROBLEM, prefix="def unique(l): ")) == []


def test_finish_feeds_the_raw_text_token_by_token(demo_tokenizer: FimTokenizer) -> None:
    """The check's path is the server's: a Finisher, asked after every token."""
    case = {case.variant: case for case in run_on_cases(PROBLEM)}["editor cursor, run-on"]
    found = finish(case, Mode.MULTI_LINE, demo_tokenizer)
    assert found == Suggestion("return sorted(set(l))")
    assert run_program(case.program(found.text, found.replace_chars)).passed
    assert not run_program(case.program(case.raw, 0)).passed


def test_markdown_tables() -> None:
    report = {"benchmark": "b", "problems": 2, "pass@1": 0.5, "exact_match": 0.25, "seconds": 1.5}
    assert markdown(report).splitlines() == [
        "| benchmark | problems | pass@1 | exact_match | seconds |",
        "|---|---|---|---|---|",
        "| b | 2 | 0.5000 | 0.2500 | 1.5 |",
    ]
    rates = {"all": {"cases": 3, "on": 1.0, "off": 1 / 3}}
    assert check_markdown("single-line", rates).splitlines()[-1] == "| all | 3 | 1.0000 | 0.3333 |"


def test_eval_command_runs_the_pipeline_on_a_tiny_model(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end through the CLI: real prompt, engine and post-processing, programs executed."""
    needs_data()
    report_path = tmp_path / "report.json"
    model = ["--model", str(tiny_model_dir), "--device", "cpu", "--quantization", "none"]
    sampling = ["--max-new-tokens", "8", "--temperature", "0.8", "--samples", "2"]
    data = ["--data", str(DATA), "--limit", "2", "--json", str(report_path)]
    status = cli.main(["eval", "humaneval-infilling", *data, *model, *sampling])
    assert status == 0
    report = json.loads(report_path.read_text())
    assert report["problems"] == 2 and report["samples"] == 2
    assert 0.0 <= report["pass@1"] <= 1.0 and "pass@10" not in report
    assert [len(r["samples"]) for r in report["results"]] == [2, 2]
    assert "| humaneval-infilling/single-line |" in capsys.readouterr().out


def test_postprocess_check_command(capsys: pytest.CaptureFixture[str]) -> None:
    needs_data()
    data = ["--data", str(DATA), "--limit", "3"]
    assert cli.main(["eval", "postprocess-check", *data, "--model", "demo"]) == 0
    table = capsys.readouterr().out
    assert "| all |" in table and "| editor cursor, run-on |" in table


def test_postprocess_check_needs_a_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    needs_data()
    data = ["--data", str(DATA), "--limit", "1"]
    assert cli.main(["eval", "postprocess-check", *data, "--model", str(tmp_path)]) == 1
    assert "tokenizer" in capsys.readouterr().err
