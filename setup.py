"""The wheel carries the C kernels built (ctypes loads them: no CPython ABI), where a compiler
can build them: then it is a platform wheel (py3-none-linux_x86_64). A source checkout or an
editable install builds them on first use instead (fim_lsp/engine/native.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

NATIVE = Path(__file__).parent / "fim_lsp" / "engine" / "native.py"


def native_module():
    """native.py alone (stdlib imports and fim_lsp.paths), without importing the package."""
    sys.path.insert(0, str(NATIVE.parents[2]))
    spec = importlib.util.spec_from_file_location("fim_lsp_native", NATIVE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildKernels(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # the checkout builds them on first use
        native = native_module()
        try:
            built = native.build(Path(self.build_lib) / "fim_lsp" / "engine")
        except native.NativeError as error:  # no compiler: a pure wheel, built on first use
            print(f"fim-lsp: the wheel goes without built kernels ({error})", file=sys.stderr)
            return
        print(f"fim-lsp: built the C kernels into the wheel: {built.name}", file=sys.stderr)


class WithKernels(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # a shared library for one platform: built into platlib, a platform wheel


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform  # any CPython 3: ctypes, no extension module


setup(distclass=WithKernels, cmdclass={"build_py": BuildKernels, "bdist_wheel": PlatformWheel})
