"""`fim-lsp` with a memory probe for tests: the first SIGUSR1 starts tracemalloc, and each later
one writes the bytes traced since then to stderr (`tracemalloc: N bytes`)."""

import gc
import signal
import sys
import threading
import tracemalloc

from fim_lsp.cli import main

PROBE = "tracemalloc:"


def answer_probes() -> None:
    """On a thread of its own: a handler would run only when the event loop's thread wakes."""
    while True:
        signal.sigwait({signal.SIGUSR1})
        if not tracemalloc.is_tracing():
            tracemalloc.start()  # after the imports, which are not growth
            print(f"{PROBE} started", file=sys.stderr, flush=True)
            continue
        gc.collect()  # what only the collector would free is not growth
        print(f"{PROBE} {tracemalloc.get_traced_memory()[0]} bytes", file=sys.stderr, flush=True)


if __name__ == "__main__":
    # Blocked in every thread (those started later inherit it), so that only sigwait takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    threading.Thread(target=answer_probes, name="memory-probe", daemon=True).start()
    sys.exit(main())
