"""`fim-lsp serve --tcp`: one client at a time, and loopback hosts unless --allow-remote."""

from __future__ import annotations

import socket
import subprocess
import time

from tests.reliability.wire import SERVER, Connection, counter, initialize, notification


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def connect(port: int, timeout: float = 120) -> socket.socket:
    """A connection once the server listens (it starts in a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_second_client_is_refused_and_the_first_keeps_its_session(tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([*SERVER, "--tcp", f"127.0.0.1:{port}"], stderr=stderr)
    try:
        first = connect(port)
        client = Connection(first, first.sendall)
        ids = counter(1)
        assert "result" in client.call(0, "initialize", initialize()["params"])

        second = socket.create_connection(("127.0.0.1", port), timeout=30)
        refused = Connection(second, second.sendall)
        assert refused.ended.wait(30), "the second client stays connected"
        (told,) = refused.notifications
        assert "one client at a time" in told["params"]["message"]
        assert not refused.answers

        assert client.call(next(ids), "fimLsp/status")["result"]["state"] == "starting"
        assert client.call(next(ids), "shutdown")["result"] is None
        client.send(notification("exit"))
        assert process.wait(timeout=30) == 0
        assert "refused a second client" in log.read_text()
    finally:
        process.kill()


def test_a_host_other_machines_reach_is_refused_without_allow_remote():
    port = free_port()
    done = subprocess.run(
        [*SERVER, "--tcp", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "reachable from other machines" in done.stderr and "--allow-remote" in done.stderr
    assert "Traceback" not in done.stderr
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listened
