"""A cold prompt's prefill against the int8 compute floor, on this machine, in one run.

    python bench/prefill_floor.py [--tokens 1000] [--chunk 256] [--rounds 3]

Measures, in rounds that alternate so that the machine's drift on this shared host hits all alike
(each figure is the best of its calls: other work on the machine only ever slows one down):
- the int8 GEMMs this CPU offers, on the four products of a prefill chunk of FIM-NeoX-1.3B
  (chunk x 2048 -> 6144, 2048 -> 2048, 2048 -> 8192, 8192 -> 2048): torch._int_mm (int8 x int8
  -> int32), oneDNN's quantized linear through torch (u8 x s8 -> fp32, activations quantized
  beforehand: not timed), torch's dynamic int8 layers (fbgemm), and the engine's C kernel
  (fim_linear_i8: activations quantized, outputs in fp32) on each ISA the CPU has;
- the ISA's peak: cores x clock x int8 multiply-adds per cycle. The clock is timed on every core
  at once with a chain of dependent one-cycle adds; the multiply-adds per cycle with a loop of
  independent vpmaddubsw/vpmaddwd/vpaddd (AVX2), vpdpbusd (AVX-512 VNNI) or tdpbusd (AMX) (bench/peak.c),
  each by the thread's CPU time, so that other work on the machine does not count;
- a cold prompt of --tokens through 24 full-size layers (2048 wide, 16 heads, 8192 MLP; random
  int8 weights built directly), in chunks of --chunk, one fim_layer call per layer and chunk, to
  the last position's hidden state, on each ISA;
- the floor: 2 x 1.21 G multiply-adds per token (the layers' weights) at the best GEMM rate.
And in each round, a profile of the prefill by running its parts on their own (the four
products, the rotary embedding and cache write, attention): where the time goes. Writes bench/out/prefill_floor.md
and .json.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.typing_latency import machine  # noqa: E402
from fim_lsp.engine import abi, memory  # noqa: E402
from fim_lsp.engine.choices import TORCH_DYNAMIC  # noqa: E402
from fim_lsp.engine.linear import Int8Linear, run_into  # noqa: E402
from fim_lsp.engine.linear import load_kernel as load_linear  # noqa: E402

WIDTH, HEADS, INNER, LAYERS = 2048, 16, 8192, 24
DIM, ROTARY = WIDTH // HEADS, WIDTH // HEADS // 4  # FIM-NeoX-1.3B: rotary_pct 0.25
PRODUCTS = {  # name: (inputs, outputs)
    "query-key-value": (WIDTH, 3 * WIDTH),
    "attention output": (WIDTH, WIDTH),
    "MLP up": (WIDTH, INNER),
    "MLP down": (INNER, WIDTH),
}
LAYER_MACS = sum(k * n for k, n in PRODUCTS.values())  # per token: 12 x 2048^2 = 50.3 M
# int8 multiply-adds per cycle and core that the instructions give (checked by bench/peak.c):
# vpmaddubsw does 32 on two ports but each needs a vpmaddwd on the same ports; vpdpbusd does 64
# per 512-bit instruction (one a cycle) or 32 per 256-bit one (two a cycle); tdpbusd does 16,384
# every 16 cycles.
NOMINAL_MACS = {"avx2": 32, "avx512vnni": 64, "amx": 1024}


class Peak:
    """bench/peak.c, compiled with the kernels' compiler: the clock and the multiply-adds per
    cycle, per core, by thread CPU time on all cores at once."""

    def __init__(self, folder: Path):
        compiler = os.environ.get("CC") or "cc"
        target = folder / "peak.so"
        source = ROOT / "bench" / "peak.c"
        subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(target), str(source)], check=True
        )
        self.library = ctypes.CDLL(str(target))
        for name in ("clock_cycles", "avx2_macs", "vnni_macs", "amx_macs"):
            getattr(self.library, name).argtypes = [ctypes.c_long]

    def per_second(self, name: str, count: int, per_call: float) -> float:
        """The slowest core's rate of `name`'s work (per_call x count per call), best of 3."""
        function = getattr(self.library, name)
        rates = []
        for _ in range(3):
            seconds: list[float] = []

            def run() -> None:
                started = time.thread_time()
                function(count)
                seconds.append(time.thread_time() - started)  # noqa: B023

            threads = [threading.Thread(target=run) for _ in range(os.cpu_count() or 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rates.append(per_call * count / max(seconds))
        return max(rates)

    def measure(self, isas: list[str]) -> dict:
        clock = self.per_second("clock_cycles", 50_000_000, 8)
        loops = {  # name, iterations, multiply-adds per iteration
            "avx2": ("avx2_macs", 20_000_000, 6 * 32),
            "avx512vnni": ("vnni_macs", 20_000_000, 12 * 64),
            "amx": ("amx_macs", 1_000_000, 4 * 16 * 16 * 64),
        }
        macs = {isa: self.per_second(*loops[isa]) / clock for isa in isas}
        cores = os.cpu_count() or 1
        return {
            "clock_ghz": clock / 1e9,
            "cores": cores,
            "macs_per_cycle": macs,
            "peak_gops": {isa: 2 * cores * clock * NOMINAL_MACS[isa] / 1e9 for isa in isas},
        }


def gemm_setups(library: ctypes.CDLL, chunk: int, isas: list[str]) -> dict:
    """name -> {product: a function that runs it once}, on the products' shapes."""
    generator = torch.Generator().manual_seed(0)
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")
    threads = torch.get_num_threads()
    setups: dict[str, dict] = defaultdict(dict)
    for product, (k, n) in PRODUCTS.items():
        a = torch.randint(-127, 128, (chunk, k), dtype=torch.int8, generator=generator)
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
        setups["torch._int_mm"][product] = functools.partial(torch._int_mm, a, b.t())
        if onednn:
            qx = (a.to(torch.int16) + 128).to(torch.uint8)  # u8 activations, zero point 128
            setups["oneDNN qlinear (torch)"][product] = functools.partial(
                torch.ops.onednn.qlinear_pointwise, qx, 0.05, 128,
                torch.ops.onednn.qlinear_prepack(b, [chunk, k]), torch.full((n,), 0.01),
                torch.zeros(n, dtype=torch.long), None, 1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip
        x = torch.randn(chunk, k, generator=generator)
        setups["torch dynamic int8 (fbgemm)"][product] = functools.partial(
            TORCH_DYNAMIC.quantize(torch.nn.Linear(k, n)), x
        )
        layer = Int8Linear(torch.randn(n, k, generator=generator) / math.sqrt(k), None)
        product_into = functools.partial(
            run_into, library, layer, x, torch.empty(chunk, n), threads
        )
        for isa in isas:
            setups[f"fim_linear_i8 ({isa})"][product] = functools.partial(
                on_isa, library, isa, product_into
            )
    return setups


def on_isa(library: ctypes.CDLL, isa: str, work):
    with abi.running_on(library, isa):
        return work()


class Model:
    """24 full-size GPT-NeoX layers with random int8 weights, built directly (no fp32 copy), and
    an fp16 KV cache for `tokens`."""

    def __init__(self, tokens: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.keep: list[torch.Tensor] = []  # every tensor the structs point into
        self.layers = []
        for _ in range(LAYERS):
            weights = [self.weights(k, n, generator) for k, n in PRODUCTS.values()]
            norms = [self.kept(torch.ones(WIDTH)), self.kept(torch.zeros(WIDTH))]
            before_attention = abi.Fused(norms[0].data_ptr(), norms[1].data_ptr(), 1e-5, 0)
            before_mlp = abi.Fused(norms[0].data_ptr(), norms[1].data_ptr(), 1e-5, 1)
            self.layers.append(
                (
                    abi.LayerWeights(
                        *(ctypes.pointer(w) for w in weights), before_attention, before_mlp
                    ),
                    weights,
                )
            )
        self.capacity = tokens
        self.cache = [
            (
                memory.empty((HEADS, tokens, DIM), torch.float16),
                memory.empty((HEADS, tokens, DIM), torch.float16),
            )
            for _ in range(LAYERS)
        ]
        positions = torch.arange(tokens, dtype=torch.float32)
        inverse = 1 / 10000 ** (torch.arange(0, ROTARY, 2, dtype=torch.float32) / ROTARY)
        angles = torch.outer(positions, inverse).repeat(1, 2)  # [tokens][rotary], halves repeated
        self.cos, self.sin = angles.cos().contiguous(), angles.sin().contiguous()

    def kept(self, tensor: torch.Tensor) -> torch.Tensor:
        self.keep.append(tensor)
        return tensor

    def weights(self, k: int, n: int, generator: torch.Generator) -> abi.Weights:
        """Random int8 weights in linear.c's layout, scaled so that outputs keep the inputs' size."""
        packed = memory.empty((n // abi.PANEL, k // abi.GROUP, abi.PANEL, abi.GROUP), torch.int8)
        packed.view(-1, k).copy_(
            torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=generator)
        )
        sums = packed.transpose(1, 2).reshape(n, k).sum(dim=1, dtype=torch.int32)
        scale = torch.full((n,), 1 / (73 * math.sqrt(k)))  # 73: a uniform int8's deviation
        bias = torch.zeros(n)
        for tensor in (packed, sums, scale, bias):
            self.kept(tensor)
        return abi.Weights(
            k, n, packed.data_ptr(), scale.data_ptr(), sums.data_ptr(), bias.data_ptr()
        )

    def prefill(self, library: ctypes.CDLL, x: torch.Tensor, chunk: int) -> torch.Tensor:
        """The last position's hidden state after all layers, `x` [tokens, width] in chunks."""
        threads = torch.get_num_threads()
        last = x
        for start in range(0, len(x), chunk):
            states = (  # a copy: the layers write their outputs into both in turn
                x[start : start + chunk].clone(),
                torch.empty(min(chunk, len(x) - start), WIDTH),
            )
            run = self.run(start, len(states[0]))
            for turn, (weights, _) in enumerate(self.layers):
                self.point(run, turn, states[turn % 2], states[1 - turn % 2])
                abi.check(
                    library.fim_layer(ctypes.byref(weights), ctypes.byref(run), threads),
                    "fim_layer",
                )
            last = states[LAYERS % 2]
        return last[-1].clone()

    def run(self, past: int, new: int) -> abi.LayerRun:
        return abi.LayerRun(
            new, HEADS, DIM, ROTARY, past, self.capacity * DIM, DIM**-0.5,
            self.cos[past:].data_ptr(), self.sin[past:].data_ptr(),
        )  # fmt: skip

    def point(self, run: abi.LayerRun, layer: int, x: torch.Tensor, after: torch.Tensor) -> None:
        keys, values = self.cache[layer]
        run.keys, run.values, run.x, run.after = (
            keys.data_ptr(),
            values.data_ptr(),
            x.data_ptr(),
            after.data_ptr(),
        )

    def profile(self, library: ctypes.CDLL, x: torch.Tensor, chunk: int) -> dict[str, float]:
        """Seconds per part of a prefill, each part run on its own with the layer's shapes."""
        threads = torch.get_num_threads()
        parts: dict[str, float] = defaultdict(float)
        for start in range(0, len(x), chunk):
            new = min(chunk, len(x) - start)
            rows = x[start : start + new].contiguous()
            run = self.run(start, new)
            qkv, query = torch.empty(new, 3 * WIDTH), torch.empty(HEADS, new, DIM)
            attended, hidden = torch.empty(new, WIDTH), torch.empty(new, INNER)
            for layer, (weights, products) in enumerate(self.layers):
                self.point(run, layer, rows, attended)
                fused = (weights.before_attention, None, weights.before_mlp, None)
                outs = (qkv, attended, hidden, attended)
                ins = (rows, attended, rows, hidden)
                for name, product, fuse, inp, out in zip(
                    PRODUCTS, products, fused, ins, outs, strict=True
                ):
                    started = time.perf_counter()
                    status = library.fim_linear_i8(
                        inp.data_ptr(), new, ctypes.byref(product), out.data_ptr(),
                        None if fuse is None else ctypes.byref(fuse), threads,
                    )  # fmt: skip
                    parts[f"int8 products: {name}"] += time.perf_counter() - started
                    abi.check(status, "fim_linear_i8")
                started = time.perf_counter()
                abi.check(
                    library.fim_rope_store(
                        ctypes.byref(run), qkv.data_ptr(), query.data_ptr(), 0, new
                    ),
                    "fim_rope_store",
                )
                parts["rotary embedding and cache write"] += time.perf_counter() - started
                job = abi.Attention(
                    query.data_ptr(), run.keys, run.values, attended.data_ptr(),
                    HEADS, DIM, start, new, self.capacity * DIM, DIM**-0.5, 1,
                )  # fmt: skip
                started = time.perf_counter()
                abi.check(library.fim_attend(ctypes.byref(job), threads), "fim_attend")
                parts["attention"] += time.perf_counter() - started
        return dict(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=256, help="the engine's prefill chunk")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="calls of each GEMM per round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    library = load_linear()
    isas = abi.isas_here(library)
    default_isa = abi.isa(library)
    with tempfile.TemporaryDirectory() as folder:
        peak = Peak(Path(folder)).measure(isas)
    setups = gemm_setups(library, args.chunk, isas)
    model = Model(args.tokens)
    x = torch.randn(args.tokens, WIDTH, generator=torch.Generator().manual_seed(1))
    gemm_seconds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    prefill_seconds: dict[str, list[float]] = defaultdict(list)
    hidden = {}
    parts: dict[str, float] = {}  # the best round of each
    with torch.inference_mode():
        for setup in setups.values():  # warm up: first calls allocate and pack
            for work in setup.values():
                work()
        for _ in range(args.rounds):
            for name, setup in setups.items():
                for product, work in setup.items():
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        work()
                        gemm_seconds[name][product].append(time.perf_counter() - started)
            for isa in isas:
                with abi.running_on(library, isa):
                    started = time.perf_counter()
                    hidden[isa] = model.prefill(library, x, args.chunk)
                    prefill_seconds[isa].append(time.perf_counter() - started)
            with abi.running_on(library, default_isa):
                for part, seconds in model.profile(library, x, args.chunk).items():
                    parts[part] = min(parts.get(part, math.inf), seconds)
    # A GEMM's rate on a layer's products: their multiply-adds over their summed best times.
    rates = {
        name: 2 * args.chunk * LAYER_MACS / sum(min(times) for times in products.values()) / 1e9
        for name, products in gemm_seconds.items()
    }
    best = max(rates, key=lambda name: rates[name])
    floor_s = 2 * LAYER_MACS * LAYERS * args.tokens / (rates[best] * 1e9)
    result = {
        "machine": machine(),
        "tokens": args.tokens,
        "chunk": args.chunk,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "default_isa": default_isa,
        "peak": peak,
        "gemm_gops": rates,
        "gemm_ms": {
            name: {p: min(t) * 1000 for p, t in products.items()}
            for name, products in gemm_seconds.items()
        },
        "best_gemm": best,
        "floor_s": floor_s,
        "prefill_s": {isa: min(times) for isa, times in prefill_seconds.items()},
        "prefill_median_s": {
            isa: statistics.median(times) for isa, times in prefill_seconds.items()
        },
        "same_hidden_state": all(torch.equal(h, hidden[isas[0]]) for h in hidden.values()),
        "finite": bool(torch.isfinite(hidden[isas[0]]).all()),
        "profile_s": parts,
    }
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefill_floor.json").write_text(json.dumps(result, indent=1))
    (args.out / "prefill_floor.md").write_text(text)
    print(text)


def report(result: dict) -> str:
    m, peak = result["machine"], result["peak"]
    tokens, floor = result["tokens"], result["floor_s"]
    profiled = sum(result["profile_s"].values())
    lines = [
        "# Prefill against the int8 compute floor",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads']} torch threads); torch {m['torch']}. "
        f"{result['rounds']} rounds, alternating; each GEMM figure is the best of {result['repeats']} "
        "calls a round, each prefill the best round (other work on this shared machine only ever "
        "slows a run down).",
        "",
        "## The ISA's peak",
        "",
        f"Clock {peak['clock_ghz']:.2f} GHz: dependent one-cycle adds timed by thread CPU time on all "
        f"{peak['cores']} cores at once (bench/peak.c). int8 multiply-adds per cycle and core, from a "
        "register-only loop of the products' instructions: "
        + ", ".join(
            f"{isa} {macs:.1f} (nominal {NOMINAL_MACS[isa]})"
            for isa, macs in peak["macs_per_cycle"].items()
        )
        + ".",
        "",
        "| ISA | peak: cores x clock x nominal multiply-adds x 2 |",
        "|---|---|",
        *(f"| {isa} | {gops:.0f} GOP/s |" for isa, gops in peak["peak_gops"].items()),
        "",
        f"## int8 GEMMs on a {result['chunk']}-token chunk's four products",
        "",
        "| GEMM | GOP/s | " + " | ".join(f"{p} ms" for p in PRODUCTS) + " |",
        "|---|---|" + "---|" * len(PRODUCTS),
        *(
            f"| {name} | {gops:.0f} | "
            + " | ".join(f"{result['gemm_ms'][name][p]:.1f}" for p in PRODUCTS)
            + " |"
            for name, gops in sorted(result["gemm_gops"].items(), key=lambda item: -item[1])
        ),
        "",
        f"## A cold {tokens}-token prompt through {LAYERS} layers, in chunks of {result['chunk']}",
        "",
        f"Floor: 2 x {LAYER_MACS * LAYERS / 1e9:.2f} G multiply-adds per token at the best GEMM "
        f"({result['best_gemm']}, {result['gemm_gops'][result['best_gemm']]:.0f} GOP/s) = "
        f"**{floor:.2f} s**.",
        "",
        "| ISA | prefill s (best) | median | x floor |",
        "|---|---|---|---|",
        *(
            f"| {isa} | {seconds:.2f} | {result['prefill_median_s'][isa]:.2f} | {seconds / floor:.2f} |"
            for isa, seconds in result["prefill_s"].items()
        ),
        "",
        f"Every ISA gives the same hidden state, bit for bit: {result['same_hidden_state']}; finite: "
        f"{result['finite']}.",
        "",
        f"## Where the time goes ({result['default_isa']}; each part run on its own, its best "
        f"round; {profiled:.2f} s in all)",
        "",
        "| part | s | share |",
        "|---|---|---|",
        *(
            f"| {part} | {seconds:.2f} | {seconds / profiled:.0%} |"
            for part, seconds in sorted(result["profile_s"].items(), key=lambda item: -item[1])
        ),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
