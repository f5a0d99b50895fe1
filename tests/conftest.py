"""Shared fixtures: the real tokenizer from ../shared, the demo model's, and tiny models built
through save_pretrained."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim_lsp.engine import abi
from fim_lsp.engine.native import NativeError
from tests import tiny_model
from tests.fake_vllm import FakeServer

# Every test loads the model as it is, not from entries in the user's weight cache that other
# runs left: the cache's own tests (test_weight_cache.py) turn it on, in a folder of their own.
# Set here, so the servers and CLIs the tests start inherit it.
os.environ["FIM_LSP_WEIGHT_CACHE"] = "off"

# Each test's tier, by where it lives (one place, so a new test file gets a tier by its folder or
# by being listed here; the rest are `unit`), unless the test is marked with one. `pytest -m unit` is the fast tier (under a minute);
# `python -m pytest` runs them all.
TIERS = {
    "editors": ("tests/editors/",),
    "e2e": ("tests/e2e/", "tests/reliability/", "tests/team/", "tests/test_cli.py"),
    "engine": tuple(
        f"tests/test_{name}.py"
        for name in (
            "attention", "cpu_step", "demo_model", "engine", "linear", "memory", "native",
            "neox", "weights",
        )
    ),
    "quality": ("tests/test_evaluate.py", "tests/test_postprocess_humaneval.py"),
}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parents[1]
    for item in items:
        if any(item.get_closest_marker(tier) for tier in [*TIERS, "unit"]):
            continue  # a test that says its tier (one end-to-end test in a file of unit tests)
        where = item.path.resolve().relative_to(root).as_posix()
        tier = next((t for t, places in TIERS.items() if where.startswith(places)), "unit")
        item.add_marker(tier)


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
def fake_vllm() -> Iterator[FakeServer]:
    """A fake vLLM server on a free port; set its `script` to change what it answers."""
    fake = FakeServer()
    thread = threading.Thread(target=fake.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's byte-level BPE tokenizer: it ships in the package, needs nothing else."""
    from tests.fakes import DEMO_TOKENIZER

    return DEMO_TOKENIZER


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
