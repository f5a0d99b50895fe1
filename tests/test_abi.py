"""The C kernels' interface: abi.py's structs and constants against the library's, statuses, ISAs."""

from __future__ import annotations

import ctypes

import pytest

from fim_lsp.engine import abi
from fim_lsp.engine.native import NativeError


@pytest.fixture
def fresh_load():
    """abi.load as if for the first time, and again after the test."""
    abi.load.cache_clear()
    yield abi.load
    abi.load.cache_clear()


def test_every_struct_and_constant_matches_the_library(kernels):
    layouts = abi.library_layouts(kernels)
    assert layouts == abi.our_layouts()
    assert layouts["LayerRun.after"] == (80, 8)  # a field, by offset and size
    assert abi.library_constants(kernels) == abi.CONSTANTS
    assert {struct.__name__ for struct in abi.STRUCTS} <= layouts.keys()


def replaced(struct: type[ctypes.Structure]) -> tuple:
    """abi.STRUCTS with `struct` in place of abi's struct of the same name."""
    return tuple(struct if s.__name__ == struct.__name__ else s for s in abi.STRUCTS)


def test_a_field_missing_from_abi_py_is_named(kernels, fresh_load, monkeypatch):
    class Weights(ctypes.Structure):  # `n` dropped: the size and the other offsets stay
        _fields_ = [field for field in abi.Weights._fields_ if field[0] != "n"]

    monkeypatch.setattr(abi, "STRUCTS", replaced(Weights))
    with pytest.raises(NativeError, match=r"layout Weights.n is \(4, 4\) but abi.py's is missing"):
        fresh_load()


def test_a_field_of_another_type_is_named(kernels, fresh_load, monkeypatch):
    class Fused(ctypes.Structure):  # gelu a byte: the same offsets, another size
        _fields_ = [
            (name, ctypes.c_byte if name == "gelu" else kind) for name, kind in abi.Fused._fields_
        ]

    monkeypatch.setattr(abi, "STRUCTS", replaced(Fused))
    with pytest.raises(
        NativeError, match=r"layout Fused.gelu is \(20, 4\) but abi.py's is \(20, 1\)"
    ):
        fresh_load()


def test_a_constant_that_differs_from_the_library_is_named(kernels, fresh_load, monkeypatch):
    monkeypatch.setitem(abi.CONSTANTS, "PANEL", 32)
    with pytest.raises(NativeError, match=r"constant PANEL is 16 but abi\.py's is 32"):
        fresh_load()


def test_every_exported_function_has_its_prototype(kernels):
    for name, (result, arguments) in abi.PROTOTYPES.items():
        function = getattr(kernels, name)
        assert (function.restype, function.argtypes) == (result, arguments)


@pytest.mark.parametrize(
    "status, message",
    [(abi.Status.NO_MEMORY, "no memory"), (abi.Status.UNSUPPORTED, "arguments it does not take")],
)
def test_a_failed_status_is_one_exception_that_says_why(status, message):
    with pytest.raises(abi.KernelError, match=f"fim_layer failed: {message}") as raised:
        abi.check(status, "fim_layer")
    assert raised.value.status == status
    assert isinstance(raised.value, NativeError)
    abi.check(abi.Status.OK, "fim_layer")  # no exception


def test_bad_arguments_come_back_as_unsupported(kernels):
    weights = abi.Weights(k=0, n=16)
    assert (
        kernels.fim_linear_i8(None, 1, ctypes.byref(weights), None, None, 1)
        == abi.Status.UNSUPPORTED
    )
    job = abi.Attention(heads=2, dim=12, past=0, new_tokens=1)  # dim not a multiple of 8
    assert kernels.fim_attend(ctypes.byref(job), 1) == abi.Status.UNSUPPORTED
    assert kernels.fim_select_isa(99) == abi.Status.UNSUPPORTED


def test_the_isa_is_the_best_the_cpu_has_unless_named(kernels, fresh_load, monkeypatch):
    from fim_lsp.engine.native import cpu_flags

    flags = cpu_flags()
    vnni = {"avx512_vnni", "avx512bw"} <= flags
    best = "amx" if vnni and {"amx_tile", "amx_int8"} <= flags else "avx512vnni" if vnni else "avx2"
    monkeypatch.delenv(abi.ISA_ENV, raising=False)
    with abi.running_on(kernels, best):  # whatever an earlier test chose, back to the default
        assert abi.isa(kernels) == best
    monkeypatch.setenv(abi.ISA_ENV, "avx2")
    try:
        assert abi.isa(fresh_load()) == "avx2"
    finally:
        abi.select_isa(kernels, best)


def test_an_isa_that_is_not_one_is_refused_with_the_choices(kernels, fresh_load, monkeypatch):
    monkeypatch.setenv(abi.ISA_ENV, "sse2")
    with pytest.raises(NativeError, match="FIM_LSP_ISA=sse2: the ISAs are avx2, avx512vnni, amx"):
        fresh_load()


def test_running_on_an_isa_returns_to_the_one_before(kernels):
    before = abi.isa(kernels)
    with abi.running_on(kernels, "avx2"):
        assert abi.isa(kernels) == "avx2"
    assert abi.isa(kernels) == before
