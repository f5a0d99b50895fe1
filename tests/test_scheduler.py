"""The one worker: the latest request wins, superseded ones are answered at once, cancels stop work."""

from __future__ import annotations

import asyncio
import threading
import time

from fim_lsp.scheduler import Scheduler


def slow_job(started: threading.Event, seen: list[str], name: str, stop_delay: float = 0.0):
    def work(cancel: threading.Event) -> str:
        started.set()
        while not cancel.wait(0.01):
            pass
        time.sleep(stop_delay)  # a forward pass that finishes before the flag is seen
        seen.append(name)
        return f"{name} stopped"

    return work


async def wait_for(event: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait)


async def test_a_newer_request_stops_the_running_one_which_is_answered_at_once():
    scheduler = Scheduler()
    started, seen = threading.Event(), []
    older = asyncio.ensure_future(scheduler.run(slow_job(started, seen, "older", stop_delay=0.5)))
    await wait_for(started)
    newer = asyncio.ensure_future(scheduler.run(lambda cancel: "newer done"))
    began = time.perf_counter()
    assert await older is None  # answered before the worker is free again
    assert time.perf_counter() - began < 0.3
    assert await newer == "newer done" and seen == ["older"]


async def test_the_newest_request_wins_across_documents():
    scheduler = Scheduler()
    started, ran = threading.Event(), []
    blocker = asyncio.ensure_future(scheduler.run(slow_job(started, [], "blocker")))
    await wait_for(started)
    queued = [
        asyncio.ensure_future(scheduler.run(lambda cancel, n=n: ran.append(n) or n))
        for n in range(20)
    ]
    results = await asyncio.gather(blocker, *queued)
    assert ran == [19] and results == [None] * 20 + [19]


async def test_debounce_lets_only_the_last_of_a_burst_run():
    scheduler = Scheduler()
    ran: list[int] = []
    results = await asyncio.gather(
        *(scheduler.run(lambda cancel, n=n: ran.append(n) or n, debounce_s=0.05) for n in range(5))
    )
    assert ran == [4] and results == [None, None, None, None, 4]


async def test_cancelling_the_request_sets_the_flag_the_engine_checks():
    scheduler = Scheduler()
    started, seen = threading.Event(), []
    task = asyncio.ensure_future(scheduler.run(slow_job(started, seen, "job")))
    await wait_for(started)
    task.cancel()
    await asyncio.sleep(0.2)
    assert task.cancelled() and seen == ["job"]
    assert scheduler.current is None


async def test_an_error_reaches_the_request_that_is_still_wanted():
    scheduler = Scheduler()

    def broken(cancel: threading.Event) -> None:
        raise RuntimeError("broken model")

    try:
        await scheduler.run(broken)
    except RuntimeError as error:
        assert "broken model" in str(error)
    else:
        raise AssertionError("the error was lost")


async def test_background_work_runs_when_idle_and_stops_for_a_request():
    scheduler = Scheduler()
    started, stopped = threading.Event(), threading.Event()

    def warm(cancel: threading.Event) -> None:
        started.set()
        cancel.wait(5)
        stopped.set()

    scheduler.background(warm)
    await wait_for(started)
    began = time.perf_counter()
    assert await scheduler.run(lambda cancel: "answer") == "answer"
    assert stopped.is_set() and time.perf_counter() - began < 1
