"""The command line: serve (the default), complete, doctor, download, eval, serve-vllm."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types

from fim_lsp import __version__, evaluate
from fim_lsp.languages import language_id_for
from fim_lsp.logs import configure_logging
from fim_lsp.settings import DEVICE_CONTEXT, SETTINGS, Setting, Settings, merge


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: threads that wait at a barrier sleep rather than spin. Where other
    # programs use the cores too (an editor, a browser), a spinning thread holds a core that the
    # thread it waits for needs: decode steps took 10x longer so (README, Speed).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    settings, problems = settings_from(args)
    if problems:
        parser.error("; ".join(problems))
    try:
        configure_logging(settings.log_file)
    except OSError as error:
        parser.error(f"cannot log to {settings.log_file}: {error}")
    return int(args.run(args, settings) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fim-lsp",
        description="Local fill-in-the-middle code completion over LSP (FIM-NeoX-1.3B).",
    )
    parser.add_argument("--version", action="version", version=f"fim-lsp {__version__}")
    add_settings(parser)
    parser.add_argument("--stdio", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=serve, tcp=None, allow_remote=False)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="speak LSP over stdio (the default)")
    serve_parser.add_argument(
        "--tcp", metavar="HOST:PORT", help="listen on TCP for one client (loopback hosts only)"
    )
    serve_parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="let --tcp listen on a host other machines reach (they can read what the editor sends)",
    )
    # Many clients append --stdio; stdio is the default anyway.
    serve_parser.add_argument(
        "--stdio", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    add_settings(serve_parser)
    serve_parser.set_defaults(run=serve)

    complete_parser = commands.add_parser(
        "complete", help="print the completion the server would offer at FILE:LINE:COL"
    )
    complete_parser.add_argument("where", metavar="FILE:LINE:COL", help="1-based line and column")
    complete_parser.add_argument("--json", action="store_true", help="print a JSON object")
    complete_parser.add_argument(
        "--dry-run", action="store_true", help="print the prompt; needs only the tokenizer"
    )
    complete_parser.add_argument("--language", help="languageId (default: from the extension)")
    add_settings(complete_parser)
    complete_parser.set_defaults(run=complete)

    doctor_parser = commands.add_parser("doctor", help="report what the server would use")
    add_settings(doctor_parser)
    doctor_parser.set_defaults(run=doctor)

    download_parser = commands.add_parser("download", help="fetch the model into the hub cache")
    add_settings(download_parser)
    download_parser.set_defaults(run=download)

    vllm_parser = commands.add_parser(
        "serve-vllm",
        help="start vLLM as a team server for the model (--model, --api-key)",
        description="Start vLLM's OpenAI-compatible server for the model, the way fim-lsp's "
        "team backend needs it: fp16, 2048 tokens, prefix caching. Arguments after -- go to vLLM.",
    )
    vllm_parser.add_argument("--host", default="0.0.0.0", help="default 0.0.0.0 (all interfaces)")
    vllm_parser.add_argument("--port", type=int, default=8000, help="default 8000")
    vllm_parser.add_argument("--dtype", default="float16", help="default float16 (for GPUs)")
    vllm_parser.add_argument(
        "--data-parallel-size", type=int, default=1, metavar="N", help="one engine per GPU"
    )
    vllm_parser.add_argument(
        "--python", default=sys.executable, help="the Python that has vLLM (default: this one)"
    )
    vllm_parser.add_argument(
        "--print", action="store_true", help="print the command instead of running it"
    )
    vllm_parser.add_argument("vllm_args", nargs="*", metavar="-- VLLM_ARGS", help=argparse.SUPPRESS)
    add_settings(vllm_parser)
    vllm_parser.set_defaults(run=serve_vllm)

    evaluate.add_parser(commands, add_settings)
    return parser


def add_settings(parser: argparse.ArgumentParser) -> None:
    """A flag per setting; SUPPRESS keeps a subcommand from resetting what the main parser set."""
    for setting in SETTINGS.values():
        values: dict[str, Any] = (
            {"action": argparse.BooleanOptionalAction}  # --cache-reuse, --no-cache-reuse
            if setting.kind is bool
            else {"type": setting.kind, "choices": list(setting.choices) or None}
        )
        parser.add_argument(
            setting.flag, default=argparse.SUPPRESS, help=flag_help(setting), **values
        )


def flag_help(setting: Setting) -> str:
    meanings = [f"{value}: {meaning}." for value, meaning in setting.choices.items() if meaning]
    allowed = f"{setting.bounds}, " if setting.bounds else ""
    text = " ".join([setting.help, *meanings, f"({allowed}default {setting.default_text})"])
    # argparse expands %-formats in help; backticks are markdown for the docs
    return text.replace("`", "").replace("%", "%%")


def settings_from(args: argparse.Namespace) -> tuple[Settings, list[str]]:
    """The defaults with the flags given on the command line over them, and any problems."""
    return merge(
        Settings(), {name: value for name, value in vars(args).items() if name in SETTINGS}
    )


def serve(args: argparse.Namespace, settings: Settings) -> int:
    from fim_lsp import transport, weight_file

    # The newest weight cache entry is mapped and checked while the server imports torch (not
    # for a team server, whose local engine loads only if it fails).
    if settings.backend == "local":
        weight_file.check_early(weight_file.weights_folder())

    if args.tcp:
        try:  # before loading the server: a refusal is quick
            host, port = transport.tcp_address(args.tcp, args.allow_remote)
        except ValueError as error:
            return fail(f"--tcp {error}")

    from fim_lsp.server import server

    server.orchestrator.settings = settings
    if not args.tcp:
        code = transport.serve_stdio(server)
    else:
        try:
            code = transport.serve_tcp(server, host, port)
        except OSError as error:  # the port is taken, say
            return fail(f"--tcp {args.tcp}: {error}")
    # The client is gone. The model's worker thread may be loading or generating, which cannot
    # be interrupted: end now rather than when it finishes (up to a minute for a load).
    logging.shutdown()
    os._exit(code)


def complete(args: argparse.Namespace, settings: Settings) -> int:
    from fim_lsp.documents import Document, PositionError
    from fim_lsp.engine import resolve_model
    from fim_lsp.errors import FimLspError
    from fim_lsp.pipeline import Completer, plan
    from fim_lsp.prompt import FimTokenizer

    try:
        path, line, column = parse_location(args.where)
        text = path.read_bytes().decode("utf-8")  # keeps CRLF, as an editor would
        document = Document(text, args.language or language_id_for(path))
        # Columns count characters (code points), like compiler messages: LSP's utf-32.
        place = document.place(types.Position(line - 1, column - 1), "utf-32")
    except (ValueError, OSError, PositionError) as error:
        return fail(f"{args.where}: {error}")
    cursor = document.cursor(place)
    started = time.perf_counter()
    try:
        if args.dry_run:
            folder = resolve_model(settings.model, tokenizer_only=True)
            tokenizer = FimTokenizer.from_file(folder / "tokenizer.json")
            mode, prompt = plan(tokenizer, dry_run_settings(settings), cursor.normalized())
            ids = prompt.ids if prompt else []
            report = {"prompt": tokenizer.decode(ids), "prompt_ids": ids, "prompt_tokens": len(ids)}
            print(
                json.dumps(report | {"mode": mode and mode.value})
                if args.json
                else report["prompt"]
            )
            return 0
        completer = Completer.load(settings)
        load_ms = (time.perf_counter() - started) * 1000
        result = completer.complete(cursor)
    except FimLspError as error:
        return fail(str(error))
    if not args.json:
        print(result.text)
        return 0
    report = {
        "completion": result.text,
        "replace_chars": result.replace_chars,
        "raw": result.raw,
        "mode": result.mode and result.mode.value,
        "prompt_ids": result.prompt_ids,
        "prompt_tokens": len(result.prompt_ids),
        "generated_tokens": result.generated_tokens,
        "stop_reason": result.stop_reason,
        "timings_ms": {"load": load_ms, **result.timings_ms},
        "model": settings.model,
        **completer.about,
    }
    print(json.dumps(report, indent=2))
    return 0


def dry_run_settings(settings: Settings) -> Settings:
    """`settings` with contextLength as the server would resolve it, loading nothing."""
    from fim_lsp.engine.loading import TRAINED_CONTEXT

    device = "team server" if settings.backend != "local" else settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    window = TRAINED_CONTEXT.get(settings.model, settings.context_length or DEVICE_CONTEXT[device])
    return settings.with_context_for(device, window)


def parse_location(where: str) -> tuple[Path, int, int]:
    try:
        file, line, column = where.rsplit(":", 2)
        numbers = int(line), int(column)
    except ValueError:
        raise ValueError("expected FILE:LINE:COL with 1-based numbers") from None
    if min(numbers) < 1:
        raise ValueError("line and column start at 1")
    return Path(file), *numbers


def doctor(args: argparse.Namespace, settings: Settings) -> int:
    from fim_lsp.doctor import report

    problems = report(settings, print)
    return 1 if problems else 0


def serve_vllm(args: argparse.Namespace, settings: Settings) -> int:
    from fim_lsp.serve_vllm import vllm_command, vllm_environment
    from fim_lsp.team import API_KEY_VARIABLE

    model = settings.model
    if model == "demo":
        from fim_lsp.engine.loading import DEMO_MODEL

        model = str(DEMO_MODEL)
    command = vllm_command(
        model, args.host, args.port, args.dtype, args.data_parallel_size, args.python,
        args.vllm_args,
    )  # fmt: skip
    api_key = settings.api_key or os.environ.get(API_KEY_VARIABLE)
    if args.print:
        print(shlex.join(command))
        return 0
    if not api_key:
        print(
            f"fim-lsp: no API key (--api-key or {API_KEY_VARIABLE}): anyone who can reach "
            f"port {args.port} can use the server",
            file=sys.stderr,
        )
    try:
        os.execve(args.python, command, vllm_environment(api_key))
    except OSError as error:
        return fail(f"cannot start {args.python}: {error}")


def download(args: argparse.Namespace, settings: Settings) -> int:
    from fim_lsp.engine import EngineError, resolve_model

    try:
        folder = resolve_model(settings.model, lambda message, _: print(message, file=sys.stderr))
    except EngineError as error:
        return fail(str(error))
    print(folder)
    return 0


def fail(message: str) -> int:
    print(f"fim-lsp: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
