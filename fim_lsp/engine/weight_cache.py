"""The weight cache: the quantized model kept on disk after a first load, and read back at the
next start instead of quantizing again (FIM-NeoX-1.3B's 1.73 GB on a 2-core CPU: 20-30 s to load
and quantize, 2-5 s to read back in a VM where faulting in fresh memory is slow, about 0.4 s
expected elsewhere; bench/reports/load-cache-2026-12-03.md).

An entry is one safetensors file in cache_folder()/weights/ holding every tensor of the loaded
model, the int8 layers' buffers as quantizing left them, and in its metadata the model's Shape
(so that a start from the cache needs no transformers config) and what the entry was made from,
its identity, whose digest is in the file's name:
- the source: the model folder; config.json's content; each weight file's name, the file it
  resolves to, its size, modification time (ns) and inode. Not a hash of the weights: reading
  the 2.6 GB checkpoint to hash it would take seconds at every start, the time the cache is
  there to save, while a checkpoint saved again, copied over or downloaded again gets a new
  modification time or inode (a file changed in place with its size and time set back would go
  unnoticed). A hub snapshot's folder is named by its revision, and its files resolve to blobs
  named by their content's hash.
- how the weights were made: the int8 layers, dtype and device; the C kernels' recipe
  (native.recipe_digest); the Python code that quantizes and lays out the weights (CODE);
  torch's version; FORMAT.
Anything changed gives another name: a miss, and the model is quantized and cached again. An
entry is checked before it is used: its identity, the tensors' names, shapes and dtypes against
the model's Shape, its size, and a CRC32 of its metadata and of every 16 MB of every tensor
(zlib, 2.5 GB/s per core, computed by the threads that read). One that fails is logged, deleted
and rebuilt, never used.

Written after the first load under a temporary name, then renamed: a reader never sees half an
entry, and two servers starting at once both succeed. Not synced to disk: an entry cut short by
a crash fails its checks at the next start. Writing one removes the entry it replaces (same
model, same int8 layers) and the entries whose model folder is gone, so the folder holds at most
one entry per model and int8 layers.

Mapped where the kernel maps the file on huge pages (weight_file.huge_mapping: ext4 and xfs on
Linux 6.16 and later): the tensors are views of the page cache, nothing is copied, and a decode
step reads them as fast as quantized ones (38.6 against 38.3 ms per token, alternating, here);
the newest entry is mapped and checked while the server imports torch (weight_file.check_early).
Elsewhere, read into memory allocated as quantizing allocates it: the packed int8 weights that
every decode step streams go on 2 MB-aligned memory advised to be huge pages (memory.py), which
decoded 6-9% faster than 4 KB pages. The copy costs a few tenths of a second where fresh memory
is cheap to fault in; in a VM that hands freed memory back to its host (free page reporting),
each fresh 2 MB page is a fault on the host too, and reading runs at 0.3-0.9 GB/s (4 KB pages:
1.6-3.3 GB/s), so the chunks are read by a thread per core. Mapping took the 1.7 GB entry of
FIM-NeoX-1.3B from 1.9 s to 0.5 s on such a VM.

Cached: our own int8 layers (c-kernel, torch-dynamic, weight-only). Not cached:
- quantization none: loading computes nothing that a cache would save (the checkpoint is read
  as it is), and the entry would be the model again, in fp32, beside its checkpoint.
- bitsandbytes: its layers quantize themselves inside bitsandbytes when moved to their device,
  into a state private to its version; and importing it alone takes seconds.

FIM_LSP_WEIGHT_CACHE=off turns the cache off (the test suite does, except for the cache's tests).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import mmap
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path

import torch
from torch import nn

from fim_lsp.engine import memory, native
from fim_lsp.engine.abi import GROUP, PANEL
from fim_lsp.engine.choices import Precision
from fim_lsp.engine.linear import Int8Linear, WeightOnlyInt8Linear
from fim_lsp.engine.neox import NeoX, Shape
from fim_lsp.weight_file import (
    READERS,
    SWITCH,
    Invalid,
    check_chunk,
    chunks,
    huge_mapping,
    read_header,
    take_early,
    verify,
    weights_folder,
)

log = logging.getLogger(__name__)

FORMAT = 1
CACHED = ("c-kernel", "torch-dynamic", "weight-only")
# What decides the values and the layout of the stored tensors, beside the C kernels' recipe.
CODE = [
    Path(__file__).with_name(name)
    for name in ("abi.py", "choices.py", "linear.py", "neox.py", "weights.py", "weight_cache.py")
]
SOURCE_FILES = (
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
)
DTYPES = {
    torch.int8: "I8",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
}
STALE_TEMPORARY_S = 3600  # a temporary file this old is left from a crashed write
SPARE_DISK = 1 << 30  # an entry is not written where it would leave less free


class Unsupported(Exception):
    """A model whose layers this cache cannot store."""


@dataclass(frozen=True)
class Spec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Entry:
    """Where the model of a source folder, quantized one way, is (or would be) cached."""

    path: Path
    identity: dict

    @property
    def prefix(self) -> str:
        """The start of the name of every entry of this model and int8 layers."""
        return self.path.name.rsplit("-", 1)[0] + "-"


def entry_for(source: Path, precision: Precision, trained_context: int | None) -> Entry | None:
    """The entry for the model in `source` loaded in `precision`, or None where it is not cached
    (the cache turned off, quantization none, bitsandbytes, a source that cannot be read)."""
    switch = os.environ.get(SWITCH, "on")
    if switch == "off":
        return None
    if switch != "on":
        log.warning("%s=%s is neither on nor off: the weight cache is on", SWITCH, switch)
    if precision.int8 is None or precision.int8.name not in CACHED:
        what = precision.int8.name if precision.int8 else "quantization none"
        log.info("the weight cache keeps our own int8 layers only, not %s", what)
        return None
    try:
        identity = {
            "format": FORMAT,
            "source": source_identity(source),
            "trained_context": trained_context,
            "int8": precision.int8.name,
            "dtype": str(precision.dtype),
            "device": precision.device,
            "kernels": native.recipe_digest(),
            "code": hashlib.sha256(b"".join(file.read_bytes() for file in CODE)).hexdigest(),
            "torch": torch.__version__,
        }
    except OSError as error:
        log.warning("the weight cache is not used: cannot read %s (%s)", source, error)
        return None
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]
    name = f"{model_label(source)}-{precision.int8.name}-{key}.safetensors"
    return Entry(weights_folder() / name, identity)


def source_identity(source: Path) -> dict:
    files = sorted({file for pattern in SOURCE_FILES for file in source.glob(pattern)})
    identity: dict = {"folder": str(source.resolve()), "files": []}
    for file in files:
        status = file.stat()
        identity["files"].append(
            {
                "name": file.name,
                "target": str(file.resolve()),
                "size": status.st_size,
                "mtime_ns": status.st_mtime_ns,
                "inode": status.st_ino,
            }
        )
    config = source / "config.json"
    identity["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    return identity


def model_label(source: Path) -> str:
    """A readable name for the model, and a digest of where it lives: the hub repository for a
    hub snapshot (so that a new revision replaces the old one's entry), else the folder."""
    resolved = source.resolve()
    where = resolved
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        where = resolved.parent.parent
    name = re.sub(r"[^A-Za-z0-9._]+", "_", where.name.removeprefix("models--"))[:60]
    return f"{name}-{hashlib.sha256(str(where).encode()).hexdigest()[:8]}"


# What each kind of int8 layers stores: a Linear's tensors, and the layer made of them again.


def skeleton(shape: Shape) -> NeoX:
    """The model without its weights (on the meta device)."""
    return NeoX(shape, "meta")


def layout(model: NeoX, precision: Precision) -> dict[str, dict[str, Spec]]:
    """Every tensor an entry holds, module by module in the model's order: {module: {name: Spec}},
    from the skeleton of the model."""
    assert precision.int8 is not None
    modules: dict[str, dict[str, Spec]] = {}
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if type(module) is nn.Linear:
            modules[name] = linear_specs(precision.int8.name, module, precision.dtype)
        else:
            modules[name] = {key: Spec(tuple(p.shape), precision.dtype) for key, p in own.items()}
    return modules


def linear_specs(kind: str, linear: nn.Linear, dtype: torch.dtype) -> dict[str, Spec]:
    outputs, inputs = linear.out_features, linear.in_features
    specs: dict[str, Spec]
    if kind == "c-kernel":
        panels = (-(-outputs // PANEL), -(-inputs // GROUP), PANEL, GROUP)
        specs = {
            "packed": Spec(panels, torch.int8),
            "scale": Spec((outputs,), torch.float32),
            "sums": Spec((outputs,), torch.int32),
        }
        dtype = torch.float32
    elif kind == "weight-only":
        specs = {"weight": Spec((outputs, inputs), torch.int8), "scale": Spec((outputs, 1), dtype)}
    else:  # torch-dynamic: one scale per matrix (torch's default_dynamic_qconfig)
        specs = {
            "weight": Spec((outputs, inputs), torch.int8),
            "weight_scale": Spec((), torch.float64),
            "weight_zero_point": Spec((), torch.int64),
        }
        dtype = torch.float32
    if linear.bias is not None:
        specs["bias"] = Spec((outputs,), dtype)
    return specs


def module_tensors(kind: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to store of a loaded module (int8 layers or one with parameters)."""
    if isinstance(module, Int8Linear | WeightOnlyInt8Linear):
        return {name: buffer for name, buffer in module.named_buffers() if buffer is not None}
    if kind == "torch-dynamic" and hasattr(module, "_weight_bias"):
        weight, bias = module._weight_bias()
        if weight.qscheme() not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            raise Unsupported(f"torch's dynamic int8 layers quantized {weight.qscheme()}")
        tensors = {
            "weight": weight.int_repr(),
            "weight_scale": torch.tensor(weight.q_scale(), dtype=torch.float64),
            "weight_zero_point": torch.tensor(weight.q_zero_point(), dtype=torch.int64),
        }
        return tensors if bias is None else {**tensors, "bias": bias}
    if type(module) is nn.Linear or any(True for _ in module.buffers(recurse=False)):
        raise Unsupported(f"a {type(module).__name__} layer")
    return {name: parameter.data for name, parameter in module.named_parameters(recurse=False)}


def built(kind: str, linear: nn.Linear, tensors: dict[str, torch.Tensor], device: str) -> nn.Module:
    """The int8 layer of `kind` in place of `linear` (on the meta device), from its tensors."""
    bias = tensors.get("bias")
    if kind == "c-kernel":
        return Int8Linear.from_buffers(
            linear.in_features, tensors["packed"], tensors["scale"], tensors["sums"], bias
        )
    if kind == "weight-only":
        return WeightOnlyInt8Linear.from_buffers(tensors["weight"], tensors["scale"], bias).to(
            device
        )
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    with warnings.catch_warnings():  # deprecated, as choices.torch_dynamic_layer says
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", ".*quantized tensor creation", UserWarning)
        layer = DynamicLinear(linear.in_features, linear.out_features, bias_=bias is not None)
        scale, zero_point = tensors["weight_scale"].item(), tensors["weight_zero_point"].item()
        weight = torch._make_per_tensor_quantized_tensor(tensors["weight"], scale, int(zero_point))
        layer.set_weight_bias(weight, bias)
    return layer


# Reading an entry.


def load(entry: Entry, precision: Precision) -> NeoX | None:
    """The model the entry holds; None when there is no entry, or when the entry fails a check
    (then it is logged and deleted)."""
    try:
        file = open(entry.path, "rb", buffering=0)  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cannot read the weight cache entry %s (%s): quantizing", entry.path, error)
        return None
    with file:
        try:
            return read_model(file, entry, precision)
        except torch.OutOfMemoryError:
            raise  # not the entry's fault
        except Invalid as error:
            reason = str(error)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
            reason = f"is unreadable ({type(error).__name__}: {error})"
    log.warning(
        "the weight cache entry %s %s: deleted, the model is quantized and cached again",
        entry.path,
        reason,
    )
    remove(entry.path)
    return None


def read_model(file: FileIO, entry: Entry, precision: Precision) -> NeoX:
    header, start = read_header(file)
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not isinstance(metadata.get("fim_lsp"), str):
        raise Invalid("has no fim-lsp metadata")
    text = metadata["fim_lsp"]
    if f"{zlib.crc32(text.encode()):08x}" != metadata.get("fim_lsp_crc32"):
        raise Invalid("fails its metadata's checksum")
    about = json.loads(text)
    if not isinstance(about, dict) or about.get("identity") != entry.identity:
        raise Invalid("was made from other weights or another version")
    model = skeleton(shape_of(about.get("shape")))
    modules = layout(model, precision)
    expected = {
        f"{module}.{name}": spec
        for module, specs in modules.items()
        for name, spec in specs.items()
    }
    checksums = about.get("crc32", {})
    end = check_tensors(header, expected, checksums)
    size = os.fstat(file.fileno()).st_size
    if size != start + end:
        raise Invalid(f"is {size} bytes, not {start + end} (cut short or overwritten)")
    assert precision.int8 is not None
    kind, device = precision.int8.name, precision.device
    early = take_early(entry.path, file.fileno())  # mapped, and checked, while torch imported
    if device != "cpu":
        mapping = None
    elif early is not None:
        if (invalid := early.verdict.result()) is not None:
            raise invalid
        mapping = early.mapping
    elif (mapping := huge_mapping(file.fileno(), size)) is not None:
        verify(header, start, mapping, checksums)
    if mapping is None and hasattr(os, "posix_fadvise"):  # read ahead generously
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
    # Every tensor is a view of the mapping (checked above), or memory allocated for it whose
    # chunks a pool of threads reads and checks (reading and zlib let go of the GIL; faulting
    # fresh memory in is much of the time, and it runs on every core this way); each module is
    # made as soon as its tensors are in.
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    reads: dict[str, list[concurrent.futures.Future[None]]] = {}
    position = start
    with concurrent.futures.ThreadPoolExecutor(READERS) as pool:
        try:
            for module_name, specs in modules.items():
                tensors[module_name], reads[module_name] = {}, []
                for name, spec in specs.items():
                    full = f"{module_name}.{name}"
                    if mapping is not None:
                        tensors[module_name][name] = mapped(mapping, position, spec)
                        position += spec.nbytes
                        continue
                    tensor = allocated(spec, big_int8=kind == "c-kernel" and name == "packed")
                    view = raw(tensor)
                    for (begin, end), crc in zip(chunks(spec.nbytes), checksums[full], strict=True):
                        read = pool.submit(
                            read_chunk, file, view[begin:end], position + begin, crc, full
                        )
                        reads[module_name].append(read)
                    tensors[module_name][name] = tensor
                    position += spec.nbytes
            for module_name in list(tensors):  # each let go once made into its module
                module_tensors = tensors.pop(module_name)
                for read in reads.pop(module_name):
                    read.result()
                module = model.get_submodule(module_name)
                if type(module) is nn.Linear:
                    parent, _, child = module_name.rpartition(".")
                    layer = built(kind, module, module_tensors, device)
                    setattr(model.get_submodule(parent), child, layer)
                else:
                    for name, tensor in module_tensors.items():
                        setattr(module, name, nn.Parameter(tensor.to(device), requires_grad=False))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the reads under way end before the memory goes
            raise
    model.inverse_frequencies = model.frequencies(device)
    return model.eval()


def check_tensors(header: dict, expected: dict[str, Spec], checksums: object) -> int:
    """Check that the header lists the tensors expected, packed one after the other, each with a
    checksum; the end of the last."""
    if list(header) != list(expected):
        missing = sorted(set(expected) - set(header))[:3]
        raise Invalid(f"holds other tensors than the model's (missing {missing or 'none'})")
    if not isinstance(checksums, dict) or set(checksums) != set(expected):
        raise Invalid("lacks checksums")
    for name, spec in expected.items():
        crcs = checksums[name]
        if not isinstance(crcs, list) or len(crcs) != len(chunks(spec.nbytes)):
            raise Invalid(f"lacks checksums of {name}")
    offset = 0
    for name, spec in expected.items():
        found = header[name]
        if not isinstance(found, dict):
            raise Invalid(f"has a broken header entry for {name}")
        wanted = {
            "dtype": DTYPES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        if found != wanted:
            raise Invalid(f"holds {name} as {found}, not {wanted}")
        offset += spec.nbytes
    return offset


def shape_of(value: object) -> Shape:
    names = {field.name for field in dataclasses.fields(Shape)}
    if not isinstance(value, dict) or set(value) != names:
        raise Invalid("has no model shape")
    return Shape(**value)


def allocated(spec: Spec, big_int8: bool) -> torch.Tensor:
    """Memory for a tensor as quantizing allocates it: packed int8 weights on huge pages."""
    if big_int8:
        return memory.empty(spec.shape, spec.dtype)
    return torch.empty(spec.shape, dtype=spec.dtype)


def mapped(mapping: mmap.mmap, offset: int, spec: Spec) -> torch.Tensor:
    """The tensor of `spec` at `offset` in the entry's mapping (the tensor keeps it open)."""
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=spec.dtype)
    data = torch.frombuffer(mapping, dtype=torch.uint8, count=spec.nbytes, offset=offset)
    return data.view(spec.dtype).view(spec.shape)


def raw(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (the tensor must outlive them)."""
    if tensor.nbytes == 0:
        return memoryview(b"")
    array = (ctypes.c_ubyte * tensor.nbytes).from_address(tensor.data_ptr())
    return memoryview(array).cast("B")


def read_chunk(file: FileIO, view: memoryview, offset: int, crc: str, name: str) -> None:
    """Read `view` from `offset`, and check it against its CRC32 (hex)."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(file.fileno(), [view[done:]], offset + done)
        else:  # Windows: one reader (READERS), so the file's position is its own
            file.seek(offset + done)
            count = file.readinto(view[done:]) or 0
        if not count:
            raise Invalid("is cut short")
        done += count
    check_chunk(view, crc, name)


# Writing an entry.


def store(entry: Entry, model: NeoX, precision: Precision) -> Path | None:
    """Write the loaded model as the entry (logged; None where it could not be written)."""
    assert precision.int8 is not None
    modules = layout(skeleton(model.shape), precision)
    checksums = {
        f"{module}.{name}": [0] * len(chunks(spec.nbytes))
        for module, specs in modules.items()
        for name, spec in specs.items()
    }
    folder = entry.path.parent
    temporary = folder / f".{entry.path.name}.{os.getpid()}.tmp"
    started = time.perf_counter()
    size = sum(spec.nbytes for specs in modules.values() for spec in specs.values())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if (free := shutil.disk_usage(folder).free) < size + SPARE_DISK:
            log.warning(
                "not caching the quantized weights: %.1f GB free in %s, %.1f GB needed and %.1f "
                "GB left spare", free / 1e9, folder, size / 1e9, SPARE_DISK / 1e9,
            )  # fmt: skip
            return None
        with open(temporary, "wb", buffering=0) as file:
            # The checksums are known once the tensors are written: the header is written again
            # then, with them (hex of a fixed width, so it keeps its length).
            first = header_bytes(entry, model.shape, modules, checksums)
            write_all(file, first)
            for full, tensor in tensors_of(model, modules, precision.int8.name):
                view = raw(tensor)
                checksums[full] = [zlib.crc32(view[begin:end]) for begin, end in chunks(len(view))]
                write_all(file, view)
                del view, tensor
            file.seek(0)
            last = header_bytes(entry, model.shape, modules, checksums)
            assert len(last) == len(first)
            write_all(file, last)
        os.replace(temporary, entry.path)
    except Unsupported as error:
        log.info("the weight cache cannot keep this model: %s", error)
        remove(temporary)
        return None
    except OSError as error:  # a full disk, a read-only home: quantized at every start
        log.warning("cannot write the weight cache entry %s: %s", entry.path, error)
        remove(temporary)
        return None
    log.info(
        "cached the quantized weights in %s (%.2f GB, %.1f s)",
        entry.path,
        entry.path.stat().st_size / 1e9,
        time.perf_counter() - started,
    )
    tidy(entry)
    return entry.path


def tensors_of(
    model: NeoX, modules: dict[str, dict[str, Spec]], kind: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors in the entry's order, each a contiguous CPU tensor of its Spec; a
    module's are made (a GPU's copied, torch's int8 unpacked) only when it is written."""
    for module_name, specs in modules.items():
        tensors = module_tensors(kind, model.get_submodule(module_name))
        if list(tensors) != list(specs):
            raise Unsupported(f"{module_name} has {list(tensors)}, not {list(specs)}")
        for name, spec in specs.items():
            tensor = tensors[name].detach().to("cpu").contiguous()
            if tuple(tensor.shape) != spec.shape or tensor.dtype != spec.dtype:
                raise Unsupported(f"{module_name}.{name} is {tensor.dtype} {tuple(tensor.shape)}")
            yield f"{module_name}.{name}", tensor
        del tensors


def header_bytes(
    entry: Entry,
    shape: Shape,
    modules: dict[str, dict[str, Spec]],
    checksums: dict[str, list[int]],
) -> bytes:
    about = {
        "identity": entry.identity,
        "shape": dataclasses.asdict(shape),
        "crc32": {name: [f"{crc:08x}" for crc in crcs] for name, crcs in checksums.items()},
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    text = json.dumps(about, sort_keys=True)
    header: dict = {
        "__metadata__": {
            "format": "pt",
            "fim_lsp": text,
            "fim_lsp_crc32": f"{zlib.crc32(text.encode()):08x}",
        }
    }
    offset = 0
    for module_name, specs in modules.items():
        for name, spec in specs.items():
            header[f"{module_name}.{name}"] = {
                "dtype": DTYPES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 64)  # the data starts on a cache line (mapped: too)
    return len(encoded).to_bytes(8, "little") + encoded


def write_all(file: FileIO, data: bytes | memoryview) -> None:
    view, done = memoryview(data), 0
    while done < len(view):
        done += file.write(view[done:]) or 0


def tidy(kept: Entry) -> None:
    """Remove the entries `kept` replaces (same model and int8 layers), those whose model folder
    is gone, and temporary files left by crashed writes."""
    try:
        paths = list(kept.path.parent.iterdir())
    except OSError:
        return
    for path in paths:
        if path == kept.path:
            continue
        try:
            if path.name.endswith(".tmp"):
                if time.time() - path.stat().st_mtime > STALE_TEMPORARY_S:
                    remove(path)
            elif path.suffix == ".safetensors" and (
                path.name.startswith(kept.prefix) or source_gone(path)
            ):
                log.info("removing the weight cache entry %s", path)
                remove(path)
        except OSError:
            continue


def source_gone(path: Path) -> bool:
    """Whether the entry at `path` was made from a folder that no longer exists."""
    try:
        with open(path, "rb", buffering=0) as file:
            header, _ = read_header(file)
        folder = json.loads(header["__metadata__"]["fim_lsp"])["identity"]["source"]["folder"]
    except (OSError, ValueError, KeyError, TypeError, Invalid):
        return False  # not ours to judge: its own model's next start checks it
    return not Path(folder).is_dir()


def remove(path: Path) -> None:
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as error:
        log.warning("cannot remove %s: %s", path, error)
