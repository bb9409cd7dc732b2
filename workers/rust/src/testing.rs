//! Running a handler without RabbitMQ, for unit tests of handlers.
//!
//! The request goes through the same runner as in production (payload parsing, panics,
//! cancellation, reply order), only the replies land in memory:
//!
//! ```
//! use serde_json::{json, Value};
//! use taskgate_worker::{testing::TestRequest, Context, TaskError};
//!
//! async fn twice(n: u64, ctx: Context) -> Result<u64, TaskError> {
//!     ctx.chunk(json!({ "half": n })).await?;
//!     Ok(n * 2)
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let replies = TestRequest::new(21).run(twice).await;
//! assert_eq!(replies.chunks, vec![json!({ "half": 21 })]);
//! assert_eq!(replies.result, Ok(json!(42)));
//! # });
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use taskgate_protocol::{Identity, ReplyKind, WorkerErrorBody};

use futures_util::future::BoxFuture;

use crate::error::TaskError;
use crate::handler::{erase, Handler};
use crate::runner::{Cancellations, Outcome, Runner};
use crate::transport::{Delivery, PendingConfirm, Reply, Transport, TransportError};

/// A request to run a handler with.
#[derive(Debug, Clone)]
pub struct TestRequest {
    body: Vec<u8>,
    request_type: String,
    redelivered: bool,
    streams: bool,
    timeout: Option<Duration>,
    cancel_after: Option<Duration>,
    cancel_grace: Duration,
    identity: Option<Identity>,
    traceparent: Option<String>,
}

/// What the handler replied.
#[derive(Debug, Clone, PartialEq)]
pub struct TestReplies {
    /// The chunks, in `x-seq` order.
    pub chunks: Vec<Value>,
    /// The `result` reply, or the `error` reply (whose code defaults to `WORKER_ERROR`).
    pub result: Result<Value, TaskError>,
}

impl TestRequest {
    /// A request with this payload (a value that does not serialise becomes `null`).
    pub fn new(payload: impl Serialize) -> Self {
        Self::from_bytes(serde_json::to_vec(&payload).unwrap_or_else(|_| b"null".to_vec()))
    }

    /// A request with this exact body, e.g. one that is not valid JSON.
    pub fn from_bytes(body: impl Into<Vec<u8>>) -> Self {
        TestRequest {
            body: body.into(),
            request_type: "test".to_owned(),
            redelivered: false,
            streams: true,
            timeout: Some(Duration::from_secs(30)),
            cancel_after: None,
            cancel_grace: crate::settings::DEFAULT_CANCEL_GRACE,
            identity: None,
            traceparent: None,
        }
    }

    /// The client's identity the handler sees in [`crate::Context::identity`]
    /// (default: none, as from a host without authentication).
    ///
    /// ```
    /// use serde_json::{json, Value};
    /// use taskgate_worker::{testing::TestRequest, Context, Identity, TaskError};
    ///
    /// async fn whoami(_: Value, ctx: Context) -> Result<String, TaskError> {
    ///     Ok(ctx.identity().map_or("anonymous".to_owned(), |id| id.subject.clone()))
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let alice = Identity::new("alice", ["admin"]);
    /// let replies = TestRequest::new(json!({})).identity(alice).run(whoami).await;
    /// assert_eq!(replies.result, Ok(json!("alice")));
    /// let replies = TestRequest::new(json!({})).run(whoami).await;
    /// assert_eq!(replies.result, Ok(json!("anonymous")));
    /// # });
    /// ```
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The trace context the handler sees in [`crate::Context::traceparent`].
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The request type the handler sees in [`crate::Context::request_type`].
    pub fn request_type(mut self, request_type: impl Into<String>) -> Self {
        self.request_type = request_type.into();
        self
    }

    /// Marks the request as redelivered.
    pub fn redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// The deadline, from now (`None`: no deadline). Default 30 s.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Cancels the request this long after it starts.
    pub fn cancel_after(mut self, after: Duration) -> Self {
        self.cancel_after = Some(after);
        self
    }

    /// How long a cancelled handler may take to return (default as in [`crate::Worker`]).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Runs `handler` on this request and collects its replies.
    pub async fn run<P, H>(self, handler: H) -> TestReplies
    where
        P: DeserializeOwned + Send + 'static,
        H: Handler<P>,
    {
        const CORRELATION_ID: &str = "test-correlation-id";
        let log = Arc::new(MemoryLog::default());
        let runner = Runner {
            transport: Arc::new(MemoryTransport(log.clone())),
            cancellations: Arc::new(Cancellations::default()),
            cancel_grace: self.cancel_grace,
        };
        let canceller = self.cancel_after.map(|after| {
            let cancellations = runner.cancellations.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                cancellations.cancel(CORRELATION_ID);
            })
        });
        let deadline_ms = self.timeout.map(|t| {
            crate::runner::now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        });
        let delivery = Delivery {
            correlation_id: Some(CORRELATION_ID.to_owned()),
            reply_to: Some("test-reply-queue".to_owned()),
            request_type: Some(self.request_type),
            deadline_ms,
            streams: self.streams,
            redelivered: self.redelivered,
            identity: self.identity,
            traceparent: self.traceparent,
            body: self.body,
            attempt: 1,
            retry: None,
        };
        let handler = erase(handler);
        let outcome = runner
            .process(delivery, &handler, |_| async { Ok(()) })
            .await;
        if let Some(canceller) = canceller {
            canceller.abort();
        }
        let mut chunks = Vec::new();
        let mut result = Err(TaskError::new(format!("no final reply ({outcome:?})")));
        for reply in log.replies() {
            let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            match reply.kind {
                ReplyKind::Chunk => chunks.push(body),
                ReplyKind::Result => result = Ok(body),
                ReplyKind::Error => {
                    result = Err(match serde_json::from_value::<WorkerErrorBody>(body) {
                        Ok(error) => {
                            let error = error.into_error_body();
                            TaskError {
                                code: error.code,
                                message: error.message,
                                details: error.details,
                                retryable: false,
                            }
                        }
                        Err(e) => TaskError::new(format!("malformed error reply: {e}")),
                    })
                }
            }
        }
        if matches!(outcome, Outcome::NotAcked(_)) {
            result = Err(TaskError::new(format!("not acked: {outcome:?}")));
        }
        TestReplies { chunks, result }
    }
}

/// An ordered record of what an in-memory transport saw, plus switches for failures.
#[derive(Default)]
pub(crate) struct MemoryLog {
    events: Mutex<Vec<String>>,
    replies: Mutex<Vec<Reply>>,
    /// Publishing fails (a lost connection).
    pub fail_publish: AtomicBool,
    /// Confirms come back negative.
    pub nack: AtomicBool,
}

impl MemoryLog {
    pub fn push(&self, event: impl Into<String>) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event.into());
        }
    }

    /// `publish chunk 0`, `publish result`, `confirm chunk 0`, `ack` … in order.
    #[cfg(test)]
    pub fn events(&self) -> Vec<String> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn replies(&self) -> Vec<Reply> {
        self.replies.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Replies into a [`MemoryLog`].
pub(crate) struct MemoryTransport(pub Arc<MemoryLog>);

impl Transport for MemoryTransport {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, TransportError>> {
        Box::pin(async move {
            if self.0.fail_publish.load(Ordering::SeqCst) {
                return Err(TransportError("connection lost".to_owned()));
            }
            let name = match reply.seq {
                Some(seq) => format!("{} {seq}", reply.kind.as_str()),
                None => reply.kind.as_str().to_owned(),
            };
            self.0.push(format!("publish {name}"));
            if let Ok(mut replies) = self.0.replies.lock() {
                replies.push(reply);
            }
            let log = self.0.clone();
            Ok(Box::pin(async move {
                if log.nack.load(Ordering::SeqCst) {
                    return Err(TransportError("nack".to_owned()));
                }
                log.push(format!("confirm {name}"));
                Ok(())
            }) as PendingConfirm)
        })
    }
}
