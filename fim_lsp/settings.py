"""Typed, defaulted settings and their one precedence.

Precedence, lowest first: defaults < command-line flags < LSP `initializationOptions`
< `workspace/didChangeConfiguration`. The same names are used everywhere: snake_case in Python,
kebab-case on the command line (`--max-new-tokens`), camelCase over LSP (`maxNewTokens`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_MODEL = "CarperAI/FIM-NeoX-1.3B"

CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "quantization": ("int8", "none"),
    "multiline": ("auto", "always", "never"),
    "fallback": ("local", "none"),
}
MINIMUM = {
    "context_length": 64,
    "max_new_tokens": 1,
    "temperature": 0.0,
    "max_time_ms": 0,
    "debounce_ms": 0,
    "draft_tokens": 0,
}


@dataclass(frozen=True)
class Settings:
    # Startup: changing one of these reloads the model.
    model: str = DEFAULT_MODEL  # hub id, local folder, or "demo"
    device: str = "auto"
    quantization: str = "int8"
    # Live: read for every request.
    context_length: int = 2048  # tokens: prompt plus generated
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    multiline: str = "auto"
    max_time_ms: int = 4000  # past this, generation ends at the next line end; 0 = no limit
    debounce_ms: int = 30
    draft_tokens: int = 8  # prompt-lookup speculative decoding (greedy only); 0 = off
    cache_reuse: bool = True  # keep the KV cache across requests (off: for benchmarks)
    log_file: str | None = None
    # The team server (live: the next request uses it).
    backend: str = "local"  # "local" (the in-process engine) or a vLLM server's URL
    # Bearer token for the server; the FIM_LSP_API_KEY environment variable when unset.
    api_key: str | None = field(default=None, repr=False)
    fallback: str = "local"  # what answers when the server cannot: "local" or "none"
    cache_salt: str | None = None  # keeps users' server caches apart; unset: from user, workspace

    def reloads_model(self, other: Settings) -> bool:
        return (self.model, self.device, self.quantization) != (
            other.model,
            other.device,
            other.quantization,
        )


FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
SECRET = {"api_key"}  # never shown in logs or messages


def shown(name: str, value: Any) -> str:
    """A setting's value as logs may show it."""
    return "<hidden>" if name in SECRET and value is not None else repr(value)


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_")


def merge(settings: Settings, options: Mapping[str, Any] | None) -> tuple[Settings, list[str]]:
    """Apply options (camelCase or snake_case keys) over `settings`.

    Returns the new settings and a warning per option that was unknown or invalid; those keep
    their previous value, so a typo in an editor's config never stops the server. A null value
    restores the default.
    """
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    for key, value in (options or {}).items():
        name = snake_case(key)
        if name not in FIELDS:
            warnings.append(f"unknown setting {key!r} ignored")
            continue
        if value is None:  # a client clearing a setting: back to the default
            changes[name] = FIELDS[name].default
            continue
        try:
            changes[name] = validate(name, value)
        except (TypeError, ValueError) as error:
            kept = shown(name, getattr(settings, name))
            warnings.append(f"setting {key!r}: {error}; keeping {kept}")
    return dataclasses.replace(settings, **changes), warnings


def validate(name: str, value: Any) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str, "str | None": str}[
        str(FIELDS[name].type)
    ]
    if kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or (kind is not str and isinstance(value, str)):
        raise TypeError(f"expected a number, got {value!r}")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected a whole number, got {value!r}")
    value = kind(value)
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"{value!r} is not one of {', '.join(CHOICES[name])}")
    if name in MINIMUM and value < MINIMUM[name]:
        raise ValueError(f"{value!r} is below the minimum {MINIMUM[name]}")
    if name == "model" and not value.strip():
        raise ValueError("empty model name")
    if name == "backend" and value != "local":
        value = server_url(value)
    if name in ("api_key", "cache_salt") and not value.strip():
        raise ValueError("empty value (null restores the default)")
    return value


def server_url(value: str) -> str:
    """A team server's base URL (`http://gpu-box:8000`), without a trailing `/` or `/v1`."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
        raise ValueError(f"{value!r} is neither local nor a server URL like http://gpu-box:8000")
    return value.strip().rstrip("/").removesuffix("/v1")


def from_client(payload: Any) -> Mapping[str, Any]:
    """The fim-lsp options inside an LSP settings payload (`{"fimLsp": {...}}` or flat)."""
    if not isinstance(payload, Mapping):
        return {}
    section = payload.get("fimLsp", payload.get("fim-lsp", payload))
    return section if isinstance(section, Mapping) else {}
