"""gemm.c's register tiles: every ISA path gives the same outputs, bit for bit (the integers they
sum are exact, and linear.c turns them into outputs with the same code); a row's output does
not depend on the tile it falls in. Each path against float64: tests/test_linear.py."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import abi
from fim_lsp.engine.linear import Int8Linear, run_kernel


@pytest.mark.parametrize(
    "tokens, inputs, outputs",
    [
        (1, 2048, 512),
        (6, 64, 64),  # one whole VNNI tile
        (7, 36, 200),  # a tile and a row; 13 panels
        (13, 8192, 48),  # 3 panels: a part group only
        (100, 260, 330),  # a last panel of 10 outputs
        (300, 2048, 96),
        (16, 64, 32),  # one whole AMX tile of rows by two panels
        (40, 256, 48),  # AMX: 32 rows and a part tile of 8; 3 panels: a pair and one
        (17, 128, 16),  # AMX: a tile and a row
    ],
)
def test_every_isa_gives_the_same_outputs_bit_for_bit(kernels, tokens, inputs, outputs):
    here = abi.isas_here(kernels)
    if len(here) < 2:
        pytest.skip(f"this CPU runs the int8 products on {here[0]} only: nothing to compare")
    generator = torch.Generator().manual_seed(tokens + inputs + outputs)
    layer = Int8Linear(torch.randn(outputs, inputs, generator=generator), torch.randn(outputs))
    x = torch.randn(tokens, inputs, generator=generator)
    results = []
    for name in here:
        with abi.running_on(kernels, name):
            results.append(run_kernel(kernels, layer, x))
    assert all(torch.equal(result, results[0]) for result in results[1:])


def test_a_rows_output_does_not_depend_on_its_tile(isa):
    """23 rows at once (one tile of 23 on AMX, three and a part one on VNNI, six on AVX2) and in
    runs of other sizes (VNNI's tiles on AMX for fewer than 16): every row the same."""
    generator = torch.Generator().manual_seed(4)
    layer = Int8Linear(torch.randn(100, 320, generator=generator), None)
    x = torch.randn(23, 320, generator=generator)
    library = abi.load()
    together = run_kernel(library, layer, x)
    start = 0
    for size in (1, 5, 17):
        part = run_kernel(library, layer, x[start : start + size])
        assert torch.equal(part, together[start : start + size])
        start += size
