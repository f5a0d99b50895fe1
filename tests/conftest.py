"""Shared fixtures: the real tokenizer from ../shared, the demo model's, and tiny models built
through save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny_model

DEMO_TOKENIZER = (
    Path(__file__).resolve().parents[1] / "fim_lsp" / "models" / "demo" / "tokenizer.json"
)


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


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's byte-level BPE tokenizer: it ships in the package, needs nothing else."""
    from fim_lsp.prompt import FimTokenizer

    return FimTokenizer.from_file(DEMO_TOKENIZER)
