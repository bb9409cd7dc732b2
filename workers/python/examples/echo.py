"""``echo``: answers with its payload, unchanged. A payload that is an object may steer it,
with the same rules as the Rust and Node example workers:

- ``"delayMs": n`` (integer 0..=600000): first waits n ms (a cancellation ends the wait);
- ``"chunks": n`` (integer 0..=10000): then streams n chunks ``{"index": 0}`` …
  ``{"index": n-1}``;
- ``"fail": {"code"?: string, "message": string, "details"?: any}``: then replies with
  that error instead of the result (``code`` defaults to ``WORKER_ERROR``).

A steering field of the wrong type or out of range is answered ``INVALID_PAYLOAD`` before
anything else happens.

Run: ``python -m taskgate_worker examples.echo:worker`` (queue ``taskgate.echo``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from taskgate_worker import Context, TaskError, Worker

worker = Worker()

MAX_CHUNKS = 10_000
MAX_DELAY_MS = 600_000


@dataclass
class Steering:
    delay_ms: int | None = None
    chunks: int = 0
    fail: TaskError | None = None


def _bounded_integer(value: Any, pointer: str, maximum: int) -> int:
    # JSON integers only: not booleans (a Python int), not 1.0.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise TaskError.invalid_payload(pointer, f"must be an integer from 0 to {maximum}")
    return value


def _requested_failure(fail: Any) -> TaskError:
    if not isinstance(fail, dict):
        raise TaskError.invalid_payload("/fail", "must be an object { code?, message, details? }")
    message = fail.get("message")
    if not isinstance(message, str):
        raise TaskError.invalid_payload("/fail/message", "must be a string")
    code = fail.get("code", "WORKER_ERROR")
    if not isinstance(code, str):
        raise TaskError.invalid_payload("/fail/code", "must be a string")
    return TaskError(code, message, fail.get("details"))


def steering(payload: Any) -> Steering:
    """What an echo payload asks for, checked before anything is done."""
    steer = Steering()
    if not isinstance(payload, dict):
        return steer
    if "delayMs" in payload:
        steer.delay_ms = _bounded_integer(payload["delayMs"], "/delayMs", MAX_DELAY_MS)
    if "chunks" in payload:
        steer.chunks = _bounded_integer(payload["chunks"], "/chunks", MAX_CHUNKS)
    if "fail" in payload:
        steer.fail = _requested_failure(payload["fail"])
    return steer


@worker.handler("echo")
async def echo(payload: Any, ctx: Context) -> Any:
    steer = steering(payload)
    if steer.delay_ms is not None:
        try:
            await asyncio.wait_for(ctx.wait_cancelled(), timeout=steer.delay_ms / 1000)
        except asyncio.TimeoutError:
            pass  # waited the whole delay
        else:
            raise TaskError.cancelled()
    for index in range(steer.chunks):
        await ctx.chunk({"index": index})
    if steer.fail is not None:
        raise steer.fail
    return payload
