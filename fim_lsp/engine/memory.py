"""Tensors for what a decode step streams from memory (int8 weights, the KV cache), on huge pages.

A decode step on a CPU reads every weight and cached key and value once, so it runs at the rate
memory is read. With the usual 4 KB pages that is a page-table walk every 4 KB; on 2 MB pages
(transparent huge pages, which Linux gives to memory advised so before it is first touched) the
same reads ran 6-8% faster here (bench/reports/decode-profile-2026-11-26-huge-pages.md).
Elsewhere, or where the kernel does not offer them, these are ordinary tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap

import torch

from fim_lsp.weight_file import HUGE_PAGE


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
