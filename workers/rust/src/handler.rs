//! Handlers and the errors they report.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::Value;
use taskgate_protocol::{ErrorCode, WorkerErrorBody};

use crate::context::Context;

/// A failure a handler reports to the client (protocol §2.3 `error` reply).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub details: Option<Value>,
}

impl TaskError {
    /// An error with the generic `WORKER_ERROR` code.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::WorkerError.as_str(), message)
    }

    /// An error with a code of the handler's own (e.g. `NOT_FOUND`).
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        TaskError {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    pub fn details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).ok();
        self
    }

    /// The request was cancelled.
    pub fn cancelled() -> Self {
        Self::with_code(ErrorCode::Cancelled.as_str(), "the request was cancelled")
    }

    pub fn invalid_payload(message: impl Into<String>) -> Self {
        Self::with_code(ErrorCode::InvalidPayload.as_str(), message)
    }

    pub(crate) fn body(&self) -> WorkerErrorBody {
        WorkerErrorBody {
            code: Some(self.code.clone()),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send>>;

/// Handles the requests of one queue. Implemented for every
/// `async fn(Value, Context) -> Result<Value, TaskError>` and equivalent closures.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, payload: Value, ctx: Context) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Value, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    fn call(&self, payload: Value, ctx: Context) -> HandlerFuture {
        Box::pin(self(payload, ctx))
    }
}
