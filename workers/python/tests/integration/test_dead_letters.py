"""Poison messages (protocol §3.11) with the Python SDK's own worker: a worker process that
ends itself (``os._exit``) on a marked request, restarted by the test after each crash as an
orchestrator would. The marked request is delivered 3 times (the default delivery limit),
then dead-lettered; its client gets the final error at once, not at its timeout; unmarked
requests sent at the same time all succeed."""

from __future__ import annotations

import asyncio
import time

import pytest

from .harness import Proc, Run, wait_until

pytestmark = pytest.mark.integration

#: The request type's timeout: the client must hear of the poison long before it.
TIMEOUT_MS = 60_000
#: The exit status of ``{"op": "exit"}`` in the probe worker.
CRASH_STATUS = 3


class Supervisor:
    """Keeps one probe worker running on ``queue``, starting a new one whenever the last
    crashed; records when each crash happened."""

    def __init__(self, run: Run, queue: str) -> None:
        self.run = run
        self.queue = queue
        self.crashes: list[float] = []
        self.procs: list[Proc] = []
        self.unexpected: list[str] = []
        self._stopped = False
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopped:
            # One request at a time: a crash takes no innocent request with it.
            proc = await self.run.start_worker(
                "tests.integration.probe_worker:worker", {"echo": self.queue}, "--prefetch", "1",
                wait_ready=False, name=f"crashing{len(self.procs) + 1}",
            )
            self.procs.append(proc)
            code = await proc.process.wait()
            if self._stopped:
                break
            if code != CRASH_STATUS:
                self.unexpected.append(f"{proc.name} exited {code}:\n{proc.tail()}")
            self.crashes.append(time.monotonic())

    async def stop(self) -> None:
        self._stopped = True
        for proc in self.procs:
            await proc.stop()
        await self._task


async def test_a_request_the_worker_crashes_on_is_dead_lettered_after_3_deliveries_and_its_client_told_at_once(
    run: Run,
) -> None:
    host = await run.start_host({"echo": {"timeout_ms": TIMEOUT_MS}})
    queue = host.queues["echo"]
    supervisor = Supervisor(run, queue)
    client = await run.client(host)

    sent = time.monotonic()
    poison_id, _ = await client.request("echo", {"op": "exit"})
    innocents = [(await client.request("echo", {"op": "echo", "data": {"n": i}}))[0] for i in range(10)]

    final = await client.final(poison_id, timeout=TIMEOUT_MS / 1000 + 5)
    answered = time.monotonic()
    assert final["type"] == "error", final
    error = final["error"]
    assert error["code"] == "WORKER_ERROR"
    assert "delivered to workers 3 times" in error["message"]
    assert error["details"]["reason"] == "deliveryLimit"
    assert error["details"]["deliveries"] == 3
    assert error["details"]["deadLetterQueue"] == run.dead_letter_queue
    # The broker may see the third worker's connection drop (and the host answer) before this
    # process reaps the child: give the supervisor a moment to record the crash.
    await wait_until(lambda: len(supervisor.crashes) >= 3, 5, "the third crash to be recorded")
    assert len(supervisor.crashes) == 3, f"one crash per delivery: {supervisor.crashes}"
    assert supervisor.unexpected == []
    after_third_crash = answered - supervisor.crashes[2]
    print(f"the client had its error {after_third_crash * 1000:.0f} ms after the third crash, "
          f"{(answered - sent) * 1000:.0f} ms after sending")
    # Not a tight timing (the machine is shared): a tenth of the timeout is "at once" next to it.
    assert after_third_crash < TIMEOUT_MS / 1000 / 10, f"told {after_third_crash:.1f} s after the third crash"

    for i, request_id in enumerate(innocents):
        assert await client.final(request_id) == {"id": request_id, "type": "result", "data": {"n": i}}
    assert client.violations == []
    # The dead letter is kept for operators in the run's own dead-letter queue.
    assert await run.queue_depth(run.dead_letter_queue) == 1
    await supervisor.stop()
