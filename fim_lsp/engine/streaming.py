"""Loading a checkpoint into our int8 layers one module at a time.

`from_pretrained` maps the whole checkpoint file, and every page that quantizing reads stays
resident until loading ends: the peak was the half-precision checkpoint plus the int8 model (5.3 GB
for FIM-NeoX-1.3B, which ends at 2.5 GB). Here each module's tensors are read, converted and
quantized on their own, and their pages are let go before the next module is read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from fim_lsp.engine.precision import quantize_linear
from fim_lsp.errors import EngineError


def load_int8_by_module(
    folder: Path, config, int8: str, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """The model of `config` with the weights in `folder` on `device`: linear layers in int8
    backend `int8` (precision.C_KERNEL, TORCH_DYNAMIC or WEIGHT_ONLY), the rest in `dtype`."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():  # parameters on the meta device; buffers (rotary tables) real
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    checkpoint = Checkpoint(folder, model_key=key_renamer(model))
    # Names, not modules: holding the modules would keep each replaced fp32 layer alive.
    for name in [name for name, _ in model.named_modules()]:
        module = model.get_submodule(name)
        own = [parameter for parameter, _ in module.named_parameters(recurse=False)]
        if not own:
            continue
        prefix = f"{name}." if name else ""
        tensors = checkpoint.read([prefix + parameter for parameter in own])
        linear = type(module) is torch.nn.Linear
        for parameter in own:
            # Linear layers are quantized on the CPU: the device never holds them unquantized.
            tensor = tensors[prefix + parameter].to("cpu" if linear else device, dtype)
            weight = torch.nn.Parameter(tensor, requires_grad=False)
            setattr(module, parameter, weight)
        if linear:
            parent, _, child = name.rpartition(".")
            quantized = quantize_linear(module, int8).to(device)
            setattr(model.get_submodule(parent), child, quantized)
    return model.to(device)  # the buffers (rotary tables) too


class Checkpoint:
    """The weight files of a model folder (safetensors, else pickle read with weights_only),
    as one file or shards with an index: which file holds each tensor."""

    def __init__(self, folder: Path, model_key: Callable[[str], str]):
        for single, index in (
            ("model.safetensors", "model.safetensors.index.json"),
            ("pytorch_model.bin", "pytorch_model.bin.index.json"),
        ):
            if (folder / index).is_file():
                weight_map = json.loads((folder / index).read_text())["weight_map"]
                files = {key: folder / file for key, file in weight_map.items()}
                break
            if (folder / single).is_file():
                files = dict.fromkeys(tensor_names(folder / single), folder / single)
                break
        else:
            raise EngineError(f"{folder} has no model.safetensors or pytorch_model.bin")
        # model key -> (file, key in the file)
        self.sources = {model_key(key): (file, key) for key, file in files.items()}

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        """float32 copies of the tensors the model calls `keys`; file pages are let go on return."""
        if missing := [key for key in keys if key not in self.sources]:
            raise EngineError(f"the checkpoint has no {', '.join(missing)}")
        tensors: dict[str, torch.Tensor] = {}
        for file in {self.sources[key][0] for key in keys}:
            wanted = {self.sources[key][1]: key for key in keys if self.sources[key][0] == file}
            for stored, tensor in read_tensors(file, list(wanted)).items():
                tensors[wanted[stored]] = tensor
        return tensors


def key_renamer(model) -> Callable[[str], str]:
    """transformers' renaming of checkpoint keys for this model (GPT-NeoX's `embed_out` is
    `lm_head` since transformers 5), so this loader reads the checkpoints from_pretrained reads."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    if len(renamings) < len(transforms):  # tensors merged or split: not a plain rename
        raise EngineError(f"{type(model).__name__} checkpoints need conversions this loader lacks")
    return lambda key: rename_source_key(key, renamings, [])[0]


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
