"""A task that outlives RabbitMQ's consumer timeout, on a broker node of the test's own
whose ``consumer_timeout`` is 2 s (see private_broker.py): the broker closes the worker's
consuming channel and requeues the request; the worker logs it as an error, consumes
again, keeps the handler running and adopts the redelivery; the request completes once."""

from __future__ import annotations

import os

from collections.abc import AsyncIterator

import pytest

from .harness import Run
from .private_broker import PrivateBroker

pytestmark = pytest.mark.integration


@pytest.fixture
async def private_run(private_broker: PrivateBroker, request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    current = Run(amqp_url=private_broker.url)
    try:
        yield current
    finally:
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed or os.environ.get("TASKGATE_TEST_DUMP"):
            print(current.dump())
        await current.cleanup()


async def test_a_task_longer_than_the_consumer_timeout_runs_once_and_completes(private_run: Run) -> None:
    run = private_run
    host = await run.start_host({"echo": {"timeout_ms": 120_000}})
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)

    rid, _ = await client.request("echo", {"op": "sleep", "seconds": 6})
    started = await worker.wait_for_line(r"probe sleeping 6 s \(redelivered False\) \[correlation_id=([0-9a-f-]+)")
    correlation_id = started.group(1)
    await worker.wait_for_line(r"ERROR taskgate_worker: RabbitMQ closed the consuming channel: a request was not"
                               r" acked within its consumer_timeout .*delivery acknowledgement on channel \d+ timed out",
                               timeout=30)
    await worker.wait_for_line(r"consuming again after the consumer timeout")
    await worker.wait_for_line(rf"delivered again while it still runs here .*\[correlation_id={correlation_id}")

    assert (await client.final(rid, timeout=60))["data"] == {"slept": 6}
    await worker.wait_for_line(rf"request acked \[correlation_id={correlation_id}|acked without running \[correlation_id={correlation_id}")
    # Started once, however many times the broker took it back.
    assert len(worker.matching(rf"probe sleeping 6 s .*{correlation_id}")) == 1
    assert client.violations == []
    assert await worker.stop() == 0
    assert await run.queue_depth(host.queues["echo"]) == 0
