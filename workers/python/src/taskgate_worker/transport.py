"""What the request runner needs from the broker, as small types: a reply to publish, the
transport that publishes it, and a delivery as it arrived. The AMQP module implements
them on aio-pika; unit tests and :mod:`taskgate_worker.testing` implement them in memory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Protocol

if TYPE_CHECKING:
    from .retry import RetryPolicy


class TransportError(Exception):
    """A reply or an ack did not reach the broker."""


@dataclass(frozen=True)
class Reply:
    """A reply message (protocol §2.3)."""

    reply_to: str
    correlation_id: str
    kind: str
    """``chunk``, ``result`` or ``error``."""
    seq: int | None
    """``x-seq``, on chunks only."""
    body: bytes


class Transport(Protocol):
    """Where replies go. ``publish`` returns once the broker confirmed the reply, and
    raises :class:`TransportError` when it did not (refused, or the channel is gone).
    One channel carries every reply, so RabbitMQ keeps a request's replies in order."""

    async def publish(self, reply: Reply) -> None: ...


@dataclass(frozen=True)
class Identity:
    """Who sent a request, as the host authenticated them (header ``x-identity``,
    protocol §3.9). The host already checked the request type's required roles; workers
    may use it for finer checks (e.g. that a record belongs to ``subject``)."""

    subject: str
    roles: tuple[str, ...] = ()


@dataclass
class Delivery:
    """A request message as delivered (protocol §2.2), nothing trusted yet."""

    correlation_id: str | None
    reply_to: str | None
    request_type: str | None = None
    deadline_ms: int | None = None
    streams: bool = False
    redelivered: bool = False
    traceparent: str | None = None
    identity: Identity | None = None
    body: bytes = b""
    attempt: int = 1
    """Header ``x-attempt`` (§3.12): 1 for the first attempt."""
    retry: RetryPolicy | None = None
    """Header ``x-retry``: the request type's retry policy, if it has one."""


class Settlement(enum.Enum):
    """What the runner tells the broker about a delivery."""

    ACK = "ack"
    """Done with it (answered, or nothing to answer)."""
    REQUEUE = "requeue"
    """Its replies did not all reach the broker: back to the queue for another try."""


Settle = Callable[[Settlement], Awaitable[None]]
"""Acks or requeues one delivery; raises :class:`TransportError` when it cannot (its
channel is gone: the broker has requeued the delivery itself)."""

Retry = Callable[[int, int], Awaitable[None]]
"""Schedules attempt ``n`` of one delivery after ``delay_ms`` (§3.12): republishes it,
confirmed, to the wait queue of that delay; raises :class:`TransportError` when it
could not. The runner acks the delivery afterwards."""
