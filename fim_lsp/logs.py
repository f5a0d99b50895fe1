"""Where logs go: stderr or the log file, never stdout (stdout is the LSP wire)."""

from __future__ import annotations

import logging
import sys


def configure_logging(log_file: str | None) -> None:
    """Send logs to `log_file` (appending) or stderr; raises OSError if the file cannot open."""
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # They log every message or request at INFO (for httpx: each team-server completion).
    for chatty in ("pygls", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
