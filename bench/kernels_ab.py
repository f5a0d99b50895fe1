"""Decode steps on this tree's C kernels against another revision's, in one run.

    python bench/kernels_ab.py [--against REV] [--rounds 24] [--context 1000]

Builds the kernels of git revision REV (default: HEAD) beside this tree's, loads the full-size
random model once (bench/typing_latency.py builds it), prefills --context tokens of real code,
then times blocks of 8 one-token steps through the same CpuStep with each library in turn (and
this tree's on each ISA the CPU has), every block from the same cache. The revision's fim_layer
and fim_linear_i8 must read the structs this tree passes (abi.py), as they have since the layer
call. Prints each setup's median block and its median ratio to REV's in the same round.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.decode_profile import SOURCE  # noqa: E402
from bench.typing_latency import RANDOM_MODEL  # noqa: E402
from fim_lsp.engine import abi, load_engine, native  # noqa: E402
from tests import tiny_model  # noqa: E402

STEPS = 8


def build_revision(revision: str, folder: Path) -> ctypes.CDLL:
    """The kernels of `revision`, compiled as native.py compiles this tree's."""
    engine = "fim_lsp/engine"
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", revision, f"{engine}/"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    sources = []
    for name in names:
        if name.endswith((".c", ".h")):
            text = subprocess.run(
                ["git", "show", f"{revision}:{name}"], cwd=ROOT, check=True, capture_output=True
            ).stdout
            (folder / Path(name).name).write_bytes(text)
            if name.endswith(".c"):
                sources.append(str(folder / Path(name).name))
    target = folder / "revision.so"
    subprocess.run(["cc", *native.BUILD_FLAGS, "-o", str(target), *sources, "-lm"], check=True)
    library = ctypes.CDLL(str(target))
    for name in ("fim_layer", "fim_linear_i8"):
        result, arguments = abi.PROTOTYPES[name]
        getattr(library, name).restype, getattr(library, name).argtypes = result, arguments
    return library


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--against", default="HEAD", help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--context", type=int, default=1000)
    args = parser.parse_args()
    if not (RANDOM_MODEL / "model.safetensors").is_file():
        tiny_model.build(RANDOM_MODEL, tiny_model.FULL, dtype="bfloat16")
    engine = load_engine(str(RANDOM_MODEL), 50280, "cpu", "int8", int8_backend="c-kernel")
    if engine.step is None:
        raise SystemExit(f"the C step cannot run here: {engine.step_problem}")
    ours = engine.step.library
    with tempfile.TemporaryDirectory() as folder:
        theirs = build_revision(args.against, Path(folder))
    setups = {args.against: (theirs, abi.isa(ours))}
    for isa in abi.ISAS:
        try:
            with abi.running_on(ours, isa):
                setups[f"this tree, {isa}"] = (ours, isa)
        except native.NativeError:
            pass
    tokenizer = Tokenizer.from_file(str(RANDOM_MODEL / "tokenizer.json"))
    prompt = tokenizer.encode(SOURCE.read_text()).ids[: args.context]
    blocks: dict[str, list[float]] = {name: [] for name in setups}
    with torch.inference_mode():
        logits = engine.prefill(prompt, threading.Event())
        assert logits is not None  # not cancelled
        first = int(torch.argmax(logits[-1]))
        for _ in range(args.rounds):
            for name, (library, isa) in setups.items():
                engine.step.library = library
                with abi.running_on(ours, isa):  # (the revision's library keeps its own)
                    token, times = first, []
                    for _ in range(STEPS):
                        started = time.perf_counter()
                        token = int(torch.argmax(engine.forward([token])[-1]))
                        times.append(time.perf_counter() - started)
                engine.cache.drop(STEPS)
                blocks[name].append(statistics.median(times))
    print(f"{len(prompt)} prompt tokens, {args.rounds} rounds of {STEPS}-step blocks")
    for name, values in blocks.items():
        ratios = [ms / base for ms, base in zip(values, blocks[args.against], strict=True)]
        quartiles = statistics.quantiles(ratios, n=4)
        print(
            f"{name}: {statistics.median(values) * 1000:.1f} ms per step (median block), "
            f"x {args.against}: {statistics.median(ratios):.3f} "
            f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
        )


if __name__ == "__main__":
    main()
