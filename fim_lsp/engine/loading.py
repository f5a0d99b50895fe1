"""Finding the model (demo, local folder or hub id), choosing its precision, and loading it."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError

from fim_lsp import weight_file
from fim_lsp.engine import weight_cache
from fim_lsp.engine.choices import Precision, choose
from fim_lsp.engine.generate import Engine
from fim_lsp.engine.neox import NeoX, Shape
from fim_lsp.engine.weights import load_neox, tensor_names
from fim_lsp.errors import EngineError

log = logging.getLogger(__name__)

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "demo"
# What the server needs from a hub repository; weights in safetensors when the repo has them.
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "*.safetensors",
    "*.safetensors.index.json",
]
HUB_PICKLE_WEIGHTS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
HUB_TOKENIZER = ["tokenizer.json"]
# Models whose config understates the context they were trained on: FIM-NeoX-1.3B's hub config
# says 1024 positions, its model card 2048. Other models are taken at their config's word.
TRAINED_CONTEXT = {"CarperAI/FIM-NeoX-1.3B": 2048}

Progress = Callable[[str, int | None], None]  # (message, percentage)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def no_progress(message: str, percentage: int | None) -> None:
    log.info("%s%s", message, f" ({percentage}%)" if percentage is not None else "")


def resolve_model(
    model: str, progress: Progress = no_progress, tokenizer_only: bool = False
) -> Path:
    """The local folder of `model`: "demo", a folder, or a hub id (downloaded once, then cached).

    Honours HF_HUB_OFFLINE: offline, only the local cache is used. `tokenizer_only` fetches just
    the tokenizer from the hub (for building prompts without the model).
    """
    if model == "demo":
        if not (DEMO_MODEL / "config.json").is_file():
            raise EngineError(f"the demo model is missing from this install ({DEMO_MODEL})")
        return DEMO_MODEL
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    if folder.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1:
        raise EngineError(f"model {model!r} is neither a folder nor a hub id like owner/name")
    return download(model, progress, tokenizer_only)


def download(repo_id: str, progress: Progress, tokenizer_only: bool = False) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    progress(f"fetching {repo_id}" + ("" if tokenizer_only else " (2.9 GB the first time)"), None)
    try:
        if tokenizer_only:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_TOKENIZER))
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        if not any(folder.glob("*.safetensors")):
            log.warning("%s has no safetensors weights; loading its pickle weights", repo_id)
            folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_PICKLE_WEIGHTS))
    except LocalEntryNotFoundError as error:
        offline = (
            "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        )
        raise EngineError(
            f"{repo_id} is not in the local cache ({constants.HF_HUB_CACHE}) and {offline}: "
            f"run `fim-lsp download {repo_id}` with network access, or set model to a local folder "
            "or to demo"
        ) from error
    except RepositoryNotFoundError as error:
        raise EngineError(f"no model {repo_id!r} on the hub (check the name)") from error
    except (HfHubHTTPError, OSError) as error:
        raise EngineError(f"downloading {repo_id} failed: {error}") from error
    return folder


def load_engine(
    model: str,
    vocab_size: int,
    device: str = "auto",
    quantization: str = "int8",
    progress: Progress = no_progress,
    int8_backend: str | None = None,
    folder: Path | None = None,
) -> Engine:
    """Load `model` for generation, reporting progress; raises EngineError with a fix.

    `vocab_size` is the tokenizer's: ids at or past it are never generated.
    """
    precision = choose(device, quantization, int8_backend)
    folder = folder or resolve_model(model, progress)
    neox = load_cached(folder, precision, TRAINED_CONTEXT.get(model), progress)
    progress("model ready", 100)
    # The hub config pads the embedding to 50304 rows; rows past the tokenizer are untrained.
    return Engine(neox, precision, min(vocab_size, neox.shape.vocab))


# What reading a missing, truncated or corrupt weights file raises.
UNREADABLE = (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError)


def read_config(folder: Path):
    """The folder's transformers config (no remote code); EngineError when it is unreadable."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as error:
        raise EngineError(f"{folder} has no readable config.json ({error})") from error


def check_folder(folder: Path) -> None:
    """Read the config and each weights file's index as loading does, without the weights;
    EngineError with loading's message for what is broken."""
    read_shape(folder)
    try:
        for file in [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]:
            tensor_names(file)
    except UNREADABLE as error:
        raise EngineError(f"cannot load the model in {folder}: {error}") from error


def read_shape(folder: Path, trained_context: int | None = None) -> Shape:
    """The model's dimensions from its config.json."""
    shape = Shape.from_config(read_config(folder))
    if trained_context:  # rotary embeddings have no table to overflow
        shape = dataclasses.replace(shape, positions=trained_context)
    return shape


def load_cached(
    folder: Path, precision: Precision, trained_context: int | None, progress: Progress
) -> NeoX:
    """The model from the weight cache where it holds it (no config read, nothing quantized),
    else loaded from the checkpoint and quantized, then cached for the next start."""
    entry = weight_cache.entry_for(folder, precision, trained_context)
    started = time.perf_counter()
    if entry is not None and entry.path.is_file():
        progress(f"loading {folder.name} from the weight cache ({precision.reason})", 10)
        try:
            model = weight_cache.load(entry, precision)
        except torch.OutOfMemoryError as error:
            raise EngineError(
                f"out of memory loading {folder} on {precision.device}: {error}"
            ) from error
        if model is not None:
            log.info(
                "weights of %s read from the weight cache %s in %.1f s",
                folder, entry.path, time.perf_counter() - started,
            )  # fmt: skip
            return model
        started = time.perf_counter()
    # The entry mapped early is another's (an older kernel's, say): not kept in memory while
    # quantizing, which it made 1.7 GB larger.
    weight_file.early.clear()
    progress(f"loading {folder.name} ({precision.reason})", 10)
    model = load_weights(folder, precision, trained_context)
    done = "quantized" if precision.int8 else "read"
    log.info("weights of %s %s now in %.1f s", folder, done, time.perf_counter() - started)
    if entry is not None:
        progress("caching the quantized weights for the next start", 95)
        weight_cache.store(entry, model, precision)
    return model


def load_weights(folder: Path, precision: Precision, trained_context: int | None = None) -> NeoX:
    shape = read_shape(folder, trained_context)
    try:
        with freed_memory_returned():  # peak memory near the int8 size
            return load_neox(folder, shape, precision)
    except torch.OutOfMemoryError as error:
        raise EngineError(
            f"out of memory loading {folder} on {precision.device}: {error}"
        ) from error
    except UNREADABLE as error:
        raise EngineError(f"cannot load the model in {folder}: {error}") from error


@contextmanager
def freed_memory_returned() -> Iterator[None]:
    """Within: memory blocks of 1 MB or more come from mmap, so freeing them returns them to the
    system at once; after: the mmap threshold stays at glibc's own ceiling of 32 MB.

    Loading makes and drops an fp32 copy of every module. glibc raises its mmap threshold after
    large frees, so the later copies come from its heap, and what is freed there stays resident:
    the server's peak while loading the full model was 3.35-3.59 GB, 2.74 GB with this. Blocks up
    to 32 MB (prefill's activations) come from the heap again afterwards: mapping them afresh for
    every chunk made prefill 15-20% slower. A no-op where the C library has no mallopt.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt:
        mallopt(M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        if mallopt:
            mallopt(M_MMAP_THRESHOLD, 32 << 20)
