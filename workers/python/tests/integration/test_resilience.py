"""Workers come and go, and so does the broker: requests in flight still complete."""

from __future__ import annotations

import asyncio
import re
import socket
import sys

import pytest

from .harness import PYTHON_DIR, Proc, Proxy, Run, child_env

pytestmark = pytest.mark.integration


async def test_the_worker_waits_for_the_broker_and_reconnects_and_the_request_in_flight_completes(run: Run) -> None:
    host = await run.start_host()
    # The worker reaches RabbitMQ through a proxy that is not there yet.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    worker = await run.start_worker(
        "tests.integration.probe_worker:worker", {"echo": host.queues["echo"]},
        amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/%2f", wait_ready=False,
    )
    await worker.wait_for_line(r"broker not available \(attempt 2", timeout=30)
    proxy = Proxy("127.0.0.1", 5672)
    proxy.server = await asyncio.start_server(proxy._serve, "127.0.0.1", port)
    try:
        await worker.wait_for_line(r"worker ready", timeout=30)
        client = await run.client(host)
        rid, _ = await client.request("echo", {"op": "sleep", "seconds": 1.5})
        await worker.wait_for_line(r"probe sleeping 1.5 s \(redelivered False\)")

        proxy.cut()  # the broker "goes away": RabbitMQ requeues the unacked request
        await worker.wait_for_line(r"lost the broker connection")
        await worker.wait_for_line(r"worker ready", count=2)
        await worker.wait_for_line(r"probe sleeping 1.5 s \(redelivered True\)")
        assert (await client.final(rid))["data"] == {"slept": 1.5}
        assert client.violations == []
    finally:
        await proxy.close()


async def test_a_request_of_a_killed_worker_is_redelivered_to_another_and_completes(run: Run) -> None:
    host = await run.start_host()
    queues = {"echo": host.queues["echo"]}
    first = await run.start_worker("tests.integration.probe_worker:worker", queues, "--prefetch", "1")
    client = await run.client(host)
    rid, _ = await client.request("echo", {"op": "sleep", "seconds": 1})
    await first.wait_for_line(r"probe sleeping 1 s \(redelivered False\)")
    second = await run.start_worker("tests.integration.probe_worker:worker", queues, "--prefetch", "1")

    first.kill()  # mid-request: nothing was acked
    assert await first.wait() != 0
    await second.wait_for_line(r"probe sleeping 1 s \(redelivered True\)")
    assert (await client.final(rid))["data"] == {"slept": 1}


async def test_sigterm_stops_consuming_and_finishes_the_requests_in_progress(run: Run) -> None:
    host = await run.start_host()
    worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    client = await run.client(host)
    rid, _ = await client.request("echo", {"op": "sleep", "seconds": 2})
    await worker.wait_for_line(r"probe sleeping 2 s")

    await asyncio.sleep(0.2)
    worker.process.terminate()
    await worker.wait_for_line(r"shutting down: stopped consuming; finishing the 1 request\(s\) in progress")
    # Not consumed any more: this one waits in the queue for another worker.
    later, _ = await client.request("echo", {"op": "info"})
    assert (await client.final(rid))["data"] == {"slept": 2}
    assert await worker.wait() == 0
    assert worker.matching(r"worker stopped")
    assert not worker.matching(r"probe cancelled")
    assert await run.queue_depth(host.queues["echo"]) == 1
    successor = await run.start_worker("tests.integration.probe_worker:worker", {"echo": host.queues["echo"]})
    assert (await client.final(later))["data"]["requestType"] == "echo"
    await successor.stop()


@pytest.mark.parametrize(
    "url", ["amqp://nobody:wrong@127.0.0.1:5672/%2f", "amqp://guest:guest@127.0.0.1:5672/no-such-vhost"]
)
async def test_refused_credentials_or_virtual_host_stop_the_worker_with_a_clear_message(run: Run, url: str) -> None:
    proc = await Proc.start(
        "refused",
        [sys.executable, "-m", "taskgate_worker", "examples.echo:worker",
         "--amqp-url", url, "--queue", f"echo={run.queue_for('echo')}"],
        child_env(), cwd=PYTHON_DIR,
    )
    run.procs.append(proc)
    assert await proc.wait(60) == 1
    assert any(re.search(r"taskgate-worker: the broker refused the connection", line) for line in proc.lines), proc.tail()
