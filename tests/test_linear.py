"""The C int8 kernel against the same quantization computed in float64; the GPU's weight-only
layer against its dequantized weights."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine.linear import (
    Fused,
    Int8Linear,
    WeightOnlyInt8Linear,
    load_kernel,
    per_channel,
    quantize,
    run_into,
    run_kernel,
)


def quantized_reference(layer: Int8Linear, weight, bias, x):
    """x W^T + b after linear.c's quantization, in float64: weights symmetric per output row,
    activations per token to 0..127 around a zero point, products summed exactly."""
    step = weight.abs().amax(dim=1) / 127
    step[step == 0] = 1
    w = torch.round(weight / step[:, None]).clamp(-127, 127)
    torch.testing.assert_close(layer.scale, step)  # the layer's own scales are these
    low = x.amin(dim=1).clamp(max=0)
    high = x.amax(dim=1).clamp(min=0)
    scale = (high - low) / 127  # float32, as in the kernel
    scale[scale == 0] = 1
    inverse = 1 / scale
    zero = torch.round(-low * inverse)
    q = (torch.round(x * inverse[:, None]) + zero[:, None]).clamp(0, 127)
    exact = (q.double() - zero.double()[:, None]) @ w.double().T
    out = exact * scale.double()[:, None] * step.double()[None, :]
    return out + (0 if bias is None else bias.double())


@pytest.mark.parametrize(
    "tokens, inputs, outputs",
    [(1, 2048, 64), (4, 64, 48), (5, 36, 17), (17, 256, 32), (3, 5, 1), (256, 128, 160)],
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])  # 3: uneven shares, taken from each other
def test_kernel_matches_its_quantization_computed_exactly(
    tokens, inputs, outputs, with_bias, threads, monkeypatch
):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    generator = torch.Generator().manual_seed(tokens * 1000 + inputs)
    weight = torch.randn(outputs, inputs, generator=generator)
    bias = torch.randn(outputs, generator=generator) if with_bias else None
    x = torch.randn(tokens, inputs, generator=generator) * 3 + 0.5  # an off-centre range
    layer = Int8Linear(weight, bias)
    got = layer(x)
    assert got.shape == (tokens, outputs) and got.dtype == torch.float32
    expected = quantized_reference(layer, weight, bias, x)
    # Integer sums are exact; only the kernel's final fp32 multiplies round.
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    # And the quantization itself is close to the float product.
    exact = x @ weight.T + (0 if bias is None else bias)
    assert (got - exact).norm() / exact.norm() < 0.03


def test_a_token_gives_the_same_output_alone_or_in_a_batch():
    generator = torch.Generator().manual_seed(1)
    layer = Int8Linear(
        torch.randn(96, 128, generator=generator), torch.randn(96, generator=generator)
    )
    batch = torch.randn(9, 128, generator=generator)
    together = layer(batch)
    for row in range(9):
        assert torch.equal(layer(batch[row : row + 1]), together[row : row + 1])


def test_any_leading_shape_and_dtype_is_taken():
    layer = Int8Linear(torch.randn(24, 40), None)
    x = torch.randn(2, 3, 40)
    torch.testing.assert_close(layer(x), layer(x.reshape(6, 40)).reshape(2, 3, 24))
    torch.testing.assert_close(layer(x.to(torch.bfloat16)), layer(x.to(torch.bfloat16).float()))
    torch.testing.assert_close(layer(x.mT.contiguous().mT), layer(x))


def test_zero_rows_and_zero_weights_give_the_bias():
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


def test_no_tokens_give_an_empty_result():
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


def test_fused_gelu_and_residuals_match_torch_on_the_same_product():
    layer, _, x, then_add, and_add = fused_case()
    library = load_kernel()
    out = torch.empty(5, 40)
    fused = Fused(gelu=1, then_add=then_add.data_ptr(), and_add=and_add.data_ptr())
    run_into(library, layer, x, out, 2, fused)
    product = run_kernel(library, layer, x)
    expected = torch.nn.functional.gelu(product) + then_add + and_add
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    wide = torch.linspace(-12, 12, 4001)  # GELU itself, over its whole shape
    torch.testing.assert_close(
        gelu_through_kernel(library, wide), torch.nn.functional.gelu(wide), rtol=3e-7, atol=3e-7
    )


def gelu_through_kernel(library, values: torch.Tensor) -> torch.Tensor:
    """GELU of `values` from the kernel's epilogue: a product with zero weights, values as bias."""
    layer = Int8Linear(torch.zeros(len(values), 4), values)
    out = torch.empty(1, len(values))
    run_into(library, layer, torch.zeros(1, 4), out, 1, Fused(gelu=1))
    return out[0]


def test_fused_layer_norm_matches_torchs_before_the_product():
    layer, norm, x, _, _ = fused_case()
    library = load_kernel()
    out = torch.empty(5, 40)
    fused = Fused(norm.weight.data_ptr(), norm.bias.data_ptr(), norm.eps)
    run_into(library, layer, x, out, 2, fused)
    with torch.no_grad():
        expected = run_kernel(library, layer, norm(x))
    # The normed rows differ from torch's in the last bits, which can move a quantized activation
    # by one step: far below the quantization's own error (3% of the product's norm).
    assert (out - expected).norm() / expected.norm() < 1e-4


def test_the_kernel_follows_the_weights_when_they_move():
    layer = Int8Linear(torch.randn(24, 40), torch.randn(24))
    x = torch.randn(3, 40)
    before, address = layer(x), layer.packed.data_ptr()
    layer.share_memory()  # moves every buffer to new memory, through Module._apply
    assert layer.packed.data_ptr() != address
    assert layer.kernel_weights.packed == layer.packed.data_ptr()
    assert torch.equal(layer(x), before)
