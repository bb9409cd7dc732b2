"""Retries with backoff (protocol §3.12), without AMQP: the request type's policy as the
host sends it (header ``x-retry``), whether a failed attempt is retried, and after how
long. :mod:`taskgate_worker.amqp` does the waiting: it republishes the request to a wait
queue whose TTL dead-letters it back to the request queue, so no worker slot is held.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .errors import TaskError

NEVER_RETRIED = frozenset({protocol.CANCELLED, protocol.INVALID_PAYLOAD})
"""Codes no policy retries: a cancelled request is over, and a payload stays invalid."""

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a request gets and how long to wait between them."""

    attempts: int
    """Attempts in all, the first one included."""
    delay_ms: int
    """The delay before the first retry."""
    backoff: str = "fixed"
    """``fixed``: every delay is ``delay_ms``; ``exponential``: it doubles each time."""
    max_delay_ms: int | None = None
    jitter: bool = False
    """Wait a random 50 % to 100 % of each delay."""
    retry_on: frozenset[str] = frozenset()
    """Codes retried even when the handler did not mark the error retryable."""

    @classmethod
    def parse(cls, value: Any) -> RetryPolicy | None:
        """The ``x-retry`` header's JSON (str or bytes); ``None`` when absent or not a
        valid policy (a worker then does not retry)."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            return None
        try:
            raw = json.loads(value)
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        attempts, delay = raw.get("attempts"), raw.get("delayMs")
        backoff, cap = raw.get("backoff", "fixed"), raw.get("maxDelayMs")
        jitter, retry_on = raw.get("jitter", False), raw.get("retryOn", [])
        if not (isinstance(attempts, int) and _int(attempts) and 1 <= attempts <= 100):
            return None
        if not (isinstance(delay, int) and _int(delay) and 1 <= delay <= DAY_MS):
            return None
        if backoff not in ("fixed", "exponential") or not isinstance(jitter, bool):
            return None
        if cap is not None and not (isinstance(cap, int) and _int(cap) and delay <= cap <= DAY_MS):
            return None
        if not isinstance(retry_on, list) or not all(isinstance(c, str) for c in retry_on):
            return None
        return cls(attempts, delay, backoff, cap, jitter, frozenset(retry_on))

    def delay_after(self, attempt: int, rand: Callable[[], float] = random.random) -> int:
        """Milliseconds to wait after failed attempt ``attempt`` (1, 2 …). With jitter, a
        random 50–100 % of the delay, in steps of a tenth of it (so that a few wait
        queues serve every delay)."""
        delay = self.delay_ms
        if self.backoff == "exponential":
            delay = self.delay_ms * 2 ** min(attempt - 1, 40)
        if self.max_delay_ms is not None:
            delay = min(delay, self.max_delay_ms)
        delay = min(delay, DAY_MS)
        if self.jitter:
            step = max(1, delay // 10)
            jittered = delay // 2 + int(rand() * (delay - delay // 2 + 1))
            delay = max(1, min(delay, jittered - jittered % step))
        return delay

    def retryable(self, error: TaskError) -> bool:
        if error.code in NEVER_RETRIED:
            return False
        return error.retryable or error.code in self.retry_on


def next_attempt(
    policy: RetryPolicy | None,
    attempt: int,
    error: TaskError,
    *,
    chunks_sent: bool,
    cancelled: bool,
    deadline_ms: int | None,
    now_ms: int,
    rand: Callable[[], float] = random.random,
) -> tuple[int, int] | None:
    """The next attempt and the delay before it, or ``None`` when ``error`` is final: no
    policy, not retryable, attempts used up, chunks already streamed (a client never sees
    a chunk sequence start over), cancelled, or the next attempt would start after the
    deadline (the client gets this error)."""
    if policy is None or cancelled or chunks_sent or attempt >= policy.attempts:
        return None
    if not policy.retryable(error):
        return None
    delay = policy.delay_after(attempt, rand)
    if deadline_ms is not None and now_ms + delay >= deadline_ms:
        return None
    return attempt + 1, delay


def wait_queue(queue: str, delay_ms: int) -> str:
    """The queue a request waits in for ``delay_ms`` before going back to ``queue``."""
    return f"{queue}.retry.{delay_ms}"


def wait_queue_arguments(queue: str, delay_ms: int) -> dict[str, Any]:
    """A wait queue holds each request ``delay_ms``, then dead-letters it back to ``queue``
    (through the default exchange); unused for a minute past that, it is deleted."""
    return {
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-expires": delay_ms + 60_000,
    }


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
