"""What a handler sees of its request: metadata, a way to stream chunks, cancellation.

The context also owns the request's reply sequence: chunks and the final reply go out
under one lock, each confirmed by the broker before the next is published, so ``x-seq``
follows publish order even when a handler sends chunks from several tasks, every chunk
is confirmed before the final reply, and nothing is published after the final reply.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

from . import protocol
from .errors import TaskError
from .jsonio import encode
from .logs import RequestLog
from .transport import Identity, Reply, Transport, TransportError


class Context:
    """One request's context, given to its handler."""

    def __init__(
        self,
        *,
        request_type: str,
        correlation_id: str,
        reply_to: str,
        transport: Transport,
        cancel: asyncio.Event,
        deadline_ms: int | None = None,
        streams: bool = False,
        redelivered: bool = False,
        traceparent: str | None = None,
        identity: Identity | None = None,
        attempt: int = 1,
    ) -> None:
        self._attempt = attempt
        self._request_type = request_type
        self._correlation_id = correlation_id
        self._reply_to = reply_to
        self._transport = transport
        self._cancel = cancel
        self._deadline_ms = deadline_ms
        self._streams = streams
        self._redelivered = redelivered
        self._traceparent = traceparent
        self._identity = identity
        self._log = RequestLog(correlation_id, traceparent)
        self._lock = asyncio.Lock()
        self._next_seq = 0
        self._finished = False
        self._failed: TransportError | None = None

    @property
    def request_type(self) -> str:
        """The request type (the message's ``type`` property), e.g. ``text.wordcount``;
        empty if the message had none."""
        return self._request_type

    @property
    def correlation_id(self) -> str:
        """The host's correlation id of this request (not the client's id)."""
        return self._correlation_id

    @property
    def deadline_ms(self) -> int | None:
        """The deadline as Unix milliseconds (header ``x-deadline-ms``), if the host set one."""
        return self._deadline_ms

    @property
    def deadline(self) -> datetime | None:
        """The deadline as an aware UTC datetime, if the host set one."""
        if self._deadline_ms is None:
            return None
        return datetime.fromtimestamp(self._deadline_ms / 1000, tz=timezone.utc)

    def remaining(self) -> float | None:
        """Seconds left until the deadline (0 once passed; ``None`` without a deadline)."""
        if self._deadline_ms is None:
            return None
        return max(0.0, self._deadline_ms / 1000 - time.time())

    @property
    def streams(self) -> bool:
        """Whether the request type streams chunks (header ``x-stream``)."""
        return self._streams

    @property
    def attempt(self) -> int:
        """Which attempt this is: 1, then 2, 3 … when the request type's retry policy
        retries a retryable failure (protocol §3.12)."""
        return self._attempt

    @property
    def redelivered(self) -> bool:
        """Whether RabbitMQ delivered this request before: a worker may have started it
        (and sent some chunks) and died, or held it past the broker's consumer timeout."""
        return self._redelivered

    @property
    def traceparent(self) -> str | None:
        """The request's W3C ``traceparent`` header, if the host sent one."""
        return self._traceparent

    @property
    def identity(self) -> Identity | None:
        """Who sent the request (header ``x-identity``); ``None`` when the host runs
        without authentication."""
        return self._identity

    @property
    def log(self) -> RequestLog:
        """A logger whose lines name this request (correlation id, traceparent)."""
        return self._log

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled (by the client, a timeout or a disconnect).
        The handler then has the worker's cancel grace period to return by itself before
        its task is cancelled; the reply is ``CANCELLED`` unless it returns a result."""
        return self._cancel.is_set()

    async def wait_cancelled(self) -> None:
        """Returns when the request is cancelled."""
        await self._cancel.wait()

    async def chunk(self, data: Any) -> None:
        """Sends one partial result (a ``chunk`` reply with the next ``x-seq``) and returns
        once the broker confirmed it. Raises ``TaskError`` ``CANCELLED`` once the request
        is cancelled (so a handler that lets it propagate stops at its next chunk), and
        ``WORKER_ERROR`` for data that is not JSON, after the final reply, or when the
        broker connection is lost."""
        if self.cancelled:
            raise TaskError.cancelled()
        body = encode(data, "chunk")
        async with self._lock:
            if self._finished:
                raise TaskError(
                    protocol.WORKER_ERROR,
                    "the request is already answered: no chunk is sent after the final reply",
                )
            if self.cancelled:
                raise TaskError.cancelled()
            if self._failed is not None:
                raise TaskError(protocol.WORKER_ERROR, f"the chunk could not be sent: {self._failed}")
            seq = self._next_seq
            try:
                await self._transport.publish(self._reply(protocol.CHUNK, seq, body))
            except TransportError as error:
                # The request must not be acked with a chunk missing.
                self._failed = error
                raise TaskError(protocol.WORKER_ERROR, f"the chunk could not be sent: {error}") from None
            self._next_seq = seq + 1

    @property
    def chunks_sent(self) -> int:
        """Chunks confirmed so far."""
        return self._next_seq

    async def _finish(self, kind: str, body: bytes) -> None:
        """Publishes the final reply; raises ``TransportError`` when it, or a chunk before
        it, did not reach the broker. After this, :meth:`chunk` fails."""
        async with self._lock:
            self._finished = True
            if self._failed is not None:
                raise self._failed
            await self._transport.publish(self._reply(kind, None, body))

    def _reply(self, kind: str, seq: int | None, body: bytes) -> Reply:
        return Reply(self._reply_to, self._correlation_id, kind, seq, body)

    def __repr__(self) -> str:
        return (
            f"Context(request_type={self._request_type!r}, correlation_id={self._correlation_id!r},"
            f" deadline_ms={self._deadline_ms!r}, redelivered={self._redelivered!r},"
            f" cancelled={self.cancelled!r})"
        )
