//! What a handler sees of its request: metadata, a way to stream chunks, cancellation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::handler::TaskError;
use crate::runner::{PendingConfirm, Reply, ReplyKind, Transport};

/// One request's context. Cheap to clone.
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
    cancel: CancellationToken,
    next_seq: AtomicU64,
    transport: Arc<dyn Transport>,
    /// Confirms of chunks sent so far: awaited before the request is acked.
    pending: Mutex<Vec<PendingConfirm>>,
}

pub(crate) struct ContextParts {
    pub request_type: String,
    pub correlation_id: String,
    pub reply_to: String,
    pub deadline_ms: Option<u64>,
    pub streams: bool,
    pub redelivered: bool,
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
                cancel: parts.cancel,
                next_seq: AtomicU64::new(0),
                transport: parts.transport,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The request type (the message's `type` property), e.g. `text.wordcount`.
    pub fn request_type(&self) -> &str {
        &self.inner.request_type
    }

    /// The host's correlation id of this request (not the client's id).
    pub fn correlation_id(&self) -> &str {
        &self.inner.correlation_id
    }

    /// The deadline as Unix milliseconds, if the host set one.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.inner.deadline_ms
    }

    /// Time left until the deadline (zero when passed; `None` without a deadline).
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

    /// Whether RabbitMQ delivered this request before (another worker may have started it).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when the request is cancelled (by the client, a timeout or a disconnect).
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Sends one partial result. Fails with `CANCELLED` once the request is cancelled, so
    /// `ctx.chunk(..).await?` also stops a handler at its next chunk.
    pub async fn chunk(&self, data: impl Serialize) -> Result<(), TaskError> {
        if self.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        let body = serde_json::to_vec(&data)
            .map_err(|e| TaskError::new(format!("chunk not serializable: {e}")))?;
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let confirm = self
            .inner
            .transport
            .publish(Reply {
                reply_to: self.inner.reply_to.clone(),
                correlation_id: self.inner.correlation_id.clone(),
                kind: ReplyKind::Chunk,
                seq: Some(seq),
                body,
            })
            .await
            .map_err(|e| TaskError::new(format!("chunk not sent: {e}")))?;
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.push(confirm);
        }
        Ok(())
    }

    pub(crate) fn take_pending(&self) -> Vec<PendingConfirm> {
        self.inner
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}
