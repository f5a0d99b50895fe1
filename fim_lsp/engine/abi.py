"""The C kernels' interface (kernels.h) in Python: every struct, constant and prototype, checked.

The library exports each struct's size and each field's offset and size (`fim_layouts`) and its
constants (`fim_constants`); `load` compares them with the ones here, so a struct changed on one
side only is a NativeError naming the field, not memory read wrong. Every exported function
returns a Status; `check` turns a failed one into a KernelError.

The int8 products run on the best instruction set the CPU has (gemm.c: AMX for products of 16
rows or more with AVX-512 VNNI for the rest, else AVX-512 VNNI, else AVX2); FIM_LSP_ISA=avx2,
=avx512vnni or =amx makes them run on that one, where the CPU has it (to compare the paths, or
to rule one out).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import functools
import os
from collections.abc import Iterator

from fim_lsp.engine.native import NativeError, load_library

PANEL = 16  # outputs per packed weight panel
GROUP = 4  # consecutive inputs per panel row
MAX_DIM = 256  # largest attention head
QUERY_BLOCK = 64  # new tokens per attention task


class Status(enum.IntEnum):
    OK = 0
    NO_MEMORY = 1
    UNSUPPORTED = 2


REASONS: dict[int, str] = {
    Status.NO_MEMORY: "no memory for its scratch buffers",
    Status.UNSUPPORTED: "arguments it does not take",
}
ISAS = {"avx2": 0, "avx512vnni": 1, "amx": 2}  # FimIsa
ISA_ENV = "FIM_LSP_ISA"


class KernelError(NativeError):
    """A kernel call that failed; `status` says why."""

    def __init__(self, function: str, status: int):
        self.status = status
        super().__init__(f"{function} failed: {REASONS.get(status, f'status {status}')}")


def check(status: int, function: str) -> None:
    """Raise KernelError unless `status` (what `function` returned) is Status.OK."""
    if status != Status.OK:
        raise KernelError(function, status)


class Fused(ctypes.Structure):
    """What a product does besides multiplying: a layer norm of the input rows first, GELU on the
    result, then two arrays added in order."""

    _fields_ = [
        ("norm_weight", ctypes.c_void_p),
        ("norm_bias", ctypes.c_void_p),
        ("norm_eps", ctypes.c_float),
        ("gelu", ctypes.c_int),
        ("then_add", ctypes.c_void_p),
        ("and_add", ctypes.c_void_p),
    ]


class Weights(ctypes.Structure):
    """An int8 linear layer's weights (linear.quantize's layout)."""

    _fields_ = [
        ("k", ctypes.c_int),
        ("n", ctypes.c_int),
        ("packed", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("sum", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
    ]


class Attention(ctypes.Structure):
    """Attention of new tokens over a KV cache (attention.py's run_kernel)."""

    _fields_ = [
        ("query", ctypes.c_void_p),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("heads", ctypes.c_int),
        ("dim", ctypes.c_int),
        ("past", ctypes.c_int),
        ("new_tokens", ctypes.c_int),
        ("head_stride", ctypes.c_long),
        ("scale", ctypes.c_float),
        ("half", ctypes.c_int),
    ]


class LayerWeights(ctypes.Structure):
    """A GPT-NeoX layer's four products and its two layer norms (the second with GELU)."""

    _fields_ = [
        ("qkv", ctypes.POINTER(Weights)),
        ("dense", ctypes.POINTER(Weights)),
        ("up", ctypes.POINTER(Weights)),
        ("down", ctypes.POINTER(Weights)),
        ("before_attention", Fused),
        ("before_mlp", Fused),
    ]


class LayerRun(ctypes.Structure):
    """What one call of a layer reads and writes."""

    _fields_ = [
        ("new_tokens", ctypes.c_int),
        ("heads", ctypes.c_int),
        ("dim", ctypes.c_int),
        ("rotary", ctypes.c_int),
        ("past", ctypes.c_int),
        ("head_stride", ctypes.c_long),
        ("scaling", ctypes.c_float),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("keys", ctypes.c_void_p),
        ("values", ctypes.c_void_p),
        ("x", ctypes.c_void_p),
        ("after", ctypes.c_void_p),
    ]


class Layout(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("offset", ctypes.c_long), ("size", ctypes.c_long)]


class Constant(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_long)]


STRUCTS = (Fused, Weights, Attention, LayerWeights, LayerRun)
CONSTANTS = {
    "PANEL": PANEL,
    "GROUP": GROUP,
    "MAX_DIM": MAX_DIM,
    "QUERY_BLOCK": QUERY_BLOCK,
    **{f"FIM_{status.name}": status.value for status in Status},
    "FIM_ISA_AVX2": ISAS["avx2"],
    "FIM_ISA_AVX512_VNNI": ISAS["avx512vnni"],
    "FIM_ISA_AMX": ISAS["amx"],
}
_int, _pointer = ctypes.c_int, ctypes.c_void_p
PROTOTYPES = {  # name: (result, arguments); the pointers to arrays are data_ptr() integers
    "fim_layouts": (ctypes.POINTER(Layout), []),
    "fim_constants": (ctypes.POINTER(Constant), []),
    "fim_select_isa": (_int, [_int]),
    "fim_isa": (_int, []),
    "fim_linear_i8": (
        _int,
        [_pointer, _int, ctypes.POINTER(Weights), _pointer, ctypes.POINTER(Fused), _int],
    ),
    "fim_attend": (_int, [ctypes.POINTER(Attention), _int]),
    "fim_rope_store": (_int, [ctypes.POINTER(LayerRun), _pointer, _pointer, _int, _int]),
    "fim_layer": (_int, [ctypes.POINTER(LayerWeights), ctypes.POINTER(LayerRun), _int]),
}


@functools.cache
def load() -> ctypes.CDLL:
    """The compiled kernels with every prototype declared and every layout checked, on the ISA
    FIM_LSP_ISA names, if any; raises NativeError."""
    library = load_library()
    for name, (result, arguments) in PROTOTYPES.items():
        function = getattr(library, name)
        function.restype, function.argtypes = result, arguments
    compare(library_layouts(library), our_layouts(), "layout")
    compare(library_constants(library), CONSTANTS, "constant")
    if wanted := os.environ.get(ISA_ENV):
        select_isa(library, wanted, f"{ISA_ENV}={wanted}")
    return library


def our_layouts() -> dict[str, tuple[int, int]]:
    """Each struct's (0, size) and each field's (offset, size), by "Struct" and "Struct.field"."""
    layouts = {}
    for struct in STRUCTS:
        layouts[struct.__name__] = (0, ctypes.sizeof(struct))
        for name, *_ in struct._fields_:
            field = getattr(struct, name)
            layouts[f"{struct.__name__}.{name}"] = (field.offset, field.size)
    return layouts


def library_layouts(library: ctypes.CDLL) -> dict[str, tuple[int, int]]:
    return {
        entry.name.decode(): (entry.offset, entry.size)
        for entry in entries_until_null(library.fim_layouts())
    }


def library_constants(library: ctypes.CDLL) -> dict[str, int]:
    return {
        entry.name.decode(): entry.value for entry in entries_until_null(library.fim_constants())
    }


def entries_until_null(table) -> Iterator:
    """The entries of a C table that ends with a NULL name."""
    index = 0
    while table[index].name is not None:
        yield table[index]
        index += 1


def compare(library: dict, ours: dict, kind: str) -> None:
    """Raise NativeError naming the first entry that differs between the library and abi.py
    (a field before its struct's size)."""
    for name in sorted(library.keys() | ours.keys(), key=lambda name: ("." not in name, name)):
        if library.get(name) != ours.get(name):
            raise NativeError(
                f"the C kernels' {kind} {name} is {library.get(name, 'missing')} but abi.py's is "
                f"{ours.get(name, 'missing')}: the library and abi.py were built from different "
                "versions of kernels.h"
            )


def select_isa(library: ctypes.CDLL, name: str, asked_by: str = "") -> None:
    """Run the int8 products on ISA `name` (a key of ISAS); NativeError where the CPU lacks it."""
    if name not in ISAS:
        raise NativeError(f"{asked_by or name}: the ISAs are {', '.join(ISAS)}")
    if library.fim_select_isa(ISAS[name]) != Status.OK:
        raise NativeError(f"{asked_by or name}: this CPU lacks {name}")


def isa(library: ctypes.CDLL) -> str:
    """The ISA the int8 products run on."""
    number = library.fim_isa()
    return next(name for name, value in ISAS.items() if value == number)


@contextlib.contextmanager
def running_on(library: ctypes.CDLL, name: str) -> Iterator[None]:
    """Within: the int8 products run on ISA `name` (raises NativeError where the CPU lacks it);
    after: on the one before. For tests and benchmarks: never while a kernel runs."""
    before = isa(library)
    select_isa(library, name)
    try:
        yield
    finally:
        select_isa(library, before)


def isas_here(library: ctypes.CDLL) -> list[str]:
    """The ISAs of ISAS this CPU can run the int8 products on."""
    here = []
    for name in ISAS:
        try:
            with running_on(library, name):
                here.append(name)
        except NativeError:
            pass
    return here
