"""What a worker serves with: its routes (request type, queue, handler) and settings
(broker URL, prefetch, grace periods), and their defaults. :class:`~taskgate_worker.Worker`
builds them; :mod:`taskgate_worker.amqp` serves them. Neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .handlers import Handler

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
"""The RabbitMQ of a development machine; ``TASKGATE_AMQP_URL`` overrides it."""
DEFAULT_PREFETCH = 16
"""Requests of each queue handled at once."""
DEFAULT_SHUTDOWN_GRACE = 30.0
"""Seconds shutdown waits for requests in progress."""


@dataclass
class Route:
    """One request type served: its queue and handler."""

    request_type: str
    queue: str
    handler: Handler
    arguments: dict[str, Any] | None = None
    """Queue arguments to declare a missing queue with; ``None``: no opinion."""


@dataclass(frozen=True)
class Settings:
    amqp_url: str
    prefetch: int
    shutdown_grace: float
    cancel_grace: float
    connection_name: str
