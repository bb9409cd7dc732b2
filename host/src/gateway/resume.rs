//! Requests that outlive their connection (protocol §4): a session's requests are *parked*
//! when its connection drops — they stay in flight, the worker is not told, chunks go to
//! their replay buffer and a final reply is *kept* — until an `attach` from the owner's next
//! connection picks each one up, or the window passes and it ends as on any disconnect.
//!
//! Window ends share the deadline watcher with request timeouts: a parked request (or a
//! kept outcome) has one more entry in `deadlines`, and [`Gateway::expire`] tells which one
//! came due.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use taskgate_protocol::{ErrorCode, ReplyKind};
use tokio::time::Instant;
use tracing::{debug, info};
use uuid::Uuid;

use super::envelope::{check_attach, AttachEnvelope};
use super::{Gateway, InFlight, Stage};
use crate::broker::Broker;
use crate::error::RequestError;
use crate::resume::{Owner, Replay};
use crate::sink::{ClientSink, EmitError, OwnedResponse, ResponseEvent};

/// What a request of a session carries beyond an ordinary one.
#[derive(Debug)]
pub(super) struct Resumable {
    pub owner: Owner,
    pub replay: Replay,
    /// While its connection is gone: when the window ends.
    pub parked_until: Option<Instant>,
    /// A final response that reached it while parked.
    pub outcome: Option<OwnedResponse>,
}

/// The outcome of a request that ended while parked, waiting for its client.
#[derive(Debug)]
pub(super) struct Kept {
    owner: Owner,
    client_id: Arc<str>,
    replay: Replay,
    outcome: OwnedResponse,
    until: Instant,
}

/// `attach`'s `state`: how the request stands.
fn state_of(outcome: Option<&OwnedResponse>) -> &'static str {
    match outcome {
        None => "running",
        Some(o) if o.kind == ReplyKind::Result => "succeeded",
        Some(o)
            if o.error
                .as_ref()
                .is_some_and(|e| e.code == ErrorCode::Cancelled.as_str()) =>
        {
            "cancelled"
        }
        Some(_) => "failed",
    }
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// The bookkeeping a new request of `owner` starts with; `None` outside sessions, or
    /// when the owner already has a request with this id (`DUPLICATE_ID`).
    pub(super) fn resumable(
        &self,
        owner: Option<&Owner>,
        client_id: &Arc<str>,
        correlation_id: Uuid,
    ) -> Result<Option<Box<Resumable>>, RequestError> {
        let (Some(settings), Some(owner)) = (&self.resume, owner) else {
            return Ok(None);
        };
        match self.owned.entry((owner.clone(), client_id.clone())) {
            dashmap::Entry::Occupied(_) => Err(RequestError::DuplicateId(client_id.to_string())),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(correlation_id);
                Ok(Some(Box::new(Resumable {
                    owner: owner.clone(),
                    replay: Replay::new(settings.request_bytes),
                    parked_until: None,
                    outcome: None,
                })))
            }
        }
    }

    /// Sends a response of `request` to its client — unless it is parked: then a chunk
    /// waits in the replay buffer (as every chunk of a session's request does) and a final
    /// response is kept for the `attach` to come.
    pub(super) fn send(&self, request: &mut InFlight<S::Conn>, event: &ResponseEvent<'_>) {
        if let Some(resume) = request.resume.as_deref_mut() {
            if let (Some(seq), Some(data)) = (event.seq, event.data) {
                resume.replay.push(seq, data);
            }
            if resume.parked_until.is_some() {
                if event.kind != ReplyKind::Chunk {
                    resume.outcome = Some(event.to_owned_response());
                }
                return;
            }
        }
        self.emit(request.conn, event);
    }

    /// Parks the requests of a session's connection that just dropped.
    pub(super) fn park(self: &Arc<Self>, requests: impl Iterator<Item = Uuid>, window: Duration) {
        let until = Instant::now() + window;
        for correlation_id in requests {
            let Some(mut request) = self.inflight.get_mut(&correlation_id) else {
                continue;
            };
            let Some(resume) = request.resume.as_deref_mut() else {
                continue;
            };
            resume.parked_until = Some(until);
            debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "client disconnected; request parked for its session");
            drop(request);
            self.watch_deadline(correlation_id, until);
        }
    }

    /// A request left the in-flight map: keep its outcome if it ended while parked,
    /// otherwise forget it for `attach` too.
    pub(super) fn keep_if_parked(&self, correlation_id: Uuid, request: InFlight<S::Conn>) {
        let Some(resume) = request.resume else {
            return;
        };
        let key = (resume.owner, request.client_id);
        match (resume.parked_until, resume.outcome) {
            (Some(until), Some(outcome)) => {
                self.kept.insert(
                    correlation_id,
                    Kept {
                        owner: key.0,
                        client_id: key.1,
                        replay: resume.replay,
                        outcome,
                        until,
                    },
                );
            }
            (parked_until, _) => {
                if let Some(until) = parked_until {
                    self.deadlines.remove(until, correlation_id);
                }
                self.owned.remove_if(&key, |_, id| *id == correlation_id);
            }
        }
    }

    /// The window of a parked request or a kept outcome came due (`expire` found no
    /// request timeout due). Returns true when it was one of those.
    pub(super) fn end_of_window(&self, correlation_id: Uuid, now: Instant) -> bool {
        let ended = self.inflight.remove_if(&correlation_id, |_, request| {
            request
                .resume
                .as_deref()
                .and_then(|r| r.parked_until)
                .is_some_and(|until| until <= now)
        });
        if let Some((_, request)) = ended {
            info!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "no client came back for the parked request within the window; cancelling");
            if let Some(resume) = &request.resume {
                self.owned.remove_if(
                    &(resume.owner.clone(), request.client_id.clone()),
                    |_, id| *id == correlation_id,
                );
            }
            if let Some(deadline) = request.deadline {
                self.deadlines.remove(deadline, correlation_id);
            }
            if matches!(request.stage, Stage::Active) {
                self.spawn_cancel(correlation_id);
            }
            return true;
        }
        if let Some((_, kept)) = self.kept.remove_if(&correlation_id, |_, k| k.until <= now) {
            debug!(%correlation_id, client_id = %kept.client_id, "the kept outcome of a parked request was not picked up within the window");
            self.owned
                .remove_if(&(kept.owner, kept.client_id), |_, id| *id == correlation_id);
            return true;
        }
        false
    }

    /// Handles an `attach` event: picks up a request of the connection's owner, answering
    /// `{ ok, state, firstSeq }` and then its chunks after `afterSeq` and its outcome.
    pub fn attach(&self, conn: S::Conn, envelope: Result<AttachEnvelope, String>, ack: S::Ack) {
        let (client_id, after_seq) = match check_attach(envelope) {
            Ok(checked) => checked,
            Err(error) => return self.refuse_attach(conn, ack, &error),
        };
        let owner = self.sessions.get(&conn).and_then(|s| s.owner().cloned());
        let found = owner.and_then(|owner| {
            let client_id: Arc<str> = client_id.as_str().into();
            self.owned
                .get(&(owner, client_id.clone()))
                .map(|id| (*id, client_id))
        });
        let Some((correlation_id, client_id)) = found else {
            return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
        };
        if let Some(mut request) = self.inflight.get_mut(&correlation_id) {
            let previous = request.conn;
            if previous != conn {
                if let Some(mut requests) = self.conns.get_mut(&previous) {
                    requests.remove(&client_id);
                }
            }
            match self.conns.get_mut(&conn) {
                Some(mut requests) => {
                    if requests
                        .get(&client_id)
                        .is_some_and(|id| *id != correlation_id)
                    {
                        drop(requests);
                        drop(request);
                        let error = RequestError::DuplicateId(client_id.to_string());
                        return self.refuse_attach(conn, ack, &error);
                    }
                    requests.insert(client_id.clone(), correlation_id);
                }
                None => {
                    drop(request);
                    return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
                }
            }
            request.conn = conn;
            let InFlight {
                resume, client_id, ..
            } = &mut *request;
            let Some(resume) = resume.as_deref_mut() else {
                return;
            };
            if let Some(until) = resume.parked_until.take() {
                self.deadlines.remove(until, correlation_id);
            }
            info!(%correlation_id, %client_id, after_seq, "request attached to a new connection");
            // Under the entry's lock: no live chunk can come between the ack and the replay.
            self.answer_attach(conn, ack, client_id, &resume.replay, after_seq, None);
            return;
        }
        if let Some((_, kept)) = self.kept.remove(&correlation_id) {
            self.deadlines.remove(kept.until, correlation_id);
            self.owned
                .remove_if(&(kept.owner.clone(), kept.client_id.clone()), |_, id| {
                    *id == correlation_id
                });
            info!(%correlation_id, client_id = %kept.client_id, after_seq, "the outcome of a parked request delivered on attach");
            self.answer_attach(
                conn,
                ack,
                &kept.client_id,
                &kept.replay,
                after_seq,
                Some(&kept.outcome),
            );
            return;
        }
        self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
    }

    /// The positive ack of an `attach`, then the chunks the client lacks, then the outcome.
    fn answer_attach(
        &self,
        conn: S::Conn,
        ack: S::Ack,
        client_id: &str,
        replay: &Replay,
        after_seq: i64,
        outcome: Option<&OwnedResponse>,
    ) {
        let (first_seq, chunks) = replay.after(after_seq);
        let body = json!({ "ok": true, "state": state_of(outcome), "firstSeq": first_seq });
        if self.sink.ack_json(ack, &body).is_err() {
            // Not reading: as on a lost ack, the connection goes; the request parks again.
            self.sink.disconnect(conn);
            return;
        }
        for (seq, data) in chunks {
            self.emit(conn, &ResponseEvent::chunk(client_id, seq, data));
        }
        if let Some(outcome) = outcome {
            self.emit(conn, &outcome.as_event());
        }
    }

    fn refuse_attach(&self, conn: S::Conn, ack: S::Ack, error: &RequestError) {
        debug!(?conn, code = %error.code(), %error, "attach refused");
        if let Err(EmitError::Full) = self.sink.ack(ack, Err(&error.to_body())) {
            self.sink.disconnect(conn);
        }
    }

    /// Outcomes kept for parked requests (tests and metrics).
    pub fn tasks_kept(&self) -> usize {
        self.kept.len()
    }
}
