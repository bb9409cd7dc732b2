"""The :class:`Worker` a user configures: handlers per request type, their queues, the
broker and the limits. :meth:`Worker.run` hands its :class:`~taskgate_worker.settings.Settings`
and routes to :mod:`taskgate_worker.amqp`, which imports nothing from here."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable
from typing import Any, Callable, TypeVar

from .errors import WorkerError
from .handlers import Handler, check_handler
from .protocol import default_queue
from .runner import DEFAULT_CANCEL_GRACE
from .settings import DEFAULT_AMQP_URL, DEFAULT_PREFETCH, DEFAULT_SHUTDOWN_GRACE, Route, Settings

__all__ = ["DEFAULT_AMQP_URL", "DEFAULT_PREFETCH", "DEFAULT_SHUTDOWN_GRACE", "Route", "Settings", "Worker"]

H = TypeVar("H", bound=Handler)


class Worker:
    """Handlers per request type, served from RabbitMQ until shut down.

    ``amqp_url`` defaults to ``TASKGATE_AMQP_URL``, else :data:`DEFAULT_AMQP_URL`.
    ``prefetch`` is how many requests of each queue run at once. ``shutdown_grace`` is how
    long shutdown waits for requests in progress (the rest are redelivered to another
    worker); ``cancel_grace`` how long a cancelled handler may take to return by itself.
    ``connection_name`` is what the broker's management tools show for the connection.
    """

    def __init__(
        self,
        *,
        amqp_url: str | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        cancel_grace: float = DEFAULT_CANCEL_GRACE,
        connection_name: str = "taskgate-worker-python",
    ) -> None:
        self.amqp_url = amqp_url
        self.prefetch = prefetch
        self.shutdown_grace = shutdown_grace
        self.cancel_grace = cancel_grace
        self.connection_name = connection_name
        self._routes: dict[str, Route] = {}

    def handler(
        self,
        request_type: str,
        *,
        queue: str | None = None,
        queue_arguments: dict[str, Any] | None = None,
    ) -> Callable[[H], H]:
        """Decorator: serves ``request_type`` with the decorated ``async def``."""

        def register(handler: H) -> H:
            self.handle(request_type, handler, queue=queue, queue_arguments=queue_arguments)
            return handler

        return register

    def handle(
        self,
        request_type: str,
        handler: Handler,
        *,
        queue: str | None = None,
        queue_arguments: dict[str, Any] | None = None,
    ) -> None:
        """Serves ``request_type`` with ``handler`` from ``queue`` (default
        ``taskgate.<request_type>``, the plugins' default). The queue is used as it is if it
        exists (the host declares the queues of its request types with their arguments);
        a missing one is waited for up to 5 s (the host may be starting too), then declared
        durable with ``queue_arguments``."""
        if not request_type:
            raise ValueError("the request type must not be empty")
        if request_type in self._routes:
            raise ValueError(f"request type {request_type!r} has two handlers")
        check_handler(handler)
        self._routes[request_type] = Route(
            request_type, queue or default_queue(request_type), handler, queue_arguments
        )

    def set_queue(self, request_type: str, queue: str) -> None:
        """Consumes ``request_type`` from ``queue`` instead (e.g. ``--queue TYPE=QUEUE``)."""
        route = self._routes.get(request_type)
        if route is None:
            served = ", ".join(self._routes) or "none"
            raise ValueError(f"unknown request type {request_type!r} (served: {served})")
        route.queue = queue

    @property
    def routes(self) -> list[Route]:
        return list(self._routes.values())

    def settings(self) -> Settings:
        return Settings(
            amqp_url=self.amqp_url or os.environ.get("TASKGATE_AMQP_URL") or DEFAULT_AMQP_URL,
            prefetch=self.prefetch,
            shutdown_grace=self.shutdown_grace,
            cancel_grace=self.cancel_grace,
            connection_name=self.connection_name,
        )

    def check(self) -> None:
        """Raises :class:`WorkerError` for a configuration that cannot work."""
        settings = self.settings()
        if not self._routes:
            raise WorkerError("invalid worker configuration: no handlers registered")
        if not settings.amqp_url.startswith(("amqp://", "amqps://")):
            raise WorkerError("invalid AMQP URL: it must start with amqp:// or amqps://")
        if not 1 <= settings.prefetch <= 65535:
            raise WorkerError("invalid worker configuration: prefetch must be from 1 to 65535")
        queues: set[str] = set()
        for route in self._routes.values():
            if not 1 <= len(route.queue.encode("utf-8")) <= 255:
                raise WorkerError(f"invalid worker configuration: queue name {route.queue!r} must be 1 to 255 bytes long")
            if route.queue in queues:
                raise WorkerError(f"invalid worker configuration: queue {route.queue!r} has two handlers")
            queues.add(route.queue)
            for key, value in (route.arguments or {}).items():
                if not isinstance(value, (str, int, float, bool)):
                    raise WorkerError(
                        f"invalid worker configuration: argument {key!r} of queue {route.queue!r}:"
                        " only strings, numbers and booleans are supported"
                    )

    async def run(self, shutdown: asyncio.Event | Awaitable[Any] | None = None) -> None:
        """Serves until ``shutdown`` is set (an ``asyncio.Event``) or resolves (any other
        awaitable); without one, until cancelled. Then stops consuming, lets the requests
        in progress finish (up to the shutdown grace), and closes the connection. Connects
        with backoff while the broker is unreachable and reconnects whenever the
        connection is lost. Logs ``worker ready`` once it consumes.

        Raises :class:`WorkerError` at once for a bad URL or configuration, when the
        broker refuses the credentials or virtual host, or when a queue cannot be used.
        """
        stop = asyncio.Event()
        watcher: asyncio.Task[Any] | None = None
        if isinstance(shutdown, asyncio.Event):
            watcher = asyncio.create_task(_set_when(shutdown.wait(), stop))
        elif shutdown is not None:
            watcher = asyncio.create_task(_set_when(shutdown, stop))
        try:
            await self._serve(stop, asyncio.Event())
        finally:
            if watcher is not None:
                watcher.cancel()

    async def run_until_signal(self) -> None:
        """:meth:`run` until SIGTERM or SIGINT. A second signal ends the shutdown grace
        at once (unfinished requests are redelivered to another worker)."""
        loop = asyncio.get_running_loop()
        stop, abandon = asyncio.Event(), asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal() -> None:
            if stop.is_set():
                abandon.set()
            stop.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        try:
            await self._serve(stop, abandon)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _serve(self, stop: asyncio.Event, abandon: asyncio.Event) -> None:
        from .amqp import AmqpWorker  # the AMQP client is imported only to serve

        self.check()
        await AmqpWorker(self.settings(), self.routes).run(stop, abandon)


async def _set_when(awaitable: Awaitable[Any], event: asyncio.Event) -> None:
    try:
        await awaitable
    finally:
        event.set()
