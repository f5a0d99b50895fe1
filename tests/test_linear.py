"""The C int8 kernel against the same quantization computed in float64, on each ISA; the GPU's
weight-only layer against its dequantized weights."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine.abi import Fused
from fim_lsp.engine.linear import (
    Int8Linear,
    WeightOnlyInt8Linear,
    per_channel,
    quantize,
    run_into,
    run_kernel,
)
from tests import reference
from tests.reference import normalised_error


@pytest.mark.parametrize(
    "tokens, inputs, outputs",
    [
        (1, 2048, 64),
        (4, 64, 48),
        (5, 36, 17),
        (7, 256, 200),  # a tile and a row; 13 panels: groups of 4 and one
        (17, 256, 32),
        (3, 5, 1),
        (256, 128, 160),
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: uneven shares, taken from each other
def test_kernel_matches_its_quantization_in_float64(
    isa, tokens, inputs, outputs, with_bias, threads, monkeypatch
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    generator = torch.Generator().manual_seed(tokens * 1000 + inputs)
    weight = torch.randn(outputs, inputs, generator=generator)
    bias = torch.randn(outputs, generator=generator) if with_bias else None
    x = torch.randn(tokens, inputs, generator=generator) * 3 + 0.5  # an off-centre range
    layer = Int8Linear(weight, bias)
    torch.testing.assert_close(layer.scale, weight.abs().amax(dim=1) / 127)
    got = layer(x)
    assert got.shape == (tokens, outputs) and got.dtype == torch.float32
    # The integer sums are exact; only the kernel's last few fp32 operations round (about 1e-7
    # each, relative).
    assert normalised_error(got, reference.quantized_product(weight, bias, x)) < 1e-6
    # And the quantization itself is close to the float product.
    exact = x @ weight.T + (0 if bias is None else bias)
    assert normalised_error(got, exact) < 0.03


def test_a_token_gives_the_same_output_alone_or_in_a_batch(isa):
    generator = torch.Generator().manual_seed(1)
    layer = Int8Linear(
        torch.randn(96, 128, generator=generator), torch.randn(96, generator=generator)
    )
    batch = torch.randn(9, 128, generator=generator)
    together = layer(batch)
    for row in range(9):
        assert torch.equal(layer(batch[row : row + 1]), together[row : row + 1])


def test_any_leading_shape_and_dtype_is_taken(kernels):
    layer = Int8Linear(torch.randn(24, 40), None)
    x = torch.randn(2, 3, 40)
    torch.testing.assert_close(layer(x), layer(x.reshape(6, 40)).reshape(2, 3, 24))
    torch.testing.assert_close(layer(x.to(torch.bfloat16)), layer(x.to(torch.bfloat16).float()))
    torch.testing.assert_close(layer(x.mT.contiguous().mT), layer(x))


def test_zero_rows_and_zero_weights_give_the_bias(kernels):
    bias = torch.arange(16.0)
    layer = Int8Linear(torch.zeros(16, 32), bias)
    assert torch.equal(layer(torch.zeros(2, 32)), bias.expand(2, 16))
    assert torch.equal(layer(torch.randn(2, 32)), bias.expand(2, 16))


def test_quantizing_in_slices_gives_the_same_weights():
    weight = torch.randn(100, 24)
    whole = Int8Linear(weight, None)
    sliced = quantize(weight, rows_at_once=32)
    for got, expected in zip(sliced, (whole.packed, whole.scale, whole.sums), strict=True):
        assert torch.equal(got, expected)


def test_no_tokens_give_an_empty_result(kernels):
    assert Int8Linear(torch.randn(16, 8), None)(torch.empty(0, 8)).shape == (0, 16)


def test_per_channel_maps_each_rows_largest_magnitude_to_127():
    rows = torch.tensor([[0.5, -2.0, 1.0], [0.0, 0.0, 0.0], [3.0, 0.1, -0.2]])
    values, step = per_channel(rows)
    assert values.dtype == torch.int8
    assert values.tolist() == [[32, -127, 64], [0, 0, 0], [127, 4, -8]]
    torch.testing.assert_close(step, torch.tensor([2 / 127, 1.0, 3 / 127]))


@pytest.mark.parametrize("with_bias", [True, False])
def test_weight_only_layer_is_the_product_with_its_dequantized_weights(with_bias):
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(48, 80, generator=generator)
    bias = torch.randn(48, generator=generator) if with_bias else None
    layer = WeightOnlyInt8Linear(weight, bias)
    assert layer.weight.dtype == torch.int8  # a byte per weight is kept, not fp32
    x = torch.randn(2, 5, 80, generator=generator)
    values, step = per_channel(weight)
    expected = torch.nn.functional.linear(x, values.float() * step[:, None], bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-6, atol=1e-6)
    exact = torch.nn.functional.linear(x, weight, bias)
    assert (layer(x) - exact).norm() / exact.norm() < 0.02


def test_weight_only_layer_computes_in_its_weights_dtype():
    layer = WeightOnlyInt8Linear(torch.randn(16, 32).to(torch.bfloat16), torch.randn(16))
    out = layer(torch.randn(3, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 16)


def fused_case():
    generator = torch.Generator().manual_seed(3)
    layer = Int8Linear(
        torch.randn(40, 96, generator=generator), torch.randn(40, generator=generator)
    )
    norm = torch.nn.LayerNorm(96)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=generator)
        norm.bias.normal_(generator=generator)
    x = torch.randn(5, 96, generator=generator) * 4 + 1
    then_add, and_add = torch.randn(2, 5, 40, generator=generator)
    return layer, norm, x, then_add, and_add


def test_fused_gelu_and_residuals_match_float64_on_the_same_product(kernels):
    layer, _, x, then_add, and_add = fused_case()
    out = torch.empty(5, 40)
    fused = Fused(gelu=1, then_add=then_add.data_ptr(), and_add=and_add.data_ptr())
    run_into(kernels, layer, x, out, 2, fused)
    product = run_kernel(kernels, layer, x)
    expected = reference.gelu(product) + then_add.double() + and_add.double()
    # GELU's bound (below) on values of a few units, then two fp32 sums.
    assert normalised_error(out, expected) < 1e-6


def test_gelu_is_within_its_bound_of_erf_in_float64(kernels):
    """The kernel's GELU takes erf from Abramowitz and Stegun 7.1.26, within 1.5e-7; times x / 2,
    plus a few fp32 roundings, that stays within 2e-7 x max(1, |x|) (measured: 1.65e-7)."""
    x = torch.linspace(-12, 12, 40001)
    error = (gelu_through_kernel(kernels, x).double() - reference.gelu(x)).abs()
    assert (error / x.double().abs().clamp(min=1)).max() < 2e-7


def gelu_through_kernel(library, values: torch.Tensor) -> torch.Tensor:
    """GELU of `values` from the kernel's epilogue: a product with zero weights, values as bias."""
    layer = Int8Linear(torch.zeros(len(values), 4), values)
    out = torch.empty(1, len(values))
    run_into(library, layer, torch.zeros(1, 4), out, 1, Fused(gelu=1))
    return out[0]


def test_fused_layer_norm_matches_float64_before_the_product(kernels):
    layer, norm, x, _, _ = fused_case()
    out = torch.empty(5, 40)
    fused = Fused(norm.weight.data_ptr(), norm.bias.data_ptr(), norm.eps)
    run_into(kernels, layer, x, out, 2, fused)
    normed = reference.layer_norm(x, norm.weight.detach(), norm.bias.detach(), norm.eps)
    expected = run_kernel(kernels, layer, normed.float())
    # The normed rows differ from float64's in the last bits of fp32, which can move a quantized
    # activation by one step: far below the quantization's own error (3% of the product's norm).
    assert normalised_error(out, expected) < 1e-4


def test_the_kernel_follows_the_weights_when_they_move(kernels):
    layer = Int8Linear(torch.randn(24, 40), torch.randn(24))
    x = torch.randn(3, 40)
    before, address = layer(x), layer.packed.data_ptr()
    layer.share_memory()  # moves every buffer to new memory, through Module._apply
    assert layer.packed.data_ptr() != address
    assert layer.kernel_weights.packed == layer.packed.data_ptr()
    assert torch.equal(layer(x), before)
