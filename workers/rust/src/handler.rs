//! Handlers and the errors they report.
//!
//! A handler is any `async fn(P, Context) -> Result<T, TaskError>` (or a closure returning
//! such a future) where `P` is the payload type (`serde_json::Value` or any
//! `Deserialize` type) and `T` the result (`Value` or any `Serialize` type). The SDK
//! parses the payload into `P` (a payload that does not fit is answered `INVALID_PAYLOAD`
//! without calling the handler) and serialises `T`. Both are erased here into one
//! `ErasedHandler` shape so that the request runner (`crate::runner`) deals only in
//! bytes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use taskgate_protocol::{ErrorCode, WorkerErrorBody};

use crate::context::Context;

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
        }
    }

    /// Attaches `details` (any JSON-serialisable value; one that does not serialise is
    /// left out).
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).ok();
        self
    }

    /// `CANCELLED`: the request was cancelled. [`Context::chunk`] returns it once the
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

/// Handles the requests of one queue, with payloads of type `P`.
///
/// Implemented for every `async fn(P, Context) -> Result<T, TaskError>` and every closure
/// `Fn(P, Context) -> impl Future<Output = Result<T, TaskError>>`, with
/// `P: DeserializeOwned` and `T: Serialize`. A handler with state captures it in a
/// closure, or is a type of its own:
///
/// ```
/// use taskgate_worker::{Context, Handler, TaskError};
///
/// struct Adder { base: u64 }
///
/// impl Handler<u64> for Adder {
///     type Output = u64;
///     async fn call(&self, n: u64, _ctx: Context) -> Result<u64, TaskError> {
///         Ok(self.base + n)
///     }
/// }
/// ```
pub trait Handler<P>: Send + Sync + 'static {
    /// The result, serialised as the `result` reply's body.
    type Output: Serialize + Send + 'static;

    /// Handles one request.
    fn call(
        &self,
        payload: P,
        ctx: Context,
    ) -> impl Future<Output = Result<Self::Output, TaskError>> + Send;
}

impl<F, Fut, P, T> Handler<P> for F
where
    F: Fn(P, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, TaskError>> + Send,
    T: Serialize + Send + 'static,
{
    type Output = T;

    fn call(&self, payload: P, ctx: Context) -> impl Future<Output = Result<T, TaskError>> + Send {
        self(payload, ctx)
    }
}

/// A boxed, `Send` future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler of any payload and result type, seen as bytes in, JSON bytes out.
pub(crate) type ErasedHandler =
    Arc<dyn Fn(Vec<u8>, Context) -> BoxFuture<'static, Result<Vec<u8>, TaskError>> + Send + Sync>;

/// Wraps `handler` so that it takes the raw body and returns the serialised result.
pub(crate) fn erase<P, H>(handler: H) -> ErasedHandler
where
    P: DeserializeOwned + Send + 'static,
    H: Handler<P>,
{
    let handler = Arc::new(handler);
    Arc::new(move |body: Vec<u8>, ctx: Context| {
        let handler = handler.clone();
        Box::pin(async move {
            let payload: P = parse_payload(&body)?;
            let output = handler.call(payload, ctx).await?;
            serde_json::to_vec(&output)
                .map_err(|e| TaskError::new(format!("the result could not be serialised: {e}")))
        })
    })
}

/// Parses a request body into the handler's payload type. The error is `INVALID_PAYLOAD`
/// with `details: { "problems": [ { "pointer", "message" } ] }`, the shape the host uses
/// for its own validation errors (docs/protocol.md §3.1).
pub(crate) fn parse_payload<P: DeserializeOwned>(body: &[u8]) -> Result<P, TaskError> {
    // The fast path does not track where it is; only a failure is parsed again for that.
    let error = match serde_json::from_slice(body) {
        Ok(payload) => return Ok(payload),
        Err(error) => error,
    };
    if error.is_syntax() || error.is_eof() || error.is_io() {
        return Err(
            TaskError::invalid_payload(format!("the payload is not valid JSON: {error}"))
                .with_details(problems("", &error.to_string())),
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let pointer = match serde_path_to_error::deserialize::<_, P>(&mut deserializer) {
        Err(tracked) => json_pointer(tracked.path()),
        Ok(_) => String::new(),
    };
    Err(
        TaskError::invalid_payload(format!("the payload does not fit: {error}"))
            .with_details(problems(&pointer, &error.to_string())),
    )
}

fn problems(pointer: &str, message: &str) -> Value {
    json!({ "problems": [ { "pointer": pointer, "message": message } ] })
}

/// RFC 6901 JSON Pointer of a serde path (`""` for the whole payload).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path {
        pointer.push('/');
        match segment {
            Segment::Seq { index } => pointer.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            // serde could not say where: stop at the last known place.
            Segment::Unknown => {
                pointer.pop();
                break;
            }
        }
    }
    pointer
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Job {
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Item {
        #[serde(rename = "a/b")]
        size: u32,
    }

    #[test]
    fn a_payload_of_the_wrong_shape_says_where() {
        let error = parse_payload::<Job>(br#"{"items":[{"a/b":1},{"a/b":"x"}]}"#).unwrap_err();
        assert_eq!(error.code, "INVALID_PAYLOAD");
        assert!(error.message.contains("invalid type"), "{}", error.message);
        let problem = &error.details.unwrap()["problems"][0];
        assert_eq!(problem["pointer"], json!("/items/1/a~1b"));
    }

    #[test]
    fn a_payload_that_is_not_json_is_invalid() {
        let error = parse_payload::<Value>(b"{not json").unwrap_err();
        assert_eq!(error.code, "INVALID_PAYLOAD");
        assert!(error.message.contains("not valid JSON"));
        assert_eq!(error.details.unwrap()["problems"][0]["pointer"], json!(""));
        assert!(parse_payload::<Value>(b"").is_err());
        assert!(parse_payload::<Value>(b"1 2").is_err());
    }

    #[test]
    fn a_missing_field_points_at_its_object() {
        let error = parse_payload::<Job>(b"{}").unwrap_err();
        assert!(error.message.contains("missing field `items`"));
        assert_eq!(error.details.unwrap()["problems"][0]["pointer"], json!(""));
    }

    /// A handler type of one's own, with state.
    struct Adder {
        base: u64,
    }

    impl Handler<u64> for Adder {
        type Output = u64;

        async fn call(&self, n: u64, ctx: Context) -> Result<u64, TaskError> {
            ctx.chunk(n).await?;
            Ok(self.base + n)
        }
    }

    #[tokio::test]
    async fn a_handler_type_with_state_can_implement_the_trait() {
        let replies = crate::testing::TestRequest::new(2)
            .run(Adder { base: 40 })
            .await;
        assert_eq!(replies.chunks, vec![json!(2)]);
        assert_eq!(replies.result, Ok(json!(42)));
    }

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
