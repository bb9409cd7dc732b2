"""Payloads are read as strictly as the host reads them; results are written as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from taskgate_worker import TaskError
from taskgate_worker.jsonio import encode, parse_payload


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b"1 2", b"NaN", b'{"x": Infinity}', b"\xff\xfe", '"x"'.encode("utf-16"), b'"\\ud800"',
     b'{"\\udc00": 1}', b"[" * 100_000 + b"]" * 100_000],
)
def test_a_body_that_is_not_strict_utf8_json_is_an_invalid_payload(body: bytes) -> None:
    with pytest.raises(TaskError) as caught:
        parse_payload(body)
    error = caught.value
    assert error.code == "INVALID_PAYLOAD"
    assert error.message.startswith("the payload is not valid JSON: ")
    assert error.details["problems"][0]["pointer"] == ""


@pytest.mark.parametrize(
    ("body", "value"),
    [(b"null", None), (b'{"a":[1,2.5,"\xc3\xa9"]}', {"a": [1, 2.5, "é"]}), (b'"\\ud83d\\ude00"', "😀"),
     (b" 12345678901234567890 ", 12345678901234567890)],
)
def test_json_payloads_parse(body: bytes, value: Any) -> None:
    assert parse_payload(body) == value


def test_results_are_compact_utf8_json() -> None:
    assert encode({"text": "日本", "n": [1, None]}, "result") == '{"text":"日本","n":[1,null]}'.encode()


@pytest.mark.parametrize("value", [float("nan"), object(), {1j: 1}, "\ud800"])
def test_a_value_that_is_not_json_is_a_worker_error(value: Any) -> None:
    with pytest.raises(TaskError) as caught:
        encode(value, "chunk")
    assert caught.value.code == "WORKER_ERROR"
    assert caught.value.message.startswith("the chunk could not be serialised: ")


def test_task_errors_have_the_reply_body_shape() -> None:
    assert TaskError("E", "m").body() == {"code": "E", "message": "m"}
    assert TaskError("E", "m", {"k": [1]}).body() == {"code": "E", "message": "m", "details": {"k": [1]}}
    assert TaskError("", "m").code == "WORKER_ERROR"
    assert TaskError.cancelled().is_cancelled
    invalid = TaskError.invalid_payload("/text", "must be a string")
    assert invalid.body() == {
        "code": "INVALID_PAYLOAD",
        "message": "/text must be a string",
        "details": {"problems": [{"pointer": "/text", "message": "must be a string"}]},
    }
    assert json.loads(json.dumps(invalid.body())) == invalid.body()
