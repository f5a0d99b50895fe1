"""The model: loading (precision decided in one place) and generation with a reusable KV cache.

torch and transformers are imported in this package only.
"""

from fim_lsp.engine.choices import Precision, bitsandbytes_problem, choose
from fim_lsp.engine.generate import Engine
from fim_lsp.engine.loading import load_engine, no_progress, resolve_model
from fim_lsp.errors import EngineError

__all__ = [
    "Engine",
    "EngineError",
    "Precision",
    "bitsandbytes_problem",
    "choose",
    "load_engine",
    "no_progress",
    "resolve_model",
]
