//! Handlers: the [`Handler`] trait, and how a handler of any payload and result type is
//! erased into one shape. [`TaskError`], what a handler returns when it fails, lives in
//! `crate::error` and is re-exported here (its path since the first release).
//!
//! A handler is any `async fn(P, Context) -> Result<T, TaskError>` (or a closure returning
//! such a future) where `P` is the payload type (`serde_json::Value` or any
//! `Deserialize` type) and `T` the result (`Value` or any `Serialize` type). The SDK
//! parses the payload into `P` (a payload that does not fit is answered `INVALID_PAYLOAD`
//! without calling the handler) and serialises `T`. Both are erased here into one
//! `ErasedHandler` shape so that the request runner (`crate::runner`) deals only in
//! bytes.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::context::Context;
pub use crate::error::TaskError;

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
}
