"""The shapes a handler may take, and how each is run to one result.

A handler is called with the parsed payload (any JSON value) and the request's
:class:`~taskgate_worker.Context`:

- ``async def h(payload, ctx)`` returns the result (any JSON-serialisable value), may send
  chunks first with ``await ctx.chunk(data)``, and raises ``TaskError`` for a failure it
  reports;
- ``async def h(payload, ctx)`` with ``yield`` (an async generator): each yielded value is a
  chunk; the result is ``None`` (JSON ``null``) unless the generator yields
  ``Final(value)``, which ends it with that result.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar, Union

from .context import Context

HandlerResult = Union[Awaitable[Any], AsyncIterator[Any]]
Handler = Callable[[Any, Context], HandlerResult]
"""``async def handler(payload, ctx)``, returning the result or yielding chunks."""

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
C = TypeVar("C")


@dataclass(frozen=True)
class Final(Generic[T]):
    """Yielded by an async-generator handler: the request's result; the generator is
    closed (its ``finally`` blocks run) and nothing after it is sent."""

    value: T


TypedHandler = Callable[[P, Context], Union[Awaitable[R], AsyncIterator[Union[C, Final[R]]]]]
"""A handler of payload type ``P``, result type ``R`` and chunk type ``C``: what
``taskgate-codegen --target python`` names per request type (``TextWordcountHandler``), so that
mypy checks the handler's use of its payload, its result and what it yields."""


def check_handler(handler: object) -> None:
    """Refuses what cannot be a handler, at registration rather than at the first request."""
    call = getattr(handler, "__call__", None)  # an object with `async def __call__`
    if not any(
        inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (handler, call)
    ):
        raise TypeError(
            f"a handler must be an `async def` function (returning the result, or yielding"
            f" chunks), not {handler!r}"
        )


async def call_handler(handler: Handler, payload: Any, ctx: Context) -> Any:
    """Runs ``handler`` to its result: awaits a coroutine; drives an async generator,
    sending each yielded value as a chunk, until it ends or yields :class:`Final`."""
    outcome = handler(payload, ctx)
    if isinstance(outcome, AsyncGenerator):
        return await _drive(outcome, ctx)
    if inspect.isawaitable(outcome):
        return await outcome
    raise TypeError(f"the handler returned {type(outcome).__name__}, not an awaitable or async generator")


async def _drive(chunks: AsyncGenerator[Any, None], ctx: Context) -> Any:
    try:
        async for item in chunks:
            if isinstance(item, Final):
                return item.value
            await ctx.chunk(item)
        return None
    finally:
        # Runs the generator's `finally` blocks now (after Final, or when a chunk failed),
        # not whenever it is garbage-collected.
        await chunks.aclose()
