//! One request, from delivery to ack, independent of AMQP: the part of the SDK that
//! carries the protocol's rules (reply routing and order, ack after the final reply,
//! deadlines, cancellation, panics). [`crate::amqp`] feeds it real deliveries; the unit
//! tests feed it an in-memory [`Transport`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::FutureExt;
use serde_json::Value;
pub use taskgate_protocol::ReplyKind;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::context::{Context, ContextParts};
use crate::handler::{Handler, TaskError};

/// A reply's publisher confirm, still to be awaited.
pub type PendingConfirm = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A reply message (protocol §2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub reply_to: String,
    pub correlation_id: String,
    pub kind: ReplyKind,
    pub seq: Option<u64>,
    pub body: Vec<u8>,
}

/// Where replies go. `publish` resolves once the message is handed to the broker and
/// returns its confirm; all replies go through one channel, so they keep their order.
pub trait Transport: Send + Sync + 'static {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, String>>;
}

/// A request message as delivered (protocol §2.2), nothing trusted yet.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub request_type: Option<String>,
    pub deadline_ms: Option<i64>,
    pub streams: bool,
    pub redelivered: bool,
    pub body: Vec<u8>,
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The final reply was confirmed and the request acked.
    Replied(ReplyKind),
    /// Its deadline had passed: acked without running the handler.
    Expired,
    /// No `reply_to` or `correlation_id`: nobody to answer; acked.
    Unanswerable,
    /// A reply could not be published or the ack failed: the broker will redeliver it.
    NotAcked(String),
}

/// Cancellation tokens of the requests this worker is running, plus cancellations that
/// arrived before their request did (it may still wait in the queue or the prefetch buffer).
#[derive(Default)]
pub struct Cancellations {
    running: DashMap<String, CancellationToken>,
    early: DashMap<String, Instant>,
}

/// How long, and how many, early cancellations are remembered.
const EARLY_CANCEL_TTL: Duration = Duration::from_secs(600);
const EARLY_CANCEL_MAX: usize = 10_000;

impl Cancellations {
    /// A cancellation for `correlation_id` arrived.
    pub fn cancel(&self, correlation_id: &str) {
        if let Some(token) = self.running.get(correlation_id) {
            token.cancel();
            return;
        }
        if self.early.len() >= EARLY_CANCEL_MAX {
            self.early.retain(|_, at| at.elapsed() < EARLY_CANCEL_TTL);
            if self.early.len() >= EARLY_CANCEL_MAX {
                self.early.clear();
            }
        }
        self.early.insert(correlation_id.to_owned(), Instant::now());
    }

    fn register(&self, correlation_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        if self.early.remove(correlation_id).is_some() {
            token.cancel();
        }
        self.running
            .insert(correlation_id.to_owned(), token.clone());
        token
    }

    fn forget(&self, correlation_id: &str) {
        self.running.remove(correlation_id);
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

fn now_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Runs one delivery to completion. `ack` acknowledges the delivery; it is called only
/// after the final reply (and every chunk before it) is confirmed.
pub async fn process<A, Fut>(
    delivery: Delivery,
    handler: Arc<dyn Handler>,
    transport: Arc<dyn Transport>,
    cancellations: &Cancellations,
    ack: A,
) -> Outcome
where
    A: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let (Some(correlation_id), Some(reply_to)) =
        (delivery.correlation_id.clone(), delivery.reply_to.clone())
    else {
        warn!(correlation_id = ?delivery.correlation_id, "request without reply_to or correlation_id: nobody to answer; dropped");
        return finish(ack, Outcome::Unanswerable).await;
    };
    if let Some(deadline) = delivery.deadline_ms {
        if deadline <= now_ms() {
            info!(%correlation_id, "request expired before it started; skipped");
            return finish(ack, Outcome::Expired).await;
        }
    }

    let token = cancellations.register(&correlation_id);
    let ctx = Context::new(ContextParts {
        request_type: delivery.request_type.clone().unwrap_or_default(),
        correlation_id: correlation_id.clone(),
        reply_to: reply_to.clone(),
        deadline_ms: delivery.deadline_ms.and_then(|d| u64::try_from(d).ok()),
        streams: delivery.streams,
        redelivered: delivery.redelivered,
        cancel: token.clone(),
        transport: transport.clone(),
    });
    let result = run_handler(&delivery, handler, ctx.clone(), &token).await;
    cancellations.forget(&correlation_id);

    let (kind, body) = match &result {
        Ok(value) => (
            ReplyKind::Result,
            serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        ),
        Err(error) => (
            ReplyKind::Error,
            serde_json::to_vec(&error.body()).unwrap_or_default(),
        ),
    };
    debug!(%correlation_id, kind = kind.as_str(), "final reply");
    let reply = Reply {
        reply_to,
        correlation_id: correlation_id.clone(),
        kind,
        seq: None,
        body,
    };
    let confirmed = async {
        let last = transport.publish(reply).await?;
        for chunk in ctx.take_pending() {
            chunk.await?;
        }
        last.await
    }
    .await;
    match confirmed {
        Ok(()) => finish(ack, Outcome::Replied(kind)).await,
        Err(reason) => {
            warn!(%correlation_id, %reason, "final reply not confirmed; leaving the request for redelivery");
            Outcome::NotAcked(reason)
        }
    }
}

async fn run_handler(
    delivery: &Delivery,
    handler: Arc<dyn Handler>,
    ctx: Context,
    token: &CancellationToken,
) -> Result<Value, TaskError> {
    let payload: Value = match serde_json::from_slice(&delivery.body) {
        Ok(payload) => payload,
        Err(e) => {
            return Err(TaskError::invalid_payload(format!(
                "the payload is not JSON: {e}"
            )))
        }
    };
    if token.is_cancelled() {
        return Err(TaskError::cancelled());
    }
    let correlation_id = ctx.correlation_id().to_owned();
    let running = AssertUnwindSafe(handler.call(payload, ctx)).catch_unwind();
    tokio::select! {
        biased;
        outcome = running => match outcome {
            Ok(result) => result,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                error!(%correlation_id, panic = %message, "handler panicked");
                Err(TaskError::new("the worker failed while handling the request"))
            }
        },
        _ = token.cancelled() => {
            info!(%correlation_id, "request cancelled");
            Err(TaskError::cancelled())
        }
    }
}

async fn finish<A, Fut>(ack: A, outcome: Outcome) -> Outcome
where
    A: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    match ack().await {
        Ok(()) => outcome,
        Err(reason) => {
            warn!(%reason, "ack failed; the broker will redeliver the request");
            Outcome::NotAcked(reason)
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
