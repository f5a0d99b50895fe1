"""The sandbox for eval's generated programs: escapes that it stops, its limits, and the refusal
to run without it.

Each escape also runs unsandboxed (Isolation.NONE, what --unsafe-no-sandbox gives) as a strict
xfail: there it must succeed, which shows the test can fail. Everything an escape touches is the
test's own: a file in tmp_path, a listener, a `sleep` it started.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from fim_lsp import cli, evaluate, sandbox
from fim_lsp.evaluate import LIMITS, Outcome, run_program, run_programs
from fim_lsp.sandbox import Isolation, Sandbox
from tests.test_evaluate import PROBLEM, write_subset

SANDBOXES = (Isolation.BUBBLEWRAP, Isolation.UNSHARE)
UNSANDBOXED = pytest.param(
    Isolation.NONE,
    marks=pytest.mark.xfail(strict=True, reason="without a sandbox the escape works"),
)


@cache
def problem_with(isolation: Isolation) -> str | None:
    return None if isolation is Isolation.NONE else sandbox.problem_with(isolation)


def usable(isolation: Isolation) -> Isolation:
    problem = problem_with(isolation)
    if problem:
        pytest.skip(f"{isolation.value} does not work on this machine: {problem}")
    return isolation


@pytest.fixture(params=[*SANDBOXES, UNSANDBOXED], ids=lambda isolation: isolation.value)
def escape(request: pytest.FixtureRequest) -> Isolation:
    """The isolations an escape is tried under: each sandbox, and none (expected to fail)."""
    return usable(request.param)


@pytest.fixture(params=[*SANDBOXES, Isolation.NONE], ids=lambda isolation: isolation.value)
def limited(request: pytest.FixtureRequest) -> Isolation:
    """The isolations a limit is tried under: the rlimits hold in every one."""
    return usable(request.param)


@pytest.fixture
def sleeper() -> Iterator[str]:
    """A `sleep` argument no other process has; whatever runs with it is killed afterwards."""
    mark = f"3600.{uuid.uuid4().int % 10**12}"
    yield mark
    for pid in processes_with(mark):
        os.kill(pid, 9)


def processes_with(argument: str) -> list[int]:
    """The host's processes with `argument` on their command line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument.encode() in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # ended while we looked
    return found


# ---- escapes ----------------------------------------------------------------------------------


def test_cannot_write_outside(escape: Isolation, tmp_path: Path) -> None:
    target = tmp_path / "written"
    run_program(f"open({str(target)!r}, 'w').write('escaped')\n", 5.0, escape)
    assert not target.exists()


def test_cannot_delete_outside(escape: Isolation, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    # posix.unlink: the guard only replaces os.unlink.
    run_program(f"import posix\nposix.unlink({str(victim)!r})\n", 5.0, escape)
    assert victim.read_text() == "keep me"


def test_cannot_read_outside(escape: Isolation, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    outcome = run_program(f"assert open({str(secret)!r}).read() == 's3cret'\n", 5.0, escape)
    assert outcome == Outcome(False, "FileNotFoundError")


def test_cannot_leave_a_process_running(escape: Isolation, sleeper: str) -> None:
    program = (
        f"import os\nos.posix_spawn('/bin/sleep', ['sleep', {sleeper!r}], {{}}, setsid=True)\n"
    )
    assert run_program(program, 5.0, escape).passed  # it may start one...
    time.sleep(0.2)
    assert processes_with(sleeper) == []  # ...which ends with it


def test_a_batch_kills_what_each_program_left(escape: Isolation, sleeper: str) -> None:
    spawn = f"import os\nos.posix_spawn('/bin/sleep', ['sleep', {sleeper!r}], {{}}, setsid=True)\n"
    # Visible from inside the sandbox: the worker killed the first program's process.
    look = (
        "import os, time\ntime.sleep(0.2)\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        f"        assert {sleeper!r}.encode() not in open(f'/proc/{{pid}}/cmdline', 'rb').read()\n"
        "    except OSError:\n"
        "        pass\n"
    )
    assert list(run_programs([spawn, look], 5.0, escape)) == [Outcome(True), Outcome(True)]


def test_cannot_see_other_processes(escape: Isolation) -> None:
    with subprocess.Popen(["sleep", "60"]) as victim:
        try:
            program = f"import os\nassert not os.path.exists('/proc/{victim.pid}')\n"
            outcome = run_program(program, 5.0, escape)
        finally:
            victim.kill()
    assert outcome.passed


def test_cannot_signal_other_processes(escape: Isolation) -> None:
    with subprocess.Popen(["sleep", "60"]) as victim:
        try:
            run_program(f"import posix\nposix.kill({victim.pid}, 9)\n", 5.0, escape)
            time.sleep(0.2)
            assert victim.poll() is None
        finally:
            victim.kill()


def test_cannot_connect_to_a_local_listener(escape: Isolation) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        # _socket: the guard only replaces socket.socket.
        program = (
            "import _socket\nconnection = _socket.socket()\nconnection.settimeout(3)\n"
            f"connection.connect(('127.0.0.1', {port}))\nconnection.send(b'escaped')\n"
        )
        outcome = run_program(program, 5.0, escape)
        listener.settimeout(0.5)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert not outcome.passed


# ---- limits -----------------------------------------------------------------------------------

MAP_6_GIB = (
    "import mmap\ntry:\n    mmap.mmap(-1, 6 << 30)\n"
    "except OSError as error:\n    raise SystemExit(error.errno)\n"
)
BEYOND_THE_FILE_LIMIT = (
    f"with open('big', 'wb', buffering=0) as file:\n    file.seek({LIMITS.file_bytes})\n"
    "    try:\n        file.write(b'x')\n"
    "    except OSError as error:\n        raise SystemExit(error.errno)\n"
)


def test_memory_limit(limited: Isolation, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_program(MAP_6_GIB, 5.0, limited) == Outcome(False, f"exit status {errno.ENOMEM}")
    # The limit is what stopped it: address space only, nothing is touched.
    monkeypatch.setattr(evaluate, "LIMITS", dataclasses.replace(LIMITS, memory_bytes=8 << 30))
    assert run_program(MAP_6_GIB, 5.0, limited).passed


def test_file_size_limit(limited: Isolation, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = run_program(BEYOND_THE_FILE_LIMIT, 5.0, limited)
    assert outcome == Outcome(False, f"exit status {errno.EFBIG}")
    # The limit is what stopped it: the file is sparse, the tmpfs is larger.
    larger = dataclasses.replace(LIMITS, file_bytes=2 * LIMITS.file_bytes)
    monkeypatch.setattr(evaluate, "LIMITS", larger)
    assert run_program(BEYOND_THE_FILE_LIMIT, 5.0, limited).passed


def test_cpu_limit_ends_a_program_that_ignores_its_timer(
    limited: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = (
        "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    )
    # Only its CPU time (1 s + 1 s) ends it before the runner gives up on the worker (100 s);
    # on a busy machine 2 s of CPU take longer than 2 s.
    monkeypatch.setattr(evaluate, "WORKER_MARGIN_S", 100.0)
    started = time.monotonic()
    assert run_program(program, 1.0, limited) == Outcome(False, "timeout")
    assert time.monotonic() - started < 50


def test_cpu_limit_kills_what_ignores_sigxcpu(limited: Isolation) -> None:
    program = (
        "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    )
    limits = dataclasses.replace(LIMITS, cpu_seconds=1)  # the hard limit too: SIGKILL
    with Sandbox([sys.executable, "-I", "-c", program], limits, limited) as running:
        assert running.process.wait(50) != 0


def test_a_worker_is_replaced_before_its_cpu_time_runs_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evaluate, "LIMITS", dataclasses.replace(LIMITS, cpu_seconds=2))
    burn = (
        "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end:\n    pass\n"
    )
    # One worker would spend more than its 2 s on these.
    assert list(run_programs([burn] * 4, 10.0, usable(sandbox.detect()))) == [Outcome(True)] * 4


FORK_BOMB = """
import posix, time
forks = 0
try:
    while forks < 200:
        if posix.fork() == 0:
            time.sleep(5)
            posix._exit(0)
        forks += 1
except BlockingIOError:
    pass
raise SystemExit(forks)
"""


@pytest.mark.parametrize("isolation", SANDBOXES, ids=lambda isolation: isolation.value)
def test_process_limit_bounds_a_fork_bomb(isolation: Isolation) -> None:
    outcome = run_program(FORK_BOMB, 5.0, usable(isolation))
    forks = int(outcome.error.removeprefix("exit status "))
    assert 0 < forks < LIMITS.processes


@pytest.mark.skipif(os.geteuid() == 0, reason="outside a namespace the kernel exempts root")
def test_process_limit_holds_unsandboxed() -> None:
    forks = int(run_program(FORK_BOMB, 5.0, Isolation.NONE).error.removeprefix("exit status "))
    assert 0 < forks < LIMITS.processes


# ---- the sandbox itself -----------------------------------------------------------------------


@pytest.mark.parametrize("isolation", SANDBOXES, ids=lambda isolation: isolation.value)
def test_extra_folders_are_read_only(isolation: Isolation, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("shared")
    tmp_path.chmod(0o755)  # root's sandbox reads it as nobody
    program = (
        f"import os\nfolder = {str(tmp_path)!r}\n"
        "assert open(folder + '/data').read() == 'shared'\n"
        "for attempt in (lambda: open(folder + '/new', 'w'), lambda: os.unlink(folder + '/data')):\n"
        "    try:\n        attempt()\n"
        "    except OSError as error:\n        assert error.errno == 30, error  # EROFS\n"
        "    else:\n        raise AssertionError('wrote')\n"
    )
    command = [sys.executable, "-I", "-c", program]
    with Sandbox(command, LIMITS, usable(isolation), [str(tmp_path)]) as running:
        assert running.process.wait(30) == 0
    assert sorted(os.listdir(tmp_path)) == ["data"]


@pytest.mark.parametrize("isolation", SANDBOXES, ids=lambda isolation: isolation.value)
def test_who_runs_inside(isolation: Isolation) -> None:
    """Root's programs run as nobody (65534, no user namespace); a user's as that user, which
    unshare's namespace calls root; without capabilities either way."""
    program = (
        "import os\nprint(os.getuid())\n"
        "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
    )
    command = [sys.executable, "-I", "-c", program]
    with Sandbox(command, LIMITS, usable(isolation), stdout=subprocess.PIPE, text=True) as running:
        uid, capabilities = running.process.communicate(timeout=30)[0].split()
    assert int(capabilities, 16) == 0
    if os.geteuid() == 0:
        assert uid == sandbox.NOBODY
    else:
        assert uid == ("0" if isolation is Isolation.UNSHARE else str(os.getuid()))


def test_unisolated_runs_under_the_limits_only() -> None:
    command = sandbox.wrap(["true"], LIMITS, Isolation.NONE, "/nowhere")
    assert command[0] == "prlimit" and command[-2:] == ["--", "true"]


# ---- without isolation ------------------------------------------------------------------------


@pytest.fixture
def no_isolation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A machine with neither bwrap nor unshare on PATH."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    sandbox.detect.cache_clear()
    yield
    sandbox.detect.cache_clear()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    row = {
        "task_id": PROBLEM.task_id,
        "prompt": PROBLEM.prefix,
        "suffix": PROBLEM.suffix,
        "canonical_solution": PROBLEM.middle,
        "test": PROBLEM.test,
        "entry_point": PROBLEM.entry_point,
    }
    write_subset(tmp_path, "single-line", [row])
    return tmp_path


def test_detect_says_why_and_what_to_install(no_isolation: None) -> None:
    with pytest.raises(sandbox.Unavailable) as raised:
        sandbox.detect()
    message = str(raised.value)
    assert "bwrap: bwrap is not installed" in message
    assert "unshare: unshare is not installed" in message
    assert "apt install bubblewrap" in message


def test_the_batch_refuses_without_isolation(no_isolation: None) -> None:
    with pytest.raises(sandbox.Unavailable):
        next(run_programs(["x = 1\n"]))


@pytest.mark.parametrize("benchmark", ["postprocess-check", "humaneval-infilling"])
def test_eval_refuses_without_isolation(
    no_isolation: None, data: Path, benchmark: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before the model loads: this one does not exist.
    model = ["--model", str(data / "no-model")] if benchmark == "humaneval-infilling" else []
    assert cli.main(["eval", benchmark, "--data", str(data), *model]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "refusing to run the generated programs" in captured.err
    assert "apt install bubblewrap" in captured.err
    assert "--unsafe-no-sandbox" in captured.err


def test_unsafe_no_sandbox_runs_with_a_warning(
    no_isolation: None, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_flags = ["--data", str(data), "--model", "demo"]  # the demo model's tokenizer: no download
    arguments = ["eval", "postprocess-check", *data_flags, "--unsafe-no-sandbox"]
    assert cli.main(arguments) == 0
    captured = capsys.readouterr()
    assert "warning: --unsafe-no-sandbox" in captured.err
    assert "full rights" in captured.err
    assert "| canonical | 1 | 1.0000 | 1.0000 |" in captured.out


def test_help_states_the_isolation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["eval", "postprocess-check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    claims = (
        "new mount, PID, network, IPC and UTS namespaces and a new user namespace",
        "as nobody when started by root",
        f"{LIMITS.memory_bytes >> 30} GiB of address space",
        "eval refuses to run unless",
    )
    for claim in claims:
        assert claim in text
