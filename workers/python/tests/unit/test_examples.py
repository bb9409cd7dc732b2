"""The example workers, run in memory: the same answers as the Rust example workers."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from examples import echo, wordcount
from taskgate_worker import TaskError
from taskgate_worker.testing import run_request

# Rust's `char::is_whitespace`: the Unicode White_Space property.
RUST_WHITESPACE = {*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                   0x205F, 0x3000}


@pytest.mark.parametrize(
    ("text", "words", "lines", "chars"),
    [
        # The Rust example worker's own cases.
        ("héllo wörld\nsecond line  here", 5, 2, 29),
        ("", 0, 0, 0),
        ("日本語 テキスト", 2, 1, 8),
        ("a\n\nb\n", 2, 3, 5),
        ("e\u0301\r\n", 1, 1, 4),
        # Where Python's own notions differ from Rust's.
        ("a\x1cb\x1fc", 1, 1, 5),          # str.split() splits at U+001C..U+001F
        ("a\rb\u2028c\x0bd", 4, 1, 7),     # str.splitlines() splits at \r, U+2028, \v
        ("\n", 0, 1, 1),
        ("x\n\n", 1, 2, 3),
        ("\r", 0, 1, 1),
        ("😀 \U0001F469\u200D\U0001F4BB", 2, 1, 5),  # scalar values, not graphemes; ZWJ is not a space
    ],
)
def test_counts_words_lines_and_chars_as_the_rust_worker_does(text: str, words: int, lines: int, chars: int) -> None:
    assert wordcount.count(text) == {"words": words, "lines": lines, "chars": chars}


def test_every_code_point_separates_words_exactly_when_rust_says_it_is_whitespace() -> None:
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        separates = wordcount.count(f"a{chr(code)}b")["words"] == 2
        assert separates == (code in RUST_WHITESPACE), hex(code)


async def test_wordcount_answers_through_the_sdk_and_counts_large_texts() -> None:
    replies = await run_request(wordcount.wordcount, {"text": "two words"})
    assert replies.result == {"words": 2, "lines": 1, "chars": 9}
    big = "wörd " * 400_000 + "\n" + "日本\n" * 100_000  # 2.4 M characters: counted on a thread
    replies = await run_request(wordcount.wordcount, {"text": big})
    assert replies.result == {"words": 500_000, "lines": 100_001, "chars": len(big)}


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [({"text": 3}, "/text"), ({}, ""), ("text", ""), (None, ""), ({"text": None}, "/text")],
)
async def test_wordcount_refuses_payloads_without_a_text(payload: Any, pointer: str) -> None:
    replies = await run_request(wordcount.wordcount, payload)
    assert replies.error is not None and replies.error.code == "INVALID_PAYLOAD"
    assert replies.error.details["problems"][0]["pointer"] == pointer


@pytest.mark.parametrize("payload", [None, "x", [1, {"a": 2}], {"chunks": 0, "k": "v"}, {"delayMs": 0}])
async def test_echo_returns_any_payload_unchanged(payload: Any) -> None:
    replies = await run_request(echo.echo, payload)
    assert replies.result == payload and replies.chunks == []


async def test_echo_streams_the_chunks_asked_for_then_the_payload() -> None:
    payload = {"chunks": 3, "note": "x"}
    replies = await run_request(echo.echo, payload)
    assert replies.chunks == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert replies.result == payload


async def test_echo_fails_as_asked_after_its_chunks() -> None:
    replies = await run_request(
        echo.echo, {"chunks": 1, "fail": {"code": "E_TEAPOT", "message": "short and stout", "details": [1]}}
    )
    assert len(replies.chunks) == 1
    assert replies.error == TaskError("E_TEAPOT", "short and stout", [1])
    replies = await run_request(echo.echo, {"fail": {"message": "m"}})
    assert replies.error == TaskError("WORKER_ERROR", "m")


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ({"chunks": 10_001}, "/chunks"),
        ({"chunks": -1}, "/chunks"),
        ({"chunks": "3"}, "/chunks"),
        ({"chunks": True}, "/chunks"),
        ({"chunks": 2.0}, "/chunks"),
        ({"delayMs": 1.5}, "/delayMs"),
        ({"delayMs": 600_001}, "/delayMs"),
        ({"fail": "x"}, "/fail"),
        ({"fail": {"code": "E"}}, "/fail/message"),
        ({"fail": {"code": 1, "message": "m"}}, "/fail/code"),
    ],
)
async def test_echo_refuses_steering_fields_out_of_range(payload: Any, pointer: str) -> None:
    replies = await run_request(echo.echo, payload)
    assert replies.error is not None and replies.error.code == "INVALID_PAYLOAD", payload
    assert replies.error.details["problems"][0]["pointer"] == pointer
    assert replies.chunks == []


async def test_a_cancellation_ends_the_echo_delay() -> None:
    # Without the cancellation the wait would last ten minutes (the suite's timeout).
    replies = await run_request(echo.echo, {"delayMs": 600_000}, cancel_after=0.05)
    assert replies.error == TaskError.cancelled()
