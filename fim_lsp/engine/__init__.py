"""The model: loading (precision decided in one place) and generation with a reusable KV cache.

torch and transformers are imported in this package only.
"""

from fim_lsp.engine.errors import EngineError
from fim_lsp.engine.generate import Engine, Generation
from fim_lsp.engine.loading import load_engine, resolve_model
from fim_lsp.engine.precision import Precision, choose_precision, int8_problem

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "Precision",
    "choose_precision",
    "int8_problem",
    "load_engine",
    "resolve_model",
]
