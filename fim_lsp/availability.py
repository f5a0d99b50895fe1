"""Whether the team server or the fallback answers, what the user is told (once), when to retry."""

from __future__ import annotations

from dataclasses import dataclass

SERVER_UP = "team server"
FALLBACK_STATUS = {"local": "local (server down)", "none": "off (server down)"}
FALLBACK_SAYS = {
    "local": "the local model answers until it is back",
    "none": "no completions until it is back (fallback none)",
}


@dataclass
class Availability:
    """The team server's state as requests see it. Pure: the caller passes the time and does
    the talking to the server and the user.

    Up, requests go to the server. A failure takes it down: requests go to the fallback at once
    (no timeout waited out on every keystroke), the user is told once, and background probes
    retry after `first_retry_s`, then twice as long after each failure up to `max_retry_s`.
    A probe or request that succeeds brings it back up.
    """

    fallback: str = "local"  # what answers while it is down: "local" or "none"
    first_retry_s: float = 2.0
    max_retry_s: float = 60.0
    down_because: str | None = None  # why it is down; None while up
    retry_s: float = 0.0  # the wait before the next probe
    next_probe_at: float = 0.0  # seconds on the caller's clock (time.monotonic)
    probing: bool = False  # a probe runs: no second one

    @property
    def up(self) -> bool:
        """Whether requests go to the server."""
        return self.down_because is None

    @property
    def status(self) -> str:
        """Which backend answers, for `fimLsp/status` and the editors' status bars."""
        return SERVER_UP if self.up else FALLBACK_STATUS[self.fallback]

    def failed(self, reason: str, now: float) -> str | None:
        """The server could not answer (a request or a probe: `reason` says why). Returns the
        message for the user on the first failure of an outage, else None."""
        first = self.up
        self.retry_s = self.first_retry_s if first else min(2 * self.retry_s, self.max_retry_s)
        self.down_because = reason
        self.next_probe_at = now + self.retry_s
        self.probing = False
        if not first:
            return None
        return f"{reason}. {FALLBACK_SAYS[self.fallback].capitalize()}; retrying in the background."

    def start_probe(self, now: float) -> bool:
        """Whether to probe the server now; at most one probe runs at a time."""
        if self.up or self.probing or now < self.next_probe_at:
            return False
        self.probing = True
        return True

    def answered(self) -> str | None:
        """The server answered (a request or a probe). Returns the message for the user when
        this ends an outage, else None."""
        was_down = not self.up
        self.down_because = None
        self.probing = False
        return "the team server is back: completions come from it again" if was_down else None
