"""The weight cache's files without torch: the header, the checksums of the chunks, a file mapped
on huge pages, and the newest entry mapped and checked while the server starts.

At a restart, importing torch takes 1-1.5 s of one core (much of it holding the GIL), and
checking the 1.7 GB entry of FIM-NeoX-1.3B 0.4-0.8 s more (zlib and the page faults let go of
the GIL). `check_early` maps the newest entry and checks it on the other cores while the server
imports; `weight_cache.load` takes that mapping when it is the entry it wants (same file, not
changed since) and waits for the verdict instead of checking again. The other entries' format
and checks are weight_cache.py's.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import mmap
import os
import re
import threading
import zlib
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

from fim_lsp.paths import cache_folder

HUGE_PAGE = 2 << 20
CHUNK = 16 << 20  # tensors are read and checked (a CRC32 each) in chunks of this many bytes
LARGEST_HEADER = 16 << 20
READERS = min(8, os.cpu_count() or 1) if hasattr(os, "preadv") else 1
SWITCH = "FIM_LSP_WEIGHT_CACHE"  # "off": every start quantizes


def weights_folder() -> Path:
    return cache_folder() / "weights"


class Invalid(Exception):
    """An entry that must not be used (the message says why)."""


def read_header(file: FileIO) -> tuple[dict, int]:
    """The safetensors header, and where the data starts."""
    first = file.read(8)
    if len(first) != 8:
        raise Invalid("is cut short (no header)")
    length = int.from_bytes(first, "little")
    if length > LARGEST_HEADER:
        raise Invalid(f"has a header of {length} bytes")
    text = file.read(length)
    if len(text) != length:
        raise Invalid("is cut short (in its header)")
    header = json.loads(text)
    if not isinstance(header, dict):
        raise Invalid("has no JSON object for a header")
    return header, 8 + length


def chunks(nbytes: int) -> list[tuple[int, int]]:
    """Where a tensor of `nbytes` is cut into the chunks read, and checked, as one."""
    return [(begin, min(begin + CHUNK, nbytes)) for begin in range(0, nbytes, CHUNK)]


def check_chunk(view: memoryview, crc: str, name: str) -> None:
    """Check `view` against its CRC32 (hex)."""
    if f"{zlib.crc32(view):08x}" != crc:
        raise Invalid(f"fails the checksum of {name}")


def huge_mapping(fd: int, size: int) -> mmap.mmap | None:
    """The first `size` bytes of the file `fd`, mapped privately, where the kernel maps the
    file's page cache with huge pages (file systems with large folios on recent kernels: ext4
    and xfs on Linux 6.16 and later); None elsewhere.

    Mapped, a file is in memory as soon as it is in the page cache: no copy, and no fresh memory
    to fault in (in a VM that hands freed memory back to its host, 2-4 s for the 1.7 GB of
    FIM-NeoX-1.3B's int8 weights, against 0.4 s to check them mapped). The kernel may drop the
    pages under memory pressure and read them again, as it may swap out anonymous memory."""
    if size < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    try:
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE)  # writable, copy on write
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    anchor = ctypes.c_char.from_buffer(mapping)
    address = ctypes.addressof(anchor)
    del anchor  # the mapping can close again
    # A whole 2 MB page in the middle (the first may hold a header written on its own).
    probe = (address + size // 2) // HUGE_PAGE * HUGE_PAGE - address
    if probe < 0 or probe + HUGE_PAGE > size:
        mapping.close()
        return None
    mapping[probe]  # faults it in: on a huge page where the kernel maps this file so
    if huge_kb(address + probe) * 1024 < HUGE_PAGE:
        mapping.close()
        return None
    return mapping


def huge_kb(address: int) -> int:
    """How much of this process's mapping that holds `address` is on huge pages (kB:
    AnonHugePages and FilePmdMapped in /proc/self/smaps), 0 where unknown."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return 0
    inside, found = False, 0
    for line in lines:
        if mapping := re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line):
            if inside:
                break
            inside = int(mapping[1], 16) <= address < int(mapping[2], 16)
        elif inside and line.startswith(("AnonHugePages:", "FilePmdMapped:")):
            found += int(line.split()[1])
    return found


def identity(fd: int) -> tuple[int, int, int, int]:
    """What tells a file from another, or from itself changed."""
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass
class Early:
    """An entry mapped at start, and the verdict of its checksums (an Invalid, or None)."""

    identity: tuple[int, int, int, int]
    mapping: mmap.mmap
    verdict: concurrent.futures.Future[Invalid | None]


early: dict[Path, Early] = {}


def check_early(folder: Path) -> None:
    """Map the newest entry in `folder`, and check it on other threads."""
    if os.environ.get(SWITCH, "on") == "off":
        return
    try:
        newest = max(folder.glob("*.safetensors"), key=lambda path: path.stat().st_mtime_ns)
        file = open(newest, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except (OSError, ValueError):  # no folder, no entry, or one removed meanwhile
        return
    with file:
        fd = file.fileno()
        mapping = huge_mapping(fd, os.fstat(fd).st_size)
        if mapping is None:
            return
        verdict: concurrent.futures.Future[Invalid | None] = concurrent.futures.Future()
        early[newest] = Early(identity(fd), mapping, verdict)
        try:
            header, start = read_header(file)
        except (Invalid, ValueError) as error:
            verdict.set_result(Invalid(str(error)))
            return
    threading.Thread(target=check_all, args=(header, start, mapping, verdict), daemon=True).start()


def verify(tensors: dict, start: int, mapping: mmap.mmap, crcs: dict) -> None:
    """Every chunk of every tensor in `tensors` (a header's entries, the data from `start` in
    `mapping`) against its CRC32 in `crcs`, on a pool of threads; raises Invalid."""
    view = memoryview(mapping)
    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        jobs = [
            pool.submit(check_chunk, view[start + begin + first : start + begin + last], crc, name)
            for name, about in tensors.items()
            if name != "__metadata__"
            for begin, end in [about["data_offsets"]]
            for (first, last), crc in zip(chunks(end - begin), crcs[name], strict=True)
        ]
        for job in jobs:
            job.result()


def check_all(
    header: dict, start: int, mapping: mmap.mmap, verdict: concurrent.futures.Future
) -> None:
    """The entry's verdict: every chunk against the checksums in its metadata."""
    try:
        verify(header, start, mapping, json.loads(header["__metadata__"]["fim_lsp"])["crc32"])
        verdict.set_result(None)
    except Invalid as error:
        verdict.set_result(error)
    except Exception as error:  # anything malformed: weight_cache's own checks will say what
        verdict.set_result(Invalid(f"is malformed ({type(error).__name__}: {error})"))


def take_early(path: Path, fd: int) -> Early | None:
    """The early mapping of the entry at `path` if it is this very file, unchanged; every
    other early mapping is let go."""
    found = early.pop(path, None)
    early.clear()
    if found is not None and found.identity == identity(fd):
        return found
    return None
