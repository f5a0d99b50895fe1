"""The benchmarks: every one imports (mypy cannot see a module the engine no longer has, its
imports of third-party trees not followed, and a benchmark is run by hand, long after a
refactor); the editing session's pure parts (figures, floors, goals, report, the editor's
bookkeeping of edits); and a quick editing session against the demo model, end to end."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(path.stem for path in ROOT.joinpath("bench").glob("*.py"))


@pytest.mark.parametrize("name", [name for name in BENCHMARKS if name != "__init__"])
def test_benchmark_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


# ---- the editing session's pure parts -----------------------------------------------------------

NEOX = {"num_hidden_layers": 24, "hidden_size": 2048, "vocab_size": 50_280}
MACHINE = {"cpu": "a CPU", "cores": 2, "threads": 2, "python": "3.11", "torch": "2.9",
           "transformers": "5.0"}  # fmt: skip
ARGS = {"quantization": "int8", "context_length": 2048, "max_new_tokens": 8, "rounds": 1,
        "session": ["wrap", "wrap_chunks"], "pause": 0.1, "think": 1.0}  # fmt: skip


def answer(setup: str, kind: str, ms: float, new: int = 0, prefill_ms: float = 0.0) -> dict:
    stats = {
        "uri": "file:///bench/textwrap.py",
        "prompt_tokens": 1000,
        "cached_tokens": 1000 - new,
        "generated_tokens": 4,
        "stop_reason": "max-tokens",
        "timings_ms": {"prefill": prefill_ms, "decode": 40.0} if new else {"decode": 40.0},
    }
    return {
        "setup": setup, "round": 1, "kind": kind, "spot": "wrap", "latency_ms": ms,
        "shown": True, "stats": stats,
    }  # fmt: skip


def start(setup: str, restart: bool, ready_s: float) -> dict:
    return {"setup": setup, "round": 1, "restart": restart, "ready_s": ready_s, "peak_rss_gb": 1.5}


def floors(read: float, int_mm: float | str, kernel: float) -> dict:
    return {
        "read_bytes_s": read,
        "int8_ops_s": {
            "torch._int_mm": int_mm,
            "Int8Linear (C kernel)": kernel,
            "torch dynamic int8": "not here",
        },
    }


def a_result() -> dict:
    answers = [
        answer("new", "first", 2000, new=1000, prefill_ms=1500),
        *[answer("new", "key", ms) for ms in (100, 120, 140, 160)],
        answer("new", "move", 900, new=200, prefill_ms=300),
        answer("new", "return", 300),
        answer("new", "switch", 1200, new=800, prefill_ms=1000),
        answer("new", "restart", 5000, new=1000, prefill_ms=1500),
        answer("today", "first", 2100, new=1000, prefill_ms=1600),
        *[answer("today", "key", ms) for ms in (110, 130, 150, 170)],
        answer("today", "move", 2000, new=1000, prefill_ms=1600),
        answer("today", "restart", 2500, new=1000, prefill_ms=1600),
    ]
    return {
        "machine": MACHINE,
        "command": "python bench/editing_session.py --model demo",
        "args": ARGS,
        "model": "demo",
        "model_config": NEOX,
        "setups": [
            {"name": "today", "what": "old code", "keys": 8},
            {"name": "new", "what": "this code", "keys": 8},
        ],
        "answers": answers,
        "starts": [
            start("new", False, 9.0),
            start("new", True, 2.0),
            start("new", True, 2.4),
            start("today", False, 10.0),
            start("today", True, 4.0),
        ],
        "skipped_accepts": {"today": 0, "new": 1},
        "floors": [floors(10e9, 2e9, 40e9), floors(12e9, 4e9, 60e9), floors(11e9, 3e9, 50e9)],
    }


def test_a_setups_figures_come_from_its_own_answers_and_starts() -> None:
    from bench.editing_session import summary

    new = summary(a_result(), "new")
    assert new["session"]["n"] == 8  # the restart's key is not part of the session
    assert new["moves"]["n"] == 2  # a move to a new line and a return to an earlier one
    assert new["moves"]["p50"] in (300, 900)
    assert new["kinds"]["key"]["p50"] in (120, 140)
    assert new["kinds"]["switch"]["n"] == 1
    assert new["first_start_s"] == 9.0 and new["restart_s"] == 2.2  # the median of 2.0 and 2.4
    # Only requests that prefilled 128 tokens or more: first 1.5, switch 1.25, restart 1.5
    # (the move's 200 tokens at 1.5 ms each count too).
    assert new["cold_prefill_ms_per_token"] == 1.5
    assert "restart" in summary(a_result(), "today")["kinds"]


def test_new_tokens_are_those_a_request_prefilled() -> None:
    from bench.editing_session import new_tokens

    assert new_tokens(answer("new", "key", 100)) == 0  # no prefill ran
    assert new_tokens(answer("new", "first", 100, new=300, prefill_ms=10)) == 300
    assert new_tokens({"stats": {}}) == 0  # no log line


def test_the_floors_are_medians_and_the_prefill_floor_is_at_the_fastest_gemm() -> None:
    from bench.editing_session import faster, floors_summary
    from bench.floor import layer_weights

    summed = floors_summary(a_result(), NEOX)
    assert summed["read_gb_s"] == pytest.approx(11.0)
    assert summed["samples"] == 3
    gemm = summed["gemm_gop_s"]
    assert gemm["torch._int_mm"] == pytest.approx(3.0)
    assert gemm["Int8Linear (C kernel)"] == pytest.approx(50.0)
    assert gemm["torch dynamic int8"] == "not here"  # why it did not run, kept
    weights = layer_weights(NEOX)
    assert weights == 24 * 12 * 2048**2
    assert summed["prefill_floor_ms_per_token"] == pytest.approx(2 * weights / 50e9 * 1000)
    assert faster(gemm).startswith("the engine's kernel (Int8Linear), 16.67x")
    assert faster({"torch._int_mm": 2.0, "Int8Linear (C kernel)": 1.0}).startswith("torch._int_mm")
    assert faster({"torch._int_mm": "cannot run"}) == "not both measured"
    assert floors_summary({"floors": []}, None)["prefill_floor_ms_per_token"] is None


def test_the_goals_are_judged_for_the_new_code() -> None:
    from bench.editing_session import goals, summary

    result = a_result()
    lines = goals({name: summary(result, name) for name in ("today", "new")})
    assert lines[0] == "- session p90 1,200 ms ≤ 1,500: met"
    assert lines[1] == "- first key after a move p50 300 ms ≤ 1,500: met"
    assert lines[2] == "- warm keystroke p50 140 ms, today 150 ms: met (no slower than today)"
    assert lines[3] == "- restart to ready 2.2 s ≤ 3 s: met"
    result["starts"][1]["ready_s"] = result["starts"][2]["ready_s"] = 3.5
    result["answers"] = [a for a in result["answers"] if a["kind"] != "key" or a["setup"] == "new"]
    lines = goals({name: summary(result, name) for name in ("today", "new")})
    assert lines[2].endswith("today nan ms: not measured (no slower than today)")
    assert lines[3] == "- restart to ready 3.5 s ≤ 3 s: not met"
    assert goals({}) == ["- (the new setup did not run)"]


def test_the_report_sets_the_setups_side_by_side_with_the_floors_and_the_command() -> None:
    from bench.editing_session import floors_summary, report

    result = a_result()
    result["floor"] = floors_summary(result, NEOX)
    text = report(result)
    assert "| | today | new | goal |" in text
    assert "| session p90 | 2,000 | 1,200 | ≤ 1,500 |" in text
    assert "| restart to ready, s: p50 (range) | 4.0 (4.0-4.0) | 2.2 (2.0-2.4) | ≤ 3 |" in text
    assert "| first key after a switch to another file | - | 1,200 (1) |  |" in text
    assert "## The machine's floors, measured in this run" in text
    assert "- memory read: 11.0 GB/s" in text
    assert "torch dynamic int8: not here" in text
    assert "python bench/editing_session.py --model demo" in text
    assert "Accepts skipped (no suggestion within 3 keys): today 0, new 1." in text


def test_the_setups_take_turns_in_a_rotating_order() -> None:
    from bench.editing_session import rotated

    assert rotated([1, 2, 3], 1) == [2, 3, 1]
    assert rotated([1, 2, 3], 5) == [3, 1, 2]


async def test_the_editor_moves_the_spots_below_an_edit_that_adds_lines() -> None:
    from bench.editing_session import Editor, Setup
    from fim_lsp.documents import Place, content

    class Client:
        def __init__(self) -> None:
            self.changes: list = []

        def text_document_did_change(self, params) -> None:
            self.changes.append(params)

    args = argparse.Namespace(out=Path("unused"), think=0, pause=0)
    editor = Editor(Setup("new", "this code", ROOT, {}, 2), args, 1)
    editor.client = Client()  # type: ignore[assignment]
    wrap, dedent = editor.spots["wrap"], editor.spots["dedent"]
    document = editor.documents["textwrap.py"]
    lines = [content(line) for line in document.lines]
    wrap.line, wrap.index = lines.index("        chunks = self._split_chunks(text)"), 8
    dedent.line = lines.index("    margin = None")
    assert dedent.line > wrap.line
    below = dedent.line
    editor.here = "wrap"
    await editor.edit(Place(wrap.line, 8), Place(wrap.line, 8), "\n        x = 1\n        ")
    assert (wrap.line, wrap.index) == (
        lines.index("        chunks = self._split_chunks(text)") + 2,
        8,
    )
    assert dedent.line == below + 2 and content(document.lines[dedent.line]) == "    margin = None"
    assert document.version == 2 and len(editor.client.changes) == 1
    change = editor.client.changes[0].content_changes[0]
    assert (change.range.start.line, change.range.start.character) == (wrap.line - 2, 8)


def test_a_trained_context_model_links_the_weights_and_says_2048_positions(tmp_path) -> None:
    from bench.editing_session import checkout, trained_context_model

    model = tmp_path / "random"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    folder = trained_context_model(model)
    assert folder.name == "random-2048"
    assert (folder / "model.safetensors").resolve() == (model / "model.safetensors").resolve()
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 2048
    assert trained_context_model(model) == folder  # again: nothing to do
    assert checkout(str(tmp_path)) == tmp_path.resolve()  # a folder is today's code as it is


# ---- end to end ---------------------------------------------------------------------------------

# The kinds of request each setup's session has (reuse off types the first key of each burst).
BURSTS = {"first", "move", "return", "switch", "switch back", "restart"}
KINDS = {"reuse off": BURSTS, "today": BURSTS | {"key", "newline"}}
KINDS["new"] = KINDS["today"]


@pytest.mark.e2e
def test_a_quick_editing_session_runs_through_each_setup(tmp_path: Path) -> None:
    # This checkout stands in for today's code: the run needs no git history.
    report = tmp_path / "reports" / "editing-session.md"
    command = [
        sys.executable, "bench/editing_session.py", "--model", "demo", "--quick",
        "--baseline", str(ROOT), "--think", "0", "--pause", "0", "--out", str(tmp_path),
        "--report", str(report),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    result = json.loads((tmp_path / "editing_session.json").read_text())
    for setup, kinds in KINDS.items():
        answers = [a for a in result["answers"] if a["setup"] == setup]
        assert {a["kind"] for a in answers} >= kinds
        assert all(a["latency_ms"] > 0 and a["stats"] for a in answers)  # each one logged
        starts = [s for s in result["starts"] if s["setup"] == setup]
        assert all(s["ready_s"] > 0 for s in starts)
        assert [s["restart"] for s in starts] == [False, True]
    for setup in ("today", "new"):
        kinds = {a["kind"] for a in result["answers"] if a["setup"] == setup}
        assert "accept" in kinds or result["skipped_accepts"][setup]
    assert result["floors"] and all(s["read_bytes_s"] > 0 for s in result["floors"])
    assert not math.isnan(result["floor"]["read_gb_s"])
    text = report.read_text()
    assert text == (tmp_path / "editing_session.md").read_text()
    assert "| session p90 |" in text and "## The machine's floors" in text


def test_the_team_benchmark_replays_each_user_through_a_fim_lsp_of_their_own(tmp_path: Path):
    # Without --url: the local replay alone (tests/team/ replays against a real vLLM).
    command = [
        sys.executable, "bench/team.py", "--model", "demo", "--users", "2", "--keystrokes", "3",
        "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    (row,) = json.loads((tmp_path / "team.json").read_text())["rows"]
    assert (row["users"], row["backend"]) == (2, "local")
    keys = row["keystrokes"]
    assert sorted(k["user"] for k in keys) == [0, 0, 0, 1, 1, 1]  # every key answered, logged
    assert all(k["answer_ms"] > 0 and k["first_token_ms"] <= k["answer_ms"] for k in keys)
    assert len(list((tmp_path / "team-logs").glob("local-2-user*.log"))) == 2
    assert "| 2 | local | 6 |" in (tmp_path / "team.md").read_text()
