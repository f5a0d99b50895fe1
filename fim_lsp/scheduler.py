"""One worker thread owns the model; the latest request per document wins; every job can cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Scheduler:
    """Runs model work off the event loop, one job at a time.

    Each job gets a cancel flag that the engine checks before every forward pass. A newer job for
    the same key (a document) sets the older one's flag, and a job whose flag is set before it
    starts does not run at all.
    """

    def __init__(self) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fim-lsp-model")
        self.latest: dict[str, threading.Event] = {}

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Queue work that no request waits for (loading the model)."""
        return self.worker.submit(work)

    def supersede(self, key: str) -> None:
        """Stop the job running or waiting for `key`: its answer is no longer wanted."""
        if (job := self.latest.pop(key, None)) is not None:
            job.set()

    async def run(
        self, key: str, work: Callable[[threading.Event], T], debounce_s: float = 0.0
    ) -> T | None:
        """Run `work(cancel)` in the worker; None when a newer job for `key` superseded it."""
        self.supersede(key)
        cancel = self.latest[key] = threading.Event()
        try:
            if debounce_s > 0:
                await asyncio.sleep(debounce_s)  # a burst of keystrokes makes one generation
            if cancel.is_set():
                return None
            return await asyncio.wrap_future(
                self.worker.submit(self.unless_cancelled, work, cancel)
            )
        except asyncio.CancelledError:  # $/cancelRequest: stop the compute within one token
            cancel.set()
            raise
        finally:
            if self.latest.get(key) is cancel:
                del self.latest[key]

    @staticmethod
    def unless_cancelled(work: Callable[[threading.Event], T], cancel: threading.Event) -> T | None:
        return None if cancel.is_set() else work(cancel)

    def shutdown(self) -> None:
        for cancel in self.latest.values():
            cancel.set()
        self.worker.shutdown(wait=False, cancel_futures=True)
