"""The Python workers behind the real host: a Socket.IO client sends requests as a browser
would and gets the worker's results, chunks in order, and errors."""

from __future__ import annotations

import re

import pytest

from .harness import Run

pytestmark = pytest.mark.integration


async def test_wordcount_answers_unicode_and_large_texts(run: Run) -> None:
    host = await run.start_host({"wordcount": {"max_payload_bytes": 8 << 20}})
    await run.start_worker("examples.wordcount:worker", {"text.wordcount": host.queues["text.wordcount"]})
    client = await run.client(host)

    rid, _ = await client.request("text.wordcount", {"text": "héllo wörld\nsecond line  here"})
    assert await client.final(rid) == {"id": rid, "type": "result", "data": {"words": 5, "lines": 2, "chars": 29}}

    big = "日本語 wörds\n" * 60_000  # 660,000 characters
    rid, _ = await client.request("text.wordcount", {"text": big})
    assert (await client.final(rid))["data"] == {"words": 120_000, "lines": 60_000, "chars": len(big)}
    assert client.violations == []


async def test_echo_streams_chunks_in_order_then_fails_or_answers_as_asked(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker("examples.echo:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)

    rid, exchange = await client.request("echo", {"chunks": 200, "note": "ü"})
    assert (await client.final(rid))["data"] == {"chunks": 200, "note": "ü"}
    assert exchange.chunks == [{"index": i} for i in range(200)]

    rid, exchange = await client.request("echo", {"chunks": 2, "fail": {"code": "E_TEAPOT", "message": "short", "details": [1]}})
    assert await client.final(rid) == {
        "id": rid, "type": "error", "error": {"code": "E_TEAPOT", "message": "short", "details": [1]}
    }
    assert len(exchange.chunks) == 2

    # A payload the handler cannot process: a clear error, and the worker goes on.
    rid, _ = await client.request("echo", {"chunks": "many"})
    error = (await client.final(rid))["error"]
    assert error["code"] == "INVALID_PAYLOAD"
    assert error["details"] == {"problems": [{"pointer": "/chunks", "message": "must be an integer from 0 to 10000"}]}
    rid, _ = await client.request("echo", "still here")
    assert (await client.final(rid))["data"] == "still here"
    assert worker.alive and client.violations == []


async def test_an_unexpected_exception_is_a_worker_error_without_the_traceback(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)

    rid, _ = await client.request("echo", {"op": "raise", "message": "the disk is full"})
    assert (await client.final(rid))["error"] == {"code": "WORKER_ERROR", "message": "the disk is full"}
    await worker.wait_for_line(r"ValueError: the disk is full")  # the traceback is in the worker's log
    assert worker.matching(r"^Traceback")

    rid, _ = await client.request("echo", {"op": "info"})
    info = (await client.final(rid))["data"]
    assert info["requestType"] == "echo" and info["redelivered"] is False and info["hasDeadline"] is True


async def test_the_clients_trace_reaches_the_handler_and_the_workers_log_lines(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    rid, _ = await client.request("echo", {"op": "info"}, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    info = (await client.final(rid))["data"]
    # The host passes the client's trace on with its own span as the parent (protocol §3.10).
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-01", info["traceparent"]), info
    line = rf"final reply: result \[correlation_id={info['correlationId']} traceparent={info['traceparent']}\]"
    await worker.wait_for_line(line)


async def test_a_cancelled_request_stops_its_handler_and_is_acked(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)

    rid, _ = await client.request("echo", {"op": "sleep", "seconds": 600})
    started = await worker.wait_for_line(r"probe sleeping 600 s .*\[correlation_id=([0-9a-f-]+)")
    correlation_id = started.group(1)
    await client.cancel(rid)
    assert (await client.final(rid))["error"]["code"] == "CANCELLED"

    # The handler ignores ctx.cancelled: after the grace its task is cancelled, and the SDK
    # answers CANCELLED and acks.
    await worker.wait_for_line(rf"request cancelled \[correlation_id={correlation_id}")
    await worker.wait_for_line(rf"probe cancelled \[correlation_id={correlation_id}")
    await worker.wait_for_line(rf"final reply: error \[correlation_id={correlation_id}")
    assert await worker.stop() == 0
    assert await run.queue_depth(host.queues["echo"]) == 0  # acked: not back in the queue


async def test_prefetch_bounds_the_requests_in_progress(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker(
        "tests.integration.probe_worker:worker", {"echo": host.queues["echo"]}, "--prefetch", "1"
    )
    client = await run.client(host)
    first, _ = await client.request("echo", {"op": "sleep", "seconds": 0.5})
    second, _ = await client.request("echo", {"op": "sleep", "seconds": 0.5})
    assert (await client.final(first))["data"] == (await client.final(second))["data"] == {"slept": 0.5}
    events = [line for line in worker.lines if re.search(r"probe sleeping|final reply", line)]
    # One at a time: started, answered, started, answered.
    assert [("start" if "probe sleeping" in line else "end") for line in events] == ["start", "end", "start", "end"]
