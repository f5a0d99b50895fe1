"""Peak and final memory of loading a model through the engine, as the server does.

    python bench/load_memory.py [--model FOLDER] [--quantization int8|none]

Defaults to the full-size random model that bench/typing_latency.py builds in .cache/.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fim_lsp.engine import load_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / ".cache" / "random-fim-neox-1.3b"))
    parser.add_argument("--quantization", default="int8", choices=["int8", "none"])
    args = parser.parse_args()
    started = time.perf_counter()
    engine = load_engine(args.model, 50280, device="cpu", quantization=args.quantization)
    seconds = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"{engine.precision.reason}: loaded in {seconds:.1f} s, RSS {rss:.2f} GB, peak {peak:.2f} GB"
    )


if __name__ == "__main__":
    main()
