"""Shared fixtures: the real tokenizer from ../shared and tiny models built through save_pretrained."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from fim_lsp.engine import abi
from fim_lsp.engine.native import NativeError
from tests import tiny_model


def needs_shared() -> None:
    if not tiny_model.TOKENIZER_20B.is_file():
        pytest.skip(f"needs {tiny_model.TOKENIZER_20B} (the shared assets folder beside the repo)")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised GPTNeoXForCausalLM with the real tokenizer and its sentinels."""
    needs_shared()
    return tiny_model.build(tmp_path_factory.mktemp("tiny-fim"))


@pytest.fixture(scope="session")
def fim_tokenizer():
    from fim_lsp.prompt import FimTokenizer

    needs_shared()
    from tokenizers import Tokenizer

    return FimTokenizer(Tokenizer.from_str(tiny_model.fim_tokenizer_json()))


@pytest.fixture
def kernels():
    """The C kernels, loaded and checked; the test skips, saying why, where they cannot run
    (a CPU without AVX2, no compiler, FIM_LSP_KERNELS=off)."""
    try:
        return abi.load()
    except NativeError as error:
        pytest.skip(f"the C kernels cannot run here: {error}")


@pytest.fixture(params=list(abi.ISAS))
def isa(request, kernels):
    """Each ISA the int8 products run on, in turn; skipped where the CPU lacks it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(abi.running_on(kernels, request.param))
        except NativeError as error:
            pytest.skip(f"the int8 products cannot run on {request.param} here: {error}")
        yield request.param
