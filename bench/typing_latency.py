"""Typing-session latency through the real server over stdio: KV reuse on vs off, beside the floor.

    python bench/typing_latency.py                     # full-size random FIM-NeoX-1.3B, 8-bit, CPU
    python bench/typing_latency.py --model demo        # or a hub id / folder for the real model

A random-weight model with FIM-NeoX-1.3B's dimensions is built once into .cache/ (speed does not
depend on weight values). Each scenario opens a real source file with one line removed and types
that line back character by character, asking for an inline completion after every keystroke
and waiting for the answer, as an editor would. The server reports per request how many prompt
tokens were new and how many came from the cache (its `completion {...}` log line). Writes
bench/out/typing_latency.md and bench/out/typing_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.floor import ReadRate, measure_floor  # noqa: E402
from tests import tiny_model  # noqa: E402

RANDOM_MODEL = ROOT / ".cache" / "random-fim-neox-1.3b"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Real code, a few hundred to a few thousand tokens around the cursor: (file, line to retype).
SCENARIOS = [
    ("json/encoder.py", "        if self.check_circular:"),
    ("textwrap.py", "        chunks = self._split_chunks(text)"),
]


@dataclass
class Request:
    keystroke: int
    latency_ms: float
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    typed_through: bool = False
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    accepted_tokens: int = 0  # generated tokens that came from accepted prompt-lookup drafts
    answered: bool = False

    @property
    def ms_per_pass(self) -> float | None:
        """Decode time per forward pass (a step, or a draft check), or None without one.

        Tokens from accepted drafts cost no pass of their own: counting them would put the
        time per token below what reading the weights once takes."""
        passes = self.generated_tokens - 1 - self.accepted_tokens
        return self.decode_ms / passes if passes > 0 else None


@dataclass
class Run:
    scenario: str
    reuse: bool
    max_new_tokens: int
    requests: list[Request] = field(default_factory=list)


class BenchClient(LanguageClient):
    def __init__(self) -> None:
        super().__init__("fim-lsp-bench", "1")
        self.stats: list[dict] = []
        self.status: dict = {}
        self.lines: list[str] = []  # every log line, for reports that quote them

        @self.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(params: types.LogMessageParams) -> None:
            self.lines.append(params.message)
            if params.message.startswith("completion "):
                self.stats.append(json.loads(params.message.removeprefix("completion ")))

        @self.feature("fimLsp/status")
        def status(params) -> None:
            self.status = params._asdict() if hasattr(params, "_asdict") else dict(params)


def random_model() -> Path:
    """The random model with FIM-NeoX-1.3B's dimensions, built into .cache/ the first time."""
    if not (RANDOM_MODEL / "model.safetensors").is_file():
        print(f"building the random full-size model in {RANDOM_MODEL} (once)", file=sys.stderr)
        tiny_model.build(RANDOM_MODEL, tiny_model.FULL, dtype="bfloat16")
    return RANDOM_MODEL


async def start_server(
    model: str,
    quantization: str,
    context_length: int | None,
    checkout: Path | None = None,
    *flags: str,
    options: dict | None = None,
) -> BenchClient:
    """The server of this checkout, or of another (`checkout`: its fim_lsp comes first), once
    its model is ready; `flags` and `options` (initializationOptions) beside the benchmark's."""
    client = BenchClient()
    code = checkout or ROOT
    # `python -m` puts the working folder first on the path: it must be the checkout too.
    path = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    await client.start_io(
        sys.executable, "-m", "fim_lsp", "serve", "--model", model,
        "--quantization", quantization, "--max-time-ms", "0", "--debounce-ms", "0",
        *(["--context-length", str(context_length)] if context_length else []), *flags,
        cwd=code, env=os.environ | {"PYTHONPATH": path},
    )  # fmt: skip
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(), initialization_options=options
        )
    )
    client.initialized(types.InitializedParams())
    while client.status.get("state") not in ("ready", "error"):
        if client._server and client._server.returncode is not None:
            raise SystemExit(f"the server of {code} ended while loading {model}")
        await asyncio.sleep(0.02)  # the ready time's resolution
    if client.status["state"] == "error":
        raise SystemExit(f"the server could not load {model}: {client.status['message']}")
    return client


def configure(client: BenchClient, **options) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=options))


async def type_line(
    client: BenchClient, uri: str, text: str, line: int, typed: str, keystrokes: int, pause_s: float
) -> list[Request]:
    """Open `text` (the line emptied but for its indentation), then type `typed` into it."""
    lines = text.split("\n")
    indent = typed[: len(typed) - len(typed.lstrip())]
    lines[line] = indent
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text="\n".join(lines))
        )
    )
    requests = []
    column = len(indent)
    for index, char in enumerate(typed[len(indent) :][:keystrokes]):
        where = types.Position(line, column)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                types.VersionedTextDocumentIdentifier(version=index + 2, uri=uri),
                [
                    types.TextDocumentContentChangePartial(
                        range=types.Range(where, where), text=char
                    )
                ],
            )
        )
        column += 1
        seen = len(client.stats)
        started = time.perf_counter()
        answer = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri),
                position=types.Position(line, column),
                context=types.InlineCompletionContext(types.InlineCompletionTriggerKind.Automatic),
            )
        )
        items = answer.items if isinstance(answer, types.InlineCompletionList) else answer
        request = Request(index, (time.perf_counter() - started) * 1000, answered=bool(items))
        if len(client.stats) > seen:
            stats = client.stats[-1]
            request.prompt_tokens = stats["prompt_tokens"]
            request.cached_tokens = stats["cached_tokens"]
            request.generated_tokens = stats["generated_tokens"]
            request.typed_through = stats["stop_reason"] == "typed-through"
            request.prefill_ms = stats["timings_ms"].get("prefill", 0.0)
            request.decode_ms = stats["timings_ms"].get("decode", 0.0)
            request.accepted_tokens = stats.get("accepted_tokens", 0)
        requests.append(request)
        await asyncio.sleep(pause_s)
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri))
    )
    return requests


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def server_peak_rss_gb(client: BenchClient) -> float:
    pid = client._server.pid if client._server else None
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1e6


async def bench(args: argparse.Namespace) -> dict:
    if args.model == str(RANDOM_MODEL):
        random_model()
    context_length = args.context + args.max_new_tokens
    load_started = time.perf_counter()
    client = await start_server(args.model, args.quantization, context_length, args.checkout)
    load_s = time.perf_counter() - load_started
    peak_rss = server_peak_rss_gb(client)
    quantization = client.status.get("quantization") or "none"
    attention = client.status.get("attention") or ""
    runs: list[Run] = []
    rate, bandwidths = ReadRate(), []
    for number, (relative, typed) in enumerate(SCENARIOS[: args.scenarios]):
        source = (STDLIB / relative).read_text()
        line = source.split("\n").index(typed)
        for reuse, max_new, keystrokes in (
            (True, args.max_new_tokens, args.keystrokes),
            (True, 1, args.keystrokes),
            (False, 1, args.cold_keystrokes),
            (False, args.max_new_tokens, args.cold_keystrokes),
        ):
            configure(client, cacheReuse=reuse, maxNewTokens=max_new, draftTokens=args.draft_tokens)
            uri = f"file:///bench/{number}-{reuse}-{max_new}/{relative}"
            print(
                f"{relative}: reuse {'on' if reuse else 'off'}, maxNewTokens {max_new}",
                file=sys.stderr,
            )
            requests = await type_line(client, uri, source, line, typed, keystrokes, args.pause)
            runs.append(Run(relative, reuse, max_new, requests))
            # The floor's bandwidth, between runs while the server idles: drift hits both.
            bandwidths.append(rate.sample())
    await client.shutdown_async(None)
    client.exit(None)
    await client.stop()
    config = Path(args.model) / "config.json"
    floor = (
        measure_floor(
            config,
            args.context,
            int8=quantization.startswith("int8"),
            int8_lm_head="bitsandbytes" not in quantization,  # bitsandbytes keeps lm_head fp32
            bandwidth=statistics.median(bandwidths),
            kv_itemsize=2 if "fp16 KV cache" in attention else 4,
        )
        if config.is_file()
        else None
    )
    return {
        "machine": machine(),
        "checkout": str(args.checkout or ROOT),
        "model": os.path.relpath(args.model, ROOT) if Path(args.model).is_dir() else args.model,
        "quantization": quantization,
        "attention": attention,
        "context": args.context,
        "load_s": load_s,
        "server_peak_rss_gb": peak_rss,
        "floor": floor,
        "runs": [asdict(run) for run in runs],
    }


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    return next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip


def machine() -> dict:
    import bitsandbytes
    import torch
    import transformers

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "threads": torch.get_num_threads(),
    }


def summary_rows(result: dict) -> list[str]:
    rows = []
    for run in result["runs"]:
        requests = [Request(**r) for r in run["requests"]]
        latency = [r.latency_ms for r in requests if not r.typed_through]
        warm = [r for r in requests if r.cached_tokens and not r.typed_through]
        new_tokens = [r.prompt_tokens - r.cached_tokens for r in warm]
        generated = [r.generated_tokens for r in requests if r.generated_tokens]
        per_pass = [r.ms_per_pass for r in requests if r.ms_per_pass is not None]
        rows.append(
            f"| {run['scenario']} | {'on' if run['reuse'] else 'off'} | {run['max_new_tokens']} "
            f"| {len(requests)} | {percentile(latency, 0.5):.0f} | {percentile(latency, 0.95):.0f} "
            f"| {statistics.median(new_tokens) if new_tokens else '-'} "
            f"| {statistics.median([r.prompt_tokens for r in requests if r.prompt_tokens] or [0]):.0f} "
            f"| {sum(r.typed_through for r in requests)} "
            f"| {statistics.median(generated) if generated else '-'} "
            f"| {sum(r.accepted_tokens for r in requests)} "
            f"| {statistics.median(per_pass) if per_pass else float('nan'):.0f} |"
        )
    return rows


def model_latencies(run: dict) -> list[float]:
    """Latencies of the requests that ran the model (typed-through answers are instant)."""
    return [q["latency_ms"] for q in run["requests"] if not q["typed_through"]]


def ratios(result: dict) -> list[str]:
    """Warm (reuse on) versus cold (reuse off) time to first token, per scenario."""
    lines = []
    by_key = {(r["scenario"], r["reuse"], r["max_new_tokens"]): r for r in result["runs"]}
    for scenario, _ in SCENARIOS:
        warm, cold = by_key.get((scenario, True, 1)), by_key.get((scenario, False, 1))
        if not warm or not cold:
            continue
        warm_p50 = percentile(model_latencies(warm), 0.5)
        cold_p50 = percentile(model_latencies(cold), 0.5)
        lines.append(
            f"- {scenario}: time to first token (maxNewTokens 1) p50 {warm_p50:.0f} ms with reuse, "
            f"{cold_p50:.0f} ms without: **{cold_p50 / warm_p50:.1f}x** shorter"
        )
    return lines


def report(result: dict) -> str:
    m, floor = result["machine"], result["floor"] or {}
    warm_requests = [
        Request(**q) for run in result["runs"] if run["reuse"] for q in run["requests"]
    ]
    decode = [r.ms_per_pass for r in warm_requests if r.ms_per_pass is not None]
    warm_prefill = [
        q["prefill_ms"]
        for run in result["runs"] if run["reuse"]
        for q in run["requests"]
        if q["cached_tokens"] and 0 < q["prompt_tokens"] - q["cached_tokens"] <= 8
    ]  # fmt: skip
    decode_p50 = statistics.median(decode) if decode else float("nan")
    floor_ms = floor["decode_floor_ms"]
    lines = [
        "# Typing latency through LSP",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads); Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, bitsandbytes {m['bitsandbytes']}.",
        f"Server: {result.get('checkout', '')}.",
        f"Model: {result['model']} ({result['quantization']}), about {result['context']} prompt tokens.",
        f"Attention: {result['attention']}.",
        f"Server load: {result['load_s']:.1f} s to ready, peak RSS {result['server_peak_rss_gb']:.2f} GB.",
        "",
        "| scenario | reuse | maxNewTokens | requests | p50 ms | p95 ms | new prompt tokens (warm, p50) "
        "| prompt tokens | typed-through | generated (p50) | from drafts | decode ms per pass (p50) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *summary_rows(result),
        "",
        "p50 and p95 are keystroke-to-answer latencies of the requests that ran the model; "
        "typed-through answers (counted apart) are instant.",
        "",
        "## Reuse on vs off",
        *ratios(result),
        "",
        "## Against the machine's floor (measured in this run)",
        f"- memory read: {floor['read_gb_s']:.1f} GB/s (median of one measurement after each run, "
        "the faster of a GEMV and a sum over 1 GiB); weights read per decode step "
        f"{floor['weight_bytes'] / 1e9:.2f} GB + KV cache {floor['kv_bytes'] / 1e6:.0f} MB "
        f"-> decode floor {floor_ms:.0f} ms/token",
        f"- decode measured p50 {decode_p50:.0f} ms per forward pass (tokens from accepted drafts, "
        f"{sum(r.accepted_tokens for r in warm_requests)} with reuse on, not counted as passes) = "
        f"**{decode_p50 / floor_ms:.2f}x** the floor",
        f"- int8 matmul: {floor['int8_gops']:.1f} GOP/s -> prefill floor "
        f"{floor['prefill_floor_ms_per_token']:.1f} ms/token",
        f"- warm keystroke (<= 8 new tokens) prefill p50 "
        f"{statistics.median(warm_prefill) if warm_prefill else float('nan'):.0f} ms = "
        f"{(statistics.median(warm_prefill) / decode_p50) if warm_prefill else float('nan'):.2f} decode steps",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(RANDOM_MODEL))
    parser.add_argument("--quantization", default="int8", choices=["int8", "none"])
    parser.add_argument("--context", type=int, default=1000, help="prompt tokens around the cursor")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument("--keystrokes", type=int, default=24, help="per warm run")
    parser.add_argument("--cold-keystrokes", type=int, default=6, help="per run with reuse off")
    parser.add_argument("--scenarios", type=int, default=len(SCENARIOS))
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between keystrokes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--checkout",
        type=Path,
        help="run the server of another checkout (e.g. a worktree of an older commit), to "
        "compare versions in one session",
    )
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "typing_latency.json").write_text(json.dumps(result, indent=1))
    text = report(result)
    (args.out / "typing_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
