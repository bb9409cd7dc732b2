"""Running a handler without RabbitMQ, for unit tests of handlers (and of this SDK).

The request goes through the same runner as in production (payload parsing, failures,
cancellation, reply order); only the replies land in memory::

    from taskgate_worker.testing import run_request

    async def test_twice() -> None:
        replies = await run_request(twice, 21)
        assert replies.chunks == [{"half": 21}]
        assert replies.result == 42
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import TaskError
from .handlers import Handler
from .retry import RetryPolicy
from .runner import DEFAULT_CANCEL_GRACE, Outcome, Runner
from .transport import Delivery, Identity, Reply, Settlement, TransportError


class MemoryTransport:
    """Keeps every reply published, in order. ``fail_after`` makes the publishes after
    the first n fail (as a broken channel would); ``gate`` (when set) holds each publish
    until the test opens it."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.replies: list[Reply] = []
        self.fail_after = fail_after
        self.gate: asyncio.Event | None = None

    async def publish(self, reply: Reply) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_after is not None and len(self.replies) >= self.fail_after:
            raise TransportError("the channel is closed (in-memory transport)")
        self.replies.append(reply)

    def for_request(self, correlation_id: str) -> list[Reply]:
        return [r for r in self.replies if r.correlation_id == correlation_id]


class MemorySettle:
    """Records how a delivery was settled; ``fail`` makes settling raise, as on a closed
    channel."""

    def __init__(self, fail: bool = False) -> None:
        self.settlements: list[Settlement] = []
        self.fail = fail

    async def __call__(self, settlement: Settlement) -> None:
        if self.fail:
            raise TransportError("the channel is closed (in-memory settle)")
        self.settlements.append(settlement)


class MemoryRetry:
    """Records the attempts a runner scheduled, ``(attempt, delay_ms)``; ``fail`` makes
    scheduling raise, as a broken channel would."""

    def __init__(self, fail: bool = False) -> None:
        self.scheduled: list[tuple[int, int]] = []
        self.fail = fail

    async def __call__(self, attempt: int, delay_ms: int) -> None:
        if self.fail:
            raise TransportError("the channel is closed (in-memory retry)")
        self.scheduled.append((attempt, delay_ms))


@dataclass
class Replies:
    """What a handler replied to one request."""

    chunks: list[Any]
    """The chunks' data, in ``x-seq`` order."""
    result: Any = None
    """The ``result`` reply's data (``None`` when the request ended in an error)."""
    error: TaskError | None = None
    """The ``error`` reply (``code`` defaults to ``WORKER_ERROR``), if any."""
    outcome: Outcome | None = None
    settlements: list[Settlement] = field(default_factory=list)
    retries: list[tuple[int, int]] = field(default_factory=list)
    """The next attempt scheduled, ``(attempt, delay_ms)``, when the handler failed
    retryably under ``retry`` (then there is no reply)."""
    raw: list[Reply] = field(default_factory=list)


def collect(replies: list[Reply]) -> Replies:
    """The replies of one request, checked for the protocol's order (chunks with ``x-seq``
    0, 1, 2 …, then exactly one final reply, last)."""
    chunks: list[Any] = []
    out = Replies(chunks=chunks, raw=list(replies))
    finals = [r for r in replies if r.kind != protocol.CHUNK]
    if len(finals) != 1 or replies[-1] is not finals[0]:
        raise AssertionError(f"expected chunks then one final reply, got {[r.kind for r in replies]}")
    for index, reply in enumerate(replies[:-1]):
        if reply.seq != index:
            raise AssertionError(f"chunk {index} has x-seq {reply.seq}")
        chunks.append(json.loads(reply.body))
    final = finals[0]
    if final.kind == protocol.RESULT:
        out.result = json.loads(final.body)
    else:
        body = json.loads(final.body)
        out.error = TaskError(body.get("code") or protocol.WORKER_ERROR, body["message"], body.get("details"))
    return out


async def run_request(
    handler: Handler,
    payload: Any = None,
    *,
    body: bytes | None = None,
    request_type: str = "test",
    redelivered: bool = False,
    deadline_ms: int | None = None,
    cancel_after: float | None = None,
    cancel_grace: float = DEFAULT_CANCEL_GRACE,
    traceparent: str | None = None,
    identity: Identity | None = None,
    attempt: int = 1,
    retry: RetryPolicy | None = None,
) -> Replies:
    """Runs ``handler`` on one request with ``payload`` (or the exact ``body`` bytes) and
    returns its replies. ``cancel_after`` seconds cancels it, as the host would; the
    default deadline is 30 s from now. ``retry`` is the request type's retry policy and
    ``attempt`` which attempt this is: a retryable failure then schedules the next one
    (``Replies.retries``) instead of replying."""
    transport = MemoryTransport()
    runner = Runner(transport, cancel_grace=cancel_grace)
    correlation_id = str(uuid.uuid4())
    delivery = Delivery(
        correlation_id=correlation_id,
        reply_to="taskgate.reply.test",
        request_type=request_type,
        deadline_ms=deadline_ms if deadline_ms is not None else int(time.time() * 1000) + 30_000,
        streams=True,
        redelivered=redelivered,
        traceparent=traceparent,
        identity=identity,
        body=body if body is not None else json.dumps(payload).encode("utf-8"),
        attempt=attempt,
        retry=retry,
    )
    settle = MemorySettle()
    scheduler = MemoryRetry()
    canceller: asyncio.TimerHandle | None = None
    if cancel_after is not None:
        canceller = asyncio.get_running_loop().call_later(
            cancel_after, runner.cancellations.cancel, correlation_id
        )
    try:
        outcome = await runner.process(delivery, handler, settle, scheduler)
    finally:
        if canceller is not None:
            canceller.cancel()
    replies = collect(transport.replies) if transport.replies else Replies(chunks=[])
    replies.outcome = outcome
    replies.settlements = settle.settlements
    replies.retries = scheduler.scheduled
    return replies
