//! Why a request is refused or ends in error, as a typed enum.
//!
//! Every variant maps to exactly one protocol error code (§1 of docs/protocol.md), so the
//! code a client sees is decided in one place. Messages are for humans and never contain
//! payload contents (payloads can be large or sensitive).

use serde_json::json;
use taskgate_plugin_api::Problem;
use taskgate_protocol::{ErrorBody, ErrorCode};

use crate::broker::PublishError;

/// A request the host refuses (in the `request` ack) or ends early (as a final `response`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("malformed request envelope: {0}")]
    BadRequest(String),
    #[error("no enabled plugin serves request type `{0}`")]
    UnknownRequestType(String),
    #[error("payload of `{request_type}` is invalid: {}", summarize(problems))]
    InvalidPayload {
        request_type: String,
        problems: Vec<Problem>,
    },
    #[error("payload is {size} bytes; `{request_type}` accepts at most {limit} bytes")]
    PayloadTooLarge {
        request_type: String,
        size: usize,
        limit: usize,
    },
    #[error("request id `{0}` is already in flight on this connection")]
    DuplicateId(String),
    #[error(
        "this connection may not call `{0}`: its identity lacks a role the request type requires"
    )]
    Forbidden(String),
    #[error("{0}")]
    RateLimited(RateLimit),
    #[error("{0}")]
    Unavailable(UnavailableCause),
    #[error("no final reply within {0} ms")]
    Timeout(u64),
    /// The plugin's validation of the payload took longer than the type's budget.
    #[error("validating the payload of `{request_type}` took longer than its budget of {budget_ms} ms (validation_budget_ms)")]
    ValidationTimeout {
        request_type: String,
        budget_ms: u64,
    },
    #[error("the request was cancelled")]
    Cancelled,
    /// A worker's reply body over `[limits] max_reply_bytes`: the request ends, so that the
    /// client sees no silent gap in its chunks.
    #[error("the worker's reply is larger than {limit} bytes ({size} bytes)")]
    ReplyTooLarge { size: usize, limit: usize },
    /// Replies that arrived before the publish confirm, past what the host buffers.
    #[error("the worker sent more replies before the request was confirmed than the host buffers ({replies} replies, {bytes} bytes)")]
    TooManyEarlyReplies { replies: usize, bytes: usize },
    #[error("internal error: {0}")]
    Internal(String),
    /// `attach` (protocol §4.2): the same answer whether the task never existed, belongs to
    /// someone else or has ended, so that it reveals nothing.
    #[error("no request with this id to attach to: it never existed, belongs to another session, or has ended")]
    TaskNotFound,
}

/// Why a request is `UNAVAILABLE`: the host cannot take it now, or cannot finish it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnavailableCause {
    /// The host is shutting down: new requests are refused, and those still in flight
    /// after the grace period are ended.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The broker session was lost, and with its exclusive reply queue every reply of the
    /// requests in flight.
    #[error("the broker connection was lost; the reply to this request cannot arrive")]
    BrokerLost,
    /// The broker did not take the request (not connected, refused, unroutable, no
    /// confirm in time).
    #[error("the request could not be handed to the broker: {0}")]
    PublishFailed(PublishError),
    /// The connection is being closed while its request is admitted.
    #[error("the connection is closing")]
    ConnectionClosing,
    /// The shared task store could not be reached (a detached task, `[resume] store`).
    #[error("{0}")]
    TaskStore(String),
    /// No worker consumes the type's queue, and has not for a while (`serving`): the
    /// request would only wait for its `TIMEOUT`.
    #[error("no worker serves request type `{request_type}`: its queue `{queue}` has no consumer")]
    NoConsumers { request_type: String, queue: String },
}

/// Which per-connection limit a request ran into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimit {
    /// `max` requests were already in flight on the connection.
    InFlight { max: usize },
    /// The owner already has `max` detached tasks, running or kept (protocol §4.3).
    Tasks { max: usize },
    /// What the host keeps for replay in all (`[resume] max_kept_bytes`) leaves no room for
    /// a new task's chunks.
    KeptBytes { max: usize },
    /// Over the connection's request rate; the next request fits in `retry_after_ms`.
    Rate {
        per_second: u32,
        retry_after_ms: u64,
    },
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimit::InFlight { max } => {
                write!(f, "this connection already has {max} requests in flight")
            }
            RateLimit::Tasks { max } => write!(
                f,
                "this session already has {max} detached tasks, running or kept: wait for one to end or expire"
            ),
            RateLimit::KeptBytes { max } => write!(
                f,
                "the host keeps all the chunks it can for replay ({max} bytes): no room for a new detached task now; retry later"
            ),
            RateLimit::Rate {
                per_second,
                retry_after_ms,
            } => write!(
                f,
                "over this connection's limit of {per_second} requests per second; retry in {retry_after_ms} ms"
            ),
        }
    }
}

/// Longest message the host echoes back for a malformed envelope: parse errors quote the
/// input, and a client must not be able to make the host send its garbage back in bulk.
const MAX_ECHOED_CHARS: usize = 200;

impl RequestError {
    /// A `BAD_REQUEST` whose message is cut to a bounded length.
    pub fn bad_request(message: impl Into<String>) -> Self {
        RequestError::BadRequest(bounded(message.into()))
    }

    /// `UNKNOWN_REQUEST_TYPE` naming the client's request type, cut to a bounded length:
    /// a request type is whatever the client sent, up to the message limit.
    pub fn unknown_request_type(request_type: String) -> Self {
        RequestError::UnknownRequestType(bounded(request_type))
    }
}

/// `text`, or its first [`MAX_ECHOED_CHARS`] characters and "…".
fn bounded(text: String) -> String {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn summarize(problems: &[Problem]) -> String {
    match problems {
        [] => "rejected by the plugin".to_owned(),
        [only] => describe(only),
        [first, rest @ ..] => format!("{} (and {} more)", describe(first), rest.len()),
    }
}

fn describe(p: &Problem) -> String {
    if p.pointer.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.pointer, p.message)
    }
}

impl RequestError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::BadRequest(_) => ErrorCode::BadRequest,
            RequestError::UnknownRequestType(_) => ErrorCode::UnknownRequestType,
            RequestError::InvalidPayload { .. } => ErrorCode::InvalidPayload,
            RequestError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            RequestError::DuplicateId(_) => ErrorCode::DuplicateId,
            RequestError::Forbidden(_) => ErrorCode::Forbidden,
            RequestError::RateLimited(_) => ErrorCode::RateLimited,
            RequestError::Unavailable(_) => ErrorCode::Unavailable,
            RequestError::Timeout(_) | RequestError::ValidationTimeout { .. } => ErrorCode::Timeout,
            RequestError::Cancelled => ErrorCode::Cancelled,
            RequestError::ReplyTooLarge { .. } | RequestError::TooManyEarlyReplies { .. } => {
                ErrorCode::WorkerError
            }
            RequestError::Internal(_) => ErrorCode::Internal,
            RequestError::TaskNotFound => ErrorCode::TaskNotFound,
        }
    }

    /// The protocol error object for this error, with machine-readable `details` where
    /// a program can act on them.
    pub fn to_body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.code(), self.to_string());
        match self {
            RequestError::InvalidPayload { problems, .. } => {
                body.with_details(json!({ "problems": problems }))
            }
            RequestError::PayloadTooLarge { size, limit, .. } => {
                body.with_details(json!({ "size": size, "limit": limit }))
            }
            RequestError::Timeout(ms) => body.with_details(json!({ "timeoutMs": ms })),
            RequestError::ReplyTooLarge { size, limit } => {
                body.with_details(json!({ "size": size, "limit": limit }))
            }
            RequestError::TooManyEarlyReplies { replies, bytes } => {
                body.with_details(json!({ "replies": replies, "bytes": bytes }))
            }
            RequestError::RateLimited(RateLimit::InFlight { max }) => {
                body.with_details(json!({ "limit": "inFlight", "max": max }))
            }
            RequestError::RateLimited(RateLimit::Tasks { max }) => {
                body.with_details(json!({ "limit": "tasks", "max": max }))
            }
            RequestError::RateLimited(RateLimit::KeptBytes { max }) => {
                body.with_details(json!({ "limit": "keptBytes", "max": max }))
            }
            RequestError::RateLimited(RateLimit::Rate {
                per_second,
                retry_after_ms,
            }) => body.with_details(json!({
                "limit": "rate",
                "perSecond": per_second,
                "retryAfterMs": retry_after_ms,
            })),
            RequestError::Unavailable(UnavailableCause::NoConsumers {
                request_type,
                queue,
            }) => body.with_details(json!({
                "reason": taskgate_protocol::REASON_NO_CONSUMERS,
                "requestType": request_type,
                "queue": queue,
            })),
            _ => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_payload_lists_problems_in_details() {
        let err = RequestError::InvalidPayload {
            request_type: "text.wordcount".into(),
            problems: vec![Problem {
                pointer: "/text".into(),
                message: "expected a string".into(),
            }],
        };
        let body = err.to_body();
        assert_eq!(body.code, "INVALID_PAYLOAD");
        assert!(body.message.contains("/text: expected a string"));
        assert_eq!(
            body.details,
            Some(json!({"problems": [{"pointer": "/text", "message": "expected a string"}]}))
        );
    }

    #[test]
    fn an_unknown_request_type_is_echoed_bounded() {
        let long = "t".repeat(1_000_000);
        let message = RequestError::unknown_request_type(long).to_string();
        assert!(
            message.chars().count() < MAX_ECHOED_CHARS + 100,
            "{}",
            message.len()
        );
        assert_eq!(
            RequestError::unknown_request_type("math.prime".into()).to_string(),
            "no enabled plugin serves request type `math.prime`"
        );
    }

    #[test]
    fn bad_request_messages_are_bounded() {
        let long = "[".repeat(10_000);
        let RequestError::BadRequest(message) = RequestError::bad_request(long) else {
            panic!("not a bad request");
        };
        assert_eq!(message.chars().count(), MAX_ECHOED_CHARS + 1);
        assert_eq!(
            RequestError::bad_request("short").to_string(),
            "malformed request envelope: short"
        );
    }

    #[test]
    fn each_variant_has_its_protocol_code() {
        assert_eq!(
            RequestError::BadRequest("x".into()).code().as_str(),
            "BAD_REQUEST"
        );
        assert_eq!(
            RequestError::DuplicateId("a".into()).code().as_str(),
            "DUPLICATE_ID"
        );
        assert_eq!(
            RequestError::Timeout(5).to_body().details,
            Some(json!({"timeoutMs": 5}))
        );
        assert_eq!(RequestError::Cancelled.code().as_str(), "CANCELLED");
        assert_eq!(
            RequestError::Forbidden("t".into()).code().as_str(),
            "FORBIDDEN"
        );
    }

    #[test]
    fn no_consumers_names_the_request_type_and_its_queue() {
        let body = RequestError::Unavailable(UnavailableCause::NoConsumers {
            request_type: "math.primes".into(),
            queue: "q.primes".into(),
        })
        .to_body();
        assert_eq!(body.code, "UNAVAILABLE");
        assert_eq!(
            body.message,
            "no worker serves request type `math.primes`: its queue `q.primes` has no consumer"
        );
        assert_eq!(
            body.details,
            Some(
                json!({"reason": "noConsumers", "requestType": "math.primes", "queue": "q.primes"})
            )
        );
    }

    #[test]
    fn every_unavailable_cause_is_code_unavailable_with_a_message_of_its_own() {
        let causes = [
            UnavailableCause::ShuttingDown,
            UnavailableCause::BrokerLost,
            UnavailableCause::PublishFailed(PublishError::NotConnected),
            UnavailableCause::ConnectionClosing,
            UnavailableCause::TaskStore("the task store is unreachable: refused".into()),
        ];
        let messages: Vec<String> = causes
            .into_iter()
            .map(|cause| {
                let body = RequestError::Unavailable(cause).to_body();
                assert_eq!(body.code, "UNAVAILABLE");
                assert_eq!(body.details, None);
                body.message
            })
            .collect();
        assert_eq!(
            messages,
            [
                "the host is shutting down",
                "the broker connection was lost; the reply to this request cannot arrive",
                "the request could not be handed to the broker: not connected to the broker",
                "the connection is closing",
                "the task store is unreachable: refused",
            ]
        );
    }

    #[test]
    fn rate_limits_say_which_limit_and_when_to_retry() {
        let body = RequestError::RateLimited(RateLimit::Rate {
            per_second: 5,
            retry_after_ms: 200,
        })
        .to_body();
        assert_eq!(body.code, "RATE_LIMITED");
        assert_eq!(
            body.details,
            Some(json!({"limit": "rate", "perSecond": 5, "retryAfterMs": 200}))
        );
        let body = RequestError::RateLimited(RateLimit::InFlight { max: 3 }).to_body();
        assert_eq!(body.details, Some(json!({"limit": "inFlight", "max": 3})));
        assert!(body.message.contains("3 requests in flight"));
    }
}
