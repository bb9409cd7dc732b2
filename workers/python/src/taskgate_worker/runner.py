"""One request, from delivery to ack, independent of AMQP: the part of the SDK that carries
the protocol's rules (reply routing and order, ack only after the final reply is confirmed,
expired deadlines, cancellation, handler failures). :mod:`taskgate_worker.amqp` feeds it
real deliveries; the unit tests and :mod:`taskgate_worker.testing` feed it in-memory ones.
It follows the Rust SDK's runner (workers/rust/src/runner.rs) rule for rule, plus one
thing the Rust SDK does not do: a request keeps running when the channel it came on is
closed (RabbitMQ's consumer timeout does that to long tasks), and its redelivery to this
worker is *adopted* instead of started a second time (see :meth:`Runner.process`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from . import protocol
from .context import Context
from .errors import TaskError
from .handlers import Handler, call_handler
from .jsonio import encode, parse_payload
from .logs import RequestLog, logger
from .retry import next_attempt
from .transport import Delivery, Retry, Settle, Settlement, Transport, TransportError

DEFAULT_CANCEL_GRACE = 1.0
"""Seconds a cancelled handler may take to return by itself before its task is cancelled."""


class OutcomeKind(enum.Enum):
    REPLIED = "replied"
    """The final reply (and every chunk) was confirmed and the request acked."""
    EXPIRED = "expired"
    """Its deadline had passed: acked without running the handler."""
    UNANSWERABLE = "unanswerable"
    """No ``reply_to`` or ``correlation_id``: nobody to answer; acked."""
    ADOPTED = "adopted"
    """Delivered again while it still runs here: not started twice; the running request
    acks this delivery when it ends."""
    ALREADY_ANSWERED = "already answered"
    """Delivered again after its final reply was confirmed here (only the ack had
    failed): acked without running."""
    RETRIED = "retried"
    """Failed retryably: the next attempt is scheduled (§3.12) and this delivery acked."""
    NOT_ACKED = "not acked"
    """A reply could not be published or confirmed, or the ack failed: the request went
    back to the queue (or will when its channel closes) for redelivery."""


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    reply: str | None = None
    """The final reply's kind (``result`` / ``error``) when one was confirmed."""
    error: str | None = None
    """Why the request was not acked."""


class RecentIds:
    """Correlation ids remembered for a while (``ttl`` seconds, at most ``limit``, the
    oldest forgotten first)."""

    def __init__(self, ttl: float, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._limit = limit
        self._clock = clock
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str) -> None:
        self._ids.pop(key, None)
        self._ids[key] = self._clock()
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)

    def take(self, key: str) -> bool:
        """Whether ``key`` is remembered (and not expired); forgets it."""
        added = self._ids.pop(key, None)
        return added is not None and self._clock() - added < self._ttl

    def __len__(self) -> int:
        return len(self._ids)


class Cancellations:
    """Cancel flags of the requests running here, plus cancellations that arrived before
    their request did (it may still wait in the queue or the prefetch buffer). Every
    worker sees every cancellation (the exchange is a fanout), so most early ones are for
    other workers' requests: they are kept for 10 minutes, at most 10,000 of them."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._running: dict[str, asyncio.Event] = {}
        self._early = RecentIds(600.0, 10_000, clock)

    def cancel(self, correlation_id: str) -> None:
        """A cancellation for ``correlation_id`` arrived."""
        event = self._running.get(correlation_id)
        if event is not None:
            event.set()
        else:
            self._early.add(correlation_id)

    def register(self, correlation_id: str) -> asyncio.Event:
        event = self._running.get(correlation_id)
        if event is None:
            event = asyncio.Event()
            self._running[correlation_id] = event
        if self._early.take(correlation_id):
            event.set()
        return event

    def forget(self, correlation_id: str) -> None:
        self._running.pop(correlation_id, None)

    @property
    def running(self) -> int:
        return len(self._running)


class _Run:
    """A request running here; ``settle`` is the latest delivery's (see adoption)."""

    def __init__(self, settle: Settle) -> None:
        self.settle = settle


def now_ms() -> int:
    return int(time.time() * 1000)


class Runner:
    """Runs deliveries to completion; shared by every request of a worker."""

    def __init__(
        self,
        transport: Transport,
        cancellations: Cancellations | None = None,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
    ) -> None:
        self.transport = transport
        self.cancellations = cancellations or Cancellations()
        self.cancel_grace = cancel_grace
        self._running: dict[str, _Run] = {}
        # Final reply confirmed, ack failed: a redelivery is acked without running.
        self._answered = RecentIds(1800.0, 10_000)

    @property
    def running(self) -> int:
        """Requests running now."""
        return len(self._running)

    async def process(
        self, delivery: Delivery, handler: Handler, settle: Settle, retry: Retry | None = None
    ) -> Outcome:
        """Runs one delivery. ``settle`` acks it only after the final reply and every
        chunk before it are confirmed (or when there is nothing to reply), and requeues it
        when a reply could not be published or confirmed. A retryable failure under the
        request type's retry policy is not replied: ``retry`` schedules the next attempt,
        then the delivery is acked (protocol §3.12).

        A delivery whose correlation id is running here already is not started again: it
        came back because the broker took the first one back (its channel closed, e.g. for
        the consumer timeout) while the handler went on. The running request adopts it and
        settles it when it ends.
        """
        correlation_id, reply_to = delivery.correlation_id, delivery.reply_to
        log = RequestLog(correlation_id, delivery.traceparent)
        if not correlation_id or not reply_to:
            log.warning(
                "request without reply_to or correlation_id (reply_to=%r): nobody to answer;"
                " acked and dropped",
                reply_to,
            )
            return await _ack(settle, Outcome(OutcomeKind.UNANSWERABLE), log)

        run = self._running.get(correlation_id)
        if run is not None:
            run.settle = settle
            log.warning(
                "delivered again while it still runs here (the broker took the first delivery"
                " back, e.g. it closed the channel for its consumer timeout): not started"
                " twice; this delivery is acked when the request ends"
            )
            return Outcome(OutcomeKind.ADOPTED)
        if self._answered.take(correlation_id):
            log.info("delivered again after its final reply was confirmed here; acked without running")
            return await _ack(settle, Outcome(OutcomeKind.ALREADY_ANSWERED), log)
        if delivery.deadline_ms is not None:
            late_by = now_ms() - delivery.deadline_ms
            if late_by >= 0:
                log.info("request expired %d ms before it started; acked and dropped", late_by)
                return await _ack(settle, Outcome(OutcomeKind.EXPIRED), log)

        run = _Run(settle)
        self._running[correlation_id] = run
        cancel = self.cancellations.register(correlation_id)
        try:
            ctx = Context(
                request_type=delivery.request_type or "",
                correlation_id=correlation_id,
                reply_to=reply_to,
                transport=self.transport,
                cancel=cancel,
                deadline_ms=delivery.deadline_ms,
                streams=delivery.streams,
                redelivered=delivery.redelivered,
                traceparent=delivery.traceparent,
                identity=delivery.identity,
                attempt=delivery.attempt,
            )
            log.debug(
                "request started (type %s, redelivered %s)", ctx.request_type, delivery.redelivered
            )
            kind, body, error = await self._answer(handler, delivery.body, ctx, cancel, log)
            if error is not None and retry is not None:
                retried = await self._retry(delivery, error, ctx, cancel, run, retry, log)
                if retried is not None:
                    return retried
            log.debug("final reply: %s", kind)
            try:
                await ctx._finish(kind, body)
            except TransportError as error:
                log.warning("a reply did not reach the broker (%s); the request goes back to the queue", error)
                await self._requeue(run, log)
                return Outcome(OutcomeKind.NOT_ACKED, error=str(error))
            return await self._ack_run(correlation_id, run, kind, log)
        finally:
            self.cancellations.forget(correlation_id)
            self._running.pop(correlation_id, None)

    async def _retry(
        self,
        delivery: Delivery,
        error: TaskError,
        ctx: Context,
        cancel: asyncio.Event,
        run: _Run,
        retry: Retry,
        log: RequestLog,
    ) -> Outcome | None:
        """Schedules the next attempt when the policy says so; ``None`` when ``error`` is
        the final reply."""
        decision = next_attempt(
            delivery.retry,
            delivery.attempt,
            error,
            chunks_sent=ctx._next_seq > 0,
            cancelled=cancel.is_set(),
            deadline_ms=delivery.deadline_ms,
            now_ms=now_ms(),
        )
        if decision is None:
            if delivery.retry is not None and delivery.retry.retryable(error):
                log.info(
                    "attempt %d failed retryably (%s), but gets no further attempt (attempts used up,"
                    " chunks streamed, cancelled or past the deadline): the error is the final reply",
                    delivery.attempt,
                    error.code,
                )
            return None
        attempt, delay_ms = decision
        try:
            await retry(attempt, delay_ms)
        except TransportError as failure:
            log.warning("the retry could not be scheduled (%s); the request goes back to the queue", failure)
            await self._requeue(run, log)
            return Outcome(OutcomeKind.NOT_ACKED, error=str(failure))
        log.info(
            "attempt %d failed retryably (%s: %s); attempt %d in %d ms",
            delivery.attempt,
            error.code,
            error.message,
            attempt,
            delay_ms,
        )
        return await _ack(run.settle, Outcome(OutcomeKind.RETRIED), log)

    async def _answer(
        self, handler: Handler, body: bytes, ctx: Context, cancel: asyncio.Event, log: RequestLog
    ) -> tuple[str, bytes, TaskError | None]:
        """The final reply: the handler's result, or an error body (and the error)."""
        try:
            if cancel.is_set():
                log.info("request cancelled before it started")
                raise TaskError.cancelled()
            payload = parse_payload(body)
            value = await self._run_handler(handler, payload, ctx, cancel, log)
            return protocol.RESULT, encode(value, "result"), None
        except TaskError as error:
            # Whatever a cancelled handler fails with, it failed because it was cancelled.
            reported = TaskError.cancelled() if cancel.is_set() else error
            return protocol.ERROR, json.dumps(reported.body(), ensure_ascii=False).encode("utf-8"), reported

    async def _run_handler(
        self, handler: Handler, payload: Any, ctx: Context, cancel: asyncio.Event, log: RequestLog
    ) -> Any:
        """Runs the handler as a task of its own. On cancellation it gets the grace period
        to return by itself; then its task is cancelled (``CancelledError`` at its next
        ``await``, so its ``finally`` blocks run) and the answer is ``CANCELLED``."""
        task = asyncio.create_task(call_handler(handler, payload, ctx), name=f"taskgate {ctx.correlation_id}")
        cancelled = asyncio.create_task(cancel.wait())
        try:
            await asyncio.wait({task, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                log.info("request cancelled")
                await asyncio.wait({task}, timeout=self.cancel_grace)
            if not task.done():
                log.debug("the handler did not return within the cancel grace period; its task is cancelled")
                task.cancel()
                await asyncio.wait({task}, timeout=self.cancel_grace)
                if not task.done():
                    log.warning("the handler goes on despite its cancellation; answered CANCELLED anyway")
                raise TaskError.cancelled()
        except asyncio.CancelledError:
            # The worker drops this request (shutdown grace over, connection lost).
            task.cancel()
            raise
        finally:
            cancelled.cancel()
        return _handler_result(task, log)

    async def _ack_run(self, correlation_id: str, run: _Run, kind: str, log: RequestLog) -> Outcome:
        while True:
            settle = run.settle
            try:
                await settle(Settlement.ACK)
                log.debug("request acked")
                return Outcome(OutcomeKind.REPLIED, reply=kind)
            except TransportError as error:
                if run.settle is not settle:
                    continue  # adopted a redelivery meanwhile: ack that one
                self._answered.add(correlation_id)
                log.warning(
                    "the ack did not reach the broker (%s); the reply did, so the redelivery"
                    " will be acked without running",
                    error,
                )
                return Outcome(OutcomeKind.NOT_ACKED, reply=kind, error=str(error))

    async def _requeue(self, run: _Run, log: RequestLog) -> None:
        while True:
            settle = run.settle
            try:
                await settle(Settlement.REQUEUE)
                return
            except TransportError as error:
                if run.settle is not settle:
                    continue
                log.debug("requeue failed (%s); the broker requeues the request when its channel closes", error)
                return


def _handler_result(task: asyncio.Task[Any], log: RequestLog) -> Any:
    if task.cancelled():
        raise TaskError(protocol.WORKER_ERROR, "the handler was cancelled")
    error = task.exception()
    if error is None:
        return task.result()
    if isinstance(error, TaskError):
        raise error
    # The message goes to the client; the traceback only to this worker's log.
    log.error("the handler failed: %s: %s", type(error).__name__, error, exc_info=error)
    raise TaskError(protocol.WORKER_ERROR, str(error) or type(error).__name__)


async def _ack(settle: Settle, outcome: Outcome, log: RequestLog) -> Outcome:
    try:
        await settle(Settlement.ACK)
        return outcome
    except TransportError as error:
        log.warning("ack failed (%s); the broker will redeliver the request", error)
        return Outcome(OutcomeKind.NOT_ACKED, error=str(error))


__all__ = [
    "Cancellations",
    "DEFAULT_CANCEL_GRACE",
    "Outcome",
    "OutcomeKind",
    "RecentIds",
    "Runner",
    "logger",
]
