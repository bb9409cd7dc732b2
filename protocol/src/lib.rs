//! The names and small types of taskgate wire protocol v1 (docs/protocol.md).
//!
//! Both halves of the AMQP contract (the host in `host/` and the Rust worker SDK in
//! `workers/rust/`) take their header names, message types and error codes from here, so a
//! typo cannot make them disagree. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Protocol version implemented by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// AMQP names (protocol §2).
pub mod amqp {
    /// Fanout exchange on which the host announces cancellations (§2.4).
    pub const CANCEL_EXCHANGE: &str = "taskgate.cancel";
    /// Header: the request's deadline as Unix milliseconds (§2.2).
    pub const HEADER_DEADLINE_MS: &str = "x-deadline-ms";
    /// Header: `true` when the request type streams chunks (§2.2).
    pub const HEADER_STREAM: &str = "x-stream";
    /// Header on `chunk` replies: 0, 1, 2 … (§2.3).
    pub const HEADER_SEQ: &str = "x-seq";
    /// Header: who the client authenticated as, an [`Identity`](crate::Identity) as a JSON
    /// string; absent when the host runs without authentication (§3.10).
    pub const HEADER_IDENTITY: &str = "x-identity";
    /// Content type of every request and reply body.
    pub const CONTENT_TYPE_JSON: &str = "application/json";
    /// Persistent delivery mode.
    pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
    /// Prefix of the per-host reply queue; the host appends its instance UUID.
    pub const REPLY_QUEUE_PREFIX: &str = "taskgate.reply.";
    /// Header: the W3C trace context of the request (§3.10), e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub const HEADER_TRACEPARENT: &str = "traceparent";
}

pub mod trace;

/// Socket.IO event names (protocol §1).
pub mod events {
    pub const REQUEST: &str = "request";
    pub const RESPONSE: &str = "response";
    pub const CANCEL: &str = "cancel";
}

/// Limits on the client's request id (§1).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Who a client authenticated as when it connected (§3.10): the host sends it to workers
/// in the [`amqp::HEADER_IDENTITY`] header of every request of that connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The token's subject: a static token's configured subject, or a JWT's `sub` claim.
    pub subject: String,
    /// The roles the token grants, sorted, without duplicates.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Identity {
    pub fn new(
        subject: impl Into<String>,
        roles: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let mut roles: Vec<String> = roles.into_iter().map(Into::into).collect();
        roles.sort();
        roles.dedup();
        Identity {
            subject: subject.into(),
            roles,
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Whether every role of `required` is granted.
    pub fn has_roles<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required.iter().all(|r| self.has_role(r.as_ref()))
    }
}

/// The `type` property of a reply message (§2.3), and of a `response` event (§1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyKind {
    Chunk,
    Result,
    Error,
}

impl ReplyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Chunk => "chunk",
            ReplyKind::Result => "result",
            ReplyKind::Error => "error",
        }
    }

    /// Parses the AMQP `type` property of a reply; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "chunk" => Some(ReplyKind::Chunk),
            "result" => Some(ReplyKind::Result),
            "error" => Some(ReplyKind::Error),
            _ => None,
        }
    }
}

/// Every error code of protocol §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownRequestType,
    InvalidPayload,
    PayloadTooLarge,
    DuplicateId,
    Forbidden,
    RateLimited,
    Unavailable,
    Timeout,
    Cancelled,
    WorkerError,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownRequestType,
        ErrorCode::InvalidPayload,
        ErrorCode::PayloadTooLarge,
        ErrorCode::DuplicateId,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Cancelled,
        ErrorCode::WorkerError,
        ErrorCode::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownRequestType => "UNKNOWN_REQUEST_TYPE",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::DuplicateId => "DUPLICATE_ID",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::WorkerError => "WORKER_ERROR",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The error object of protocol §1: `{ code, message, details? }`.
///
/// `code` is a string, not an [`ErrorCode`], because a worker may report codes of its own
/// (§1: "its own `code` may replace this one").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.as_str().to_owned(),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

/// The body of an `error` reply from a worker (§2.3): `code` is optional and defaults to
/// `WORKER_ERROR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl WorkerErrorBody {
    /// The error object the client sees for this worker error.
    pub fn into_error_body(self) -> ErrorBody {
        ErrorBody {
            code: self
                .code
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| ErrorCode::WorkerError.as_str().to_owned()),
            message: self.message,
            details: self.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_protocol_strings() {
        let names: Vec<String> = ErrorCode::ALL
            .iter()
            .map(|c| serde_json::to_value(c).map(|v| v.as_str().unwrap_or_default().to_owned()))
            .collect::<Result<_, _>>()
            .unwrap_or_default();
        assert_eq!(names.len(), 12);
        assert!(names.contains(&"UNKNOWN_REQUEST_TYPE".to_owned()));
        assert!(names.contains(&"WORKER_ERROR".to_owned()));
    }

    #[test]
    fn worker_error_without_code_defaults_to_worker_error() {
        let body: WorkerErrorBody =
            serde_json::from_str(r#"{"message":"boom"}"#).unwrap_or(WorkerErrorBody {
                code: Some("X".into()),
                message: String::new(),
                details: None,
            });
        assert_eq!(body.into_error_body().code, "WORKER_ERROR");
    }

    #[test]
    fn worker_error_keeps_its_own_code() {
        let body = WorkerErrorBody {
            code: Some("NOT_FOUND".into()),
            message: "x".into(),
            details: None,
        };
        assert_eq!(body.into_error_body().code, "NOT_FOUND");
    }

    #[test]
    fn identities_keep_sorted_unique_roles_and_read_without_roles() {
        let id = Identity::new("alice", ["b", "a", "b"]);
        assert_eq!(id.roles, vec!["a".to_owned(), "b".to_owned()]);
        assert!(id.has_roles(&["a", "b"]));
        assert!(!id.has_roles(&["a", "c"]));
        assert!(id.has_roles::<&str>(&[]));
        let bare: Identity = serde_json::from_str(r#"{"subject":"svc"}"#)
            .unwrap_or_else(|_| Identity::new("x", ["y"]));
        assert_eq!(bare, Identity::new("svc", Vec::<String>::new()));
    }

    #[test]
    fn reply_kind_parses_only_known_types() {
        assert_eq!(ReplyKind::parse("chunk"), Some(ReplyKind::Chunk));
        assert_eq!(ReplyKind::parse("result"), Some(ReplyKind::Result));
        assert_eq!(ReplyKind::parse("error"), Some(ReplyKind::Error));
        assert_eq!(ReplyKind::parse("Result"), None);
        assert_eq!(ReplyKind::parse(""), None);
    }
}
