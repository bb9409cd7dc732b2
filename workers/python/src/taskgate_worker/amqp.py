"""The RabbitMQ side of a worker, on aio-pika: connect (retrying with backoff), make sure
the queues exist, consume them with a prefetch limit, listen for cancellations on the
``taskgate.cancel`` fanout exchange, publish replies with confirms on one channel, recover
from the consumer timeout, and shut down gracefully. Each delivery runs through the
runner (:mod:`taskgate_worker.runner`), which holds the protocol's rules; this module
only translates between aio-pika and it.

Like the Rust SDK (workers/rust/src/rabbitmq.rs), reconnection is done here rather than with
aio-pika's robust connection: a lost connection ends the session (its requests in
progress are dropped and redelivered by RabbitMQ; acks on the old channels could not
succeed anyway) and a new session declares and consumes afresh.

The consumer timeout is the exception: RabbitMQ closes the *consuming channel* of a
delivery left unacked past ``consumer_timeout`` (30 min by default) with
``PRECONDITION_FAILED - delivery acknowledgement on channel N timed out``, and requeues
every delivery unacked on it. The connection and the reply channel stay up, so the
requests keep running and still reply; the session logs an error, consumes again on a
new channel, and the runner adopts the redeliveries of requests still running here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from . import protocol
from .errors import WorkerError
from .logs import logger
from .retry import RetryPolicy, wait_queue, wait_queue_arguments
from .runner import Runner
from .settings import Route, Settings
from .transport import Delivery, Identity, Reply, Retry, Settlement, TransportError

CONNECT_TIMEOUT = 10.0
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0
# How long declaring, binding and consuming may take before the session is given up.
SETUP_TIMEOUT = 30.0
# How long a session waits for a missing queue to be declared by the host (which declares
# its request types' queues, with their arguments, when it starts) before declaring it
# itself, and how often it looks meanwhile.
QUEUE_PATIENCE = 5.0
QUEUE_POLL = 1.0


class _Lost(Exception):
    """The connection or a channel failed: reconnect."""


# What a broken connection or channel raises while the session sets up or recovers
# (ChannelInvalidStateError: an operation on a channel that closed meanwhile).
_SESSION_FAILURES = (
    _Lost, asyncio.TimeoutError, amqp_errors.AMQPError, ConnectionError, amqp_errors.ChannelInvalidStateError
)


@dataclass(frozen=True)
class _Event:
    kind: str  # "stop", "lost", "consume-closed", "consumer-cancelled", "reply-channel"
    reason: str = ""
    error: BaseException | None = None


def is_consumer_timeout(error: BaseException | None) -> bool:
    """Whether a channel was closed for a delivery held past the consumer timeout."""
    text = str(error).lower()
    return (
        isinstance(error, amqp_errors.ChannelPreconditionFailed)
        and "delivery acknowledgement" in text
        and "timed out" in text
    )


def _is_refusal(error: BaseException) -> bool:
    """Connection errors that retrying cannot fix (credentials, virtual host)."""
    return isinstance(
        error,
        (
            amqp_errors.AuthenticationError,
            amqp_errors.ProbableAuthenticationError,
            amqp_errors.ConnectionNotAllowed,
            amqp_errors.IncompatibleProtocolError,
        ),
    ) or (isinstance(error, amqp_errors.ConnectionClosed) and "ACCESS_REFUSED" in str(error)) or (
        # A virtual host that does not exist or may not be used: the broker answers
        # connection.open with connection.close (530 NOT_ALLOWED), which aiormq reports as
        # an unexpected frame without the code.
        isinstance(error, amqp_errors.InvalidFrameError)
        and "Connection.OpenOk" in str(error)
        and "Connection.Close" in str(error)
    )


class AmqpWorker:
    """Serves ``routes`` until ``stop`` is set, reconnecting whenever needed."""

    def __init__(self, settings: Settings, routes: list[Route]) -> None:
        self.settings = settings
        self.routes = routes

    async def run(self, stop: asyncio.Event, abandon: asyncio.Event) -> None:
        delay = FIRST_RETRY_DELAY
        attempt = 0
        while not stop.is_set():
            attempt += 1
            connecting = asyncio.ensure_future(
                aio_pika.connect(
                    self.settings.amqp_url,
                    timeout=CONNECT_TIMEOUT,
                    client_properties={"connection_name": self.settings.connection_name},
                )
            )
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                return
            error = connecting.exception()
            if error is None:
                session = Session(self.settings, self.routes, connecting.result())
                reason = await session.run(stop, abandon)
                if reason is None:
                    return
                if session.ready:
                    attempt, delay = 0, FIRST_RETRY_DELAY
                logger.warning("lost the broker connection: %s (retry in %.1f s)", reason, delay)
            elif _is_refusal(error):
                raise WorkerError(f"the broker refused the connection: {_describe(error)}") from error
            else:
                logger.warning(
                    "broker not available (attempt %d, retry in %.1f s): %s", attempt, delay, _describe(error)
                )
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
                return
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, MAX_RETRY_DELAY)


async def wait_for_queue(
    exists: Callable[[], Awaitable[bool]],
    queue: str,
    patience: float = QUEUE_PATIENCE,
    poll: float = QUEUE_POLL,
) -> bool:
    """Waits for ``queue`` to exist, asking ``exists`` now and then every ``poll`` seconds
    until ``patience`` is over; whether it exists in the end. A queue that is missing at
    first is announced by one INFO line, and nothing is logged while waiting: a worker
    started before the host is not an error."""
    if await exists():
        return True
    logger.info("waiting for queue %s to be declared by the host (up to %.0f s)", queue, patience)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + patience
    while True:
        left = give_up - loop.time()
        if left <= 0:
            return False
        await asyncio.sleep(min(poll, left))
        if await exists():
            logger.debug("queue %s exists now", queue)
            return True


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Session:
    """One connection's life: set up, serve, then shut down or report the loss."""

    def __init__(self, settings: Settings, routes: list[Route], connection: AbstractConnection) -> None:
        self.settings = settings
        self.routes = routes
        self.connection = connection
        self.ready = False
        self.events: asyncio.Queue[_Event] = asyncio.Queue()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.consume_channel: AbstractChannel | None = None
        self.publish_channel: AbstractChannel | None = None
        self.consumer_tags: dict[str, str] = {}
        self.runner: Runner | None = None

    async def run(self, stop: asyncio.Event, abandon: asyncio.Event) -> str | None:
        """Serves until ``stop`` (returns ``None``) or until the connection is lost
        (returns why). Raises :class:`WorkerError` when retrying cannot help."""
        self.connection.close_callbacks.add(self._on_connection_closed)
        stopper = asyncio.create_task(self._push_on(stop, _Event("stop")))
        try:
            try:
                await asyncio.wait_for(self._set_up(), timeout=SETUP_TIMEOUT)
            except _SESSION_FAILURES as error:
                return f"setting up: {_describe(error)}"
            if stop.is_set():
                await self._shut_down(abandon)
                return None
            return await self._serve(abandon)
        finally:
            stopper.cancel()
            for task in self.tasks:
                task.cancel()  # dropped: RabbitMQ redelivers them
            if not self.connection.is_closed:
                try:
                    await asyncio.wait_for(self.connection.close(), timeout=5)
                except Exception as error:  # closing a broken connection
                    logger.debug("closing the connection: %s", _describe(error))

    async def _push_on(self, event: asyncio.Event, item: _Event) -> None:
        await event.wait()
        self.events.put_nowait(item)

    def _on_connection_closed(self, _sender: Any, error: BaseException | None) -> None:
        self.events.put_nowait(_Event("lost", f"the connection closed: {error!r}", error))

    async def _set_up(self) -> None:
        for route in self.routes:
            await self._ensure_queue(route)
        publish = await self.connection.channel(publisher_confirms=True)
        publish.close_callbacks.add(
            lambda _s, e: self.events.put_nowait(_Event("reply-channel", f"the reply channel closed: {e!r}", e))
        )
        self.publish_channel = publish
        self.runner = Runner(AmqpTransport(publish), cancel_grace=self.settings.cancel_grace)
        # Before the request consumers: a request must not start before its cancellation
        # could reach it.
        await self._consume_cancellations(self.runner)
        await self._consume_requests()
        queues = [route.queue for route in self.routes]
        logger.info("worker ready: queues %s, prefetch %d", queues, self.settings.prefetch)
        self.ready = True

    async def _serve(self, abandon: asyncio.Event) -> str | None:
        while True:
            event = await self.events.get()
            if event.kind == "stop":
                await self._shut_down(abandon)
                return None
            if event.kind == "consume-closed" and event.error is not None and is_consumer_timeout(event.error):
                self._on_consumer_timeout(event.error)
                try:
                    await asyncio.wait_for(self._consume_requests(), timeout=SETUP_TIMEOUT)
                except _SESSION_FAILURES as error:
                    return f"consuming again after the consumer timeout: {_describe(error)}"
                logger.warning("consuming again after the consumer timeout; requests in progress go on")
                continue
            if event.kind == "consume-closed" and event.reason == "stale":
                continue  # a channel replaced already
            return event.reason

    def _on_consumer_timeout(self, error: BaseException) -> None:
        assert self.runner is not None
        logger.error(
            "RabbitMQ closed the consuming channel: a request was not acked within its"
            " consumer_timeout (%s). Every request unacked on that channel goes back to its"
            " queue and is redelivered, with the redelivered flag. The %d request(s) in"
            " progress here go on and still reply; their redeliveries to this worker are"
            " adopted, not run twice (another worker may run them again). Raise the broker's"
            " consumer_timeout above the longest task (rabbitmq.conf `consumer_timeout`, or"
            " per queue on RabbitMQ 3.11.15+: the `x-consumer-timeout` queue argument or the"
            " `consumer-timeout` policy key).",
            error,
            self.runner.running,
        )

    async def _shut_down(self, abandon: asyncio.Event) -> None:
        channel = self.consume_channel
        if channel is not None and not channel.is_closed:
            underlay = await channel.get_underlay_channel()
            for tag in self.consumer_tags.values():
                try:
                    await underlay.basic_cancel(tag)
                except Exception as error:
                    logger.debug("cancelling consumer %s: %s", tag, _describe(error))
        logger.info("shutting down: stopped consuming; finishing the %d request(s) in progress", len(self.tasks))
        # Every delivery starts at once (prefetch is what bounds them), so there are no
        # prefetched-but-waiting deliveries to hand back. Requests still running can still
        # be cancelled meanwhile: the cancellation consumer stays.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace
        abandoned = asyncio.ensure_future(abandon.wait())
        try:
            while not abandon.is_set():
                pending = {t for t in self.tasks if not t.done()}
                remaining = deadline - loop.time()
                if not pending or remaining <= 0:
                    break
                await asyncio.wait(pending | {abandoned}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandoned.cancel()
        unfinished = [t for t in self.tasks if not t.done()]
        if unfinished:
            logger.warning(
                "shutdown grace over: %d unfinished request(s) dropped; RabbitMQ redelivers them",
                len(unfinished),
            )
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        logger.info("worker stopped")

    async def _ensure_queue(self, route: Route) -> None:
        """Makes sure the queue exists. An existing queue is used as it is: the host
        declares its request types' queues with their arguments, and a declaration with
        other arguments would be refused. A missing queue is waited for (the host may be
        starting too; see :func:`wait_for_queue`), then declared durable with the route's
        arguments. Each step gets its own channel: a refused declaration closes it."""
        exists = await wait_for_queue(lambda: self._queue_exists(route.queue), route.queue)
        if exists and route.arguments is None:
            return
        declare = await self.connection.channel(publisher_confirms=False)
        try:
            await declare.declare_queue(route.queue, durable=True, arguments=route.arguments)
            await declare.close()
            if not exists:
                logger.info("declared queue %s (no host declared it within %.0f s)", route.queue, QUEUE_PATIENCE)
        except amqp_errors.ChannelPreconditionFailed as error:
            logger.warning(
                "queue %s exists with other arguments than this worker's; using it as it is (%s)",
                route.queue,
                error,
            )
        except amqp_errors.ChannelClosed as error:
            raise _queue_error(route.queue, error) from error

    async def _queue_exists(self, queue: str) -> bool:
        """Whether ``queue`` exists (a passive declaration, on a channel of its own: the
        broker closes the channel when the queue is missing)."""
        probe = await self.connection.channel(publisher_confirms=False)
        try:
            await probe.declare_queue(queue, passive=True)
            await probe.close()
            return True
        except amqp_errors.ChannelNotFoundEntity:
            return False
        except amqp_errors.ChannelClosed as error:
            raise _queue_error(queue, error) from error

    async def _consume_cancellations(self, runner: Runner) -> None:
        """Declares the cancellation exchange and consumes it through a queue of this
        worker's own (exclusive, auto-delete, named by us)."""
        channel = await self.connection.channel(publisher_confirms=False)
        channel.close_callbacks.add(
            lambda _s, e: self.events.put_nowait(_Event("lost", f"the cancellation channel closed: {e!r}", e))
        )
        exchange = await channel.declare_exchange(
            protocol.CANCEL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(
            f"{protocol.CANCEL_EXCHANGE}.{uuid.uuid4()}", exclusive=True, auto_delete=True
        )
        await queue.bind(exchange)

        async def on_cancel(message: AbstractIncomingMessage) -> None:
            if message.correlation_id:
                logger.debug("cancellation [correlation_id=%s]", message.correlation_id)
                runner.cancellations.cancel(message.correlation_id)
            else:
                logger.debug("cancellation without correlation_id ignored")

        await queue.consume(on_cancel, no_ack=True)

    async def _consume_requests(self) -> None:
        """Opens a consuming channel with the prefetch and consumes every queue on it."""
        runner = self.runner
        assert runner is not None
        previous = self.consume_channel
        channel = await self.connection.channel(publisher_confirms=False)
        self.consume_channel = channel

        def on_close(_sender: Any, error: BaseException | None) -> None:
            reason = "stale" if self.consume_channel is not channel else f"the consuming channel closed: {error!r}"
            self.events.put_nowait(_Event("consume-closed", reason, error))

        channel.close_callbacks.add(on_close)
        if previous is not None and not previous.is_closed:
            await previous.close()
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)
        self.consumer_tags = {}
        for route in self.routes:
            tag = f"taskgate-worker-{uuid.uuid4()}"
            queue = await channel.get_queue(route.queue, ensure=False)
            try:
                await queue.consume(self._on_delivery(runner, route), no_ack=False, consumer_tag=tag)
            except amqp_errors.ChannelNotFoundEntity as error:
                raise _Lost(f"queue {route.queue} is gone: {error}") from error
            except amqp_errors.ChannelClosed as error:
                raise _queue_error(route.queue, error) from error
            self.consumer_tags[route.queue] = tag

    def _on_consumer_cancelled(self, frame: Any) -> None:
        tag = getattr(frame, "consumer_tag", None)
        queue = next((q for q, t in self.consumer_tags.items() if t == tag), tag)
        self.events.put_nowait(
            _Event("consumer-cancelled", f"the broker cancelled the consumer of queue {queue} (was it deleted?)")
        )

    def _on_delivery(self, runner: Runner, route: Route) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            # aiormq runs this as a task of the channel, cancelled if the channel closes;
            # the request runs as a task of its own so that it outlives a consumer timeout.
            task = asyncio.create_task(
                runner.process(
                    _delivery(message), route.handler, _settler(message), self._retrier(message, route.queue)
                ),
                name=f"taskgate request {message.correlation_id}",
            )
            self.tasks.add(task)
            task.add_done_callback(self._on_task_done)

        return on_message

    def _retrier(self, message: AbstractIncomingMessage, queue: str) -> Retry:
        """Schedules another attempt of ``message`` (protocol §3.12): republishes it, with
        ``x-attempt``, to the wait queue of the delay (declared each time on a channel of
        its own: it may have expired since), whose TTL dead-letters it back to ``queue``."""

        async def retry(attempt: int, delay_ms: int) -> None:
            waiting = wait_queue(queue, delay_ms)
            headers = dict(message.headers or {})
            headers[protocol.HEADER_ATTEMPT] = attempt
            again = aio_pika.Message(
                message.body,
                content_type=message.content_type or protocol.CONTENT_TYPE_JSON,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=message.correlation_id,
                reply_to=message.reply_to,
                type=message.type,
                timestamp=message.timestamp,
                headers=headers,
            )
            try:
                declare = await self.connection.channel(publisher_confirms=False)
                await declare.declare_queue(waiting, durable=True, arguments=wait_queue_arguments(queue, delay_ms))
                await declare.close()
                if self.publish_channel is None:
                    raise TransportError("no reply channel")
                await self.publish_channel.default_exchange.publish(again, waiting, mandatory=True)
            except TransportError:
                raise
            except (
                amqp_errors.AMQPError,
                aiormq.exceptions.ChannelInvalidStateError,
                aio_pika.exceptions.AMQPError,
                ConnectionError,
                RuntimeError,
            ) as error:
                raise TransportError(_describe(error)) from error
            await self._notify_retry(message, attempt, delay_ms)

        return retry

    async def _notify_retry(self, message: AbstractIncomingMessage, attempt: int, delay_ms: int) -> None:
        """Tells the host that the request's next attempt is scheduled (a retry notice,
        §3.12: it counts them). Best effort: the retry itself is what matters."""
        if not message.reply_to or self.publish_channel is None:
            return
        notice = aio_pika.Message(
            json.dumps({"attempt": attempt, "delayMs": delay_ms}).encode("utf-8"),
            content_type=protocol.CONTENT_TYPE_JSON,
            correlation_id=message.correlation_id,
            type=protocol.REPLY_TYPE_RETRY,
        )
        try:
            await self.publish_channel.default_exchange.publish(notice, message.reply_to, mandatory=False)
        except Exception as error:  # noqa: BLE001 - a lost notice only misses a metric
            logger.debug("retry notice not published: %s", _describe(error))

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a request failed in the SDK", exc_info=task.exception())


def _queue_error(queue: str, error: BaseException) -> WorkerError:
    return WorkerError(f"queue {queue!r} cannot be used: {_describe(error)}")


def _header_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, (bytes, str)):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _header_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) else None


def _header_identity(value: Any) -> Identity | None:
    """Header ``x-identity`` read as subject and roles; anything else is no identity."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not isinstance(value, str):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    subject, roles = parsed.get("subject"), parsed.get("roles")
    if not isinstance(subject, str) or not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return None
    return Identity(subject, tuple(roles))


def _delivery(message: AbstractIncomingMessage) -> Delivery:
    """The request as the runner sees it."""
    headers = message.headers or {}
    return Delivery(
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        request_type=message.type,
        deadline_ms=_header_int(headers.get(protocol.HEADER_DEADLINE_MS)),
        streams=headers.get(protocol.HEADER_STREAM) is True,
        redelivered=bool(message.redelivered),
        traceparent=_header_str(headers.get(protocol.HEADER_TRACEPARENT)),
        identity=_header_identity(headers.get(protocol.HEADER_IDENTITY)),
        body=message.body,
        attempt=max(1, _header_int(headers.get(protocol.HEADER_ATTEMPT)) or 1),
        retry=RetryPolicy.parse(headers.get(protocol.HEADER_RETRY)),
    )


def _settler(message: AbstractIncomingMessage) -> Any:
    async def settle(settlement: Settlement) -> None:
        try:
            if settlement is Settlement.ACK:
                await message.ack()
            else:
                await message.nack(requeue=True)
        except Exception as error:  # the channel is closed, or the message settled
            raise TransportError(_describe(error)) from error

    return settle


class AmqpTransport:
    """Publishes replies on one confirm-mode channel."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel

    async def publish(self, reply: Reply) -> None:
        headers: dict[str, Any] = {}
        if reply.seq is not None:
            headers[protocol.HEADER_SEQ] = reply.seq
        message = aio_pika.Message(
            reply.body,
            content_type=protocol.CONTENT_TYPE_JSON,
            correlation_id=reply.correlation_id,
            type=reply.kind,
            headers=headers or None,
        )
        try:
            await self.channel.default_exchange.publish(message, reply.reply_to, mandatory=False)
        except (amqp_errors.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError, RuntimeError) as error:
            raise TransportError(_describe(error)) from error
        except asyncio.CancelledError:
            raise
