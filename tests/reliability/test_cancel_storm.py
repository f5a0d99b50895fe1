"""A storm of typing, requests and cancels over 20 documents: nothing queues behind stale work.

The measure is relative, so that it holds on a loaded machine: the storm's latencies against the
time of single requests (each one alone with the server), measured right after the storm in the
same run. Single requests run with an empty KV cache: the storm leaves the caches in a state no
lone request can repeat (most of its jobs stop before their prefill), so a cold request is the
fair measure of what one request costs.
"""

from __future__ import annotations

import random
import statistics
import time

from tests.reliability.editing import Document, Editor, completion_logs, p99, stdlib_files
from tests.reliability.wire import StdioServer, counter, initialize, notification, request

SEED = 20
DOCUMENTS = 20
REQUESTS = 1000
CANCEL_SHARE = 0.44  # of requests, cancelled as the next key is typed, as VS Code does
SINGLES = 6  # single requests in random documents, after the storm
# Gaps between keys, in seconds: from none to past the debounce (30 ms), so that some jobs
# start in the worker and are stopped there.
LONGEST_GAP_S = 0.04


def ask_alone(editor: Editor, msg_id: int, document: Document) -> float:
    """The latency (ms) of a request at the cursor that has the server to itself."""
    editor.request(msg_id, document)
    assert "result" in editor.server.answer(msg_id, timeout=60)
    return editor.latency_ms(msg_id)


def test_a_cancel_storm_is_answered_in_full_and_its_tail_is_that_of_one_request(tmp_path):
    rng = random.Random(SEED)
    with StdioServer(tmp_path / "server.log") as server:
        ids = counter(1)
        server.send(initialize("init"), notification("initialized", {}))
        server.answer("init")
        server.wait_ready(ids)
        editor = Editor(server, rng)
        documents = [editor.open(path) for path in stdlib_files(DOCUMENTS, rng)]

        storm_started = time.monotonic()
        storm_ids: list[int] = []
        for _ in range(REQUESTS):
            if storm_ids and rng.random() < CANCEL_SHARE:
                editor.cancel(storm_ids[-1])
            document = rng.choice(documents)
            editor.type_key(document)
            storm_ids.append(next(ids))
            editor.request(storm_ids[-1], document)
            time.sleep(rng.uniform(0, LONGEST_GAP_S))
        assert editor.wait_for_answers(timeout=60), f"{editor.waiting()} requests unanswered"
        storm_s = time.monotonic() - storm_started
        storm = editor.fates(storm_ids)
        last_ms = editor.latency_ms(storm_ids[-1])
        last_run_ms = completion_logs(server)[-1]["timings_ms"].get("total", 0.0)

        editor.configure(cacheReuse=False)  # every request from here on starts cold
        last_alone_ms = statistics.median(ask_alone(editor, next(ids), document) for _ in range(3))
        singles = []
        for document in rng.sample(documents, SINGLES):
            editor.type_key(document)
            singles.append(ask_alone(editor, next(ids), document))

        server.send(request("bye", "shutdown"), notification("exit"))
        assert server.exit_code() == 0

    single_ms, storm_ms = statistics.median(singles), storm.all_latencies_ms
    print(
        f"\ncancel storm: {REQUESTS} requests over {DOCUMENTS} documents in {storm_s:.0f} s, "
        f"{len(editor.cancelled)} cancels sent; {dict(storm.counts)}\n"
        f"single request: median {single_ms:.0f} ms (slowest {max(singles):.0f} ms)\n"
        f"storm: p50 {statistics.median(storm_ms):.0f} ms, p99 {p99(storm_ms):.0f} ms, "
        f"max {max(storm_ms):.0f} ms ({p99(storm_ms) / single_ms:.2f}x a single request)\n"
        f"last answer: {last_ms:.0f} ms, of which its own pipeline run {last_run_ms:.0f} ms; "
        f"the same request alone {last_alone_ms:.0f} ms ({last_ms / last_alone_ms:.2f}x)"
    )
    assert sum(storm.counts.values()) == REQUESTS
    assert set(storm.counts) <= {"suggestion", "empty", "cancelled"}, storm.counts
    assert p99(storm_ms) < 2 * single_ms
    assert last_ms < 2 * last_alone_ms
    assert "Traceback" not in (tmp_path / "server.log").read_text()
