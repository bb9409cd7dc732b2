"""Workers typed by the module ``taskgate-codegen --target python`` generated from the client's
sample ``taskgate schemas`` (``taskgate_types.py``, kept up to date by the client's codegen tests).
mypy (``scripts/test``) checks this file; ``tests/unit/test_typed_handlers.py`` shows that mypy
refuses the wrong uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

from taskgate_worker import Context, Final

from .taskgate_types import (
    DemoCountdownChunk,
    DemoCountdownPayload,
    DemoCountdownResult,
    TaskgateWorker,
    TextWordcountPayload,
    TextWordcountResult,
)

worker = TaskgateWorker()


@worker.handler("text.wordcount")
async def wordcount(payload: TextWordcountPayload, ctx: Context) -> TextWordcountResult:
    text = payload["text"]
    return {"words": len(text.split()), "lines": text.count("\n") + 1, "chars": len(text)}


@worker.handler("demo.countdown")
async def countdown(
    payload: DemoCountdownPayload, ctx: Context
) -> AsyncIterator[DemoCountdownChunk | Final[DemoCountdownResult]]:
    for remaining in range(payload["from"] - 1, -1, -1):
        yield {"remaining": remaining}
    yield Final({"done": True})
