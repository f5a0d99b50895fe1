"""The team server with its fallback: who answers, what the user is told, when the server is back."""

from __future__ import annotations

import threading
import time

from fim_lsp.availability import Availability
from fim_lsp.backend import BackendUnavailable, Generation, GenerationOptions
from fim_lsp.routing import Routed

OPTIONS = GenerationOptions(4, end_id=0)


class Fake:
    """A backend that answers with its name's length in tokens, or fails while `down`."""

    def __init__(self, name: str):
        self.name = name
        self.down = False
        self.calls = 0

    def generate(self, prompt, options, should_stop, cancel) -> Generation:
        self.calls += 1
        if self.down:
            raise BackendUnavailable(f"{self.name} is down")
        return Generation([1] * len(self.name), len(prompt), 0, "length")

    def probe(self) -> None:
        self.generate([0], OPTIONS, lambda ids: False, threading.Event())


def routed(fallback: str = "local") -> tuple[Routed, Fake, Fake, list[tuple[str, str]]]:
    server, local, told = Fake("server"), Fake("local"), []
    availability = Availability(fallback=fallback, first_retry_s=0.05)
    load = None if fallback == "none" else lambda: local
    route = Routed(server, server.probe, availability, load, lambda *said: told.append(said))
    return route, server, local, told


def ask(route: Routed) -> Generation:
    return route.generate([5, 6], OPTIONS, lambda ids: False, threading.Event())


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_server_answers_while_it_is_up():
    route, _, local, told = routed()
    assert len(ask(route).ids) == len("server") and route.name == "team server"
    assert local.calls == 0 and told == []


def test_a_failure_is_answered_locally_told_once_and_the_server_comes_back():
    route, server, local, told = routed()
    server.down = True
    assert len(ask(route).ids) == len("local")  # the same request, answered by the fallback
    assert len(ask(route).ids) == len("local")  # no timeout waited out again
    assert told == [("warning", "server is down. The local model answers until it is back; "
                     "retrying in the background.")]  # fmt: skip
    assert route.name == "local (server down)"
    server.down = False
    time.sleep(0.06)  # the first retry is due
    ask(route)  # a request starts the probe in the background
    wait_until(lambda: route.availability.up)
    assert told[-1] == ("info", "the team server is back: completions come from it again")
    calls = local.calls
    assert len(ask(route).ids) == len("server") and local.calls == calls


def test_fallback_none_answers_nothing_while_the_server_is_down():
    route, server, _, told = routed(fallback="none")
    server.down = True
    generation = ask(route)
    assert generation.ids == [] and generation.stop_reason == "unavailable"
    assert route.name == "off (server down)" and "No completions" in told[0][1]
