"""The flow of a request, from an open document to the reply text, and the model's load state.

One request: document -> cursor -> typed-through -> schedule -> (in the worker) gate -> prompt ->
backend -> stop and clean -> reply text. No pygls here: the server's handlers convert LSP
types at the edge and call this, and the user is told things through a `Client`.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fim_lsp import __version__, weight_file
from fim_lsp.documents import Cursor, Document, Place
from fim_lsp.errors import FimLspError
from fim_lsp.logs import configure_logging
from fim_lsp.pipeline import Completer, Completion, Progress
from fim_lsp.scheduler import Scheduler
from fim_lsp.settings import SETTINGS, Settings, merge
from fim_lsp.team import default_cache_salt

log = logging.getLogger(__name__)

Loader = Callable[[Settings, Progress, Callable[[str, str], None]], Completer]
# How long loading waits for a client to agree to show its progress before going on without.
PROGRESS_CREATE_S = 2.0


class Client(Protocol):
    """What the orchestrator tells the user; the server sends it as LSP messages."""

    def show(self, level: str, message: str) -> None:
        """A message the user sees ("error", "warning", "info"), logged too."""

    def log(self, message: str) -> None:
        """A line in the client's log."""

    def status(self, status: dict[str, Any]) -> None:
        """The model's state changed (the `fimLsp/status` notification)."""

    async def begin_progress(self, title: str) -> object | None:
        """A work-done progress report to update, or None when the client shows none."""

    def report_progress(self, token: object, message: str, percentage: int | None) -> None: ...

    def end_progress(self, token: object, message: str) -> None: ...


class FreedMemory:
    """Hands the memory that requests and caches freed back to the system, now and then.

    Freed tensors stay in glibc's heap, which returns little of it on its own: over an hour of
    editing the server's RSS kept growing about 0.5 MB a minute, and malloc_trim gave 17 MB back
    after ten minutes (bench/reports/soak-2026-12-03-rerun.md). A trim takes under 1 ms once the
    heap is tidy (10 ms the first time); glibc only."""

    EVERY_S = 10.0

    def __init__(self) -> None:
        self.trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        self.last = time.monotonic()

    def give_back(self) -> None:
        if self.trim is not None and time.monotonic() - self.last >= self.EVERY_S:
            self.trim(0)
            self.last = time.monotonic()


class ShownSuggestions:
    """The last suggestion answered per document, so that typing it out costs no model run."""

    def __init__(self) -> None:
        self.shown: dict[str, tuple[Cursor, Completion]] = {}

    def remember(self, key: str, cursor: Cursor, completion: Completion) -> None:
        self.shown[key] = (cursor, completion)

    def forget(self, key: str) -> None:
        self.shown.pop(key, None)

    def follow(self, key: str, cursor: Cursor) -> Completion | None:
        """The rest of the shown suggestion when the user has typed its start, else None."""
        if key not in self.shown:
            return None
        shown_at, completion = self.shown[key]
        if cursor.suffix != shown_at.suffix or not cursor.prefix.startswith(shown_at.prefix):
            return None
        typed = cursor.prefix[len(shown_at.prefix) :]
        if not typed or len(typed) >= len(completion.text) or not completion.text.startswith(typed):
            return None
        return dataclasses.replace(
            completion,
            text=completion.text[len(typed) :],
            generated_tokens=0,
            stop_reason="typed-through",
            timings_ms={},
        )


class Orchestrator:
    """Settings, the loaded model and its state, and the flow of every completion request."""

    def __init__(self, settings: Settings, client: Client, load: Loader = Completer.load):
        self.settings = settings
        self.client = client
        self.load_model = load
        self.scheduler = Scheduler()
        self.memory = FreedMemory()
        self.shown = ShownSuggestions()
        self.completer: Completer | None = None
        self.state = "starting"  # starting, loading, ready, error
        self.message = ""
        self.percentage: int | None = None  # of loading
        self.loads = 0  # counts loads, so that only the newest one installs its model
        self.tasks: set[asyncio.Task] = set()
        self.workspace = ""  # the root the client opened (it salts the team server's cache)

    # ---- settings ----------------------------------------------------------------------------

    def configure(self, options: Mapping[str, Any] | None, source: str) -> None:
        """Merge client options over the current settings; reload the model if it changed."""
        settings, warnings = merge(self.settings, options)
        for warning in warnings:
            self.client.show("warning", f"{source}: {warning}")
        if settings.log_file != self.settings.log_file:
            try:
                configure_logging(settings.log_file)
            except OSError as error:
                self.client.show("warning", f"{source}: cannot log to {settings.log_file}: {error}")
                settings = dataclasses.replace(settings, log_file=self.settings.log_file)
        changed = [
            f"{declared.key}={declared.shown(getattr(settings, name))}"
            for name, declared in SETTINGS.items()
            if getattr(settings, name) != getattr(self.settings, name)
        ]
        if changed:  # in the client's log, so that a user can see a change arrive
            self.client.log(f"{source}: {', '.join(changed)}")
        reload = settings.reloads_model(self.settings) and self.state != "starting"
        self.settings = settings
        if reload:
            self.start_loading()

    # ---- loading -----------------------------------------------------------------------------

    def start_loading(self) -> asyncio.Task:
        """Load the model of the current settings in the background; a newer load supersedes."""
        self.loads += 1
        task = asyncio.ensure_future(self.load(self.loads, self.settings))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def load(self, number: int, settings: Settings) -> None:
        if number != self.loads:
            return  # the settings changed again before this one started
        self.completer = None  # frees the old model before the new one loads
        title = f"loading {settings.model}"
        self.set_state("loading", title, 0)
        loop = asyncio.get_running_loop()
        # The model starts loading at once; progress shows once the client has agreed to it,
        # and a client that never answers holds nothing up.
        token: object | None = None

        def report(message: str, percentage: int | None) -> None:
            self.client.log(message)
            self.set_state("loading", message, percentage)
            if token is not None:
                self.client.report_progress(token, message, percentage)

        def progress(message: str, percentage: int | None) -> None:  # from the worker thread
            log.info("%s", message)
            loop.call_soon_threadsafe(report, message, percentage)

        def begun(task: asyncio.Future[object | None]) -> None:
            nonlocal token
            if not task.cancelled() and task.exception() is None:
                token = task.result()
                if token is not None:  # what was reported before the client agreed
                    self.client.report_progress(token, self.message, self.percentage)

        def told(level: str, message: str) -> None:  # the team server came or went
            loop.call_soon_threadsafe(self.backend_changed, level, message)

        def load() -> Completer:
            team = settings.backend != "local"
            if team and settings.cache_salt is None:  # reads a file: in the worker
                salted = dataclasses.replace(
                    settings, cache_salt=default_cache_salt(self.workspace)
                )
                return self.load_model(salted, progress, told)
            return self.load_model(settings, progress, told)

        loading = asyncio.wrap_future(self.scheduler.submit(load))
        asking = asyncio.ensure_future(
            asyncio.wait_for(self.client.begin_progress(title), PROGRESS_CREATE_S)
        )
        asking.add_done_callback(begun)
        try:
            completer = await loading
        except FimLspError as error:
            self.fail(token, str(error))
            return
        except Exception as error:  # an unexpected failure must not take the server down
            log.exception("loading %s failed", settings.model)
            self.fail(token, f"loading {settings.model} failed: {error!r}")
            return
        finally:
            asking.cancel()
            weight_file.early.clear()  # what the load did not take (another model, a team server)
        if number != self.loads:
            return  # the settings changed while it loaded; the newer load takes over
        self.completer = completer
        about = completer.about
        ready = f"{settings.model} ready on {about.get('device')} ({about.get('quantization')})"
        if token is not None:
            self.client.end_progress(token, ready)
        details = "; ".join(f"{name}: {value}" for name, value in about.items())
        self.client.log(f"{ready}; {details}")
        self.set_state("ready", ready)

    def backend_changed(self, level: str, message: str) -> None:
        self.client.show(level, message)
        self.client.status(self.status())

    def fail(self, token: object | None, message: str) -> None:
        if token is not None:
            self.client.end_progress(token, "failed")
        self.client.show("error", f"{message}. Completions are off until this is fixed.")
        self.set_state("error", message)

    def set_state(self, state: str, message: str, percentage: int | None = None) -> None:
        self.state, self.message, self.percentage = state, message, percentage
        self.client.status(self.status() | {"percentage": percentage})

    def status(self) -> dict[str, Any]:
        about = self.completer.about if self.completer else {}
        return {
            "state": self.state,
            "message": self.message,
            "version": __version__,
            "model": self.settings.model,
            "device": about.get("device"),
            "quantization": about.get("quantization"),
            "attention": about.get("attention"),
            "backend": self.completer.backend.name if self.completer else None,
        }

    # ---- completing --------------------------------------------------------------------------

    async def complete(self, key: str, document: Document, place: Place) -> Completion | None:
        """The suggestion at `place` in `document` (opened as `key`), or None: model not ready,
        nothing to suggest, or superseded by a newer request."""
        completer, settings = self.completer, self.settings
        if completer is None:
            return None
        if reason := document.unsuitable():
            log.info("no completion in %s: %s", key, reason)
            return None
        cursor = document.cursor(place)
        completion = self.shown.follow(key, cursor)
        if completion is not None:
            self.scheduler.supersede()  # the user is typing what was shown: no model run
        else:
            try:
                completion = await self.scheduler.run(
                    lambda cancel: completer.complete(cursor, cancel, settings=settings),
                    debounce_s=settings.debounce_ms / 1000,
                    key=key,
                )
            except FimLspError as error:
                self.client.show("error", str(error))
                return None
        if completion is not None:
            self.log_completion(key, completion)
        if completion is None or not completion.text:
            self.shown.forget(key)
            self.while_idle(completer, cursor, None, settings)
            return None
        self.shown.remember(key, cursor, completion)
        self.while_idle(completer, cursor, completion, settings)
        return completion

    def while_idle(
        self, completer: Completer, cursor: Cursor, shown: Completion | None, settings: Settings
    ) -> None:
        """What the worker does until the next request: the suggestion that follows if the user
        accepts the one shown, then, when a short prompt answered, the full prompt's prefill;
        then, now and then, the memory freed since goes back to the system."""
        speculate = (
            shown is not None and shown.stop_reason != "typed-through" and shown.mode is not None
        )
        ids = shown.warm_ids if shown is not None else None
        if speculate and shown is not None and shown.replace_chars:
            self.client.log(
                f"accepting this suggestion replaces {shown.replace_chars} characters right of "
                "the cursor: the prompt changes from its suffix on, so the next request would be "
                "cold; it is computed now, while idle"
            )

        def work(cancel: threading.Event) -> None:
            # The speculation first: small, and the likeliest next request.
            if speculate and shown is not None:
                completer.speculate(cursor, shown, settings, cancel)
            if ids is not None and not cancel.is_set():
                completer.warm(ids, settings, cancel)
            if not cancel.is_set():
                self.memory.give_back()

        self.scheduler.background(work)

    def forget(self, key: str) -> None:
        """The document `key` was closed: a generation for it stops, its request gets nothing."""
        self.scheduler.supersede(key)
        self.shown.forget(key)

    def log_completion(self, key: str, completion: Completion) -> None:
        """One log line per answer, with the numbers benchmarks and bug reports need."""
        stats = {
            "uri": key,
            "prompt_tokens": len(completion.prompt_ids),
            "cached_tokens": completion.cached_tokens,
            "generated_tokens": completion.generated_tokens,
            "drafted_tokens": completion.drafted_tokens,
            "accepted_tokens": completion.accepted_tokens,
            "stop_reason": completion.stop_reason,
            "timings_ms": {name: round(ms, 1) for name, ms in completion.timings_ms.items()},
        }
        if completion.context:
            stats["context"] = completion.context
        self.client.log(f"completion {json.dumps(stats)}")

    def shutdown(self) -> None:
        self.scheduler.shutdown()
