"""The weight cache's files without torch: a file mapped where the kernel maps it on huge pages,
and the newest entry mapped and checked early (tests/test_weight_cache.py: loading from it)."""

from __future__ import annotations

import pytest
import torch

from fim_lsp import weight_file


def test_a_file_is_mapped_where_the_kernel_maps_it_on_huge_pages(tmp_path):
    path = tmp_path / "data"
    data = torch.arange(16 * weight_file.HUGE_PAGE, dtype=torch.uint8)
    path.write_bytes(data.numpy().tobytes())
    with open(path, "rb") as file:
        mapping = weight_file.huge_mapping(file.fileno(), path.stat().st_size)
    if mapping is None:
        pytest.skip(
            "this kernel or file system maps no file on huge pages (ext4 and xfs do from Linux 6.16)"
        )
    mapped = torch.frombuffer(mapping, dtype=torch.uint8)
    assert torch.equal(mapped, data)
    assert (
        weight_file.huge_kb(mapped.data_ptr() + 8 * weight_file.HUGE_PAGE) * 1024
        >= weight_file.HUGE_PAGE
    )


def test_a_file_too_small_for_a_huge_page_is_not_mapped(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"x" * (weight_file.HUGE_PAGE - 100))
    with open(path, "rb") as file:
        assert weight_file.huge_mapping(file.fileno(), path.stat().st_size) is None


def test_a_file_the_kernel_maps_on_small_pages_is_not_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(weight_file, "huge_kb", lambda address: 0)
    path = tmp_path / "data"
    path.write_bytes(b"x" * (8 * weight_file.HUGE_PAGE))
    with open(path, "rb") as file:
        assert weight_file.huge_mapping(file.fileno(), path.stat().st_size) is None
