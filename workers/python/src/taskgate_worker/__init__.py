"""taskgate-worker: write taskgate workers in Python.

A worker is a set of handlers, one per request type. A handler gets the payload (any JSON
value) and a :class:`Context`, may stream chunks, and returns the result or raises
:class:`TaskError`::

    from taskgate_worker import Context, TaskError, Worker

    worker = Worker()

    @worker.handler("text.wordcount")
    async def wordcount(payload, ctx: Context):
        text = payload.get("text") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            raise TaskError.invalid_payload("/text", "must be a string")
        await ctx.chunk({"progress": 0.5})          # optional streamed chunks
        return {"words": len(text.split())}

    # python -m taskgate_worker mymodule:worker   (TASKGATE_AMQP_URL names the broker)

What the SDK does (protocol v1 §2, docs/protocol.md §3.4), as the Rust SDK does:

- **Replies** go to the request's ``reply_to`` through the default exchange with its
  ``correlation_id``, ``content_type: application/json`` and ``type`` ``chunk`` /
  ``result`` / ``error``; chunks carry ``x-seq`` 0, 1, 2 …. All replies go through one
  channel with publisher confirms; each chunk is confirmed before the next reply.
- **Ack after the final reply**: a request is acked only once its final reply is
  confirmed; a request whose replies did not all reach the broker is requeued
  (``basic.nack``). A worker that dies mid-request leaves the request to be redelivered
  (``ctx.redelivered`` tells the next one).
- **Errors**: ``TaskError`` becomes an ``error`` reply with its code, message and details.
  Any other exception becomes ``WORKER_ERROR`` with the exception's message; the traceback
  goes to the worker's log only. A body that is not JSON is answered ``INVALID_PAYLOAD``
  without calling the handler. In every case the request is acked, never requeued forever.
- **Deadlines**: a request whose ``x-deadline-ms`` has passed is acked without running.
- **Cancellation** (§2.4): the worker consumes the ``taskgate.cancel`` fanout exchange
  through an exclusive queue of its own; a cancellation sets ``ctx.cancelled``, makes
  ``ctx.chunk`` raise ``CANCELLED``, and gives the handler the cancel grace (1 s) to return
  by itself; then its task is cancelled. The reply is ``CANCELLED`` unless the handler
  returned a result. A cancellation that arrives before its request is remembered.
- **Concurrency**: each queue is consumed with a prefetch (default 16); every delivery
  runs as its own asyncio task. CPU-heavy work belongs in ``asyncio.to_thread``.
- **Connection**: retried with backoff (0.1 s to 5 s) at start and whenever lost; bad
  credentials stop the worker. **Consumer timeout**: when RabbitMQ closes the channel of
  a request held past its ``consumer_timeout``, the worker logs it as an error, keeps the
  request running, consumes again, and adopts the redelivery (README: long tasks).
- **Shutdown** (SIGTERM/SIGINT with the CLI): stop consuming, let requests in progress
  finish (30 s by default), then close.

Layout: :mod:`~taskgate_worker.worker` (the :class:`Worker` a user configures),
:mod:`~taskgate_worker.runner` (one request from delivery to ack, no AMQP),
:mod:`~taskgate_worker.context`, :mod:`~taskgate_worker.handlers`,
:mod:`~taskgate_worker.amqp` (aio-pika: connection, consumers, recovery, shutdown),
:mod:`~taskgate_worker.cli` (``python -m taskgate_worker``), and
:mod:`~taskgate_worker.testing` (run a handler in memory).
"""

from .context import Context
from .errors import TaskError, WorkerError
from .handlers import Final, Handler, TypedHandler
from .retry import RetryPolicy
from .settings import DEFAULT_AMQP_URL
from .transport import Identity
from .worker import Worker

__all__ = [
    "Context",
    "DEFAULT_AMQP_URL",
    "Final",
    "Handler",
    "Identity",
    "RetryPolicy",
    "TaskError",
    "TypedHandler",
    "Worker",
    "WorkerError",
]
