//! What a handler sees of its request: metadata, a way to stream chunks, cancellation.
//!
//! The context also owns the request's reply sequence: chunks and the final reply go out
//! under one lock, so `x-seq` follows publish order even when a handler sends chunks from
//! several tasks, and nothing is published after the final reply.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use taskgate_protocol::Identity;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::TaskError;
use crate::transport::{PendingConfirm, Reply, ReplyKind, Transport, TransportError};

/// One request's context. Cheap to clone; clones share the request.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    request_type: String,
    correlation_id: String,
    reply_to: String,
    deadline_ms: Option<u64>,
    streams: bool,
    redelivered: bool,
    attempt: u32,
    identity: Option<Identity>,
    traceparent: Option<String>,
    cancel: CancellationToken,
    transport: Arc<dyn Transport>,
    replies: Mutex<ReplyState>,
}

/// The request's replies so far.
#[derive(Default)]
struct ReplyState {
    next_seq: u64,
    /// The final reply is out (or being sent): no more chunks.
    finished: bool,
    /// A chunk could not be published: the request must not be acked (it would be
    /// acknowledged with a chunk missing).
    failed: Option<TransportError>,
    /// Confirms of the chunks sent so far, awaited before the request is acked.
    pending: Vec<PendingConfirm>,
}

/// Everything [`Context::new`] needs; built by the runner from a delivery.
pub(crate) struct ContextParts {
    pub request_type: String,
    pub correlation_id: String,
    pub reply_to: String,
    pub deadline_ms: Option<u64>,
    pub streams: bool,
    pub redelivered: bool,
    pub attempt: u32,
    pub identity: Option<Identity>,
    pub traceparent: Option<String>,
    pub cancel: CancellationToken,
    pub transport: Arc<dyn Transport>,
}

impl Context {
    pub(crate) fn new(parts: ContextParts) -> Self {
        Context {
            inner: Arc::new(Inner {
                request_type: parts.request_type,
                correlation_id: parts.correlation_id,
                reply_to: parts.reply_to,
                deadline_ms: parts.deadline_ms,
                streams: parts.streams,
                redelivered: parts.redelivered,
                attempt: parts.attempt.max(1),
                identity: parts.identity,
                traceparent: parts.traceparent,
                cancel: parts.cancel,
                transport: parts.transport,
                replies: Mutex::new(ReplyState::default()),
            }),
        }
    }

    /// The request type (the message's `type` property), e.g. `text.wordcount`; empty if
    /// the message had none.
    pub fn request_type(&self) -> &str {
        &self.inner.request_type
    }

    /// The host's correlation id of this request (not the client's id).
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The deadline as Unix milliseconds (header `x-deadline-ms`), if the host set one.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.inner.deadline_ms
    }

    /// Time left until the deadline (zero once passed; `None` without a deadline).
    pub fn remaining(&self) -> Option<Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.inner
            .deadline_ms
            .map(|d| Duration::from_millis(d).saturating_sub(now))
    }

    /// Whether the request type streams chunks (header `x-stream`).
    pub fn streams(&self) -> bool {
        self.inner.streams
    }

    /// Whether RabbitMQ delivered this request before: another worker may have started
    /// it (and sent some chunks) and died.
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    /// Which attempt this is: 1, then 2, 3 … when the request type's retry policy retries
    /// a retryable failure ([`crate::TaskError::retryable`], protocol §3.12).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Whether a chunk was sent in this attempt: then a failure is never retried.
    pub(crate) async fn chunks_sent(&self) -> bool {
        self.inner.replies.lock().await.next_seq > 0
    }

    /// Who the client authenticated as (header `x-identity`): `None` when the host runs
    /// without authentication. Handlers may check it themselves (e.g. that a record
    /// belongs to `identity.subject`); the host has already checked the request type's
    /// required roles.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.identity.as_ref()
    }

    /// The request's W3C trace context (header `traceparent`, e.g.
    /// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`), to pass on to whatever
    /// the handler calls. The SDK already puts it on every log line of the request.
    pub fn traceparent(&self) -> Option<&str> {
        self.inner.traceparent.as_deref()
    }

    /// Whether the request was cancelled (by the client, a timeout or a disconnect).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the request is cancelled. The handler then has the worker's
    /// cancel grace period to return (any error it returns is replaced by `CANCELLED`)
    /// before it is dropped.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Runs `work` unless the request is cancelled first, in which case `work` is dropped
    /// and the result is `Err(TaskError::cancelled())`:
    /// `ctx.until_cancelled(tokio::time::sleep(d)).await?`.
    pub async fn until_cancelled<F: Future>(&self, work: F) -> Result<F::Output, TaskError> {
        tokio::select! {
            biased;
            _ = self.inner.cancel.cancelled() => Err(TaskError::cancelled()),
            output = work => Ok(output),
        }
    }

    /// Sends one partial result (a `chunk` reply with the next `x-seq`). Fails with
    /// `CANCELLED` once the request is cancelled, so `ctx.chunk(..).await?` also stops a
    /// handler at its next chunk; fails with `WORKER_ERROR` after the final reply or when
    /// the broker connection is lost.
    pub async fn chunk(&self, data: impl Serialize) -> Result<(), TaskError> {
        if self.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        let body = serde_json::to_vec(&data)
            .map_err(|e| TaskError::new(format!("the chunk could not be serialised: {e}")))?;
        let mut state = self.inner.replies.lock().await;
        if state.finished {
            return Err(TaskError::new(
                "the request is already answered: no chunk is sent after the final reply",
            ));
        }
        if self.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        let seq = state.next_seq;
        match self
            .inner
            .transport
            .publish(self.reply(ReplyKind::Chunk, Some(seq), body))
            .await
        {
            Ok(confirm) => {
                state.next_seq += 1;
                state.pending.push(confirm);
                Ok(())
            }
            Err(error) => {
                let message = format!("the chunk could not be sent: {error}");
                state.failed = Some(error);
                Err(TaskError::new(message))
            }
        }
    }

    /// Publishes the final reply and returns the confirms of every reply of the request.
    /// After this, [`Context::chunk`] fails.
    pub(crate) async fn finish(
        &self,
        kind: ReplyKind,
        body: Vec<u8>,
    ) -> Result<Vec<PendingConfirm>, TransportError> {
        let mut state = self.inner.replies.lock().await;
        state.finished = true;
        if let Some(error) = state.failed.take() {
            return Err(error);
        }
        let last = self
            .inner
            .transport
            .publish(self.reply(kind, None, body))
            .await?;
        let mut confirms = std::mem::take(&mut state.pending);
        confirms.push(last);
        Ok(confirms)
    }

    fn reply(&self, kind: ReplyKind, seq: Option<u64>, body: Vec<u8>) -> Reply {
        Reply {
            reply_to: self.inner.reply_to.clone(),
            correlation_id: self.inner.correlation_id.clone(),
            kind,
            seq,
            body,
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("request_type", &self.inner.request_type)
            .field("correlation_id", &self.inner.correlation_id)
            .field("deadline_ms", &self.inner.deadline_ms)
            .field("redelivered", &self.inner.redelivered)
            .field("identity", &self.inner.identity)
            .field("traceparent", &self.inner.traceparent)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}
