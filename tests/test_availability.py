"""The availability policy: fall back at once, tell the user once, probe with backoff, come back."""

from __future__ import annotations

import pytest

from fim_lsp.availability import Availability


def test_up_at_first():
    availability = Availability()
    assert availability.up and availability.status == "team server"
    assert not availability.start_probe(now=1000.0)  # nothing to retry
    assert availability.answered() is None  # nothing to announce


def test_a_failure_falls_back_and_tells_the_user_once():
    availability = Availability(fallback="local")
    message = availability.failed("cannot reach the team server at http://gpu:8000", now=0.0)
    assert message == (
        "cannot reach the team server at http://gpu:8000. The local model answers until it is "
        "back; retrying in the background."
    )
    assert not availability.up and availability.status == "local (server down)"
    assert availability.failed("still down", now=1.0) is None  # a request already in flight
    assert availability.down_because == "still down"


def test_without_a_fallback_the_status_says_completions_are_off():
    availability = Availability(fallback="none")
    message = availability.failed("the team server refused the API key", now=0.0)
    assert message is not None and "No completions until it is back" in message
    assert availability.status == "off (server down)"


def test_probes_back_off_from_the_first_retry_to_the_longest():
    availability = Availability(first_retry_s=2.0, max_retry_s=10.0)
    availability.failed("down", now=0.0)
    due = []
    for _ in range(5):
        now = availability.next_probe_at
        assert not availability.start_probe(now - 0.01)  # not yet
        assert availability.start_probe(now)
        assert not availability.start_probe(now)  # one probe at a time
        availability.failed("probe failed", now)
        due.append(availability.next_probe_at - now)
    assert due == [4.0, 8.0, 10.0, 10.0, 10.0]


def test_the_server_comes_back_and_is_used_again():
    availability = Availability()
    availability.failed("down", now=0.0)
    assert availability.start_probe(now=2.0)
    assert availability.answered() == "the team server is back: completions come from it again"
    assert availability.up and availability.status == "team server"
    assert availability.answered() is None  # said once


def test_a_new_outage_is_told_again_and_backs_off_from_the_start():
    availability = Availability(first_retry_s=2.0)
    availability.failed("down", now=0.0)
    availability.failed("down", now=2.0)
    availability.answered()
    assert availability.failed("down again", now=100.0) is not None
    assert availability.next_probe_at == pytest.approx(102.0)
