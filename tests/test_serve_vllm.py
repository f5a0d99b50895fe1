"""The vLLM command line for a team server (tests/team/ starts vLLM with it for real)."""

from __future__ import annotations

import json

from fim_lsp.serve_vllm import vllm_command, vllm_environment


def flags(command: list[str]) -> dict[str, str | None]:
    """`--name value` pairs of a command line; None for a flag without a value."""
    found: dict[str, str | None] = {}
    for at, word in enumerate(command):
        if word.startswith("--"):
            following = command[at + 1] if at + 1 < len(command) else "--"
            found[word] = None if following.startswith("--") else following
    return found


def test_the_command_serves_the_model_the_way_the_team_backend_needs():
    command = vllm_command("CarperAI/FIM-NeoX-1.3B", port=8123, data_parallel_size=2)
    assert command[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    found = flags(command)
    assert found["--model"] == "CarperAI/FIM-NeoX-1.3B"
    assert (found["--host"], found["--port"]) == ("0.0.0.0", "8123")
    assert found["--dtype"] == "float16"
    assert found["--max-model-len"] == "2048"
    assert json.loads(found["--hf-overrides"] or "") == {"max_position_embeddings": 2048}
    assert "--enable-prefix-caching" in found and "--enable-prompt-tokens-details" in found
    assert found["--generation-config"] == "vllm"
    assert found["--data-parallel-size"] == "2"


def test_extra_arguments_go_last_so_they_win():
    command = vllm_command("m", extra=["--max-num-seqs", "64"])
    assert command[-2:] == ["--max-num-seqs", "64"]


def test_the_key_and_no_telemetry_go_in_the_environment():
    environment = vllm_environment("k", base={"PATH": "/bin"})
    assert environment == {
        "PATH": "/bin",
        "VLLM_API_KEY": "k",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    assert "VLLM_API_KEY" not in vllm_environment(None, base={})
