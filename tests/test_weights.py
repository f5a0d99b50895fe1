"""Loading a checkpoint into our GPT-NeoX one module at a time: the float model quantized, from
either format, with clear errors for broken checkpoints."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from fim_lsp.engine.choices import INT8_LAYERS, choose
from fim_lsp.engine.kv_cache import KVCache
from fim_lsp.engine.loading import load_weights, read_shape
from fim_lsp.engine.neox import NeoX
from fim_lsp.engine.weights import Checkpoint, checkpoint_name, load_neox
from fim_lsp.errors import EngineError

IDS = [50277, 32488, 535, 50274, 18891, 50278, 1545, 4868, 9, 89, 50279]


def logits(model: NeoX) -> torch.Tensor:
    shape = model.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache(shape.layers, shape.heads, shape.head_dim, dtype, torch.device("cpu"))
    with torch.inference_mode():
        return model(IDS, cache, keep=len(IDS))


def quantized_after(model: NeoX, name: str) -> NeoX:
    """The float model with every linear layer swapped for its int8 version afterwards."""
    for module_name, module in list(model.named_modules()):
        if type(module) is torch.nn.Linear:
            parent, _, child = module_name.rpartition(".")
            setattr(model.get_submodule(parent), child, INT8_LAYERS[name].quantize(module))
    return model


@pytest.fixture(scope="module")
def pickle_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a 2022-style pickle checkpoint (FIM-NeoX-1.3B's format)."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("tiny-fim-bin")
    shutil.copy(tiny_model_dir / "config.json", folder)
    tensors = load_file(tiny_model_dir / "model.safetensors")
    assert "embed_out.weight" in tensors  # GPT-NeoX's own name for the head
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("name", ["c-kernel", "torch-dynamic", "weight-only"])
def test_loading_int8_layer_by_layer_is_the_float_model_quantized(tiny_model_dir, name):
    streamed = load_weights(tiny_model_dir, choose("cpu", "int8", name))
    assert not any(p.is_meta for p in streamed.parameters())
    assert not any(type(m) is torch.nn.Linear for m in streamed.modules())
    reference = quantized_after(load_weights(tiny_model_dir, choose("cpu", "none")), name)
    assert torch.equal(logits(streamed), logits(reference))


def test_the_model_takes_the_precision_dtype(tiny_model_dir):
    precision = dataclasses.replace(choose("cpu", "int8", "weight-only"), dtype=torch.bfloat16)
    model = load_neox(tiny_model_dir, read_shape(tiny_model_dir), precision)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # norms, embedding
    assert {b.dtype for n, b in model.named_buffers() if n.endswith("scale")} == {torch.bfloat16}


def test_pickle_checkpoints_load_the_same(tiny_model_dir, pickle_model_dir):
    precision = choose("cpu", "int8", "c-kernel")
    from_pickle = load_weights(pickle_model_dir, precision)
    assert torch.equal(logits(from_pickle), logits(load_weights(tiny_model_dir, precision)))


def test_a_head_called_lm_head_or_tied_to_the_embedding_is_found(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_model_dir / "model.safetensors")
    shutil.copy(tiny_model_dir / "config.json", tmp_path)
    tensors["lm_head.weight"] = tensors.pop("embed_out.weight")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shape = read_shape(tmp_path)
    assert Checkpoint(tmp_path).name_of("head.weight", shape) == "lm_head.weight"
    del tensors["lm_head.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    tied = dataclasses.replace(shape, tied_head=True)
    assert Checkpoint(tmp_path).name_of("head.weight", tied) == "gpt_neox.embed_in.weight"


def test_names_map_to_gpt_neox_checkpoint_names():
    assert (
        checkpoint_name("layers.3.qkv.weight")
        == "gpt_neox.layers.3.attention.query_key_value.weight"
    )
    assert (
        checkpoint_name("layers.0.norm_mlp.bias")
        == "gpt_neox.layers.0.post_attention_layernorm.bias"
    )
    assert checkpoint_name("final_norm.weight") == "gpt_neox.final_layer_norm.weight"


def test_a_checkpoint_missing_a_tensor_is_a_clear_error(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    for file in tiny_model_dir.iterdir():
        shutil.copy(file, tmp_path)
    tensors = load_file(tiny_model_dir / "model.safetensors")
    del tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EngineError, match=r"dense_h_to_4h\.weight"):
        load_weights(tmp_path, choose("cpu", "int8", "c-kernel"))


def test_a_config_of_another_architecture_is_refused(tiny_model_dir, tmp_path):
    import json

    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["hidden_act"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineError, match="exact GELU"):
        read_shape(tmp_path)
