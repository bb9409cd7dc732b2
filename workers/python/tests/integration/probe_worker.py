"""A worker for the integration tests, served on the echo plugin's queue (the echo plugin
accepts any JSON). ``{"op": …}`` picks what it does:

- ``"raise"``: raises ``ValueError(message)`` (an unexpected exception);
- ``"sleep"``: sleeps ``seconds`` ignoring ``ctx.cancelled`` (so a cancellation has to
  cancel its task), logging ``probe cancelled`` when that happens; then returns
  ``{"slept": seconds}``;
- ``"info"``: returns what the context says;
- ``"flaky"``: attempts 1 to ``failures`` raise a retryable ``FLAKY`` error (protocol
  §3.12); a later attempt returns ``{"attempt": n}``;
- ``"exit"``: ends the process at once with status 3 (``os._exit``: no reply, no ack, no
  clean-up), as a worker that aborts, segfaults or runs out of memory on a poison message
  would (protocol §3.11);
- ``"echo"``: returns ``payload["data"]``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from taskgate_worker import Context, TaskError, Worker

worker = Worker(cancel_grace=0.2)


@worker.handler("echo")
async def probe(payload: Any, ctx: Context) -> Any:
    op = payload.get("op") if isinstance(payload, dict) else None
    if op == "flaky":
        if ctx.attempt <= payload["failures"]:
            raise TaskError("FLAKY", f"attempt {ctx.attempt} fails, as asked", retryable=True)
        return {"attempt": ctx.attempt}
    if op == "exit":
        ctx.log.info("probe exiting the process on %s", ctx.correlation_id)
        os._exit(3)
    if op == "echo":
        return payload.get("data")
    if op == "raise":
        raise ValueError(payload.get("message", "boom"))
    if op == "sleep":
        ctx.log.info("probe sleeping %s s (redelivered %s)", payload["seconds"], ctx.redelivered)
        try:
            await asyncio.sleep(payload["seconds"])
        except asyncio.CancelledError:
            ctx.log.info("probe cancelled")
            raise
        return {"slept": payload["seconds"]}
    return {
        "requestType": ctx.request_type,
        "correlationId": ctx.correlation_id,
        "redelivered": ctx.redelivered,
        "hasDeadline": ctx.deadline_ms is not None,
        "streams": ctx.streams,
        "traceparent": ctx.traceparent,
    }
