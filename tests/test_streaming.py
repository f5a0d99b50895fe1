"""Loading int8 one module at a time: the same model as from_pretrained, from either format."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from fim_lsp.engine.errors import EngineError
from fim_lsp.engine.precision import C_KERNEL, TORCH_DYNAMIC, WEIGHT_ONLY, quantize_linear
from fim_lsp.engine.streaming import load_int8_by_module

IDS = torch.tensor([[50277, 32488, 535, 50274, 18891, 50278, 1545, 4868, 9, 89, 50279]])


def reference(folder, int8):
    """from_pretrained in fp32, then every Linear swapped for its int8 version."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, quantize_linear(module, int8))
    return model


def logits(model):
    with torch.inference_mode():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def pickle_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a 2022-style pickle checkpoint (FIM-NeoX-1.3B's format): old key names."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("tiny-fim-bin")
    shutil.copy(tiny_model_dir / "config.json", folder)
    tensors = load_file(tiny_model_dir / "model.safetensors")
    assert "embed_out.weight" in tensors  # the name before transformers 5's lm_head
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("int8", [C_KERNEL, TORCH_DYNAMIC, WEIGHT_ONLY])
def test_streamed_int8_model_is_the_from_pretrained_one_quantized(tiny_model_dir, int8, request):
    if int8 == C_KERNEL:
        request.getfixturevalue("kernels")  # skips, saying why, where the C kernels cannot run
    config = AutoConfig.from_pretrained(tiny_model_dir)
    streamed = load_int8_by_module(tiny_model_dir, config, int8)
    assert not any(p.is_meta for p in streamed.parameters())
    assert not any(type(m) is torch.nn.Linear for m in streamed.modules())
    assert torch.equal(logits(streamed), logits(reference(tiny_model_dir, int8)))


def test_streamed_model_takes_the_dtype_asked_for(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    streamed = load_int8_by_module(tiny_model_dir, config, WEIGHT_ONLY, "cpu", torch.bfloat16)
    assert {p.dtype for p in streamed.parameters()} == {torch.bfloat16}  # norms, embedding
    assert {b.dtype for n, b in streamed.named_buffers() if n.endswith("scale")} == {torch.bfloat16}
    assert logits(streamed).dtype == torch.bfloat16


def test_pickle_checkpoints_load_the_same(kernels, tiny_model_dir, pickle_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    from_pickle = load_int8_by_module(pickle_model_dir, config, C_KERNEL)
    from_safetensors = load_int8_by_module(tiny_model_dir, config, C_KERNEL)
    assert torch.equal(logits(from_pickle), logits(from_safetensors))


def test_a_checkpoint_missing_a_tensor_is_a_clear_error(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    for file in tiny_model_dir.iterdir():
        shutil.copy(file, tmp_path)
    tensors = load_file(tiny_model_dir / "model.safetensors")
    del tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EngineError, match=r"dense_h_to_4h\.weight"):
        load_int8_by_module(tmp_path, AutoConfig.from_pretrained(tmp_path), C_KERNEL)
