"""Tensors for what a decode step streams from memory (int8 weights, the KV cache), on huge pages.

A decode step on a CPU reads every weight and cached key and value once, so it runs at the rate
memory is read. With the usual 4 KB pages that is a page-table walk every 4 KB; on 2 MB pages
(transparent huge pages, which Linux gives to memory advised so before it is first touched) the
same reads ran 6-8% faster here (bench/reports/decode-profile-2026-11-26-huge-pages.md).
Elsewhere, or where the kernel does not offer them, these are ordinary tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import re
from pathlib import Path

import torch

HUGE_PAGE = 2 << 20


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose whole 2 MB pages are advised to be huge pages."""
    size = math.prod(shape) * dtype.itemsize
    if size < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    # One page more than asked, to start on a 2 MB boundary; the tensor keeps the mapping alive,
    # and the untouched spare page is never backed by memory.
    # Private: Python's default, a shared mapping, is shmem, which gets no huge pages.
    mapping = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(OSError):  # a kernel without transparent huge pages
        mapping.madvise(mmap.MADV_HUGEPAGE)
    whole = torch.frombuffer(mapping, dtype=torch.uint8)
    skip = -whole.data_ptr() % HUGE_PAGE
    return whole[skip : skip + size].view(dtype).view(shape)


def huge_mapping(fd: int, size: int) -> mmap.mmap | None:
    """The first `size` bytes of the file `fd`, mapped privately, where the kernel maps the
    file's page cache with huge pages (file systems with large folios on recent kernels: ext4
    and xfs on Linux 6.16 and later); None elsewhere.

    Mapped, a file is in memory as soon as it is in the page cache: no copy, and no fresh memory
    to fault in (in a VM that hands freed memory back to its host, 2-4 s for the 1.7 GB of
    FIM-NeoX-1.3B's int8 weights, against 0.4 s to read them mapped here). The kernel may drop
    the pages under memory pressure and read them again, as it may swap out anonymous memory."""
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
