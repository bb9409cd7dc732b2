"""Configuration mistakes are refused before connecting, with a message that says what."""

from __future__ import annotations

from typing import Any

import pytest

from taskgate_worker import Context, Worker, WorkerError
from taskgate_worker.cli import configure, load_worker, main, parser


async def ok(payload: Any, ctx: Context) -> Any:
    return payload


def test_handlers_are_registered_per_request_type_on_their_default_queues() -> None:
    worker = Worker()

    @worker.handler("text.wordcount")
    async def count(payload: Any, ctx: Context) -> Any:
        return 1

    worker.handle("echo", ok, queue="custom.echo", queue_arguments={"x-queue-type": "quorum"})
    assert [(r.request_type, r.queue, r.arguments) for r in worker.routes] == [
        ("text.wordcount", "taskgate.text.wordcount", None),
        ("echo", "custom.echo", {"x-queue-type": "quorum"}),
    ]
    with pytest.raises(ValueError, match="two handlers"):
        worker.handle("echo", ok)


def test_a_handler_must_be_async() -> None:
    def blocking(payload: Any, ctx: Context) -> Any:
        return payload

    class Callable:
        async def __call__(self, payload: Any, ctx: Context) -> Any:
            return payload

    worker = Worker()
    with pytest.raises(TypeError, match="async def"):
        worker.handle("x", blocking)
    worker.handle("y", Callable())


@pytest.mark.parametrize(
    ("settings", "routes", "message"),
    [
        ({}, [], "no handlers"),
        ({"amqp_url": "http://x"}, [("a", {})], "invalid AMQP URL"),
        ({"prefetch": 0}, [("a", {})], "prefetch"),
        ({}, [("a", {"queue": "q"}), ("b", {"queue": "q"})], "has two handlers"),
        ({}, [("a", {"queue": "q" * 256})], "1 to 255 bytes"),
        ({}, [("a", {"queue_arguments": {"x": [1]}})], "strings, numbers and booleans"),
    ],
)
def test_bad_settings_are_refused_before_connecting(
    settings: dict[str, Any], routes: list[tuple[str, dict[str, Any]]], message: str
) -> None:
    worker = Worker(**settings)
    for request_type, options in routes:
        worker.handle(request_type, ok, **options)
    with pytest.raises(WorkerError, match=message):
        worker.check()


def test_the_cli_loads_the_worker_and_applies_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKGATE_AMQP_URL", "amqp://u:p@127.0.0.1:1/%2f")
    args = parser().parse_args(
        ["examples.echo:worker", "--queue", "echo=test.q", "--prefetch", "4", "--connection-name", "n"]
    )
    worker = load_worker(args.target)
    configure(worker, args)
    assert [r.queue for r in worker.routes] == ["test.q"]
    assert (worker.prefetch, worker.connection_name) == (4, "n")
    assert worker.settings().amqp_url == "amqp://u:p@127.0.0.1:1/%2f"
    args = parser().parse_args(["examples.echo:worker", "--queue", "nope=q"])
    with pytest.raises(WorkerError, match=r"unknown request type 'nope' \(served: echo\)"):
        configure(load_worker(args.target), args)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.echo", "MODULE:ATTR"),
        ("examples.nothing:worker", "cannot import"),
        ("examples.echo:nobody", "no attribute"),
        ("examples.echo:MAX_CHUNKS", "not a taskgate_worker.Worker"),
    ],
)
def test_the_cli_says_what_is_wrong_with_a_target(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([target]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["x:y", "--prefetch", "0"], ["x:y", "--queue", "echo"], ["x:y", "--queue", "=q"]])
def test_the_cli_refuses_bad_flags(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2


def test_the_combined_example_serves_both_types_on_their_default_queues() -> None:
    worker = load_worker("examples.all:worker")
    assert [(r.request_type, r.queue) for r in worker.routes] == [
        ("echo", "taskgate.echo"),
        ("text.wordcount", "taskgate.text.wordcount"),
    ]
