from pathlib import Path

import pytest
import torch

from fim_lsp import weight_file
from fim_lsp.engine import memory

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_a_large_tensor_starts_on_a_huge_page_boundary_and_holds_what_is_written():
    tensor = memory.empty((3, 1 << 20), torch.float16)
    assert tensor.shape == (3, 1 << 20) and tensor.dtype == torch.float16
    assert tensor.is_contiguous() and tensor.data_ptr() % memory.HUGE_PAGE == 0
    tensor.fill_(2.5)
    assert tensor.float().sum().item() == 2.5 * 3 * (1 << 20)


def test_a_small_tensor_is_an_ordinary_one():
    tensor = memory.empty((5, 7), torch.int8)
    assert tensor.shape == (5, 7) and tensor.dtype == torch.int8


@pytest.mark.skipif(
    not THP.is_file() or "[never]" in THP.read_text(),
    reason="this system offers no transparent huge pages",
)
def test_the_memory_is_backed_by_huge_pages():
    tensor = memory.empty((8 * memory.HUGE_PAGE,), torch.int8)
    tensor.fill_(1)  # first touch: the kernel backs the advised pages now
    assert weight_file.huge_kb(tensor.data_ptr()) * 1024 >= 4 * memory.HUGE_PAGE
