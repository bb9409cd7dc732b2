//! Why things fail: [`TaskError`], what a handler reports to the client about one request,
//! and [`WorkerError`], why a whole worker stopped. Its own module so that the handler,
//! the context and the broker side can all name them without importing one another.

use serde::Serialize;
use serde_json::Value;
use taskgate_protocol::{ErrorCode, WorkerErrorBody};

/// A failure a handler reports to the client (protocol §2.3 `error` reply):
/// `{ "code", "message", "details"? }`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    /// A protocol code (`WORKER_ERROR`, `INVALID_PAYLOAD` …) or one of the worker's own.
    pub code: String,
    /// For humans.
    pub message: String,
    /// Anything that helps a program react (optional).
    pub details: Option<Value>,
    /// Trying again later may succeed (a downstream service down, a lock, a rate limit):
    /// under the request type's retry policy (protocol §3.12) the SDK schedules another
    /// attempt instead of replying this error. See [`TaskError::retryable`].
    pub retryable: bool,
}

impl TaskError {
    /// An error with the generic `WORKER_ERROR` code.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::WorkerError.as_str(), message)
    }

    /// An error with a code of the handler's own (e.g. `NOT_FOUND`) or a protocol code.
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            code: code.into(),
            message: message.into(),
            details: None,
            retryable: false,
        }
    }

    /// Marks the error retryable: under the request type's retry policy the request is
    /// tried again later (protocol §3.12) instead of failing now.
    ///
    /// ```
    /// # use taskgate_worker::TaskError;
    /// let error = TaskError::with_code("UPSTREAM_DOWN", "the billing API answered 503").retryable();
    /// assert!(error.retryable);
    /// ```
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// Attaches `details` (any JSON-serialisable value; one that does not serialise is
    /// left out).
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).ok();
        self
    }

    /// `CANCELLED`: the request was cancelled. [`crate::Context::chunk`] returns it once the
    /// request is cancelled.
    pub fn cancelled() -> Self {
        Self::with_code(ErrorCode::Cancelled.as_str(), "the request was cancelled")
    }

    /// `INVALID_PAYLOAD`: the payload is not what this handler accepts.
    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::InvalidPayload.as_str(), message)
    }

    /// Whether this is the `CANCELLED` error.
    pub fn is_cancelled(&self) -> bool {
        self.code == ErrorCode::Cancelled.as_str()
    }

    /// The body of the `error` reply.
    pub(crate) fn body(&self) -> WorkerErrorBody {
        WorkerErrorBody {
            code: Some(self.code.clone()),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

/// Why a worker stopped (other than being asked to).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The AMQP URL does not parse.
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    /// The broker refused the connection for good (credentials, vhost, permissions).
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    /// A queue cannot be declared or consumed (permissions, exclusive elsewhere …).
    #[error("queue `{queue}` cannot be used: {reason}")]
    Queue { queue: String, reason: String },
    /// The builder's settings are contradictory.
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn task_errors_have_protocol_codes() {
        assert_eq!(TaskError::new("x").code, "WORKER_ERROR");
        assert!(TaskError::cancelled().is_cancelled());
        assert_eq!(
            TaskError::with_code("E", "m")
                .with_details(json!({"k": 1}))
                .body(),
            WorkerErrorBody {
                code: Some("E".into()),
                message: "m".into(),
                details: Some(json!({"k": 1}))
            }
        );
        assert_eq!(TaskError::with_code("E", "m").to_string(), "E: m");
    }
}
