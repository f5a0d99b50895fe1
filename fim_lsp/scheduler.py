"""One worker thread owns the model; the latest request wins; every job can be cancelled.

A user types in one place at a time: a new request (for any document) makes every older one
useless. It stops the job that runs (its cancel flag is checked before every forward pass) and
the one that waits, and their requests are answered at once, with nothing, instead of when the
worker gets to them: the queue never holds more than one job, so a storm of requests and
cancels costs no more than its last request (issue #20: the tail was 18 s with a queue per
document).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Job:
    cancel: threading.Event  # set: the work stops at its next check
    superseded: asyncio.Future[None]  # done: a newer request took over; answer now
    key: str  # the document it is for


class Scheduler:
    """Runs model work off the event loop, one job at a time."""

    def __init__(self) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fim-lsp-model")
        self.current: Job | None = None  # the newest request's job
        self.idle_work: threading.Event | None = None  # the cancel flag of background work

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Queue work that no request waits for (loading the model)."""
        return self.worker.submit(work)

    def supersede(self, key: str | None = None) -> None:
        """Stop the request running or waiting (if it is for `key`, when given): its answer is
        no longer wanted."""
        if (job := self.current) is not None and key in (None, job.key):
            self.current = None
            job.cancel.set()
            if not job.superseded.done():
                job.superseded.set_result(None)

    def background(self, work: Callable[[threading.Event], object]) -> None:
        """Run `work(cancel)` in the worker when it is free (work no request waits for, such as
        warming a cache); the next request sets its cancel flag, and it must stop at once."""
        self.stop_background()
        cancel = self.idle_work = threading.Event()
        self.worker.submit(self.unless_cancelled, work, cancel).add_done_callback(log_failure)

    def stop_background(self) -> None:
        if self.idle_work is not None:
            self.idle_work.set()
            self.idle_work = None

    async def run(
        self, work: Callable[[threading.Event], T], debounce_s: float = 0.0, key: str = ""
    ) -> T | None:
        """Run `work(cancel)` in the worker, for document `key`; None when a newer request
        superseded it."""
        self.supersede()
        self.stop_background()
        loop = asyncio.get_running_loop()
        job = self.current = Job(threading.Event(), loop.create_future(), key)
        try:
            if debounce_s > 0:  # a burst of keystrokes makes one generation
                await asyncio.wait([job.superseded], timeout=debounce_s)
            if job.cancel.is_set():
                return None
            running = asyncio.wrap_future(
                self.worker.submit(self.unless_cancelled, work, job.cancel)
            )
            either: list[asyncio.Future[Any]] = [running, job.superseded]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if running.done():
                return running.result()
            running.add_done_callback(ignore_outcome)  # it stops on its own, unheard
            return None
        except asyncio.CancelledError:  # $/cancelRequest: stop the compute within one step
            job.cancel.set()
            raise
        finally:
            if self.current is job:
                self.current = None

    @staticmethod
    def unless_cancelled(work: Callable[[threading.Event], T], cancel: threading.Event) -> T | None:
        return None if cancel.is_set() else work(cancel)

    def shutdown(self) -> None:
        self.supersede()
        self.stop_background()
        self.worker.shutdown(wait=False, cancel_futures=True)


def ignore_outcome(future: asyncio.Future) -> None:
    """Retrieve a superseded job's outcome, so that an error in it is not reported as unseen."""
    with contextlib.suppress(BaseException):
        future.result()


def log_failure(future: Future) -> None:
    """Background work has nobody to tell: its errors go to the log."""
    if not future.cancelled() and (error := future.exception()) is not None:
        log.error("background work failed: %r", error, exc_info=error)
