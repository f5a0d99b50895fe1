"""The team server backend: the prompt's token ids to a vLLM server, generated ids streamed back."""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import json
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from fim_lsp.backend import AtFullLength, BackendUnavailable, Generation, GenerationOptions, take
from fim_lsp.paths import cache_folder

API_KEY_VARIABLE = "FIM_LSP_API_KEY"  # the key from the environment keeps it out of editor settings
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
POLL_S = 0.02  # how often a generation waiting for the server looks at its cancel flag
LONGEST_WAIT_S = 60.0  # httpx's own read timeout: a reader thread left waiting ends by then


@dataclass(frozen=True)
class ServedModel:
    name: str
    max_model_len: int | None  # tokens of prompt plus completion


class TeamBackend(AtFullLength):
    """A vLLM server's OpenAI-compatible completions, fed token ids: no server template or
    tokenizer ever reads user text. One HTTP client, so connections are reused."""

    name = "team server"

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        cache_salt: str | None = None,
        connect_timeout_s: float = 2.0,
        first_token_timeout_s: float = 2.0,  # from sending the request to the first token
        stall_timeout_s: float = 5.0,  # between two tokens
    ):
        self.url = url
        self.cache_salt = cache_salt
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        key = api_key or os.environ.get(API_KEY_VARIABLE)
        # trust_env=False: no proxy or .netrc from the environment; requests go to `url` only.
        self.client = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(LONGEST_WAIT_S, connect=connect_timeout_s),
            trust_env=False,
        )

    def generate(
        self,
        prompt: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
        cancel: threading.Event,
    ) -> Generation:
        """Stream tokens after `prompt`; the stream is closed (and vLLM aborts the request) as
        soon as `should_stop` says so or `cancel` is set. Raises BackendUnavailable."""
        started = time.perf_counter()
        stream = ServerStream(self.client, COMPLETIONS, self.request(prompt, options))
        ids: list[int] = []
        usage: dict[str, Any] = {}
        stop_reason = None
        first_token_at = None
        read_to_end = False
        try:
            while (line := self.next_line(stream, cancel, started, first_token_at)) is not None:
                chunk = self.parse(line, prompt)
                if chunk is None:
                    continue
                usage = chunk.get("usage") or usage
                if stop_reason is not None or not chunk["choices"]:
                    continue  # past the end: only the usage is still read
                choice = chunk["choices"][0]
                first_token_at = first_token_at or time.perf_counter()
                stop_reason = self.take(choice["token_ids"], ids, options, should_stop)
                if stop_reason == "stop":
                    break  # our own stop rule: the server would go on
                if stop_reason is None and choice.get("finish_reason"):
                    stop_reason = self.finish(choice["finish_reason"])
            else:
                read_to_end = True
        except Cancelled:
            stop_reason = "cancelled"
        finally:
            # A stream read to its end leaves its connection to the pool; any other is closed
            # now, and vLLM aborts a request whose client is gone.
            if not read_to_end:
                stream.abandon()
        if stop_reason is None:
            raise garbage(self.url, "a stream that ended before the completion did")
        finished = time.perf_counter()
        first = first_token_at or finished
        details = usage.get("prompt_tokens_details") or {}
        return Generation(
            ids,
            prompt_tokens=len(prompt),
            # Only a stream's last chunk says how much of the prompt came from the server's
            # cache (with --enable-prompt-tokens-details): a stream closed early reports 0.
            cached_tokens=int(details.get("cached_tokens") or 0),
            stop_reason=stop_reason,
            timings_ms={
                "prefill": (first - started) * 1000,  # request sent to first token
                "decode": (finished - first) * 1000,
                "total": (finished - started) * 1000,
            },
        )

    def next_line(
        self,
        stream: ServerStream,
        cancel: threading.Event,
        started: float,
        first_token_at: float | None,
    ) -> str | None:
        """The stream's next line within the first-token or the stall budget."""
        if first_token_at is None:
            budget, deadline, waiting = self.first_token_timeout_s, started, "first token"
        else:
            budget, deadline, waiting = self.stall_timeout_s, time.perf_counter(), "next token"
        try:
            return stream.next_line(cancel, deadline + budget)
        except TimeoutError:
            raise BackendUnavailable(
                f"no {waiting} from the team server at {self.url} within {budget:g} s: "
                "it is overloaded or too slow"
            ) from None
        except httpx.HTTPError as error:
            raise unreachable(self.url, error) from error

    def finish(self, finish_reason: str) -> str:
        """The stop reason for vLLM's finish_reason."""
        if finish_reason in ("stop", "length"):
            return {"stop": "end", "length": "length"}[finish_reason]
        raise BackendUnavailable(f"the team server at {self.url} ended early ({finish_reason})")

    def request(self, prompt: list[int], options: GenerationOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,  # token ids: the server's tokenizer never runs on user text
            "max_tokens": options.max_new_tokens,
            "temperature": options.temperature,
            "stop_token_ids": [options.end_id],
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,  # the ids back, not only text (tested: vLLM 0.32.0)
        }
        if options.seed is not None:
            body["seed"] = options.seed
        if self.cache_salt:
            body["cache_salt"] = self.cache_salt
        return body

    def parse(self, line: str, prompt: list[int]) -> dict[str, Any] | None:
        """One server-sent event line as a completion chunk; None for one without data."""
        if not line or line.startswith(":") or line == "data: [DONE]":
            return None
        if not line.startswith("data:"):
            raise garbage(self.url, f"a line that is not server-sent data: {line[:80]!r}")
        try:
            chunk = json.loads(line.removeprefix("data:"))
        except json.JSONDecodeError:
            raise garbage(self.url, f"data that is not JSON: {line[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise garbage(self.url, f"data that is not a JSON object: {line[:80]!r}")
        if "error" in chunk:
            raise BackendUnavailable(
                f"the team server at {self.url} failed: {error_message(chunk)}"
            )
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise garbage(self.url, f"a chunk without choices: {line[:80]!r}")
        for choice in choices:
            echoed = choice.get("prompt_token_ids")
            if echoed is not None and echoed != prompt:
                raise garbage(self.url, "a prompt other than the token ids sent")
            new_ids = choice.get("token_ids")
            if not isinstance(new_ids, list) or not all(type(i) is int for i in new_ids):
                raise garbage(
                    self.url, "no token ids (return_token_ids needs a recent vLLM; tested: 0.32.0)"
                )
        return chunk

    @staticmethod
    def take(
        new_ids: list[int],
        ids: list[int],
        options: GenerationOptions,
        should_stop: Callable[[list[int]], bool],
    ) -> str | None:
        """Append streamed ids to `ids` with the local engine's stop rules; the stop reason."""
        for token in new_ids:
            if (reason := take(token, ids, options, should_stop)) is not None:
                return reason
        return None

    def served_models(self) -> list[ServedModel]:
        """What the server serves (GET /v1/models). Raises BackendUnavailable."""
        try:
            response = self.client.get(MODELS)
        except httpx.HTTPError as error:
            raise unreachable(self.url, error) from error
        if response.status_code != 200:
            raise refusal(self.url, MODELS, response.status_code, response.text)
        try:
            listed = response.json()["data"]
            return [ServedModel(str(m["id"]), m.get("max_model_len")) for m in listed]
        except (ValueError, KeyError, TypeError):
            raise garbage(self.url, f"{MODELS} answered {response.text[:80]!r}") from None

    def probe(self) -> float:
        """One token for a one-token prompt, as completions go (key, token ids, first-token
        timeout): the round trip in ms. Raises BackendUnavailable."""
        started = time.perf_counter()
        self.generate([0], GenerationOptions(1, end_id=0), lambda ids: False, threading.Event())
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.client.close()


class Cancelled(Exception):
    """The generation's cancel flag was set while it waited for the server."""


class ServerStream:
    """A streamed POST read line by line in its own thread, so that the worker waiting for it
    can give up at once (cancel, a stop rule, a timeout) even while a read is blocked."""

    def __init__(self, client: httpx.Client, path: str, body: dict[str, Any]):
        self.lines: queue.Queue[str | BaseException | None] = queue.Queue()
        self.lock = threading.Lock()
        self.abandoned = False
        self.socket: socket.socket | None = None
        self.reader = threading.Thread(
            target=self.read, args=(client, path, body), name="fim-lsp-team-stream", daemon=True
        )
        self.reader.start()

    def read(self, client: httpx.Client, path: str, body: dict[str, Any]) -> None:
        try:
            with client.stream("POST", path, json=body) as response:
                with self.lock:
                    if self.abandoned:
                        return
                    stream = response.extensions.get("network_stream")
                    self.socket = stream.get_extra_info("socket") if stream else None
                if response.status_code != 200:
                    response.read()
                    raise refusal(str(client.base_url), path, response.status_code, response.text)
                for line in response.iter_lines():
                    self.lines.put(line)
            self.lines.put(None)
        except Exception as error:  # handed to the worker, which says what it means
            if not self.abandoned:
                self.lines.put(error)

    def next_line(self, cancel: threading.Event, deadline: float) -> str | None:
        """The next line of the body, None at its end. Raises Cancelled, TimeoutError past
        `deadline` (perf_counter seconds), or the reader's error."""
        while True:
            if cancel.is_set():
                raise Cancelled
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            try:
                item = self.lines.get(timeout=min(left, POLL_S))
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    def abandon(self) -> None:
        """Close the connection now: shutting the socket down wakes a blocked read and tells
        the server. Before the response's headers, the reader closes it when they come."""
        with self.lock:
            self.abandoned = True
            if self.socket is not None:
                with contextlib.suppress(OSError):  # already closed
                    self.socket.shutdown(socket.SHUT_RDWR)


def default_cache_salt(workspace: str) -> str:
    """The server-side cache's salt for this user and workspace: a hash of both and of a random
    secret kept in this user's fim-lsp cache folder, so that nobody who knows the two can probe
    the user's cached prefixes by their timing (vLLM asks for a random, private salt)."""
    text = "\0".join((user_name(), workspace, salt_secret()))
    return hashlib.sha256(text.encode()).hexdigest()


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a user id without a name (containers); the secret stays
        return ""


@functools.cache
def salt_secret() -> str:
    """256 random bits made once per user; where the folder is not writable, once per process."""
    path = cache_folder() / "team-cache-salt"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError:
        return secrets.token_hex(32)
    secret = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secret)
    except FileExistsError:  # another fim-lsp wrote it first
        return path.read_text().strip()
    except OSError:
        pass
    return secret


def unreachable(url: str, error: httpx.HTTPError) -> BackendUnavailable:
    if isinstance(error, httpx.TimeoutException):
        what = f"no answer from the team server at {url} in time ({type(error).__name__})"
    elif isinstance(error, httpx.ConnectError):
        what = f"cannot reach the team server at {url} ({error})"
    else:
        what = f"the connection to the team server at {url} broke ({error or type(error).__name__})"
    return BackendUnavailable(
        f"{what}: is it running? Check the backend setting, or run `fim-lsp doctor --backend {url}`"
    )


def refusal(url: str, path: str, status: int, body: str) -> BackendUnavailable:
    detail = error_message(body)
    if status in (401, 403):
        return BackendUnavailable(
            f"the team server at {url} refused the API key (HTTP {status}): set apiKey or "
            f"{API_KEY_VARIABLE} to the key the server was started with (--api-key)"
        )
    if status == 404:
        return BackendUnavailable(
            f"{url} has no {path} (HTTP 404): the backend setting should be a vLLM server's "
            "address, like http://gpu-box:8000"
        )
    if status == 400:
        return BackendUnavailable(
            f"the team server at {url} refused the request: {detail} "
            f"(`fim-lsp doctor --backend {url}` shows its max length)"
        )
    return BackendUnavailable(f"the team server at {url} failed (HTTP {status}): {detail}")


def garbage(url: str, what: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"the team server at {url} sent {what}: is the backend setting a vLLM server's address?"
    )


def error_message(body: Any) -> str:
    """The message in an OpenAI-style error (`{"error": {"message": ...}}`), else the body's start."""
    try:
        parsed = json.loads(body) if isinstance(body, str) else body
        error = parsed["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return str(body)[:200] or "no details"
