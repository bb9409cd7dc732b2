"""Fixtures of the integration tests: a :class:`Run` per test (its queues, host, workers
and clients, all cleaned up), with every process's log printed when the test fails."""

from __future__ import annotations

import os

import socket
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

import pytest

from .harness import AMQP_URL, HOST_BIN, PLUGINS_DIR, Run
from .private_broker import PrivateBroker



@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _broker_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def prerequisites() -> None:
    # Missing pieces fail the suite (CI must not pass by skipping); the message says how to fix.
    problems = []
    if not HOST_BIN.exists():
        problems.append(f"no host binary at {HOST_BIN} (cargo build --workspace --bins)")
    if not any(PLUGINS_DIR.glob("*.so")):
        problems.append(f"no plugins in {PLUGINS_DIR} (scripts/build-plugins)")
    if AMQP_URL.startswith("amqp://guest:guest@127.0.0.1:5672") and not _broker_reachable():
        problems.append("RabbitMQ is not listening on 127.0.0.1:5672 (scripts/ensure-deps)")
    if problems:
        pytest.fail("integration prerequisites missing: " + "; ".join(problems), pytrace=False)


@pytest.fixture
async def run(request: pytest.FixtureRequest) -> AsyncIterator[Run]:
    current = Run()
    try:
        yield current
    finally:
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed or os.environ.get("TASKGATE_TEST_DUMP"):
            print(current.dump())
        await current.cleanup()


@pytest.fixture(scope="module")
def private_broker() -> Iterator[PrivateBroker]:
    broker = PrivateBroker(consumer_timeout_ms=2000)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
