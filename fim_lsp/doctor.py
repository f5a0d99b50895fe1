"""`fim-lsp doctor`: what the server would use on this machine, and how to fix what is missing."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

from fim_lsp import __version__
from fim_lsp.settings import DEVICE_CONTEXT, Settings


def report(settings: Settings, say: Callable[[str], None]) -> list[str]:
    """Print the report line by line; return the problems that stop the server from working."""
    problems: list[str] = []

    def problem(message: str) -> None:
        problems.append(message)
        say(f"  PROBLEM: {message}")

    say(f"fim-lsp {__version__}")
    say(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    if settings.backend != "local":
        server_report(settings, say, problem)
    try:
        import torch
    except ImportError:
        problem("torch is not installed: pip install torch")
        return problems
    say(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        say(f"CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}")
    else:
        cuda_build = (
            f"CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        )
        say(f"CUDA: no GPU visible (torch is {cuda_build}); the model runs on the CPU")

    from fim_lsp.engine import EngineError, bitsandbytes_problem, choose

    try:
        import bitsandbytes

        say(f"bitsandbytes {bitsandbytes.__version__}")
    except Exception as error:
        say(f"bitsandbytes: not usable ({error})")
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        trouble = bitsandbytes_problem(device)
        say(f"bitsandbytes 8-bit on {device}: {'works' if trouble is None else trouble}")
    try:
        precision = choose(settings.device, settings.quantization)
        say(f"would run: {precision.reason}")
        say(f"attention: {precision.attention}")
    except EngineError as error:
        problem(str(error))
    model_report(settings.model, say, problem)
    say("OK: the server can run." if not problems else f"{len(problems)} problem(s) found.")
    return problems


def server_report(
    settings: Settings, say: Callable[[str], None], problem: Callable[[str], None]
) -> None:
    """The team server: reachable, what it serves and how long, token-id prompts, round trip."""
    from fim_lsp.backend import BackendUnavailable
    from fim_lsp.team import API_KEY_VARIABLE, TeamBackend

    key = "from apiKey" if settings.api_key else f"from {API_KEY_VARIABLE}"
    if not (settings.api_key or os.environ.get(API_KEY_VARIABLE)):
        key = "none"
    say(f"team server: {settings.backend} (API key: {key}; fallback: {settings.fallback})")
    backend = TeamBackend(settings.backend, settings.api_key)
    try:
        models = backend.served_models()
        if not models:
            problem(f"{settings.backend} serves no model: start it with `fim-lsp serve-vllm`")
            return
        for model in models:
            say(f"served model: {model.name}, max length {model.max_model_len or '?'} tokens")
        longest = max(model.max_model_len or 0 for model in models)
        asked = settings.context_length or DEVICE_CONTEXT["team server"]
        if longest < asked:
            problem(
                f"the server's max length ({longest or 'unknown'}) is below contextLength "
                f"({asked}): start vLLM with --max-model-len 2048 "
                "(`fim-lsp serve-vllm` does), or lower contextLength"
            )
        round_trips = sorted(backend.probe() for _ in range(5))
        say(
            f"token-id prompts: accepted; round trip {round_trips[2]:.0f} ms "
            f"(median of 5 one-token completions, {round_trips[0]:.0f}-{round_trips[-1]:.0f} ms)"
        )
    except BackendUnavailable as error:
        problem(str(error))
    finally:
        backend.close()


def model_report(model: str, say: Callable[[str], None], problem: Callable[[str], None]) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    from fim_lsp.engine import EngineError
    from fim_lsp.engine.loading import DEMO_MODEL, check_folder
    from fim_lsp.prompt import FimTokenizer, TokenizerError

    say(f"model: {model}")
    say(f"hub cache: {constants.HF_HUB_CACHE} (HF_HUB_OFFLINE={int(constants.HF_HUB_OFFLINE)})")
    if model == "demo":
        folder = DEMO_MODEL
    elif Path(model).expanduser().is_dir():
        folder = Path(model).expanduser()
    else:
        cached = try_to_load_from_cache(model, "config.json")
        if not isinstance(cached, str):
            problem(
                f"{model} is not downloaded yet: run `fim-lsp download --model {model}` (2.9 GB)"
            )
            return
        folder = Path(cached).parent
    missing = [name for name in ("config.json", "tokenizer.json") if not (folder / name).is_file()]
    weights = [*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")]
    if missing or not weights:
        problem(f"{folder} lacks {', '.join(missing) or 'weights'}: not a complete model folder")
        return
    size = sum(os.path.getsize(path) for path in weights) / 1e9
    say(f"model files: {folder} ({size:.2f} GB of weights)")
    try:
        FimTokenizer.from_file(folder / "tokenizer.json")
        check_folder(folder)
    except (EngineError, TokenizerError) as error:
        problem(str(error))
