"""Which backend answers: the team server while it is up, the fallback while it is down.

A Backend itself, so that the pipeline never asks which one runs. A failed request is answered
by the fallback at once (the local engine, loaded the first time it is needed, or nothing), the
user is told once per outage, and the server is probed again in the background, with growing
waits, until it answers; then the user is told it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fim_lsp.availability import Availability
from fim_lsp.backend import (
    AtFullLength,
    Backend,
    BackendUnavailable,
    Generation,
    GenerationOptions,
)

log = logging.getLogger(__name__)


class Routed(AtFullLength):
    """The team server, with a fallback: the Backend the pipeline runs when `backend` is a URL.
    At full length while the server is down too: an outage is the exception, and the local
    engine's measures would mislead the next request, which the server may answer again."""

    def __init__(
        self,
        server: Backend,
        probe: Callable[[], object],
        availability: Availability,
        load_fallback: Callable[[], Backend] | None,
        tell: Callable[[str, str], None],
    ):
        self.server = server
        self.probe_server = probe  # a tiny completion; raises BackendUnavailable
        self.availability = availability
        self.load_fallback = load_fallback  # None: `fallback` none, nothing answers
        self.fallback: Backend | None = None
        self.tell = tell  # (level, message) for the user; called from any thread
        self.lock = threading.Lock()  # the worker and the probe thread share the availability

    @property
    def name(self) -> str:
        return self.availability.status

    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        if self.availability.up:
            try:
                generation = self.server.generate(prompt, options, should_stop, cancel)
            except BackendUnavailable as error:
                self.failed(str(error))
            else:
                self.answered()
                return generation
        self.probe_when_due()
        return self.answer_locally(prompt, options, should_stop, cancel)

    def answer_locally(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        if self.load_fallback is None:
            return Generation([], len(prompt), 0, "unavailable")
        if self.fallback is None:
            log.info("loading the local model: the team server is down")
            self.fallback = self.load_fallback()
        return self.fallback.generate(prompt, options, should_stop, cancel)

    def failed(self, reason: str) -> None:
        with self.lock:
            message = self.availability.failed(reason, time.monotonic())
        log.warning("team server: %s", reason)
        if message:
            self.tell("warning", message)

    def answered(self) -> None:
        with self.lock:
            message = self.availability.answered()
        if message:
            self.tell("info", message)

    def probe_when_due(self) -> None:
        with self.lock:
            due = self.availability.start_probe(time.monotonic())
        if due:
            threading.Thread(target=self.probe, name="fim-lsp-team-probe", daemon=True).start()

    def probe(self) -> None:
        try:
            self.probe_server()
        except BackendUnavailable as error:
            self.failed(str(error))
        else:
            self.answered()
