"""Reading a checkpoint into our GPT-NeoX one module at a time, quantizing as it goes.

Mapping a whole checkpoint file keeps every page that quantizing reads resident until loading
ends: the peak was the half-precision checkpoint plus the int8 model (5.3 GB for FIM-NeoX-1.3B,
which ends at 2.5 GB). Here each module's tensors are read, converted and quantized on their own,
and their pages are let go before the next module is read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from fim_lsp.engine.choices import Precision
from fim_lsp.engine.neox import NeoX, Shape
from fim_lsp.errors import EngineError

# Our names -> the checkpoint's (GPT-NeoX's own names, which Hugging Face checkpoints keep).
NAMES = [
    (r"^embed\.", "gpt_neox.embed_in."),
    (r"^layers\.(\d+)\.norm_attention\.", r"gpt_neox.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.norm_mlp\.", r"gpt_neox.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.qkv\.", r"gpt_neox.layers.\1.attention.query_key_value."),
    (r"^layers\.(\d+)\.dense\.", r"gpt_neox.layers.\1.attention.dense."),
    (r"^layers\.(\d+)\.up\.", r"gpt_neox.layers.\1.mlp.dense_h_to_4h."),
    (r"^layers\.(\d+)\.down\.", r"gpt_neox.layers.\1.mlp.dense_4h_to_h."),
    (r"^final_norm\.", "gpt_neox.final_layer_norm."),
    (r"^head\.", "embed_out."),
]
# Checkpoints written by transformers 5 may call the head `lm_head`.
HEAD_ALIASES = ("embed_out.weight", "lm_head.weight")


def checkpoint_name(name: str) -> str:
    for pattern, replacement in NAMES:
        renamed, found = re.subn(pattern, replacement, name)
        if found:
            return renamed
    raise KeyError(name)


def load_neox(folder: Path, shape: Shape, precision: Precision) -> NeoX:
    """The model of `shape` with the weights in `folder` on the precision's device: linear layers
    in its int8 layers (quantized on the CPU, so the device never holds them unquantized), the
    rest in its dtype."""
    model = NeoX(shape, "meta")
    checkpoint = Checkpoint(folder)
    device, dtype = precision.device, precision.dtype
    # Names, not modules: holding the modules would keep each replaced fp32 layer alive.
    for name in [name for name, _ in model.named_modules()]:
        module = model.get_submodule(name)
        own = [parameter for parameter, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        prefix = f"{name}." if name else ""
        wanted = [checkpoint.name_of(prefix + parameter, shape) for parameter in own]
        tensors = checkpoint.read(wanted)
        linear = type(module) is nn.Linear
        for parameter, stored in zip(own, wanted, strict=True):
            tensor = tensors[stored].to("cpu" if linear else device, dtype)
            setattr(module, parameter, nn.Parameter(tensor, requires_grad=False))
        if linear and precision.int8 is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, precision.int8.quantize(module).to(device))
        elif linear:
            module.to(device)
    model.inverse_frequencies = model.frequencies(device)
    return model.eval()


class Checkpoint:
    """The weight files of a model folder (safetensors, else pickle read with weights_only),
    as one file or shards with an index: which file holds each tensor."""

    def __init__(self, folder: Path):
        for single, index in (
            ("model.safetensors", "model.safetensors.index.json"),
            ("pytorch_model.bin", "pytorch_model.bin.index.json"),
        ):
            if (folder / index).is_file():
                weight_map = json.loads((folder / index).read_text())["weight_map"]
                self.files = {key: folder / file for key, file in weight_map.items()}
                break
            if (folder / single).is_file():
                self.files = dict.fromkeys(tensor_names(folder / single), folder / single)
                break
        else:
            raise EngineError(f"{folder} has no model.safetensors or pytorch_model.bin")

    def name_of(self, name: str, shape: Shape) -> str:
        """The checkpoint's name for our parameter `name`."""
        if name == "head.weight":
            found = [alias for alias in HEAD_ALIASES if alias in self.files]
            if not found and shape.tied_head:
                return checkpoint_name("embed.weight")
            return found[0] if found else HEAD_ALIASES[0]
        return checkpoint_name(name)

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """float32 copies of the tensors called `keys`; file pages are let go on return."""
        if missing := [key for key in keys if key not in self.files]:
            raise EngineError(f"the checkpoint has no {', '.join(missing)}")
        tensors: dict[str, torch.Tensor] = {}
        for file in {self.files[key] for key in keys}:
            tensors |= read_tensors(file, [key for key in keys if self.files[key] == file])
        return tensors


def tensor_names(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        with safe_open(file, framework="pt") as opened:
            return list(opened.keys())
    return list(torch.load(file, map_location="cpu", mmap=True, weights_only=True))


def read_tensors(file: Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """float32 copies of `keys` from one file, memory-mapped only while they are copied."""
    if file.suffix == ".safetensors":
        with safe_open(file, framework="pt") as opened:
            return {key: opened.get_tensor(key).to(torch.float32, copy=True) for key in keys}
    # Loaded again for every module: all tensors of a pickle file share one mapping, whose read
    # pages stay resident while any of them lives; parsing its index again costs milliseconds.
    tensors = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    return {key: tensors[key].to(torch.float32, copy=True) for key in keys}
