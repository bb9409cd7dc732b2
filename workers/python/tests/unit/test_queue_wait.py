"""Waiting for a queue the host has not declared yet: one INFO line, quiet looks, a bound."""

from __future__ import annotations

import logging
import time

import pytest

from taskgate_worker.amqp import wait_for_queue


class Probe:
    """Answers "missing" ``missing`` times, then "exists"; counts its calls."""

    def __init__(self, missing: int) -> None:
        self.missing = missing
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.missing


def waiting_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "waiting for queue" in r.getMessage()]


async def test_a_queue_that_exists_is_not_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="taskgate_worker")
    probe = Probe(0)
    assert await wait_for_queue(probe, "q", patience=60, poll=60)
    assert probe.calls == 1
    assert waiting_lines(caplog) == []


async def test_a_missing_queue_is_waited_for_with_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="taskgate_worker")
    probe = Probe(3)
    assert await wait_for_queue(probe, "taskgate.echo", patience=60, poll=0.005)
    assert probe.calls == 4
    [line] = waiting_lines(caplog)
    assert line.levelno == logging.INFO
    assert "waiting for queue taskgate.echo to be declared by the host" in line.getMessage()
    assert all(r.levelno < logging.WARNING for r in caplog.records)


async def test_the_wait_ends_with_the_patience() -> None:
    probe = Probe(10**9)
    started = time.monotonic()
    assert not await wait_for_queue(probe, "q", patience=0.1, poll=0.03)
    assert time.monotonic() - started >= 0.1
    assert 2 <= probe.calls <= 5  # at once, then every 30 ms up to 100 ms (fewer on a slow machine)


async def test_a_failing_look_ends_the_wait() -> None:
    calls = 0

    async def refused() -> bool:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("ACCESS_REFUSED")
        return False

    with pytest.raises(RuntimeError, match="ACCESS_REFUSED"):
        await wait_for_queue(refused, "q", patience=60, poll=0.005)
