"""JSON in and out, as strict as the host and the Rust SDK (serde_json).

Python's ``json`` module is more lenient than the contract: it reads UTF-16/32 bodies,
``NaN`` and ``Infinity``, and raises ``RecursionError`` on deeply nested input. Payloads
go through :func:`parse_payload`, which refuses all of that with ``INVALID_PAYLOAD``;
results and chunks through :func:`encode`, which refuses NaN and values that are not JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import TaskError, problems
from . import protocol


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# An escaped UTF-16 surrogate (``\\ud800``); only then can a string hold a lone one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_payload(body: bytes) -> Any:
    """The request body as JSON; ``INVALID_PAYLOAD`` (pointer ``""``, like the Rust SDK)
    when it is not UTF-8 JSON. Strings hold Unicode scalar values only: a lone surrogate
    escape (``"\\ud800"``), which serde_json refuses too, is not valid JSON text here."""
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
        if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(value):
            raise ValueError("lone surrogate in a \\u escape")
        return value
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise TaskError(
            protocol.INVALID_PAYLOAD,
            f"the payload is not valid JSON: {reason}",
            problems("", reason),
        ) from None


def encode(value: Any, what: str) -> bytes:
    """``value`` as compact UTF-8 JSON; ``WORKER_ERROR`` naming ``what`` (``result``,
    ``chunk``) when it is not JSON-serialisable."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
            "utf-8"
        )
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise TaskError(
            protocol.WORKER_ERROR, f"the {what} could not be serialised: {reason}"
        ) from None
