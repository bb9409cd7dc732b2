//! Requests ended by the host or the client rather than by a final reply: the client's
//! `cancel`, the timeout (one watcher task over [`crate::deadlines`]), and
//! [`Gateway::fail_all`] when the broker session is lost or the host shuts down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::Value;
use taskgate_protocol::ErrorBody;
use tokio::time::Instant;
use tracing::{debug, info};
use uuid::Uuid;

use super::{CancelEnvelope, Gateway, InFlight, Stage};
use crate::broker::Broker;
use crate::error::{RequestError, UnavailableCause};
use crate::sink::ClientSink;

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// Ends every request in flight with `UNAVAILABLE` for `cause` and tells
    /// workers to stop them: for shutdown after the grace period, and when the broker
    /// connection is lost (the replies of requests in flight went with their reply queue,
    /// so waiting for them could only end in `TIMEOUT`). A request still being published
    /// gets its ack first, then the error. Returns how many requests were ended.
    pub fn fail_all(&self, cause: UnavailableCause) -> usize {
        let error = RequestError::Unavailable(cause).to_body();
        let ids: Vec<Uuid> = self.inflight.iter().map(|entry| *entry.key()).collect();
        let mut failed = 0;
        for correlation_id in ids {
            let mut known = false;
            let ended = self.inflight.remove_if_mut(&correlation_id, |_, request| {
                known = true;
                match &mut request.stage {
                    Stage::Publishing { ended, .. } => {
                        ended.get_or_insert_with(|| error.clone());
                        false
                    }
                    Stage::Active => {
                        self.emit_error(request, &error);
                        true
                    }
                }
            });
            if let Some((_, request)) = ended {
                debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, reason = %error.message, "request ended UNAVAILABLE");
                self.release_id(correlation_id, request);
                self.spawn_cancel(correlation_id);
            }
            failed += usize::from(known);
        }
        failed
    }

    /// Handles a client's `cancel` event.
    pub fn cancel(self: &Arc<Self>, conn: S::Conn, envelope: Result<CancelEnvelope, String>) {
        let Ok(CancelEnvelope {
            id: Some(Value::String(id)),
        }) = envelope
        else {
            debug!(?conn, "malformed cancel ignored");
            return;
        };
        let Some(correlation_id) = self
            .conns
            .get(&conn)
            .and_then(|r| r.get(id.as_str()).copied())
        else {
            if self.store.is_some() {
                return self.cancel_shared(conn, &id);
            }
            debug!(?conn, client_id = %id, "cancel for a request not in flight ignored");
            return;
        };
        self.end_early(
            correlation_id,
            &RequestError::Cancelled.to_body(),
            |request| info!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "request cancelled by the client"),
        );
    }

    /// An operator cancels a request by its correlation id (the console): ended `CANCELLED`
    /// here if this host holds it; workers are told to stop it either way. Returns whether
    /// this host held it.
    pub fn cancel_by_operator(&self, correlation_id: Uuid, operator: &str) -> bool {
        let held = self.inflight.contains_key(&correlation_id);
        if held {
            self.end_early(
                correlation_id,
                &RequestError::Cancelled.to_body(),
                |request| info!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, %operator, "request cancelled by an operator"),
            );
        } else {
            info!(%correlation_id, %operator, "an operator cancels a request this host does not hold: workers are told");
            self.spawn_cancel(correlation_id);
        }
        held
    }

    /// Ends a request with `error` before its final reply, and tells workers to stop it. A
    /// request still being published gets its ack first, then the error (`activate`);
    /// `log` describes a request ended here and now.
    pub(super) fn end_early(
        &self,
        correlation_id: Uuid,
        error: &ErrorBody,
        log: impl FnOnce(&InFlight<S::Conn>),
    ) {
        let ended =
            self.inflight
                .remove_if_mut(&correlation_id, |_, request| match &mut request.stage {
                    Stage::Publishing { ended, .. } => {
                        ended.get_or_insert_with(|| error.clone());
                        false
                    }
                    Stage::Active => {
                        self.emit_error(request, error);
                        true
                    }
                });
        if let Some((_, request)) = ended {
            log(&request);
            self.release_id(correlation_id, request);
            self.spawn_cancel(correlation_id);
        }
    }

    /// Times the request out at `deadline` unless it ends first (`release_id`).
    pub(super) fn watch_deadline(self: &Arc<Self>, correlation_id: Uuid, deadline: Instant) {
        self.deadlines.insert(deadline, correlation_id);
        if self.watching_deadlines.swap(true, Ordering::Relaxed) {
            return;
        }
        // The one watcher task, holding only a weak reference: it ends once the gateway
        // is dropped (which wakes it).
        let gateway = Arc::downgrade(self);
        let deadlines = self.deadlines.clone();
        tokio::spawn(async move {
            loop {
                let expired = deadlines.next_expired().await;
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                for correlation_id in expired {
                    gateway.expire(correlation_id);
                }
            }
        });
    }

    /// Deadlines being watched (tests assert it returns to zero with `in_flight`).
    pub fn watched_deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// One of the request's deadlines came due: its timeout, or the end of its session's
    /// window (`resume`).
    fn expire(&self, correlation_id: Uuid) {
        let now = Instant::now();
        let expired = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            if !matches!(request.stage, Stage::Active)
                || request.deadline.is_none_or(|deadline| deadline > now)
            {
                return false;
            }
            // Already taken out of `deadlines` by the watcher.
            request.deadline = None;
            self.emit_error(
                request,
                &RequestError::Timeout(request.timeout_ms).to_body(),
            );
            true
        });
        if let Some((_, request)) = expired {
            info!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, request_type = %request.request_type, "request timed out");
            self.release_id(correlation_id, request);
            self.spawn_cancel(correlation_id);
        } else if !self.end_of_window(correlation_id, now) {
            self.end_of_handoff(correlation_id, now);
        }
    }
}
