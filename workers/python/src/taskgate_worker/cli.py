"""``python -m taskgate_worker MODULE:ATTR``: serves the :class:`~taskgate_worker.Worker`
that ``MODULE.ATTR`` names (or that ``MODULE.ATTR()`` returns) until SIGTERM or SIGINT.

``--queue TYPE=QUEUE`` consumes a request type from another queue (as the Rust example
binary does), ``--prefetch N`` sets the requests of each queue handled at once, and
``--amqp-url`` (``TASKGATE_AMQP_URL``) names the broker. Logs go to stderr; the line
``worker ready`` appears once it consumes. Exit status: 0 after a graceful shutdown,
1 when the worker cannot run (bad target, configuration or credentials), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Sequence

from .errors import WorkerError
from .settings import DEFAULT_SHUTDOWN_GRACE
from .worker import Worker


def _queue_override(text: str) -> tuple[str, str]:
    request_type, sep, queue = text.partition("=")
    if not sep or not request_type or not queue:
        raise argparse.ArgumentTypeError(f"expected TYPE=QUEUE, got {text!r}")
    return request_type, queue


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be from 1 to 65535")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m taskgate_worker",
        description="Serve a taskgate worker: MODULE:ATTR names a taskgate_worker.Worker"
        " (or a function returning one), e.g. examples.wordcount:worker.",
    )
    p.add_argument("target", metavar="MODULE:ATTR")
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("TASKGATE_AMQP_URL"),
        help="RabbitMQ URL (default: $TASKGATE_AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/%%2f)",
    )
    p.add_argument(
        "--queue",
        dest="queues",
        action="append",
        default=[],
        type=_queue_override,
        metavar="TYPE=QUEUE",
        help="consume TYPE's requests from QUEUE instead (repeatable)",
    )
    p.add_argument("--prefetch", type=_positive, help="requests of each queue handled at once")
    p.add_argument(
        "--shutdown-grace",
        type=float,
        help=f"seconds shutdown waits for requests in progress (default {DEFAULT_SHUTDOWN_GRACE:g})",
    )
    p.add_argument("--connection-name", help="the connection's name in the broker's tools")
    p.add_argument(
        "--log-level",
        default=os.environ.get("TASKGATE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING … (default: $TASKGATE_LOG_LEVEL, else INFO)",
    )
    return p


def load_worker(target: str) -> Worker:
    """The worker ``MODULE:ATTR`` names; ``WorkerError`` saying what is wrong otherwise."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise WorkerError(f"expected MODULE:ATTR (e.g. examples.wordcount:worker), got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise WorkerError(f"cannot import {module_name!r}: {error}") from error
    value = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise WorkerError(f"{module_name!r} has no attribute {attr!r}") from None
    if callable(value) and not isinstance(value, Worker):
        value = value()
    if not isinstance(value, Worker):
        raise WorkerError(f"{target} is a {type(value).__name__}, not a taskgate_worker.Worker")
    return value


def configure(worker: Worker, args: argparse.Namespace) -> None:
    if args.amqp_url:
        worker.amqp_url = args.amqp_url
    if args.prefetch is not None:
        worker.prefetch = args.prefetch
    if args.shutdown_grace is not None:
        worker.shutdown_grace = args.shutdown_grace
    if args.connection_name:
        worker.connection_name = args.connection_name
    for request_type, queue in args.queues:
        try:
            worker.set_queue(request_type, queue)
        except ValueError as error:
            raise WorkerError(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"taskgate-worker: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # `python -m` puts the working directory on the path; the console script does not.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        worker = load_worker(args.target)
        configure(worker, args)
        worker.check()
        asyncio.run(worker.run_until_signal())
    except WorkerError as error:
        print(f"taskgate-worker: {error}", file=sys.stderr)
        return 1
    return 0
