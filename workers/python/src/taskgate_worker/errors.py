"""The errors a handler reports (`TaskError`) and the ones that stop a worker (`WorkerError`)."""

from __future__ import annotations

from typing import Any

from . import protocol


class TaskError(Exception):
    """A failure a handler reports to the client: an ``error`` reply (protocol §2.3)
    ``{ "code", "message", "details"? }``.

    ``code`` is a protocol code (``WORKER_ERROR``, ``INVALID_PAYLOAD`` …) or one of the
    handler's own (``NOT_FOUND``); an empty code becomes ``WORKER_ERROR``. ``details`` is
    any JSON value, or ``None`` to leave it out::

        raise TaskError("NOT_FOUND", "no such user", {"id": user_id})

    ``retryable=True`` says that trying again later may succeed (a downstream service
    down, a lock, a rate limit): when the request type has a retry policy (protocol §3.12)
    the SDK schedules another attempt instead of replying this error::

        raise TaskError("UPSTREAM_DOWN", "the billing API answered 503", retryable=True)
    """

    def __init__(self, code: str, message: str, details: Any = None, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code or protocol.WORKER_ERROR
        self.message = message
        self.details = details
        self.retryable = retryable

    @classmethod
    def cancelled(cls) -> TaskError:
        """``CANCELLED``: the request was cancelled. ``ctx.chunk`` raises it once the
        request is cancelled."""
        return cls(protocol.CANCELLED, "the request was cancelled")

    @classmethod
    def invalid_payload(cls, pointer: str, message: str) -> TaskError:
        """``INVALID_PAYLOAD`` with the host's ``details`` shape (docs/protocol.md §3.1):
        ``{"problems": [{"pointer": "/text", "message": "must be a string"}]}``.
        ``pointer`` is a JSON Pointer into the payload (``""``: the whole payload)."""
        return cls(
            protocol.INVALID_PAYLOAD,
            f"{pointer} {message}" if pointer else message,
            problems(pointer, message),
        )

    @property
    def is_cancelled(self) -> bool:
        return self.code == protocol.CANCELLED

    def body(self) -> dict[str, Any]:
        """The body of the ``error`` reply; ``details`` only when there are some."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"TaskError({self.code!r}, {self.message!r}, {self.details!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskError):
            return NotImplemented
        return (self.code, self.message, self.details) == (other.code, other.message, other.details)

    __hash__ = Exception.__hash__


def problems(pointer: str, message: str) -> dict[str, Any]:
    """``details`` of an ``INVALID_PAYLOAD`` error with one problem."""
    return {"problems": [{"pointer": pointer, "message": message}]}


class WorkerError(Exception):
    """Why a worker stopped other than being asked to: retrying cannot help (a bad URL or
    configuration, credentials or a virtual host the broker refuses, a queue it may not
    use)."""
