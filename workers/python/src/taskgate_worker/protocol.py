"""Names of taskgate wire protocol v1 (docs/protocol.md §2) that a worker uses; the same
strings as the Rust crate `taskgate-protocol`. No I/O."""

from typing import Final

CANCEL_EXCHANGE: Final = "taskgate.cancel"
"""Fanout exchange on which hosts announce cancellations (§2.4)."""

HEADER_DEADLINE_MS: Final = "x-deadline-ms"
"""Request header: the deadline as Unix milliseconds (§2.2)."""

HEADER_STREAM: Final = "x-stream"
"""Request header: ``true`` when the request type streams chunks (§2.2)."""

HEADER_SEQ: Final = "x-seq"
"""Header on ``chunk`` replies: 0, 1, 2 … (§2.3)."""

HEADER_TRACEPARENT: Final = "traceparent"
"""W3C trace context of the request, when the host sends one; logged, never interpreted."""

HEADER_IDENTITY: Final = "x-identity"
"""Set by a host that authenticates clients: JSON ``{"subject": str, "roles": [str]}``."""

HEADER_RETRY: Final = "x-retry"
"""Request header: the request type's retry policy as JSON (§3.12); absent: no retries."""

HEADER_ATTEMPT: Final = "x-attempt"
"""Request header: which attempt this delivery is, 1, 2 … (§3.12); set by the SDK that
schedules a retry; absent: 1."""

REPLY_TYPE_RETRY: Final = "retry"
"""The ``type`` of a retry notice to the host (§3.12): the request's next attempt is
scheduled; counted by the host, never relayed."""

CONTENT_TYPE_JSON: Final = "application/json"

CHUNK: Final = "chunk"
RESULT: Final = "result"
ERROR: Final = "error"

WORKER_ERROR: Final = "WORKER_ERROR"
INVALID_PAYLOAD: Final = "INVALID_PAYLOAD"
CANCELLED: Final = "CANCELLED"


def default_queue(request_type: str) -> str:
    """The queue a plugin gives a request type unless it names another: ``taskgate.<type>``."""
    return f"taskgate.{request_type}"
