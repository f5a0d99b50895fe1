"""The one worker: latest request per document wins, cancelled work stops, every call returns."""

from __future__ import annotations

import asyncio
import threading

from fim_lsp.scheduler import Scheduler


def slow_job(started: threading.Event, seen: list[str], name: str):
    def work(cancel: threading.Event) -> str:
        started.set()
        while not cancel.wait(0.01):
            pass
        seen.append(name)
        return f"{name} stopped"

    return work


async def test_a_newer_request_for_the_document_cancels_the_older():
    scheduler = Scheduler()
    started, seen = threading.Event(), []
    older = asyncio.ensure_future(scheduler.run("doc", slow_job(started, seen, "older")))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    newer = await scheduler.run("doc", lambda cancel: "newer done")
    assert await older == "older stopped"  # answered, with what it had
    assert newer == "newer done" and seen == ["older"]


async def test_a_queued_request_that_was_superseded_does_not_run():
    scheduler = Scheduler()
    started, ran = threading.Event(), []
    blocker = asyncio.ensure_future(scheduler.run("other", slow_job(started, [], "blocker")))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    first = asyncio.ensure_future(scheduler.run("doc", lambda cancel: ran.append("first")))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(scheduler.run("doc", lambda cancel: ran.append("second")))
    await asyncio.sleep(0.05)
    scheduler.latest["other"].set()
    await asyncio.gather(blocker, first, second)
    assert ran == ["second"]
    assert await first is None


async def test_debounce_lets_only_the_last_of_a_burst_run():
    scheduler = Scheduler()
    ran: list[int] = []
    results = await asyncio.gather(
        *(
            scheduler.run("doc", lambda cancel, n=n: ran.append(n) or n, debounce_s=0.05)
            for n in range(5)
        )
    )
    assert ran == [4] and results == [None, None, None, None, 4]


async def test_cancelling_the_request_sets_the_flag_the_engine_checks():
    scheduler = Scheduler()
    started, seen = threading.Event(), []
    task = asyncio.ensure_future(scheduler.run("doc", slow_job(started, seen, "job")))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    task.cancel()
    await asyncio.sleep(0.2)
    assert task.cancelled() and seen == ["job"]
    assert "doc" not in scheduler.latest
