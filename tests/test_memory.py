from pathlib import Path

import pytest
import torch

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
    assert memory.huge_kb(tensor.data_ptr()) * 1024 >= 4 * memory.HUGE_PAGE


def test_a_file_is_mapped_where_the_kernel_maps_it_on_huge_pages(tmp_path):
    path = tmp_path / "data"
    data = torch.arange(16 * memory.HUGE_PAGE, dtype=torch.uint8)
    path.write_bytes(data.numpy().tobytes())
    with open(path, "rb") as file:
        mapping = memory.huge_mapping(file.fileno(), path.stat().st_size)
    if mapping is None:
        pytest.skip(
            "this kernel or file system maps no file on huge pages (ext4 and xfs do from Linux 6.16)"
        )
    mapped = torch.frombuffer(mapping, dtype=torch.uint8)
    assert torch.equal(mapped, data)
    assert memory.huge_kb(mapped.data_ptr() + 8 * memory.HUGE_PAGE) * 1024 >= memory.HUGE_PAGE


def test_a_file_too_small_for_a_huge_page_is_not_mapped(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x" * (memory.HUGE_PAGE - 100))
    with open(path, "rb") as file:
        assert memory.huge_mapping(file.fileno(), path.stat().st_size) is None


def test_a_file_the_kernel_maps_on_small_pages_is_not_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "huge_kb", lambda address: 0)
    path = tmp_path / "data"
    path.write_bytes(b"x" * (8 * memory.HUGE_PAGE))
    with open(path, "rb") as file:
        assert memory.huge_mapping(file.fileno(), path.stat().st_size) is None
