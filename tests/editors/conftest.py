"""Shared fixtures for the real-editor tests: a tiny model, the server command, a clean HOME."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# The helpers beside this file, importable whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from editor_support import SERVER_OPTIONS, bin_dir, fim_lsp_program

TESTS = Path(__file__).resolve().parents[1]


def _tiny_model_module() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_model", TESTS / "tiny_model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def editor_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-NeoX FIM model: deterministic garbage suggestions, loads in seconds."""
    return _tiny_model_module().build(tmp_path_factory.mktemp("editor-model") / "tiny")


@pytest.fixture(scope="session")
def server_command(editor_model: Path) -> list[str]:
    """`fim-lsp serve` on the tiny model, as an editor would start it."""
    return [*fim_lsp_program(), "serve", "--model", str(editor_model), *SERVER_OPTIONS]


@pytest.fixture(scope="session")
def complete_json(editor_model: Path) -> Callable[..., dict[str, Any]]:
    """`fim-lsp complete FILE:LINE:COL --json [OPTION...]` (1-based line, 1-based column in
    code points), on the tiny model."""

    answers: dict[tuple[Any, ...], dict[str, Any]] = {}  # tests share positions

    def complete(path: Path, line: int, column: int, *options: str) -> dict[str, Any]:
        key = (path.suffix, path.read_bytes(), line, column, options)
        if key not in answers:
            answers[key] = run_complete(path, line, column, options)
        return answers[key]

    def run_complete(
        path: Path, line: int, column: int, options: tuple[str, ...]
    ) -> dict[str, Any]:
        command = [
            *fim_lsp_program(),
            "complete",
            f"{path}:{line}:{column}",
            "--model",
            str(editor_model),
            *SERVER_OPTIONS,
            *options,
            "--json",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return complete


@pytest.fixture
def editor_env(tmp_path: Path) -> dict[str, str]:
    """The environment for an editor: HOME and XDG folders in a temp dir, our scripts on PATH."""
    home = tmp_path / "home"
    env = dict(os.environ)
    for name, sub in {
        "HOME": "",
        "XDG_CONFIG_HOME": ".config",
        "XDG_DATA_HOME": ".local/share",
        "XDG_STATE_HOME": ".local/state",
        "XDG_CACHE_HOME": ".cache",
    }.items():
        folder = home / sub
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.pop("NVIM", None)
    env.pop("NVIM_LISTEN_ADDRESS", None)
    return env
