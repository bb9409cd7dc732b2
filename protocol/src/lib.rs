//! The names and small types of taskgate wire protocol v1 (docs/protocol.md).
//!
//! Both halves of the AMQP contract (the host in `host/` and the Rust worker SDK in
//! `workers/rust/`) take their header names, message types and error codes from here, so a
//! typo cannot make them disagree. Nothing here does I/O.
//!
//! The other languages copy these names by hand: the TypeScript client (`client/src`), the
//! Node and Python worker SDKs, the e2e harness, and the tables of docs/protocol.md. The
//! tidy test (`tests/tidy.rs`) compares every copy with the lists declared here (`ALL`,
//! [`amqp::HEADERS`], [`events::ALL`]), so a name added here fails `cargo test` until each
//! copy has it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Protocol version implemented by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Declares string constants and a list of them all, `(constant's name, value)`, from one
/// list: a name added here is in the list, which the tidy test (tests/tidy.rs) compares with
/// the copies in TypeScript, Python and docs/protocol.md.
macro_rules! name_list {
    ($(#[$list_meta:meta])* $list:ident { $($(#[$meta:meta])* $constant:ident = $value:literal,)* }) => {
        $($(#[$meta])* pub const $constant: &str = $value;)*
        $(#[$list_meta])*
        pub const $list: &[(&str, &str)] = &[$((stringify!($constant), $value)),*];
    };
}

/// Declares a protocol enum from one list of `Variant => "NAME"`: the enum, `ALL` (in list
/// order), `as_str`, `parse`, `Display`, and serde as those same strings.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $wire:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in the order docs/protocol.md lists them.
            pub const ALL: [$name; [$($wire),*].len()] = [$($name::$variant),*];

            /// The name on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }

            /// The value named `s` on the wire (case matters); `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&s, &[$($wire),*]))
            }
        }
    };
}

/// AMQP names (protocol §2).
pub mod amqp {
    /// Fanout exchange on which the host announces cancellations (§2.4).
    pub const CANCEL_EXCHANGE: &str = "taskgate.cancel";
    /// Fanout exchange on which a host claims a session's request held by another host
    /// (§4.5); every host binds its reply queue to it. Between hosts only: workers never
    /// see it.
    pub const TASKS_EXCHANGE: &str = "taskgate.tasks";
    /// AMQP `type` of a claim on [`TASKS_EXCHANGE`] (§4.5).
    pub const CLAIM_TYPE: &str = "taskgate.claim";
    /// AMQP `type` of a hand-off, sent to the claiming host's reply queue (§4.5). Worker
    /// replies never use it (theirs are `chunk`, `result`, `error`).
    pub const HANDOFF_TYPE: &str = "taskgate.handoff";
    /// Fanout exchange on which every host with the operator console on publishes its
    /// heartbeat (§2.6); workers never see it.
    pub const HOSTS_EXCHANGE: &str = "taskgate.hosts";

    name_list! {
        /// Every header of the protocol.
        HEADERS {
            /// Header: the request's deadline as Unix milliseconds (§2.2).
            HEADER_DEADLINE_MS = "x-deadline-ms",
            /// Header: `true` when the request type streams chunks (§2.2).
            HEADER_STREAM = "x-stream",
            /// Header on `chunk` replies: 0, 1, 2 … (§2.3).
            HEADER_SEQ = "x-seq",
            /// Header: who the client authenticated as, an [`Identity`](crate::Identity) as a JSON
            /// string; absent when the host runs without authentication (§3.9).
            HEADER_IDENTITY = "x-identity",
            /// Header: the W3C trace context of the request (§3.10), e.g.
            /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
            HEADER_TRACEPARENT = "traceparent",
            /// Header: the request type's retry policy as a JSON string (§3.12), e.g.
            /// `{"attempts":3,"backoff":"exponential","delayMs":1000}`; absent: no retries.
            HEADER_RETRY = "x-retry",
            /// Header: which attempt of the request this delivery is, 1, 2 … (§3.12); absent: 1.
            /// Set by the worker SDK that schedules a retry.
            HEADER_ATTEMPT = "x-attempt",
        }
    }

    /// Content type of every request and reply body.
    pub const CONTENT_TYPE_JSON: &str = "application/json";
    /// Persistent delivery mode.
    pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
    /// Prefix of the per-host reply queue; the host appends its instance UUID.
    pub const REPLY_QUEUE_PREFIX: &str = "taskgate.reply.";
    /// The shared, durable (quorum) reply queue of detached tasks when the hosts share a task
    /// store: every host consumes it, so a reply outlives the host that published the
    /// request (§4.3).
    pub const TASK_REPLY_QUEUE: &str = "taskgate.task-replies";

    /// The default name of the dead-letter queue, where requests delivered too often without
    /// an answer are kept for operators (§3.11). The dead-letter exchange has the same name;
    /// hosts consume `<name>.inbox`. `[host] dead_letter_queue` changes all three.
    pub const DEAD_LETTER_QUEUE: &str = "taskgate.dead-letters";
    /// Suffix of the queue hosts consume dead letters from (§3.11).
    pub const DEAD_LETTER_INBOX_SUFFIX: &str = ".inbox";
    /// The `type` of a worker's *retry notice* (§3.12): not a reply to relay, but word that
    /// the request failed retryably and its next attempt is scheduled; hosts count it.
    pub const REPLY_TYPE_RETRY: &str = "retry";
    /// Header of a dead letter in the dead-letter queue: how many times the request was
    /// delivered without an answer (§3.11).
    pub const HEADER_DELIVERIES: &str = "x-taskgate-deliveries";
    /// The `x-first-death-reason` of a request its queue's delivery limit dead-lettered
    /// (RabbitMQ's name).
    pub const DEATH_REASON_DELIVERY_LIMIT: &str = "delivery_limit";
}

pub mod trace;

/// Socket.IO event names (protocol §1).
pub mod events {
    name_list! {
        /// Every event of the protocol.
        ALL {
            REQUEST = "request",
            RESPONSE = "response",
            CANCEL = "cancel",
            /// Host → client, right before the host disconnects a connection whose token
            /// expired (§3.9): reconnect with a fresh token.
            TOKEN_EXPIRED = "token_expired",
        }
    }
    name_list! {
        /// The events of sessions (§4): requests that outlive their connection.
        SESSION_EVENTS {
            /// Host → client, right after CONNECT: the session token.
            SESSION = "session",
            /// Client → host, with an ack: pick up a request after a reconnect.
            ATTACH = "attach",
            /// Client → host, with an ack: the owner's detached tasks.
            TASKS = "tasks",
        }
    }
}

/// `details.reason` of an `UNAVAILABLE` refusal of a request whose type has no worker
/// consuming its queue (§3.1); `details` also name the `requestType` and its `queue`.
pub const REASON_NO_CONSUMERS: &str = "noConsumers";

/// Limits on the client's request id (§1).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Who a client authenticated as when it connected (§3.9): the host sends it to workers
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

wire_enum! {
    /// The `type` property of a reply message (§2.3), and of a `response` event (§1).
    pub enum ReplyKind {
        Chunk => "chunk",
        Result => "result",
        Error => "error",
    }
}

wire_enum! {
    /// Every error code of protocol §1.
    pub enum ErrorCode {
        BadRequest => "BAD_REQUEST",
        UnknownRequestType => "UNKNOWN_REQUEST_TYPE",
        InvalidPayload => "INVALID_PAYLOAD",
        PayloadTooLarge => "PAYLOAD_TOO_LARGE",
        DuplicateId => "DUPLICATE_ID",
        Forbidden => "FORBIDDEN",
        RateLimited => "RATE_LIMITED",
        Unavailable => "UNAVAILABLE",
        Timeout => "TIMEOUT",
        Cancelled => "CANCELLED",
        WorkerError => "WORKER_ERROR",
        Internal => "INTERNAL",
        /// `attach`: the owner has no request with that id (§4.2).
        TaskNotFound => "TASK_NOT_FOUND",
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
        assert_eq!(names.len(), ErrorCode::ALL.len());
        assert!(names.contains(&"TASK_NOT_FOUND".to_owned()));
        assert!(names.contains(&"UNKNOWN_REQUEST_TYPE".to_owned()));
        assert!(names.contains(&"WORKER_ERROR".to_owned()));
    }

    #[test]
    fn every_wire_name_parses_back_and_serde_uses_it() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::Value::from(code.as_str());
            assert_eq!(serde_json::to_value(code).ok(), Some(json.clone()));
            assert_eq!(serde_json::from_value::<ErrorCode>(json).ok(), Some(code));
        }
        for kind in ReplyKind::ALL {
            assert_eq!(ReplyKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::Value::from(kind.as_str());
            assert_eq!(serde_json::to_value(kind).ok(), Some(json.clone()));
            assert_eq!(serde_json::from_value::<ReplyKind>(json).ok(), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert!(serde_json::from_str::<ReplyKind>(r#""Chunk""#).is_err());
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
