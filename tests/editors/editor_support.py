"""Helpers for the real-editor tests: where the programs are, artifacts, column arithmetic."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# The server runs the tiny model unquantized: int8 needs a GPU, and this is faster on CPU.
SERVER_OPTIONS = ["--quantization", "none"]


def bin_dir() -> Path:
    """Where this interpreter's scripts live (fim-lsp, nvim, node from the test wheels)."""
    return Path(sys.executable).parent


def fim_lsp_program() -> list[str]:
    """The `fim-lsp` command: the script beside this interpreter, else on PATH, else -m."""
    script = bin_dir() / "fim-lsp"
    if script.exists():
        return [str(script)]
    found = shutil.which("fim-lsp")
    return [found] if found else [sys.executable, "-m", "fim_lsp"]


def which(program: str) -> str | None:
    """A program beside this interpreter (wheel-installed nvim, node) or on PATH."""
    local = bin_dir() / program
    if local.exists():
        return str(local)
    return shutil.which(program)


def artifact_dir(name: str) -> Path:
    """An emptied folder, kept after the run (gitignored), for screenshots and logs."""
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def utf8_column(line: str, chars: int) -> int:
    """The byte column (what Neovim's utf-8 positions count) of the first `chars` characters."""
    return len(line[:chars].encode("utf-8"))
