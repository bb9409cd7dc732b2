"""Retries with backoff (protocol §3.12): the policy from header ``x-retry``, the delays,
when a failure is retried, and the runner scheduling the next attempt instead of replying.
No clock is involved: the broker does the waiting (a wait queue's TTL), so delays are
plain numbers, and deadlines are checked against the time the test gives."""

from __future__ import annotations

import json
import time
from typing import Any

from taskgate_worker import Context, RetryPolicy, TaskError
from taskgate_worker.retry import next_attempt, wait_queue, wait_queue_arguments
from taskgate_worker.runner import OutcomeKind
from taskgate_worker.testing import run_request
from taskgate_worker.transport import Settlement

EXPONENTIAL = RetryPolicy(attempts=5, delay_ms=100, backoff="exponential", max_delay_ms=500)


def test_the_policy_is_read_from_the_header_and_refused_when_malformed() -> None:
    header = json.dumps(
        {"attempts": 3, "backoff": "exponential", "delayMs": 100, "maxDelayMs": 1000, "jitter": True, "retryOn": ["UPSTREAM"]}
    )
    assert RetryPolicy.parse(header.encode()) == RetryPolicy(3, 100, "exponential", 1000, True, frozenset({"UPSTREAM"}))
    assert RetryPolicy.parse('{"attempts": 2, "delayMs": 5}') == RetryPolicy(2, 5)
    for bad in [None, 5, "not json", "[]", '{"attempts": 0, "delayMs": 5}', '{"attempts": 2}',
                '{"attempts": 2, "delayMs": 5, "backoff": "linear"}', '{"attempts": 2, "delayMs": 50, "maxDelayMs": 10}',
                '{"attempts": true, "delayMs": 5}', '{"attempts": 2, "delayMs": 5, "retryOn": [1]}']:
        assert RetryPolicy.parse(bad) is None, bad


def test_delays_are_fixed_or_doubling_up_to_the_cap() -> None:
    assert [RetryPolicy(5, 100).delay_after(n) for n in (1, 2, 3)] == [100, 100, 100]
    assert [EXPONENTIAL.delay_after(n) for n in (1, 2, 3, 4)] == [100, 200, 400, 500]


def test_jitter_waits_half_to_all_of_the_delay_in_tenths() -> None:
    policy = RetryPolicy(3, 1000, jitter=True)
    assert policy.delay_after(1, rand=lambda: 0.0) == 500
    assert policy.delay_after(1, rand=lambda: 0.999) == 1000
    assert policy.delay_after(1, rand=lambda: 0.33) == 600
    assert {policy.delay_after(1) % 100 for _ in range(50)} == {0}


def test_what_is_retried() -> None:
    now = int(time.time() * 1000)
    retryable = TaskError("UPSTREAM", "503", retryable=True)

    def decide(policy: RetryPolicy | None = EXPONENTIAL, attempt: int = 1, error: TaskError = retryable, **kw: Any) -> Any:
        args: dict[str, Any] = {"chunks_sent": False, "cancelled": False, "deadline_ms": now + 60_000, "now_ms": now}
        args.update(kw)
        return next_attempt(policy, attempt, error, **args)

    assert decide() == (2, 100)
    assert decide(attempt=3) == (4, 400)
    assert decide(attempt=5) is None, "attempts used up"
    assert decide(policy=None) is None, "no policy, no retry"
    assert decide(error=TaskError("UPSTREAM", "503")) is None, "not marked retryable"
    assert decide(policy=RetryPolicy(3, 10, retry_on=frozenset({"UPSTREAM"})), error=TaskError("UPSTREAM", "503")) == (2, 10)
    assert decide(error=TaskError("CANCELLED", "x", retryable=True)) is None
    assert decide(error=TaskError("INVALID_PAYLOAD", "x", retryable=True)) is None
    assert decide(chunks_sent=True) is None, "a stream never starts over"
    assert decide(cancelled=True) is None
    assert decide(deadline_ms=now + 100) is None, "the next attempt would start at the deadline"
    assert decide(deadline_ms=now + 101) == (2, 100)
    assert decide(deadline_ms=None) == (2, 100)


def test_wait_queues_dead_letter_back_to_the_request_queue() -> None:
    assert wait_queue("taskgate.echo", 250) == "taskgate.echo.retry.250"
    assert wait_queue_arguments("taskgate.echo", 250) == {
        "x-message-ttl": 250,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "taskgate.echo",
        "x-expires": 60_250,
    }


async def flaky(payload: Any, ctx: Context) -> Any:
    if ctx.attempt < 3:
        raise TaskError("UPSTREAM", f"attempt {ctx.attempt} failed", retryable=True)
    return {"attempt": ctx.attempt}


async def test_a_retryable_failure_schedules_the_next_attempt_and_acks_without_a_reply() -> None:
    first = await run_request(flaky, None, retry=EXPONENTIAL)
    assert first.raw == [], "the client hears nothing of a failed attempt"
    assert first.retries == [(2, 100)]
    assert first.settlements == [Settlement.ACK]
    assert first.outcome is not None and first.outcome.kind is OutcomeKind.RETRIED
    second = await run_request(flaky, None, retry=EXPONENTIAL, attempt=2)
    assert second.retries == [(3, 200)]
    third = await run_request(flaky, None, retry=EXPONENTIAL, attempt=3)
    assert third.result == {"attempt": 3}
    assert third.retries == []


async def test_the_last_attempt_replies_the_error() -> None:
    replies = await run_request(flaky, None, retry=RetryPolicy(2, 10), attempt=2)
    assert replies.error == TaskError("UPSTREAM", "attempt 2 failed")
    assert replies.retries == []


async def test_no_attempt_starts_after_the_deadline() -> None:
    soon = int(time.time() * 1000) + 50
    replies = await run_request(flaky, None, retry=RetryPolicy(5, 1000), deadline_ms=soon)
    assert replies.error is not None and replies.error.code == "UPSTREAM"
    assert replies.retries == []


async def test_a_failure_after_a_chunk_is_final() -> None:
    async def streams_then_fails(payload: Any, ctx: Context) -> Any:
        await ctx.chunk({"step": 1})
        raise TaskError("UPSTREAM", "503", retryable=True)

    replies = await run_request(streams_then_fails, None, retry=EXPONENTIAL)
    assert replies.chunks == [{"step": 1}]
    assert replies.error is not None and replies.error.code == "UPSTREAM"
    assert replies.retries == []


async def test_without_a_policy_a_retryable_error_is_replied() -> None:
    replies = await run_request(flaky, None)
    assert replies.error == TaskError("UPSTREAM", "attempt 1 failed")
