"""Every benchmark imports: mypy cannot see a module the engine no longer has (its imports of
third-party trees are not followed), and a benchmark is run by hand, long after a refactor."""

import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    path.stem for path in Path(__file__).parent.parent.joinpath("bench").glob("*.py")
)


@pytest.mark.parametrize("name", [name for name in BENCHMARKS if name != "__init__"])
def test_benchmark_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
