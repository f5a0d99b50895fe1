"""The engine's C kernels (`*.c` beside this file): compiled into one library on first use.

A platform wheel carries them built (setup.py); a source checkout builds them with the system's
C compiler (`CC`, default `cc`; a few seconds) and caches them under ~/.cache/fim-lsp, keyed by
their source and flags. `abi.py` declares and checks their interface; each kernel's module checks
its results before first use and falls back to torch, with the reason, where it cannot run: no
compiler, a CPU without AVX2, FMA and F16C, a system other than Linux x86-64, a cache folder that
cannot be written or loaded, or FIM_LSP_KERNELS=off (to run, or test, the engine as on such a
machine).

Built with `-fopenmp`, the library loads torch's own libgomp (same soname, already in the
process), so the kernels run on torch's threads: threads of their own were slower, because
torch's OpenMP worker keeps spinning on the other core after each operator.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from fim_lsp.paths import cache_folder

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in ("abi.c", "attention.c", "gemm.c", "layer.c", "linear.c")
]
HEADERS = [Path(__file__).with_name(name) for name in ("kernels.h", "shares.h", "simd.h")]
CPU_FLAGS = {"avx2", "fma", "f16c"}
BUILD_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC"]
SWITCH = "FIM_LSP_KERNELS"  # "off": the engine runs as where the kernels cannot


class NativeError(Exception):
    pass


def load_library() -> ctypes.CDLL:
    """The compiled kernels, built on first use; raises NativeError with the reason they can't be.

    A failure is remembered too: both kernels ask, and a failing compiler may take a while."""
    outcome = built_library()
    if isinstance(outcome, NativeError):
        raise NativeError(str(outcome))
    return outcome


def problem(load_kernel: Callable[[], object]) -> str | None:
    """Why `load_kernel` (a kernel's loader) fails here, or None when it loads and checks out."""
    try:
        load_kernel()
    except NativeError as error:
        return str(error)
    return None


@functools.cache
def built_library() -> ctypes.CDLL | NativeError:
    try:
        return build_and_load()
    except NativeError as error:
        return error


def build_and_load() -> ctypes.CDLL:
    if (switch := os.environ.get(SWITCH, "on")) != "on":
        raise NativeError(
            f"the C kernels are turned off ({SWITCH}={switch})"
            if switch == "off"
            else f"{SWITCH}={switch} is neither on nor off"
        )
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise NativeError(
            f"the C kernels are for Linux x86-64, not {platform.system()} {platform.machine()}"
        )
    if missing := CPU_FLAGS - cpu_flags():
        raise NativeError(f"the CPU lacks {', '.join(sorted(missing))}")
    try:
        return ctypes.CDLL(str(shipped() or build(cache_folder())))
    except OSError as error:  # an unwritable cache folder, or one mounted noexec
        raise NativeError(f"the C kernels cannot be built or loaded: {error}") from error


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def recipe_digest() -> str:
    """A digest of the kernels' sources and flags: what a build (or a timing of it) depends on."""
    code = b"".join(file.read_bytes() for file in SOURCES + HEADERS)
    return hashlib.sha256(code + " ".join(BUILD_FLAGS).encode()).hexdigest()[:16]


def shipped() -> Path | None:
    """The kernels a platform wheel carries beside their sources (setup.py builds them), when
    they are the build of these very sources and flags; a source checkout has none."""
    library = Path(__file__).with_name(f"kernels-{recipe_digest()}.so")
    return library if library.is_file() else None


def build(folder: Path) -> Path:
    """The shared library compiled from SOURCES, reused while they and the flags are unchanged."""
    target = folder / f"kernels-{recipe_digest()}.so"
    if target.is_file():
        return target
    compiler = os.environ.get("CC") or "cc"
    command = shlex.split(compiler)  # CC may carry a wrapper or flags: "ccache gcc"
    if not command or shutil.which(command[0]) is None:
        raise NativeError(f"no C compiler ({compiler}) to build the C kernels")
    folder.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name, then renamed: two servers starting at once both succeed.
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        built = Path(scratch) / target.name
        command += [*BUILD_FLAGS, "-o", str(built), *map(str, SOURCES), "-lm"]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        except subprocess.CalledProcessError as error:
            raise NativeError(f"{compiler} failed to build the C kernels: "
                              f"{error.stderr.strip()[-300:]}") from error  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NativeError(f"{compiler} failed to build the C kernels: {error}") from error
        os.replace(built, target)
    log.info("built the C kernels: %s", target)
    return target
