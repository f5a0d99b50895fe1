"""Where fim-lsp keeps files of its own: ~/.cache/fim-lsp (or under $XDG_CACHE_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fim-lsp"
