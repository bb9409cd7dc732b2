"""``text.wordcount``: ``{ "text": string }`` → ``{ "words", "lines", "chars" }``, counted
exactly as the Rust example worker counts them (workers/rust/src/bin):

- words are separated by Unicode whitespace (Rust's ``char::is_whitespace``, the
  White_Space property; Python's ``str.split()`` also splits at U+001C–U+001F, which are
  not whitespace there);
- lines as Rust's ``str::lines`` counts them: a final line ending does not start another
  line, and only ``\\n`` ends a line (Python's ``splitlines`` also splits at ``\\r``,
  U+2028 …);
- chars are Unicode scalar values (the SDK refuses JSON with lone surrogates).

Run: ``python -m taskgate_worker examples.wordcount:worker`` (queue
``taskgate.text.wordcount``; ``--queue text.wordcount=OTHER`` to change it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from taskgate_worker import Context, TaskError, Worker

worker = Worker()

# Texts longer than this are counted on a thread, so the event loop keeps serving other
# requests (and cancellations) meanwhile.
_THREAD_ABOVE = 256 * 1024
# Characters Python treats as whitespace but Unicode's White_Space property does not.
_NOT_WHITESPACE = str.maketrans({c: "x" for c in range(0x1C, 0x20)})


def count(text: str) -> dict[str, int]:
    """``{"words", "lines", "chars"}`` of ``text``."""
    words_text = text.translate(_NOT_WHITESPACE) if any(0x1C <= ord(c) <= 0x1F for c in text) else text
    lines = text.count("\n") + (1 if text and not text.endswith("\n") else 0)
    return {"words": len(words_text.split()), "lines": lines, "chars": len(text)}


@worker.handler("text.wordcount")
async def wordcount(payload: Any, ctx: Context) -> dict[str, int]:
    if not isinstance(payload, dict):
        raise TaskError.invalid_payload("", "must be an object { text: string }")
    if "text" not in payload:
        raise TaskError.invalid_payload("", "missing field `text`")
    text = payload["text"]
    if not isinstance(text, str):
        raise TaskError.invalid_payload("/text", "must be a string")
    if len(text) > _THREAD_ABOVE:
        return await asyncio.to_thread(count, text)
    return count(text)
