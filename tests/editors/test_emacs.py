"""editors/emacs/fim-lsp.el in real `emacs --batch` (Debian's Emacs 28 with eglot 1.9 and
lsp-mode 8): completion-at-point inserts the suggestion; fim-lsp-inline-mode shows it as an
overlay, accepts a word with M-f and the rest with TAB."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from editor_support import ROOT

EMACS = shutil.which("emacs")
DRIVER = Path(__file__).resolve().parent / "emacs_test.el"
pytestmark = pytest.mark.skipif(
    EMACS is None, reason="emacs not found (apt-get install emacs-nox elpa-eglot elpa-lsp-mode)"
)

SOURCE = 'import os\n\n\ndef greet(name):\n    s = "😀 hi" +\n    return s\n'
TYPED = " "
# eglot 1.9 counts UTF-16 units as LSP says: the test types after the emoji. lsp-mode 8 counts
# code points while claiming UTF-16 (its didChange too), so it gets a line without one.
LINES = {"eglot": 4, "lsp-mode": 5}


@functools.cache
def has_package(name: str) -> bool:
    done = subprocess.run(
        [
            EMACS or "emacs",
            "--batch",
            "-q",
            "--eval",
            f"(progn (package-initialize) (require '{name}))",
        ],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def expected_after(text: str, line: int, complete_json, tmp_path: Path) -> tuple[str, str]:
    """(the suggestion, the text once it is accepted) at the end of 0-based `line` of `text`."""
    lines = text.split("\n")
    typed_file = tmp_path / "typed.py"
    typed_file.write_bytes(text.encode("utf-8"))
    result = complete_json(typed_file, line + 1, len(lines[line]) + 1)
    offset = len("\n".join(lines[:line])) + 1 + len(lines[line])
    accepted = text[:offset] + result["completion"] + text[offset + result["replace_chars"] :]
    return result["completion"], accepted


@pytest.mark.parametrize("backend", ["eglot", "lsp-mode"])
def test_emacs(
    backend: str,
    tmp_path: Path,
    editor_env: dict[str, str],
    server_command: list[str],
    complete_json,
) -> None:
    if not has_package(backend):
        pytest.skip(f"{backend} not installed (apt-get install elpa-{backend})")
    line = LINES[backend]
    root = tmp_path / "project"
    root.mkdir()
    capf_file, inline_file = root / "capf.py", root / "inline.py"
    for file in (capf_file, inline_file):
        file.write_bytes(SOURCE.encode("utf-8"))
    lines = SOURCE.split("\n")
    lines[line] += TYPED
    typed = "\n".join(lines)
    completion, accepted = expected_after(typed, line, complete_json, tmp_path)
    assert completion, "the tiny model should suggest something here"

    result = tmp_path / "result.json"
    config = {
        "loadPath": str(ROOT / "editors" / "emacs"),
        "cmd": server_command,
        "backend": backend,
        "root": str(root),
        "capfFile": str(capf_file),
        "inlineFile": str(inline_file),
        "line": line,
        "typed": TYPED,
        "result": str(result),
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = subprocess.run(
        [EMACS, "--batch", "-q", "-l", str(DRIVER)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=editor_env | {"FIM_TEST_CONFIG": str(tmp_path / "config.json")},
        cwd=root,
        timeout=300,
        check=False,
    )
    assert result.exists(), f"emacs wrote no result:\n{done.stdout}\n{done.stderr[-5000:]}"
    out = json.loads(result.read_text())
    context = f"{json.dumps(out, indent=1, ensure_ascii=False)}\n{done.stderr[-3000:]}"
    assert out.get("error") is None, context
    cursor = len("\n".join(lines[: line + 1]))  # point - 1: the end of the typed line

    # completion-at-point: the one item goes in, exactly.
    assert out["capfBefore"] == typed, context
    assert out["capfAfter"] == accepted, context

    # The inline mode: the overlay at point shows the suggestion; M-f takes a word; TAB the rest.
    assert out["inlineBuffer"] == typed, context
    assert out["inlinePoint"] == cursor, context
    assert out["inlineOverlay"] == [cursor, completion], context
    start, rest = out["afterWordOverlay"]
    word = completion[: len(completion) - len(rest)]
    assert word and completion.endswith(rest), context
    assert out["afterWordLine"] == lines[line] + word, context
    assert start == cursor + len(word), context
    assert out["inlineAfter"] == accepted, context
    assert out["inlinePointAfter"] == cursor + len(completion), context
    assert out["dismissed"] is True, context


def test_fim_lsp_el_byte_compiles_without_warnings(
    tmp_path: Path, editor_env: dict[str, str]
) -> None:
    if not (has_package("eglot") and has_package("lsp-mode")):
        pytest.skip("eglot and lsp-mode are needed to check the calls into them")
    source = tmp_path / "fim-lsp.el"
    shutil.copy(ROOT / "editors" / "emacs" / "fim-lsp.el", source)
    done = subprocess.run(
        [
            EMACS or "emacs", "--batch", "-q", "--eval",
            "(progn (package-initialize) (require 'eglot) (require 'lsp-mode)"
            " (setq byte-compile-error-on-warn t)"
            f" (unless (byte-compile-file {json.dumps(str(source))}) (kill-emacs 1)))",
        ],
        capture_output=True, text=True, env=editor_env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
