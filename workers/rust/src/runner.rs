//! One request, from delivery to ack, independent of AMQP: the part of the SDK that
//! carries the protocol's rules (reply routing and order, ack only after the final reply
//! is confirmed, expired deadlines, cancellation, panics). [`crate::rabbitmq`] feeds it real
//! deliveries through a lapin [`Transport`]; the unit tests and [`crate::testing`] feed it
//! an in-memory one. What it exchanges with either is in [`crate::transport`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use crate::context::{Context, ContextParts};
use crate::error::TaskError;
use crate::handler::ErasedHandler;
use crate::retry::{next_attempt, AttemptState};
use crate::transport::{Delivery, ReplyKind, Settlement, Transport, TransportError};

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// The final reply (and every chunk) was confirmed and the request acked.
    Replied(ReplyKind),
    /// Its deadline had passed: acked without running the handler.
    Expired,
    /// No `reply_to` or `correlation_id`: nobody to answer; acked.
    Unanswerable,
    /// A reply could not be published or confirmed, or the ack failed: the request was
    /// given back to the queue (or will be when the connection closes) for redelivery.
    NotAcked(TransportError),
    /// Failed retryably: attempt `attempt` is scheduled in `delay_ms` (protocol §3.12) and
    /// this delivery acked.
    Retried { attempt: u32, delay_ms: u64 },
}

/// Cancellation tokens of the requests this worker is running, plus cancellations that
/// arrived before their request did (it may still wait in the queue or the prefetch
/// buffer). Every worker sees every cancellation (the exchange is a fanout), so most
/// early cancellations are for other workers' requests: they are kept only for a while.
#[derive(Default)]
pub(crate) struct Cancellations {
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
        // A cancellation that arrived between the two lines above went to `early`.
        if self.early.remove(correlation_id).is_some() {
            token.cancel();
        }
        token
    }

    fn forget(&self, correlation_id: &str) {
        self.running.remove(correlation_id);
    }

    /// Requests running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running.len()
    }
}

pub(crate) fn now_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Runs deliveries to completion; shared by every request of a worker session.
pub(crate) struct Runner {
    pub transport: Arc<dyn Transport>,
    pub cancellations: Arc<Cancellations>,
    /// How long a cancelled handler may take to return by itself before it is dropped.
    pub cancel_grace: Duration,
}

impl Runner {
    /// Runs one delivery. `settle` acks it only after the final reply and every chunk
    /// before it are confirmed (or when there is nothing to reply), and requeues it when a
    /// reply could not be published or confirmed.
    ///
    /// Everything logged meanwhile — by the SDK and by the handler — is inside the span
    /// `request{correlation_id, request_type, traceparent}`, so each line names its request
    /// and trace (the host logs the same `traceparent`).
    pub async fn process<S, Fut>(
        &self,
        delivery: Delivery,
        handler: &ErasedHandler,
        settle: S,
    ) -> Outcome
    where
        S: FnOnce(Settlement) -> Fut,
        Fut: Future<Output = Result<(), TransportError>>,
    {
        let span = tracing::info_span!(
            "request",
            correlation_id = %delivery.correlation_id.as_deref().unwrap_or_default(),
            request_type = %delivery.request_type.as_deref().unwrap_or_default(),
            traceparent = tracing::field::Empty,
        );
        if let Some(traceparent) = &delivery.traceparent {
            span.record("traceparent", tracing::field::display(traceparent));
        }
        self.process_in_span(delivery, handler, settle)
            .instrument(span)
            .await
    }

    async fn process_in_span<S, Fut>(
        &self,
        delivery: Delivery,
        handler: &ErasedHandler,
        settle: S,
    ) -> Outcome
    where
        S: FnOnce(Settlement) -> Fut,
        Fut: Future<Output = Result<(), TransportError>>,
    {
        let (Some(correlation_id), Some(reply_to)) =
            (delivery.correlation_id.clone(), delivery.reply_to.clone())
        else {
            warn!(
                correlation_id = ?delivery.correlation_id,
                reply_to = ?delivery.reply_to,
                "request without reply_to or correlation_id: nobody to answer; acked and dropped"
            );
            return ack(settle, Outcome::Unanswerable).await;
        };
        if let Some(deadline) = delivery.deadline_ms {
            let late_by = now_ms().saturating_sub(deadline);
            if late_by >= 0 {
                info!(%correlation_id, late_by_ms = late_by, "request expired before it started; acked and dropped");
                return ack(settle, Outcome::Expired).await;
            }
        }

        let token = self.cancellations.register(&correlation_id);
        let (attempt, retry) = (delivery.attempt.max(1), delivery.retry);
        let deadline_ms = delivery.deadline_ms;
        let ctx = Context::new(ContextParts {
            request_type: delivery.request_type.unwrap_or_default(),
            correlation_id: correlation_id.clone(),
            reply_to,
            deadline_ms: delivery.deadline_ms.and_then(|d| u64::try_from(d).ok()),
            streams: delivery.streams,
            redelivered: delivery.redelivered,
            attempt,
            identity: delivery.identity,
            traceparent: delivery.traceparent,
            cancel: token.clone(),
            transport: self.transport.clone(),
        });
        let result = if token.is_cancelled() {
            info!(%correlation_id, "request cancelled before it started");
            Err(TaskError::cancelled())
        } else {
            self.run_handler(handler, delivery.body, ctx.clone(), &token)
                .await
        };
        self.cancellations.forget(&correlation_id);

        if let (Err(error), Some(policy)) = (&result, &retry) {
            let state = AttemptState {
                chunks_sent: ctx.chunks_sent().await,
                cancelled: token.is_cancelled(),
                deadline_ms,
                now_ms: now_ms(),
                random: (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0,
            };
            match next_attempt(Some(policy), attempt, error, &state) {
                Some((next, delay_ms)) => {
                    return match settle(Settlement::Retry {
                        attempt: next,
                        delay_ms,
                    })
                    .await
                    {
                        Ok(()) => {
                            info!(%correlation_id, attempt, code = %error.code, error = %error.message, next_attempt = next, delay_ms, "attempt failed retryably; the next one is scheduled");
                            Outcome::Retried {
                                attempt: next,
                                delay_ms,
                            }
                        }
                        Err(failure) => {
                            warn!(%correlation_id, %failure, "the retry could not be scheduled; the request went back to the queue");
                            Outcome::NotAcked(failure)
                        }
                    };
                }
                None if policy.is_retryable(error) => {
                    info!(%correlation_id, attempt, code = %error.code, "attempt failed retryably, but gets no further attempt (attempts used up, chunks streamed, cancelled or past the deadline): the error is the final reply");
                }
                None => {}
            }
        }
        let (kind, body) = match result {
            Ok(body) => (ReplyKind::Result, body),
            // Whatever a cancelled handler fails with, the request failed because it
            // was cancelled.
            Err(_) if token.is_cancelled() => {
                (ReplyKind::Error, error_body(&TaskError::cancelled()))
            }
            Err(error) => (ReplyKind::Error, error_body(&error)),
        };
        debug!(%correlation_id, kind = kind.as_str(), "final reply");
        let confirmed = async {
            for confirm in ctx.finish(kind, body).await? {
                confirm.await?;
            }
            Ok::<(), TransportError>(())
        }
        .await;
        match confirmed {
            Ok(()) => ack(settle, Outcome::Replied(kind)).await,
            Err(error) => {
                warn!(%correlation_id, %error, "a reply did not reach the broker; the request goes back to the queue");
                if let Err(requeue_error) = settle(Settlement::Requeue).await {
                    debug!(%correlation_id, %requeue_error, "requeue failed; the broker requeues the request when the connection closes");
                }
                Outcome::NotAcked(error)
            }
        }
    }

    /// Runs the handler, catching panics; on cancellation, gives it the grace period to
    /// return by itself, then drops it.
    async fn run_handler(
        &self,
        handler: &ErasedHandler,
        body: Vec<u8>,
        ctx: Context,
        token: &CancellationToken,
    ) -> Result<Vec<u8>, TaskError> {
        let correlation_id = ctx.correlation_id().to_owned();
        let mut running = pin!(AssertUnwindSafe(handler(body, ctx)).catch_unwind());
        let finished = tokio::select! {
            biased;
            outcome = &mut running => Some(outcome),
            _ = token.cancelled() => None,
        };
        let outcome = match finished {
            Some(outcome) => outcome,
            None => {
                info!(%correlation_id, "request cancelled");
                match tokio::time::timeout(self.cancel_grace, &mut running).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        debug!(%correlation_id, "the handler did not stop within the cancel grace period; dropped");
                        return Err(TaskError::cancelled());
                    }
                }
            }
        };
        outcome.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            error!(%correlation_id, panic = %message, "the handler panicked");
            Err(TaskError::new(
                "the worker failed while handling the request",
            ))
        })
    }
}

fn error_body(error: &TaskError) -> Vec<u8> {
    // A struct of strings and a `Value` always serialises; the fallback is unreachable.
    serde_json::to_vec(&error.body())
        .unwrap_or_else(|_| br#"{"message":"the worker failed"}"#.to_vec())
}

async fn ack<S, Fut>(settle: S, outcome: Outcome) -> Outcome
where
    S: FnOnce(Settlement) -> Fut,
    Fut: Future<Output = Result<(), TransportError>>,
{
    match settle(Settlement::Ack).await {
        Ok(()) => outcome,
        Err(error) => {
            warn!(%error, "ack failed; the broker will redeliver the request");
            Outcome::NotAcked(error)
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
