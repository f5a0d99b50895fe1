"""Building the C kernels, and what each part of the engine falls back to where they can't run."""

from __future__ import annotations

import pytest
import torch

from fim_lsp.engine import abi, attention, choose, cpu_step, linear, native
from fim_lsp.engine.native import NativeError


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """An empty kernel cache folder, no kernel loaded yet, and the kernels on, on their own ISA."""
    loaders = (
        native.built_library,
        abi.load,
        attention.load_kernel,
        linear.load_kernel,
        cpu_step.load_kernel,
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "shipped", lambda: None)  # as in a checkout, not a wheel
    monkeypatch.delenv(native.SWITCH, raising=False)
    monkeypatch.delenv(abi.ISA_ENV, raising=False)
    for loader in loaders:
        loader.cache_clear()
    yield tmp_path / "fim-lsp"
    for loader in loaders:
        loader.cache_clear()


@pytest.fixture
def as_if_avx2(monkeypatch):
    """A CPU with what the kernels need, for tests whose build fails before anything runs."""
    monkeypatch.setattr(native, "cpu_flags", lambda: native.CPU_FLAGS)


def test_without_a_compiler_both_kernels_fall_back_to_torch_and_say_why(
    fresh_build, as_if_avx2, monkeypatch
):
    monkeypatch.setenv("CC", "no-such-compiler")
    precision = choose("cpu", "int8")
    assert precision.int8 is not None
    assert precision.int8.name in ("torch-dynamic", "bitsandbytes")
    assert "no C compiler (no-such-compiler)" in precision.reason
    assert precision.cache_dtype == torch.float32  # the fp16 cache is for the C kernels only


def test_a_failing_compiler_is_reported_with_its_message(
    fresh_build, as_if_avx2, tmp_path, monkeypatch
):
    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'cc1: out of cheese' >&2\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(NativeError, match="out of cheese"):
        native.load_library()
    assert not list(fresh_build.glob("*.so"))  # nothing half-built left to load next time


def test_the_built_kernels_are_reused_without_compiling_again(kernels, fresh_build, monkeypatch):
    built = native.build(fresh_build)
    monkeypatch.setenv("CC", "no-such-compiler")
    assert native.build(fresh_build) == built
    assert attention.kernel_problem() is None
    assert linear.kernel_problem() is None


def test_a_changed_header_builds_anew(fresh_build, tmp_path, monkeypatch):
    built = native.build(fresh_build)
    header = tmp_path / "simd.h"
    header.write_text(native.HEADERS[0].read_text() + "/* changed */\n")
    monkeypatch.setattr(native, "HEADERS", [header])
    assert native.build(fresh_build) != built


def test_a_cpu_without_avx2_gets_torch_attention_and_linear_layers(fresh_build, monkeypatch):
    monkeypatch.setattr(native, "cpu_flags", lambda: {"fma", "f16c"})
    assert attention.kernel_problem() == "the CPU lacks avx2"
    assert linear.kernel_problem() == "the CPU lacks avx2"


def test_an_unusable_cache_folder_is_a_reason_to_fall_back(fresh_build, as_if_avx2):
    fresh_build.parent.mkdir(exist_ok=True)
    fresh_build.write_text("a file where the folder should be")
    assert "cannot be built or loaded" in (attention.kernel_problem() or "")
    assert "cannot be built or loaded" in (linear.kernel_problem() or "")


def test_a_kernel_that_computes_wrong_is_refused(kernels, fresh_build, monkeypatch):
    monkeypatch.setattr(linear, "run_kernel", lambda library, layer, x: torch.zeros(5, 21))
    assert linear.kernel_problem() == "the int8 kernel's result differs from torch's"


def test_a_failed_build_is_not_tried_again_for_the_other_kernel(
    fresh_build, as_if_avx2, tmp_path, monkeypatch
):
    calls = tmp_path / "calls"
    compiler = tmp_path / "slow-broken-cc"
    compiler.write_text(f"#!/bin/sh\necho called >> {calls}\nexit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    assert "failed to build" in (attention.kernel_problem() or "")
    assert "failed to build" in (linear.kernel_problem() or "")
    assert calls.read_text().count("called") == 1


def test_kernels_a_wheel_carries_are_loaded_without_a_compiler(fresh_build, tmp_path, monkeypatch):
    shipped = native.build(tmp_path / "package")  # as setup.py builds them into the wheel
    monkeypatch.setattr(native, "shipped", lambda: shipped)
    monkeypatch.setenv("CC", "no-such-compiler")
    assert linear.kernel_problem() is None
    assert not list(fresh_build.glob("*.so"))  # nothing built into the cache folder


def test_kernels_turned_off_fall_back_to_torch_and_say_so(fresh_build, monkeypatch):
    monkeypatch.setenv(native.SWITCH, "off")
    reason = "the C kernels are turned off (FIM_LSP_KERNELS=off)"
    assert linear.kernel_problem() == reason
    assert attention.kernel_problem() == reason
    precision = choose("cpu", "int8")
    assert precision.int8 is not None
    assert precision.int8.name in ("torch-dynamic", "bitsandbytes") and reason in precision.reason
    assert not list(fresh_build.glob("*.so"))  # nothing was built


def test_a_switch_that_is_neither_on_nor_off_is_a_reason_too(fresh_build, monkeypatch):
    monkeypatch.setenv(native.SWITCH, "0")
    assert linear.kernel_problem() == "FIM_LSP_KERNELS=0 is neither on nor off"
