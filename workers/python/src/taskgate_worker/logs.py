"""Log lines about a request name it: its correlation id and, when the host sent one, its
W3C ``traceparent``, so a line can be matched with the host's lines and the trace.

The SDK logs through the standard ``logging`` module under the ``taskgate_worker`` logger;
the application chooses handlers and format (the CLI sets up a plain stderr handler).
Every record about a request carries ``correlation_id`` and ``traceparent`` attributes
(for structured formatters) and ends with ``[correlation_id=… traceparent=…]``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

logger = logging.getLogger("taskgate_worker")


class RequestLog(logging.LoggerAdapter[logging.Logger]):
    """A logger for one request; ``ctx.log`` hands it to handlers too."""

    def __init__(
        self,
        correlation_id: str | None,
        traceparent: str | None,
        base: logging.Logger = logger,
    ) -> None:
        super().__init__(base, {"correlation_id": correlation_id, "traceparent": traceparent})
        self.correlation_id = correlation_id
        self.traceparent = traceparent
        suffix = f"correlation_id={correlation_id}"
        if traceparent:
            suffix += f" traceparent={traceparent}"
        # The message is a %-format string (when there are args): ids from the wire must
        # not add placeholders. The host's ids never contain `%`.
        self._suffix = f" [{suffix}]".replace("%", "?")

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("correlation_id", self.correlation_id)
        extra.setdefault("traceparent", self.traceparent)
        kwargs["extra"] = extra
        return f"{msg}{self._suffix}", kwargs
