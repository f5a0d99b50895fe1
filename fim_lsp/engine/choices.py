"""Device, dtype and int8 layers: one table of the ways to run the model, one `choose`.

Which int8 layers are fast depends on the device and the processor, so `choose` times the
candidates on a small product and keeps the faster; the winner is remembered in the kernels'
cache folder, keyed by the machine and the versions, so that a restart picks it without timing.
- CUDA: int8 weights computed in fp16 (`linear.WeightOnlyInt8Linear`), against bitsandbytes'
  LLM.int8, which quantizes activations too and decoded 10x slower than fp16 on an H100.
- CPU: our C kernels (`linear.c`, and `layer.c` for whole layers); where they cannot run (no
  compiler, no AVX2), torch's dynamic int8 layers (fbgemm; `torch.ao.quantization` is
  deprecated, but no maintained int8 path is as fast on CPU: torchao's eager int8 was 10x
  slower here); against bitsandbytes, which runs on CPUs through `torch._int_mm`: fast with
  AVX-512 VNNI, a slow fallback elsewhere (0.1-3 GOP/s on an AVX2 EPYC).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from fim_lsp.engine import linear, native
from fim_lsp.errors import EngineError
from fim_lsp.paths import cache_folder

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Int8Layers:
    """One way to run the linear layers in int8."""

    name: str
    devices: tuple[str, ...]
    quantize: Callable[[nn.Linear], nn.Module]  # a float layer (on the CPU) -> its int8 version
    fp16_cache: bool  # keys and values kept in fp16 (the C kernels read them so)
    c_step: bool  # a few new tokens run through the C kernels' whole-layer call (cpu_step.py)

    def problem(self, device: str) -> str | None:
        """Why these layers cannot run on `device` here, or None."""
        if device not in self.devices:
            return f"the {self.name} int8 layers run on {' or '.join(self.devices)} only"
        return PROBLEMS[self.name](device)


def bitsandbytes_layer(layer: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    quiet_bitsandbytes()
    out = bnb.nn.Linear8bitLt(
        layer.in_features, layer.out_features, bias=layer.bias is not None, has_fp16_weights=False
    )
    # Quantized when moved to its device (the loader moves every layer).
    out.weight = bnb.nn.Int8Params(layer.weight.data, requires_grad=False, has_fp16_weights=False)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.data, requires_grad=False)
    return out


def torch_dynamic_layer(layer: nn.Linear) -> nn.Module:
    """torch's dynamic int8 layer: activations quantized per call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see the module docstring
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation", category=UserWarning
        )
        layer.qconfig = torch.ao.quantization.default_dynamic_qconfig  # type: ignore[assignment]
        return torch.ao.nn.quantized.dynamic.Linear.from_float(layer.float())


C_KERNEL = Int8Layers("c-kernel", ("cpu",), linear.Int8Linear.from_float, True, True)
TORCH_DYNAMIC = Int8Layers("torch-dynamic", ("cpu",), torch_dynamic_layer, False, False)
WEIGHT_ONLY = Int8Layers(
    "weight-only", ("cpu", "cuda"), linear.WeightOnlyInt8Linear.from_float, False, False
)
BITSANDBYTES = Int8Layers("bitsandbytes", ("cpu", "cuda"), bitsandbytes_layer, False, False)
INT8_LAYERS = {
    layers.name: layers for layers in (C_KERNEL, TORCH_DYNAMIC, WEIGHT_ONLY, BITSANDBYTES)
}
# Ours on each device, best first: the first that can run is timed against bitsandbytes.
OURS = {"cpu": (C_KERNEL, TORCH_DYNAMIC), "cuda": (WEIGHT_ONLY,)}


def bitsandbytes_problem(device: str) -> str | None:
    try:
        import bitsandbytes as bnb
    except Exception as error:  # a broken install raises more than ImportError
        return f"bitsandbytes cannot be imported ({error}): pip install 'bitsandbytes>=0.50'"
    try:
        layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False).to(device)
        layer(torch.randn(2, 64, device=device, dtype=torch.float16))
    except Exception as error:
        return f"bitsandbytes {bnb.__version__} 8-bit does not run on {device} here ({error})"
    return None


PROBLEMS: dict[str, Callable[[str], str | None]] = {
    "c-kernel": lambda device: linear.kernel_problem(),
    "torch-dynamic": lambda device: None,
    "weight-only": lambda device: None,
    "bitsandbytes": bitsandbytes_problem,
}


@dataclass(frozen=True)
class Precision:
    device: str  # "cpu" or "cuda"
    dtype: torch.dtype  # of everything that is not an int8 matrix
    int8: Int8Layers | None  # None: no quantization
    reason: str

    @property
    def quantization(self) -> str:
        return f"int8 ({self.int8.name})" if self.int8 else "none"

    @property
    def cache_dtype(self) -> torch.dtype:
        return torch.float16 if self.int8 and self.int8.fp16_cache else self.dtype

    @property
    def attention(self) -> str:
        """What attends, over which cache (where the model's head size lets the C step run)."""
        cache = {torch.float16: "fp16", torch.float32: "fp32"}.get(self.cache_dtype, "bf16")
        kernel = "C attention kernel" if self.int8 and self.int8.c_step else "torch sdpa"
        return f"{kernel}, {cache} KV cache"


def choose(device: str, quantization: str, int8: str | None = None) -> Precision:
    """The one place where device, dtype and quantization are decided, from explicit settings.

    `int8` forces one set of int8 layers (tests and benchmarks); by default the faster wins.
    """
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise EngineError(
            "device is set to cuda but torch sees no CUDA GPU (torch "
            f"{torch.__version__}); set device to auto or cpu, or install a CUDA build of torch"
        )
    target = "cuda" if cuda and device in ("auto", "cuda") else "cpu"
    # CPU: fp32 around the int8 matrices (CPUs without AMX have no fast fp16/bf16 matmul).
    dtype = torch.float16 if target == "cuda" else torch.float32
    if quantization == "none":
        return Precision(target, dtype, None, f"quantization none: {dtype} weights on {target}")
    if int8 is not None:
        layers = INT8_LAYERS[int8]
        if problem := layers.problem(target):
            raise EngineError(f"{problem}; or set quantization to none (about 4x the memory)")
        return Precision(target, dtype, layers, f"8-bit {named(layers)} linear layers on {target}")
    missing = {layers.name: layers.problem(target) for layers in OURS[target]}
    ours = next(layers for layers in OURS[target] if missing[layers.name] is None)
    winner, measured = timed_winner(ours, target, dtype)
    notes = [f"no {name}: {problem}" for name, problem in missing.items() if problem]
    reason = f"8-bit {named(winner)} linear layers on {target} ({'; '.join([measured, *notes])})"
    return Precision(target, dtype, winner, reason)


def named(layers: Int8Layers) -> str:
    """The int8 layers' name for the log: the C kernel's with the ISA its products run on."""
    return f"{layers.name} ({linear.kernel_isa()})" if layers is C_KERNEL else layers.name


def timed_winner(ours: Int8Layers, device: str, dtype: torch.dtype) -> tuple[Int8Layers, str]:
    """`ours` or bitsandbytes, whichever is faster here, and how that is known: remembered from
    an earlier start on this machine with the same versions (bitsandbytes not even imported
    then), or measured now and remembered."""
    installed = importlib.util.find_spec("bitsandbytes") is not None
    measured_now: list[bool] = []

    def measure() -> dict[str, float]:
        measured_now.append(True)
        candidates = [ours]
        if installed and bitsandbytes_problem(device) is None:
            candidates.append(BITSANDBYTES)
        if len(candidates) == 1:
            return {ours.name: 0.0}  # the only int8 layers that run here: nothing to time
        return int8_rates(candidates, device, dtype)

    key = machine_key(device, [ours.name, f"bitsandbytes installed: {installed}"])
    rates = remembered(key, measure)
    if ours.name not in rates or not set(rates) <= {ours.name, BITSANDBYTES.name}:
        rates = remembered(key, measure, again=True)  # written by another version
    winner = max(rates, key=lambda name: rates[name])
    if len(rates) == 1:
        return INT8_LAYERS[winner], "the only int8 layers that run here"
    measured = ", ".join(f"{name} {rate:.1f} GOP/s" for name, rate in rates.items())
    when = "measured" if measured_now else "measured at an earlier start"
    return INT8_LAYERS[winner], f"{when}: {measured}"


def remembered(key: str, measure: Callable[[], T], again: bool = False) -> T:
    """A measurement of this machine, made once and kept beside the compiled kernels (a restart
    reads it instead of timing again); `key` says what it depends on (machine_key)."""
    store = cache_folder() / "measured.json"
    known = read_json(store)
    if key in known and not again:
        return known[key]
    value = measure()
    write_json(store, read_json(store) | {key: value})
    return value


def machine_key(device: str, names: list[str]) -> str:
    """What a timing depends on: the processor or GPU, the libraries, the kernels, and `names`
    (what was timed)."""
    try:  # without importing it (seconds)
        bnb = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        bnb = "none"
    if device == "cuda":
        processor = torch.cuda.get_device_name(0)
    else:
        processor = f"{platform.processor()} {sorted(native.cpu_flags())}"
    parts = [device, processor, torch.__version__, bnb, native.recipe_digest(), *names]
    return hashlib.sha256(" | ".join(parts).encode()).hexdigest()[:24]


def read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or broken: timed again
    return found if isinstance(found, dict) else {}


def write_json(path: Path, value: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{time.monotonic_ns()}.tmp")
        temporary.write_text(json.dumps(value, indent=1))
        temporary.replace(path)
    except OSError as error:  # a read-only home: timed at every start, that is all
        log.warning("cannot remember the int8 timing in %s: %s", path, error)


def quiet_bitsandbytes() -> None:
    # bitsandbytes warns on every forward pass that it casts fp32 activations to fp16 to
    # quantize them: expected here, and it would flood the log.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


def int8_rates(
    candidates: list[Int8Layers],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokens: int = 16,
    width: int = 1024,
) -> dict[str, float]:
    """GOP/s of each candidate on a [tokens, width] x [width, width] product on `device` (about
    0.1 s in all, even where one is slow)."""
    x = torch.randn(tokens, width, device=device, dtype=dtype)
    layers = {
        c.name: c.quantize(nn.Linear(width, width, dtype=dtype)).to(device) for c in candidates
    }
    # Interleaved, best of five: other work on the machine slows single runs, never speeds them
    # up, and a busy moment at startup must not pick a backend 20x slower for the whole session.
    times: dict[str, list[float]] = {name: [] for name in layers}
    with torch.inference_mode():
        for layer in layers.values():
            layer(x)
        for _ in range(5):
            for name, layer in layers.items():
                started = time.perf_counter()
                layer(x)
                if device == "cuda":
                    torch.cuda.synchronize()  # the GPU's work, not just its launch
                times[name].append(time.perf_counter() - started)
    return {name: 2 * tokens * width * width / min(runs) / 1e9 for name, runs in times.items()}
