"""The protocol's worker-side rules, through the runner with an in-memory transport: reply
routing and order, ack only after the final reply is confirmed, deadlines, cancellation,
handler failures, requeue on failed replies, and adoption of redeliveries."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

import pytest

from taskgate_worker import Context, Final, TaskError
from taskgate_worker.runner import OutcomeKind, Runner
from taskgate_worker.testing import MemorySettle, MemoryTransport, collect, run_request
from taskgate_worker.transport import Delivery, Identity, Settlement


def delivery(correlation_id: str = "c-1", body: Any = None, **fields: Any) -> Delivery:
    fields.setdefault("deadline_ms", int(time.time() * 1000) + 60_000)
    return Delivery(
        correlation_id=correlation_id,
        reply_to="taskgate.reply.h",
        request_type="t",
        body=json.dumps(body).encode(),
        **fields,
    )


async def test_the_result_is_the_final_reply_and_the_request_is_acked_after_it() -> None:
    async def double(payload: Any, ctx: Context) -> Any:
        return {"twice": payload * 2, "type": ctx.request_type, "redelivered": ctx.redelivered}

    replies = await run_request(double, 21, request_type="math.double", redelivered=True)
    assert replies.chunks == []
    assert replies.result == {"twice": 42, "type": "math.double", "redelivered": True}
    assert replies.settlements == [Settlement.ACK]
    assert replies.outcome is not None and replies.outcome.kind is OutcomeKind.REPLIED
    (reply,) = replies.raw
    assert (reply.reply_to, reply.kind, reply.seq) == ("taskgate.reply.test", "result", None)


async def test_replies_go_to_reply_to_with_the_correlation_id() -> None:
    transport = MemoryTransport()
    settle = MemorySettle()

    async def handler(payload: Any, ctx: Context) -> Any:
        await ctx.chunk(1)
        return 2

    outcome = await Runner(transport).process(delivery("corr-9"), handler, settle)
    assert outcome.kind is OutcomeKind.REPLIED and outcome.reply == "result"
    assert [(r.reply_to, r.correlation_id, r.kind, r.seq) for r in transport.replies] == [
        ("taskgate.reply.h", "corr-9", "chunk", 0),
        ("taskgate.reply.h", "corr-9", "result", None),
    ]
    assert settle.settlements == [Settlement.ACK]


async def test_chunks_go_out_in_order_before_the_result() -> None:
    async def countdown(payload: Any, ctx: Context) -> Any:
        for remaining in range(payload["from"] - 1, -1, -1):
            await ctx.chunk({"remaining": remaining})
        return {"done": True}

    replies = await run_request(countdown, {"from": 3})
    assert replies.chunks == [{"remaining": 2}, {"remaining": 1}, {"remaining": 0}]
    assert replies.result == {"done": True}
    assert [r.seq for r in replies.raw] == [0, 1, 2, None]


async def test_each_yield_of_an_async_generator_is_a_chunk_and_final_is_the_result() -> None:
    closed = []

    async def stream(payload: Any, ctx: Context) -> AsyncIterator[Any]:
        try:
            for i in range(3):
                yield {"i": i}
            yield Final({"done": True})
            yield {"never": "sent"}
        finally:
            closed.append(True)

    replies = await run_request(stream, None)
    assert replies.chunks == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert replies.result == {"done": True}
    assert closed == [True]

    async def no_final(payload: Any, ctx: Context) -> AsyncIterator[Any]:
        yield "only"

    replies = await run_request(no_final, None)
    assert replies.chunks == ["only"]
    assert replies.result is None and replies.error is None


async def test_chunks_sent_from_several_tasks_get_seq_without_gaps() -> None:
    async def fan_out(payload: Any, ctx: Context) -> Any:
        await asyncio.gather(*(ctx.chunk(i) for i in range(50)))
        return "ok"

    replies = await run_request(fan_out, None)  # collect() checks x-seq 0..49 in order
    assert sorted(replies.chunks) == list(range(50))


async def test_a_task_error_is_the_error_reply_with_its_code_message_and_details() -> None:
    async def refuse(payload: Any, ctx: Context) -> Any:
        await ctx.chunk("partial")
        raise TaskError("NOT_FOUND", "no such user", {"id": 7})

    replies = await run_request(refuse, None)
    assert replies.chunks == ["partial"]
    assert replies.error == TaskError("NOT_FOUND", "no such user", {"id": 7})
    assert json.loads(replies.raw[-1].body) == {"code": "NOT_FOUND", "message": "no such user", "details": {"id": 7}}
    assert replies.settlements == [Settlement.ACK]

    async def plain(payload: Any, ctx: Context) -> Any:
        raise TaskError("E", "m")

    replies = await run_request(plain, None)
    assert json.loads(replies.raw[-1].body) == {"code": "E", "message": "m"}


async def test_any_other_exception_is_a_worker_error_with_its_message_and_the_traceback_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def buggy(payload: Any, ctx: Context) -> Any:
        empty: dict[str, int] = {}
        return empty["missing"]

    replies = await run_request(buggy, None, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert replies.error == TaskError("WORKER_ERROR", "'missing'")
    assert "Traceback" not in replies.raw[-1].body.decode()
    assert replies.settlements == [Settlement.ACK]
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" in record.getMessage()
    assert "correlation_id=" in record.getMessage()

    async def silent(payload: Any, ctx: Context) -> Any:
        raise RuntimeError()

    replies = await run_request(silent, None)
    assert replies.error == TaskError("WORKER_ERROR", "RuntimeError")


async def test_a_body_that_is_not_json_is_answered_invalid_payload_without_running_the_handler() -> None:
    calls = []

    async def handler(payload: Any, ctx: Context) -> Any:
        calls.append(payload)

    replies = await run_request(handler, body=b"{oops")
    assert replies.error is not None and replies.error.code == "INVALID_PAYLOAD"
    assert replies.error.details == {"problems": [{"pointer": "", "message": replies.error.message.split(": ", 1)[1]}]}
    assert calls == []
    assert replies.settlements == [Settlement.ACK]


async def test_a_result_that_is_not_json_is_a_worker_error() -> None:
    async def handler(payload: Any, ctx: Context) -> Any:
        return {"when": object()}

    replies = await run_request(handler, None)
    assert replies.error is not None and replies.error.code == "WORKER_ERROR"
    assert "result could not be serialised" in replies.error.message


async def test_an_expired_request_is_acked_without_running() -> None:
    calls = []

    async def handler(payload: Any, ctx: Context) -> Any:
        calls.append(1)

    transport, settle = MemoryTransport(), MemorySettle()
    outcome = await Runner(transport).process(delivery(deadline_ms=int(time.time() * 1000) - 1), handler, settle)
    assert outcome.kind is OutcomeKind.EXPIRED
    assert (calls, transport.replies, settle.settlements) == ([], [], [Settlement.ACK])


async def test_a_request_nobody_can_be_answered_for_is_acked_and_dropped() -> None:
    async def handler(payload: Any, ctx: Context) -> Any:
        raise AssertionError("not called")

    for broken in (Delivery(correlation_id=None, reply_to="q"), Delivery(correlation_id="c", reply_to=None)):
        transport, settle = MemoryTransport(), MemorySettle()
        outcome = await Runner(transport).process(broken, handler, settle)
        assert outcome.kind is OutcomeKind.UNANSWERABLE
        assert (transport.replies, settle.settlements) == ([], [Settlement.ACK])


async def test_the_context_tells_the_deadline_and_the_trace() -> None:
    seen: dict[str, Any] = {}

    async def handler(payload: Any, ctx: Context) -> Any:
        seen.update(deadline=ctx.deadline_ms, at=ctx.deadline, remaining=ctx.remaining(), trace=ctx.traceparent,
                    streams=ctx.streams, cancelled=ctx.cancelled)

    deadline = int(time.time() * 1000) + 60_000
    await run_request(handler, None, deadline_ms=deadline, traceparent="00-ab-cd-01")
    assert seen["deadline"] == deadline
    assert seen["at"].timestamp() == deadline / 1000
    assert 0 < seen["remaining"] <= 60
    assert (seen["trace"], seen["streams"], seen["cancelled"]) == ("00-ab-cd-01", True, False)


async def test_the_context_tells_who_sent_the_request() -> None:
    seen: list[Identity | None] = []

    async def handler(payload: Any, ctx: Context) -> Any:
        seen.append(ctx.identity)

    await run_request(handler, None, identity=Identity("ada", ("admin",)))
    await run_request(handler, None)
    assert seen == [Identity("ada", ("admin",)), None]


# --- cancellation -------------------------------------------------------------------------

async def start(runner: Runner, handler: Any, correlation_id: str = "c-1", **fields: Any) -> tuple[asyncio.Task[Any], MemorySettle]:
    settle = MemorySettle()
    task = asyncio.create_task(runner.process(delivery(correlation_id, **fields), handler, settle))
    return task, settle


async def test_a_cancelled_handler_that_stops_by_itself_is_answered_cancelled() -> None:
    started = asyncio.Event()

    async def patient(payload: Any, ctx: Context) -> Any:
        started.set()
        await ctx.wait_cancelled()
        raise RuntimeError("stopping")  # whatever it fails with, the answer is CANCELLED

    transport = MemoryTransport()
    runner = Runner(transport, cancel_grace=30)
    task, settle = await start(runner, patient)
    await started.wait()
    runner.cancellations.cancel("c-1")
    outcome = await task
    assert outcome.kind is OutcomeKind.REPLIED
    assert collect(transport.replies).error == TaskError.cancelled()
    assert settle.settlements == [Settlement.ACK]
    assert runner.cancellations.running == 0 and runner.running == 0


async def test_a_handler_that_ignores_the_cancellation_has_its_task_cancelled_after_the_grace() -> None:
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    async def stubborn(payload: Any, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()  # never set
        finally:
            cleaned_up.set()

    transport = MemoryTransport()
    runner = Runner(transport, cancel_grace=0.01)
    task, settle = await start(runner, stubborn)
    await started.wait()
    runner.cancellations.cancel("c-1")
    await task
    assert cleaned_up.is_set()
    assert collect(transport.replies).error == TaskError.cancelled()
    assert settle.settlements == [Settlement.ACK]


async def test_a_result_returned_within_the_grace_still_wins() -> None:
    started = asyncio.Event()

    async def finisher(payload: Any, ctx: Context) -> Any:
        started.set()
        await ctx.wait_cancelled()
        return "finished anyway"

    transport = MemoryTransport()
    runner = Runner(transport, cancel_grace=30)
    task, _ = await start(runner, finisher)
    await started.wait()
    runner.cancellations.cancel("c-1")
    await task
    assert collect(transport.replies).result == "finished anyway"


async def test_chunk_raises_cancelled_once_cancelled() -> None:
    started, go_on = asyncio.Event(), asyncio.Event()
    raised: list[TaskError] = []

    async def streamer(payload: Any, ctx: Context) -> Any:
        await ctx.chunk(0)
        started.set()
        await go_on.wait()
        try:
            await ctx.chunk(1)
        except TaskError as error:
            raised.append(error)
            raise

    transport = MemoryTransport()
    runner = Runner(transport, cancel_grace=30)
    task, _ = await start(runner, streamer)
    await started.wait()
    runner.cancellations.cancel("c-1")
    go_on.set()
    await task
    assert raised == [TaskError.cancelled()]
    replies = collect(transport.replies)
    assert replies.chunks == [0] and replies.error == TaskError.cancelled()


async def test_a_cancellation_that_arrives_before_its_request_answers_it_without_running() -> None:
    calls = []

    async def handler(payload: Any, ctx: Context) -> Any:
        calls.append(1)

    transport = MemoryTransport()
    runner = Runner(transport)
    runner.cancellations.cancel("c-early")
    settle = MemorySettle()
    await runner.process(delivery("c-early"), handler, settle)
    assert calls == []
    assert collect(transport.replies).error == TaskError.cancelled()
    assert settle.settlements == [Settlement.ACK]
    # Remembered once: the same id again runs.
    await runner.process(delivery("c-early"), handler, MemorySettle())
    assert calls == [1]


async def test_a_dropped_request_cancels_its_handler_and_replies_nothing() -> None:
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    async def long(payload: Any, ctx: Context) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    transport = MemoryTransport()
    runner = Runner(transport)
    task, settle = await start(runner, long)
    await started.wait()
    task.cancel()  # what shutdown does after its grace, and a lost connection
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cleaned_up.wait(), 10)
    assert (transport.replies, settle.settlements, runner.running) == ([], [], 0)


# --- replies that do not reach the broker ------------------------------------------------

async def test_a_chunk_that_is_not_confirmed_leaves_the_request_requeued_without_a_final_reply() -> None:
    async def handler(payload: Any, ctx: Context) -> Any:
        await ctx.chunk(0)
        try:
            await ctx.chunk(1)
        except TaskError as error:
            assert "could not be sent" in error.message
            raise
        return "never"

    transport, settle = MemoryTransport(fail_after=1), MemorySettle()
    outcome = await Runner(transport).process(delivery(), handler, settle)
    assert outcome.kind is OutcomeKind.NOT_ACKED
    assert [r.kind for r in transport.replies] == ["chunk"]
    assert settle.settlements == [Settlement.REQUEUE]


async def test_a_final_reply_that_is_not_confirmed_requeues_the_request() -> None:
    async def handler(payload: Any, ctx: Context) -> Any:
        return 1

    transport, settle = MemoryTransport(fail_after=0), MemorySettle()
    outcome = await Runner(transport).process(delivery(), handler, settle)
    assert outcome.kind is OutcomeKind.NOT_ACKED
    assert settle.settlements == [Settlement.REQUEUE]


async def test_no_chunk_after_the_final_reply() -> None:
    kept: list[Context] = []

    async def handler(payload: Any, ctx: Context) -> Any:
        kept.append(ctx)
        return 1

    transport = MemoryTransport()
    await Runner(transport).process(delivery(), handler, MemorySettle())
    with pytest.raises(TaskError, match="already answered"):
        await kept[0].chunk("late")
    assert [r.kind for r in transport.replies] == ["result"]


# --- the channel a request came on closed (consumer timeout) -----------------------------

async def test_a_redelivery_of_a_running_request_is_adopted_not_run_twice() -> None:
    started, finish = asyncio.Event(), asyncio.Event()
    runs = []

    async def long(payload: Any, ctx: Context) -> Any:
        runs.append(ctx.redelivered)
        started.set()
        await finish.wait()
        return "done"

    transport = MemoryTransport()
    runner = Runner(transport)
    first_settle = MemorySettle(fail=True)  # its channel is gone
    first = asyncio.create_task(runner.process(delivery("c-long"), long, first_settle))
    await started.wait()

    second_settle = MemorySettle()
    adopted = await runner.process(delivery("c-long", redelivered=True), long, second_settle)
    assert adopted.kind is OutcomeKind.ADOPTED
    assert second_settle.settlements == []

    finish.set()
    outcome = await first
    assert outcome.kind is OutcomeKind.REPLIED
    assert runs == [False]
    assert second_settle.settlements == [Settlement.ACK]
    assert [r.kind for r in transport.replies] == ["result"]


async def test_a_redelivery_after_a_confirmed_reply_whose_ack_failed_is_acked_without_running() -> None:
    runs = []

    async def handler(payload: Any, ctx: Context) -> Any:
        runs.append(1)
        return "ok"

    transport = MemoryTransport()
    runner = Runner(transport)
    outcome = await runner.process(delivery("c-2"), handler, MemorySettle(fail=True))
    assert outcome.kind is OutcomeKind.NOT_ACKED and outcome.reply == "result"

    settle = MemorySettle()
    again = await runner.process(delivery("c-2", redelivered=True), handler, settle)
    assert again.kind is OutcomeKind.ALREADY_ANSWERED
    assert (runs, settle.settlements, len(transport.replies)) == ([1], [Settlement.ACK], 1)
