"""A real vLLM server for the team backend's tests: started once with a tiny random GPT-NeoX,
stopped by its process group's id. Skips when .ci/install-vllm has not installed vLLM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fim_lsp.serve_vllm import vllm_command, vllm_environment
from tests import tiny_model
from tests.conftest import needs_shared

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("FIM_LSP_VLLM_VENV") or ROOT / ".cache" / "vllm-venv")
# vLLM's CPU attention takes head_dim 128 only (the real model's): 256 wide with 2 heads.
SIZE = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=2, intermediate_size=1024)
API_KEY = "team-test-key"
SERVED_NAME = "tiny-fim"
# Offline; 1 GiB of KV cache; no pinning of threads to cores that other processes share.
CPU_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "0",
}
START_TIMEOUT_S = 600  # about 90-150 s on a 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class VllmServer:
    """vLLM's OpenAI-compatible server in its own process group (API server, engine, worker)."""

    def __init__(self, model: Path, log: Path):
        self.model = model
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = vllm_command(
            str(self.model), "127.0.0.1", self.port, dtype="float32",
            python=str(VENV / "bin" / "python"), extra=["--served-model-name", SERVED_NAME],
        )  # fmt: skip
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command,
                env=vllm_environment(API_KEY) | CPU_ENVIRONMENT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, whose id is its PID
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log.read_text()[-3000:]
                pytest.fail(f"vLLM did not start (log {self.log}):\n{tail}")
            time.sleep(2)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, number)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """Gone at once, as a crashed or unplugged server is."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait()

    def metric(self, name: str) -> float:
        """A Prometheus metric from /metrics, summed over its labels."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((f"{name}{{", f"{name} "))
        )


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_shared()
    if not (VENV / "bin" / "python").is_file():
        pytest.skip(f"needs vLLM in {VENV}: run .ci/install-vllm (about 4 min, 3.5 GB)")
    return tiny_model.build(tmp_path_factory.mktemp("vllm-tiny-fim"), SIZE)


@pytest.fixture(scope="session")
def vllm(vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(vllm_model_dir, tmp_path_factory.mktemp("vllm") / "vllm.log")
    server.start()
    yield server
    server.stop()
