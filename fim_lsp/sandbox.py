"""Run a command isolated from the machine (bubblewrap, else unshare), always under rlimits.

Isolated, a command gets new user (for ordinary users), mount, PID, network, IPC and UTS
namespaces: it sees /usr, the top-level links into it and the Python install read-only, its own
/proc and a minimal /dev, and nothing else of the file system; a private tmpfs is its /tmp and
working folder; its network has no device but loopback (up with bubblewrap, down with unshare);
it sees and can signal only its own processes. Started by root, it runs as nobody, since a user
namespace that maps root leaves the kernel's uid 0, which no process limit binds. Every process
in it is held to rlimits on CPU time, address space, processes and file size.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

NOBODY = "65534"  # root's sandboxes run as this uid and gid
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # links into /usr, or folders
PROBE_TIMEOUT_S = 60.0

# The unshare backend's setup, run as root of the new namespaces: a tmpfs root with the
# read-only folders bound in, a private /tmp, /proc and /dev, then the command chrooted in it.
# Arguments: ROOT TMP_BYTES [--ro FOLDER | --link PATH TARGET]... -- COMMAND...
UNSHARE_SETUP = """
set -eu
umask 022
root=$1 tmp_bytes=$2
shift 2
mount -t tmpfs -o mode=755 fim-lsp-sandbox "$root"
mkdir "$root/tmp" "$root/proc" "$root/dev"
mount -t tmpfs -o "size=$tmp_bytes,mode=1777" tmp "$root/tmp"
mount -t proc proc "$root/proc"
for node in null zero full random urandom; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
while [ "$1" != -- ]; do
    case $1 in
        --link) ln -s "$3" "$root$2"; shift 3 ;;
        --ro) mkdir -p "$root$2"; mount --bind "$2" "$root$2"  # not what is mounted below
              mount -o remount,bind,ro "$root$2"; shift 2 ;;
    esac
done
shift
mount -o remount,bind,ro "$root"
exec unshare --root="$root" --wd=/tmp "$@"
"""
# The unshare backend's PID 1, as bubblewrap has its own: the kernel drops the signals PID 1 has
# no handler for (an rlimit's SIGXCPU among them) and gives it every orphan, so it runs the
# command as PID 2 and reaps until that ends, then exits as it did.
INIT = """
import os, sys
command = os.fork()
if command == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
while True:
    pid, status = os.wait()
    if pid == command:
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
"""


class Isolation(enum.Enum):
    BUBBLEWRAP = "bwrap"
    UNSHARE = "unshare"
    NONE = "none"  # only the rlimits: the command runs with the user's full rights


class Unavailable(Exception):
    """No isolation works on this machine; the message says why and what to install."""


@dataclass(frozen=True)
class Limits:
    """What every process in a sandbox may use."""

    cpu_seconds: int
    memory_bytes: int  # address space
    processes: int  # at once, threads included, the sandbox's own helpers too
    file_bytes: int  # the largest file it may write
    tmp_bytes: int  # its /tmp in all (isolated only: unisolated, its folder is on the disk)


class Sandbox:
    """`command` running under `isolation`; `close` (or leaving the `with`) ends every process
    in it. `read_only`: more folders it may read. `popen`: subprocess.Popen's arguments."""

    def __init__(
        self,
        command: Sequence[str],
        limits: Limits,
        isolation: Isolation,
        read_only: Sequence[str] = (),
        **popen: Any,
    ):
        # On the host: the working folder when unisolated, the mount point of unshare's root.
        self._folder = tempfile.TemporaryDirectory(
            prefix="fim-lsp-sandbox-", ignore_cleanup_errors=True
        )
        folder = self._folder.name
        inside = "/tmp" if isolation is not Isolation.NONE else folder
        self.process = subprocess.Popen(
            wrap(command, limits, isolation, folder, read_only),
            cwd=folder,
            env={"PATH": "/usr/bin:/bin", "HOME": inside, "TMPDIR": inside},
            start_new_session=True,
            **popen,
        )

    def close(self) -> None:
        # Unisolated, a process that left the group survives: nothing else can reach it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(BrokenPipeError):
            self.process.__exit__(None, None, None)  # closes the pipes and waits
        self._folder.cleanup()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


def wrap(
    command: Sequence[str],
    limits: Limits,
    isolation: Isolation,
    folder: str,
    read_only: Sequence[str] = (),
) -> list[str]:
    """`command` prefixed with what isolates it and sets its rlimits; `folder` is an empty
    folder of ours that outlives it."""
    root = os.geteuid() == 0
    if isolation is Isolation.NONE:
        # Outside a user namespace the process limit counts all of the user's processes.
        return [*rlimits(limits, limits.processes + tasks_of_user()), *command]
    view = read_only_view(read_only)
    if isolation is Isolation.BUBBLEWRAP:
        return [
            tool("bwrap"),
            *([] if root else ["--unshare-user"]),
            *("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"),
            *("--unshare-cgroup-try", "--die-with-parent", "--new-session"),
            *("--perms", "1777", "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"),
            *bubblewrap_view(view),
            *("--proc", "/proc", "--dev", "/dev", "--chdir", "/tmp"),
            # bubblewrap keeps no capability by default; setpriv needs these two to be nobody.
            *(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"] if root else []),
            "--",
            *drop_privileges(root, isolation),
            *rlimits(limits, limits.processes),
            *command,
        ]
    plan = []
    for path, link in view:
        plan += ["--link", path, link] if link else ["--ro", path]
    return [
        tool("unshare"),
        *([] if root else ["--user", "--map-root-user"]),
        *("--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"),
        *("sh", "-c", UNSHARE_SETUP, "sh", folder, str(limits.tmp_bytes), *plan, "--"),
        *(sys.executable, "-I", "-S", "-c", INIT),
        *drop_privileges(root, isolation),
        *rlimits(limits, limits.processes),
        *command,
    ]


def read_only_view(extra: Sequence[str] = ()) -> list[tuple[str, str | None]]:
    """(path, link target) for the top-level links, (folder, None) for what is bound read-only:
    /usr, the top-level folders that are not links, the Python install, and `extra`."""
    view: list[tuple[str, str | None]] = [("/usr", None)]
    for path in TOP_LEVEL:
        if os.path.islink(path):
            view.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            view.append((path, None))
    python = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for folder in sorted({os.path.abspath(path) for path in (*python, *extra)}):
        if not any(Path(folder).is_relative_to(seen) for seen, link in view if link is None):
            view.append((folder, None))
    return view


def bubblewrap_view(view: list[tuple[str, str | None]]) -> list[str]:
    arguments: list[str] = []
    made = {"/", "/tmp"}
    for path, link in view:
        if link:
            arguments += ["--symlink", link, path]
            continue
        # bubblewrap would make the missing parents 0700: nobody could not pass them.
        for parent in reversed(Path(path).parents):
            if str(parent) not in made:
                arguments += ["--dir", str(parent)]
                made.add(str(parent))
        arguments += ["--ro-bind", path, path]
    return arguments


def drop_privileges(root: bool, isolation: Isolation) -> list[str]:
    """What the command runs under so that it holds no capability (and is nobody for root)."""
    if root:
        nobody = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    elif isolation is Isolation.UNSHARE:
        nobody = []  # root of its user namespace, with capabilities that setup needed
    else:
        return []  # bubblewrap already ran it as the user, without capabilities
    return ["setpriv", *nobody, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]


def rlimits(limits: Limits, processes: int) -> list[str]:
    return [
        "prlimit",
        f"--cpu={limits.cpu_seconds}",
        f"--as={limits.memory_bytes}",
        f"--nproc={processes}",
        f"--fsize={limits.file_bytes}",
        "--",
    ]


def tasks_of_user() -> int:
    """The processes and threads this user runs now, as RLIMIT_NPROC counts them."""
    uid, count = os.getuid(), 0
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        with contextlib.suppress(OSError):  # ended while we looked
            count += task.stat().st_uid == uid
    return count


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed")
    return path


def problem_with(isolation: Isolation) -> str | None:
    """Why `isolation` does not work here, or None when a Python starts inside it."""
    limits = Limits(
        cpu_seconds=10, memory_bytes=1 << 30, processes=16, file_bytes=1 << 20, tmp_bytes=1 << 20
    )
    try:
        with Sandbox(
            [sys.executable, "-I", "-c", "pass"],
            limits,
            isolation,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as sandbox:
            _, stderr = sandbox.process.communicate(timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if sandbox.process.returncode == 0:
        return None
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit status {sandbox.process.returncode}"


@cache
def detect() -> Isolation:
    """The isolation this machine allows, tried once: bubblewrap, else unshare."""
    problems = []
    for isolation in (Isolation.BUBBLEWRAP, Isolation.UNSHARE):
        problem = problem_with(isolation)
        if problem is None:
            return isolation
        problems.append(f"{isolation.value}: {problem}")
    raise Unavailable(
        f"no sandbox for the programs on this machine ({'; '.join(problems)}). "
        "Install bubblewrap (Debian, Ubuntu: apt install bubblewrap; Fedora: dnf install "
        "bubblewrap) and allow unprivileged user namespaces (sysctl user.max_user_namespaces "
        "above 0; Debian: kernel.unprivileged_userns_clone=1; Ubuntu 24.04: "
        "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap)"
    )
