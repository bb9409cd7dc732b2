"""Retries with backoff (protocol §3.12) through the real host and RabbitMQ: plugins.toml
gives echo a retry policy, which the host sends as ``x-retry``; the probe worker fails
retryably, and the SDK waits in a wait queue (not in a handler) before the next attempt."""

from __future__ import annotations

import time

import pytest

from .harness import Run

pytestmark = pytest.mark.integration


async def test_a_retryable_failure_is_tried_again_after_the_backoff_and_the_client_gets_the_result(run: Run) -> None:
    host = await run.start_host({"echo": {"retry": {"attempts": 3, "backoff": "exponential", "delay_ms": 200}}})
    queue = host.queues["echo"]
    run.queues.update({f"{queue}.retry.200", f"{queue}.retry.400"})
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": queue})
    client = await run.client(host)

    started = time.monotonic()
    rid, _ = await client.request("echo", {"op": "flaky", "failures": 2})
    assert await client.final(rid) == {"id": rid, "type": "result", "data": {"attempt": 3}}
    assert time.monotonic() - started >= 0.6, "200 + 400 ms of backoff"
    assert worker.matching(r"attempt 1 failed retryably \(FLAKY: .*\); attempt 2 in 200 ms")
    assert worker.matching(r"attempt 2 failed retryably \(FLAKY: .*\); attempt 3 in 400 ms")
    # The SDK's retry notices reached the host (it counts them).
    assert len(host.proc.matching(r"the worker scheduled another attempt")) == 2
    assert client.violations == []


async def test_the_last_attempt_replies_the_error(run: Run) -> None:
    host = await run.start_host({"echo": {"retry": {"attempts": 2, "delay_ms": 50}}})
    queue = host.queues["echo"]
    run.queues.add(f"{queue}.retry.50")
    await run.start_worker("tests.integration.probe_worker:worker", {"echo": queue})
    client = await run.client(host)
    rid, _ = await client.request("echo", {"op": "flaky", "failures": 5})
    final = await client.final(rid)
    assert final["type"] == "error"
    assert final["error"]["code"] == "FLAKY"
    assert "attempt 2 fails" in final["error"]["message"]
