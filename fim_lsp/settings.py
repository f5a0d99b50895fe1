"""Every setting declared once (type, default, bounds, help), its validation and one precedence.

Precedence, lowest first: defaults < command-line flags < LSP `initializationOptions`
< `workspace/didChangeConfiguration`. The same names are used everywhere: snake_case in Python,
kebab-case on the command line (`--max-new-tokens`), camelCase over LSP (`maxNewTokens`).
The command-line flags are built from the declarations below; the README's options table and
the VS Code settings are written from them by `python -m fim_lsp.settings_docs --write`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

DEFAULT_MODEL = "CarperAI/FIM-NeoX-1.3B"
# contextLength unset: the longest context that each device answers from without making a user wait
# (bench/context_length.py: on a 2-core CPU a longer one makes every keystroke slower, takes
# seconds more to grow into after a move, and halves the prompts cacheMemoryMb keeps).
DEVICE_CONTEXT = {"cpu": 1024, "cuda": 2048, "team server": 2048}

# The `multiline` setting's values; gate.decide applies them.
MULTILINE = {
    "auto": "a block on an empty line or after a block header, else the rest of the line",
    "always": "always allow several lines",
    "never": "only the rest of the line",
}


def setting(
    default: T,
    help: str,
    *,
    startup: bool = False,
    choices: Mapping[str, str] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
) -> T:
    """A `Settings` field with everything about it.

    `help` is one sentence (markdown backticks allowed); `startup` settings reload the model
    when they change, the others apply to the next request; `choices` maps each allowed value
    to what it means; `minimum` and `maximum` bound numbers (inclusive); `check` takes a value of
    the right type and returns it as it is kept (ValueError when it is wrong); a `secret` is
    never shown in logs or messages.
    """
    spec = {
        "help": help,
        "startup": startup,
        "choices": dict(choices or {}),
        "minimum": minimum,
        "maximum": maximum,
        "check": check,
        "secret": secret,
    }
    return dataclasses.field(default=default, metadata=spec, repr=not secret)


def server_url(value: str) -> str:
    """`local`, or a team server's base URL (`http://gpu-box:8000`) without a trailing `/` or
    `/v1`."""
    if value == "local":
        return value
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port == 0:
        raise ValueError(f"{value!r} is neither local nor a server URL like http://gpu-box:8000")
    return value.strip().rstrip("/").removesuffix("/v1")


@dataclass(frozen=True)
class Settings:
    model: str = setting(
        DEFAULT_MODEL,
        "Hub id (`owner/name`), local model folder, or `demo` (the small model in the package).",
        startup=True,
    )
    device: str = setting(
        "auto",
        "Where the model runs.",
        startup=True,
        choices={
            "auto": "CUDA when a GPU is visible, else the CPU",
            "cpu": "the CPU",
            "cuda": "the first CUDA GPU",
        },
    )
    quantization: str = setting(
        "int8",
        "Weight precision.",
        startup=True,
        choices={
            "int8": "8-bit weights: the C kernels on a CPU, widened to fp16 per layer on CUDA",
            "none": "fp32 on the CPU, fp16 on CUDA",
        },
    )
    # The pipeline uses at most the model's own window (2048 tokens for FIM-NeoX-1.3B); the
    # maximum only refuses slips like an extra zero. Unset: DEVICE_CONTEXT.
    context_length: int | None = setting(
        None,
        "Tokens of prompt plus completion; unset: 1024 on a CPU, 2048 on a GPU or a team server "
        "(measured: README, Speed); the model's own window caps it (2048 for FIM-NeoX-1.3B).",
        minimum=64,
        maximum=32768,
    )
    # At most half the context is generated (pipeline.new_tokens_allowed): 1024 for the
    # 2048-token model, about 100 lines, already minutes of decoding on a CPU.
    max_new_tokens: int = setting(64, "Longest completion, in tokens.", minimum=1, maximum=1024)
    # Past 2 the distribution is nearly flat: samples are noise.
    temperature: float = setting(
        0.0, "Sampling temperature; 0 is greedy.", minimum=0.0, maximum=2.0
    )
    multiline: str = setting("auto", "Whether a completion may span lines.", choices=MULTILINE)
    # A minute is longer than anyone watches for ghost text.
    max_time_ms: int = setting(
        4000,
        "Past this, generation ends at the next line end; 0 = no limit.",
        minimum=0,
        maximum=60_000,
    )
    # Past two seconds the wait is no longer a pause in typing, and the answer comes for a
    # cursor the user has left (10^9 left requests hanging).
    debounce_ms: int = setting(
        30,
        "Wait this long after a request; a newer request (for any document) replaces it.",
        minimum=0,
        maximum=2000,
    )
    # A draft is checked in one forward pass: the bound caps what a rejected one wastes.
    draft_tokens: int = setting(
        8,
        "Longest prompt-lookup draft (speculative decoding, greedy only); 0 = off.",
        minimum=0,
        maximum=15,
    )
    cache_reuse: bool = setting(
        True, "Keep the KV cache between requests (off only to measure its effect)."
    )
    # FIM-NeoX-1.3B's keys and values take about 200 KB per token in fp16: 1 GB holds five
    # prompts of 1,000 tokens. 0 keeps only the prompt in use; 64 GB is past any machine here.
    cache_memory_mb: int = setting(
        1024,
        "Memory for the KV caches of recent prompts, so that going back to a file or a spot "
        "is warm (about 200 KB per token); the prompt in use always stays.",
        minimum=0,
        maximum=65_536,
    )
    # 1 s of prefill, then decoding (8 tokens: 0.3-0.4 s on a 2-core CPU): the first answer after
    # a jump within 1.5 s, a pause a user accepts (1.5 s of prefill answered in 2.1 s:
    # bench/reports/editing-session-2026-12-03-rerun.md). 10 minutes: more than any prompt takes.
    cold_budget_ms: int = setting(
        1000,
        "After a move, a file switch or a restart, when prefilling the prompt would take longer "
        "than this, answer from a shorter prompt that fits and prefill the full one in the "
        "background; 0 = always the full prompt.",
        minimum=0,
        maximum=600_000,
    )
    log_file: str | None = setting(None, "Log to this file instead of stderr.")
    # The team server: a change connects anew (cheap; on the local engine the last three change
    # nothing, see reloads_model).
    backend: str = setting(
        "local",
        "`local` (the in-process engine) or the URL of a vLLM server serving the model "
        "(`http://gpu-box:8000`; see A shared GPU server).",
        startup=True,
        check=server_url,
    )
    api_key: str | None = setting(
        None,
        "The team server's key, sent as a bearer token; unset: the `FIM_LSP_API_KEY` "
        "environment variable (better: it keeps the key out of editor settings).",
        startup=True,
        secret=True,
    )
    fallback: str = setting(
        "local",
        "What answers when the team server cannot.",
        startup=True,
        choices={
            "local": "the in-process engine, loaded the first time it is needed",
            "none": "nothing: no suggestion until the server is back",
        },
    )
    cache_salt: str | None = setting(
        None,
        "Keeps your prompts in the team server's cache apart from other users'; unset: derived "
        "from your user name, the workspace and a secret kept in fim-lsp's cache folder.",
        startup=True,
        secret=True,
    )

    def with_context_for(self, device: str, window: int) -> Settings:
        """contextLength as set, or the default of `device` (a key of DEVICE_CONTEXT), never
        past the model's `window`."""
        asked = self.context_length or DEVICE_CONTEXT.get(device, DEVICE_CONTEXT["cpu"])
        return dataclasses.replace(self, context_length=min(asked, window))

    def reloads_model(self, other: Settings) -> bool:
        """Whether going from `other` to these settings loads the model (or connects) anew."""
        changed = {name for name in SETTINGS if getattr(self, name) != getattr(other, name)}
        if self.backend == other.backend == "local":
            changed -= TEAM_ONLY
        return any(SETTINGS[name].startup for name in changed)


@dataclass(frozen=True)
class Setting:
    """One `Settings` field as the command line, the docs and the validation see it."""

    name: str  # snake_case: the field
    kind: type  # int, float, bool or str
    nullable: bool  # None is a valid value (and the default)
    default: Any
    help: str
    startup: bool
    choices: Mapping[str, str]
    minimum: float | None
    maximum: float | None
    check: Callable[[Any], Any] | None
    secret: bool

    @property
    def key(self) -> str:
        """The name over LSP."""
        return camel_case(self.name)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as the docs show it: `none`, `true`, `0` for 0.0."""
        return value_text(self.default)

    @property
    def bounds(self) -> str:
        """The allowed range of a number, e.g. `1-1024`; "" when unbounded."""
        low, high = (None if x is None else value_text(x) for x in (self.minimum, self.maximum))
        if low is not None and high is not None:
            return f"{low}-{high}"
        return f"at least {low}" if low is not None else (f"at most {high}" if high else "")

    def parse(self, value: Any) -> Any:
        """`value` as this setting's type; TypeError or ValueError saying what is wrong."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"expected true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise TypeError(f"expected text, got {value!r}")
            if not value.strip():
                raise ValueError("empty value (null restores the default)")
        else:
            value = self.parse_number(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{value!r} is below the minimum {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{value!r} is above the maximum {self.maximum:g}")
        return self.check(value) if self.check else value

    def shown(self, value: Any) -> str:
        """The value as logs and messages may show it."""
        return "<hidden>" if self.secret and value is not None else repr(value)

    def parse_number(self, value: Any) -> int | float:
        # bool is an int in Python, but `true` is not a number in JSON
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        if not math.isfinite(value):  # JSON parsers accept NaN and Infinity
            raise ValueError(f"expected a finite number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"expected a whole number, got {value!r}")
            return int(value)
        return float(value)


def value_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def declared(field: dataclasses.Field, hint: Any) -> Setting:
    """The `Setting` for a field of `Settings`, given its resolved type hint (`str | None`)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(hint)) if union else {hint}
    kind = next(iter(kinds - {type(None)}))
    if len(kinds - {type(None)}) != 1 or kind not in (bool, int, float, str):
        raise TypeError(f"setting {field.name}: {hint} is not bool, int, float or str (or | None)")
    return Setting(field.name, kind, type(None) in kinds, field.default, **field.metadata)


# Settings the local engine does not read.
TEAM_ONLY = {"api_key", "fallback", "cache_salt"}
HINTS = typing.get_type_hints(Settings)
SETTINGS = {
    field.name: declared(field, HINTS[field.name]) for field in dataclasses.fields(Settings)
}


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
        if name not in SETTINGS:
            warnings.append(f"unknown setting {key!r} ignored")
            continue
        if value is None:  # a client clearing a setting: back to the default
            changes[name] = SETTINGS[name].default
            continue
        try:
            changes[name] = SETTINGS[name].parse(value)
        except (TypeError, ValueError) as error:
            kept = SETTINGS[name].shown(getattr(settings, name))
            warnings.append(f"setting {key!r}: {error}; keeping {kept}")
    return dataclasses.replace(settings, **changes), warnings


def from_client(payload: Any) -> Mapping[str, Any]:
    """The fim-lsp options inside an LSP settings payload (`{"fimLsp": {...}}` or flat)."""
    if not isinstance(payload, Mapping):
        return {}
    section = payload.get("fimLsp", payload.get("fim-lsp", payload))
    return section if isinstance(section, Mapping) else {}
