"""The worker's side of the AMQP contract, seen from RabbitMQ: requests published straight
to its queue (as a host would, or as a host cannot: expired, without reply_to), replies
read from a queue of the test's own."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import aio_pika
import pytest

from .harness import Run

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class FakeHost:
    """Publishes requests to a worker's queue and collects the replies."""

    def __init__(self, run: Run, queue: str) -> None:
        self.run = run
        self.queue = queue
        self.replies: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def __aenter__(self) -> FakeHost:
        self.connection = await self.run.amqp()
        self.channel = await self.connection.channel()
        await self.channel.declare_queue(self.queue, durable=True)
        self.run.queues.add(self.queue)
        self.reply_queue = await self.channel.declare_queue(f"pyint.{self.run.id}.replies", exclusive=True)
        await self.reply_queue.consume(self._on_reply, no_ack=True)
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.connection.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.replies.append(message)

    async def send(self, payload: Any, *, deadline_ms: int | None = None, reply_to: str | None = "",
                   headers: dict[str, Any] | None = None) -> str:
        correlation_id = str(uuid.uuid4())
        all_headers: dict[str, Any] = {"x-deadline-ms": deadline_ms or int(time.time() * 1000) + 60_000, "x-stream": True}
        all_headers.update(headers or {})
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps(payload).encode(),
                content_type="application/json",
                correlation_id=correlation_id,
                reply_to=self.reply_queue.name if reply_to == "" else reply_to,
                type="echo",
                headers=all_headers,
            ),
            routing_key=self.queue,
        )
        return correlation_id

    def replies_for(self, correlation_id: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        return [r for r in self.replies if r.correlation_id == correlation_id]


async def test_replies_carry_the_protocol_properties_and_log_lines_carry_the_trace(run: Run) -> None:
    queue = run.queue_for("echo")
    async with FakeHost(run, queue) as host:
        worker = await run.start_worker("examples.echo:worker", {"echo": queue})
        correlation_id = await host.send({"chunks": 2}, headers={"traceparent": TRACEPARENT})
        await worker.wait_for_line(rf"final reply: result \[correlation_id={correlation_id} traceparent={TRACEPARENT}\]")
        for _ in range(500):
            if len(host.replies_for(correlation_id)) == 3:
                break
            await asyncio.sleep(0.02)
        replies = host.replies_for(correlation_id)
        assert [r.type for r in replies] == ["chunk", "chunk", "result"]
        assert [(r.headers or {}).get("x-seq") for r in replies] == [0, 1, None]
        assert {r.content_type for r in replies} == {"application/json"}
        assert [json.loads(r.body) for r in replies] == [{"index": 0}, {"index": 1}, {"chunks": 2}]
        assert worker.matching(rf"request started .*\[correlation_id={correlation_id} traceparent={TRACEPARENT}\]")


async def test_expired_and_unanswerable_requests_are_acked_without_running(run: Run) -> None:
    queue = run.queue_for("echo")
    async with FakeHost(run, queue) as host:
        worker = await run.start_worker("tests.integration.probe_worker:worker", {"echo": queue})
        expired = await host.send({"op": "info"}, deadline_ms=int(time.time() * 1000) - 1000)
        await worker.wait_for_line(rf"request expired \d+ ms before it started; acked and dropped \[correlation_id={expired}")
        await host.send({"op": "info"}, reply_to=None)
        await worker.wait_for_line(r"request without reply_to or correlation_id")
        # Later requests are served, and the skipped ones got no reply.
        answered = await host.send({"op": "info"})
        await worker.wait_for_line(rf"final reply: result \[correlation_id={answered}")
        assert host.replies_for(expired) == []
        assert not worker.matching(rf"request started .*{expired}")
        assert await worker.stop() == 0
        assert await run.queue_depth(queue) == 0  # all three acked
