"""The translation between aio-pika and the runner: headers of any integer type, the
consumer-timeout close, refusals that retrying cannot fix."""

from __future__ import annotations

from typing import Any

import aiormq.exceptions as amqp_errors
import pytest

from taskgate_worker.amqp import _header_identity, _header_int, _header_str, _is_refusal, is_consumer_timeout
from taskgate_worker.transport import Identity

TIMEOUT_TEXT = (
    "PRECONDITION_FAILED - delivery acknowledgement on channel 3 timed out. Timeout value used: 1800000 ms."
    " This timeout value can be configured, see consumers doc guide to learn more"
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1_700_000_000_123, 1_700_000_000_123), (5, 5), (b" 42 ", 42), ("7", 7), (True, None), ("x", None),
     (None, None), (1.5, None)],
)
def test_deadline_headers_of_any_integer_type_are_read(value: Any, expected: int | None) -> None:
    assert _header_int(value) == expected


def test_traceparent_headers_are_text() -> None:
    assert _header_str(b"00-ab-cd-01") == "00-ab-cd-01"
    assert _header_str("00-ab-cd-01") == "00-ab-cd-01"
    assert _header_str(7) is None


def test_identity_headers_are_subject_and_roles_json() -> None:
    assert _header_identity(b'{"subject":"ada","roles":["admin","ops"]}') == Identity("ada", ("admin", "ops"))
    assert _header_identity('{"subject":"bob","roles":[]}') == Identity("bob", ())
    for malformed in [None, 7, b"not json", b'{"subject":5,"roles":[]}', b'{"subject":"a","roles":"admin"}',
                      b'{"subject":"a","roles":[1]}', b"[]", b"\xff"]:
        assert _header_identity(malformed) is None, malformed


def test_the_consumer_timeout_close_is_recognised_and_nothing_else() -> None:
    assert is_consumer_timeout(amqp_errors.ChannelPreconditionFailed(TIMEOUT_TEXT))
    assert not is_consumer_timeout(amqp_errors.ChannelPreconditionFailed("PRECONDITION_FAILED - unknown delivery tag 1"))
    assert not is_consumer_timeout(amqp_errors.ChannelNotFoundEntity(TIMEOUT_TEXT))
    assert not is_consumer_timeout(None)


def test_credentials_and_virtual_hosts_the_broker_refuses_are_final() -> None:
    assert _is_refusal(amqp_errors.ProbableAuthenticationError("ACCESS_REFUSED"))
    assert _is_refusal(amqp_errors.ConnectionNotAllowed("NOT_ALLOWED - vhost nope not found"))
    assert _is_refusal(
        amqp_errors.InvalidFrameError("Expected one of ['Connection.OpenOk'], got <Connection.Close object at 0x1>")
    )
    assert not _is_refusal(ConnectionRefusedError(111, "Connection refused"))
    assert not _is_refusal(amqp_errors.ConnectionClosed(320, "CONNECTION_FORCED - shutdown"))
