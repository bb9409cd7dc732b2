//! Requests that outlive their connection (protocol §4): a session's requests are *parked*
//! when its connection drops — they stay in flight, the worker is not told, chunks go to
//! their replay buffer and a final reply is *kept* — until an `attach` from the owner's next
//! connection picks each one up, or the window passes and it ends as on any disconnect.
//! A *detached* request (a task, §4.3) has no window: it runs until it ends, and its outcome
//! is kept for `result_ttl` whether or not a client saw it; `tasks` lists them.
//!
//! Window ends share the deadline watcher with request timeouts: a parked request (or a
//! kept outcome) has one more entry in `deadlines`, and [`Gateway::expire`] tells which one
//! came due.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use taskgate_protocol::{ErrorCode, ReplyKind};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::envelope::{check_attach, AttachEnvelope};
use super::{Gateway, InFlight, Stage};
use crate::broker::Broker;
use crate::error::{RateLimit, RequestError};
use crate::resume::{Owner, ParkedSlot, Replay};
use crate::sink::{ClientSink, EmitError, OwnedResponse, ResponseEvent};

/// How far off "no window" is for a parked detached task: it ends by its own timeout.
const NO_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a request of a session carries beyond an ordinary one.
#[derive(Debug)]
pub(super) struct Resumable {
    pub owner: Owner,
    pub replay: Replay,
    /// While its connection is gone: when the window ends.
    pub parked_until: Option<Instant>,
    /// While parked (not for a task): its place under `[resume] max_parked_per_owner`.
    pub parked_slot: Option<ParkedSlot>,
    /// A final response that reached it while parked (or, for a task, at all).
    pub outcome: Option<OwnedResponse>,
    /// A task (protocol §4.3): no window, its outcome kept for `result_ttl`.
    pub detached: bool,
    pub started_at_ms: u64,
}

/// The outcome of a request that ended while parked, or of a task, waiting for its client.
#[derive(Debug)]
pub(super) struct Kept {
    pub(super) owner: Owner,
    pub(super) client_id: Arc<str>,
    pub(super) request_type: Arc<str>,
    pub(super) replay: Replay,
    pub(super) outcome: OwnedResponse,
    pub(super) until: Instant,
    pub(super) detached: bool,
    pub(super) started_at_ms: u64,
    ended_at_ms: u64,
    /// The place of the parked request it came from, given back with the outcome.
    _parked_slot: Option<ParkedSlot>,
}

/// The states of a task, in the order of [`TasksHeld::by_state`].
pub const TASK_STATES: [&str; 4] = ["running", "succeeded", "failed", "cancelled"];

/// What [`Gateway::tasks_held`] counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TasksHeld {
    /// Per state of [`TASK_STATES`].
    pub by_state: [usize; 4],
    pub bytes: usize,
}

/// How an `attach` is answered: its own ack, or a resent `request`'s `{ ok: true }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckStyle {
    Attach,
    Request,
}

/// One entry of the `tasks` ack.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TaskInfo<'a> {
    id: &'a str,
    request_type: &'a str,
    state: &'static str,
    started_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_chunk: Option<&'a RawValue>,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One task as the `tasks` ack lists it, with its start time for the order.
fn task_info(
    client_id: &str,
    request_type: &str,
    started_at: u64,
    ended_at: Option<u64>,
    replay: &Replay,
    outcome: Option<&OwnedResponse>,
) -> (u64, serde_json::Value) {
    let last = replay.last();
    let info = TaskInfo {
        id: client_id,
        request_type,
        state: state_of(outcome),
        started_at,
        ended_at,
        last_seq: last.map(|(seq, _)| seq),
        last_chunk: last.map(|(_, data)| data),
    };
    (
        started_at,
        serde_json::to_value(&info).unwrap_or(serde_json::Value::Null),
    )
}

/// `attach`'s `state`: how the request stands.
pub(super) fn state_of(outcome: Option<&OwnedResponse>) -> &'static str {
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
    /// The bookkeeping a new request of `owner` starts with; `None` outside sessions.
    /// Refused: a task without a session (`BAD_REQUEST`), past the owner's task limit
    /// (`RATE_LIMITED`), an id the owner already has (`DUPLICATE_ID`).
    pub(super) fn resumable(
        &self,
        owner: Option<&Owner>,
        client_id: &Arc<str>,
        correlation_id: Uuid,
        detach: bool,
    ) -> Result<Option<Box<Resumable>>, RequestError> {
        let (Some(settings), Some(owner)) = (&self.resume, owner) else {
            if detach {
                return Err(RequestError::BadRequest(
                    "`detach` needs a session: connect with auth.session (protocol §4)".to_owned(),
                ));
            }
            return Ok(None);
        };
        let dashmap::Entry::Vacant(slot) = self.owned.entry((owner.clone(), client_id.clone()))
        else {
            return Err(RequestError::DuplicateId(client_id.to_string()));
        };
        if detach {
            let mut tasks = self.tasks_per_owner.entry(owner.clone()).or_insert(0);
            if *tasks >= settings.max_tasks {
                return Err(RequestError::RateLimited(RateLimit::Tasks {
                    max: settings.max_tasks,
                }));
            }
            // A task whose chunks could not be kept whole would show its client a gap: a
            // clear refusal instead, until what is kept in all leaves room for one more.
            if !self.kept_bytes.has_room_for(settings.request_bytes) {
                return Err(RequestError::RateLimited(RateLimit::KeptBytes {
                    max: self.kept_bytes.limit(),
                }));
            }
            *tasks += 1;
            crate::tasks::record_started();
        }
        slot.insert(correlation_id);
        Ok(Some(Box::new(Resumable {
            owner: owner.clone(),
            replay: Replay::shared(settings.request_bytes, self.kept_bytes.clone()),
            parked_until: None,
            parked_slot: None,
            outcome: None,
            detached: detach,
            started_at_ms: unix_ms(),
        })))
    }

    /// Forgets `client_id` of `owner` for `attach`, and a task's place in the owner's count.
    pub(super) fn forget_owned(
        &self,
        owner: &Owner,
        client_id: &Arc<str>,
        correlation_id: Uuid,
        detached: bool,
    ) {
        let removed = self
            .owned
            .remove_if(&(owner.clone(), client_id.clone()), |_, id| {
                *id == correlation_id
            });
        if detached && removed.is_some() {
            self.tasks_per_owner.remove_if_mut(owner, |_, tasks| {
                *tasks = tasks.saturating_sub(1);
                *tasks == 0
            });
        }
    }

    /// Sends a final response of `request` to its client — unless it is parked: then it is
    /// kept for the `attach` to come (a task's is kept in any case).
    /// Takes the request's connection and session state apart from its client id, which
    /// `event` borrows: nothing is copied on the way.
    pub(super) fn send(
        &self,
        conn: S::Conn,
        resume: Option<&mut Resumable>,
        event: &ResponseEvent<'_>,
    ) {
        if let Some(resume) = resume {
            let parked = resume.parked_until.is_some();
            if (parked || resume.detached) && event.kind != ReplyKind::Chunk {
                resume.outcome = Some(event.to_owned_response());
            }
            if parked {
                return;
            }
        }
        self.emit(conn, event);
    }

    /// Sends chunk `seq` of a request to its client (unless it is parked) and, for a
    /// session's request, keeps it for a replay. The chunk moves into the replay after the
    /// send has encoded it: keeping it costs neither a copy nor an allocation
    /// (docs/performance.md, "sessions").
    pub(super) fn send_chunk(
        &self,
        conn: S::Conn,
        resume: Option<&mut Resumable>,
        client_id: &str,
        seq: u64,
        data: Box<RawValue>,
    ) {
        let Some(resume) = resume else {
            return self.emit(conn, &ResponseEvent::chunk(client_id, seq, &data));
        };
        if resume.parked_until.is_none() {
            self.emit(conn, &ResponseEvent::chunk(client_id, seq, &data));
        }
        resume.replay.push(seq, data);
    }

    /// Parks the requests of a session's connection that just dropped. Those past the
    /// owner's `[resume] max_parked_per_owner` end as on a disconnect without a session.
    pub(super) fn park(self: &Arc<Self>, requests: impl Iterator<Item = Uuid>, window: Duration) {
        let until = Instant::now() + window;
        let mut over_bound = 0_u64;
        for correlation_id in requests {
            let Some(mut request) = self.inflight.get_mut(&correlation_id) else {
                continue;
            };
            let Some(resume) = request.resume.as_deref_mut() else {
                continue;
            };
            let detached = resume.detached;
            if !detached {
                match self.parked_per_owner.take(&resume.owner) {
                    Some(slot) => resume.parked_slot = Some(slot),
                    None => {
                        drop(request);
                        over_bound += 1;
                        self.end_with_connection(correlation_id);
                        continue;
                    }
                }
            }
            resume.parked_until = Some(if detached {
                Instant::now() + NO_WINDOW
            } else {
                until
            });
            debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, detached, "client disconnected; request parked for its session");
            drop(request);
            if !detached {
                self.watch_deadline(correlation_id, until);
            }
        }
        if over_bound > 0 {
            warn!(
                cancelled = over_bound,
                max = self.parked_per_owner.limit(),
                "an owner's connection dropped with more requests than [resume] max_parked_per_owner leaves room for; the excess was cancelled"
            );
            metrics::counter!(crate::metrics::RESUME_PARKED_REFUSED).increment(over_bound);
        }
    }

    /// A request left the in-flight map: keep its outcome if it ended while parked, or if
    /// it is a task; otherwise forget it for `attach` too.
    pub(super) fn keep_if_parked(&self, correlation_id: Uuid, request: InFlight<S::Conn>) {
        let Some(resume) = request.resume else {
            return;
        };
        let Resumable {
            owner,
            replay,
            parked_until,
            parked_slot,
            outcome,
            detached,
            started_at_ms,
        } = *resume;
        let until = match (detached, parked_until) {
            (true, _) => Some(
                Instant::now()
                    + self
                        .resume
                        .as_ref()
                        .map_or(Duration::ZERO, |r| r.result_ttl),
            ),
            (false, until) => until,
        };
        match (until, outcome) {
            (Some(until), Some(outcome)) => {
                if detached {
                    crate::tasks::record_ended(state_of(Some(&outcome)));
                    // A task's outcome outlives its window (it had none): its own deadline.
                    self.deadlines.insert(until, correlation_id);
                }
                self.kept.insert(
                    correlation_id,
                    Kept {
                        owner,
                        client_id: request.client_id,
                        request_type: request.request_type,
                        replay,
                        outcome,
                        until,
                        detached,
                        started_at_ms,
                        ended_at_ms: unix_ms(),
                        _parked_slot: parked_slot,
                    },
                );
            }
            _ => {
                if let Some(until) = parked_until.filter(|_| !detached) {
                    self.deadlines.remove(until, correlation_id);
                }
                self.forget_owned(&owner, &request.client_id, correlation_id, detached);
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
                self.forget_owned(
                    &resume.owner,
                    &request.client_id,
                    correlation_id,
                    resume.detached,
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
            debug!(%correlation_id, client_id = %kept.client_id, detached = kept.detached, "a kept outcome expired");
            self.forget_owned(&kept.owner, &kept.client_id, correlation_id, kept.detached);
            return true;
        }
        false
    }

    /// Handles an `attach` event: picks up a request of the connection's owner, answering
    /// `{ ok, state, firstSeq }` and then its chunks after `afterSeq` and its outcome.
    /// A request this host does not hold may be a task in the shared store, or a request
    /// parked on another host of the cluster: it is claimed from them (`handoff`) before the
    /// attach is refused.
    pub fn attach(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: Result<AttachEnvelope, String>,
        ack: S::Ack,
    ) {
        let (client_id, after_seq) = match check_attach(envelope) {
            Ok(checked) => checked,
            Err(error) => return self.refuse_attach(conn, ack, &error),
        };
        match self.owned_by(conn, &client_id) {
            Some((correlation_id, client_id)) => self.attach_to(
                conn,
                correlation_id,
                client_id,
                after_seq,
                ack,
                AckStyle::Attach,
            ),
            // Not here: in the shared store, if there is one, or on another host.
            None => {
                if let Err(ack) = self.attach_shared(conn, &client_id, after_seq, ack) {
                    self.claim(conn, &client_id, after_seq, ack);
                }
            }
        }
    }

    /// A `request` whose id names a request of the owner that is not on this connection
    /// (parked, on another connection, or kept): the one to attach to instead of running
    /// the work again.
    pub(super) fn owned_elsewhere(
        &self,
        conn: S::Conn,
        envelope: &Result<super::RequestEnvelope, String>,
    ) -> Option<(Uuid, Arc<str>)> {
        self.resume.as_ref()?;
        let Ok(super::RequestEnvelope {
            id: Some(serde_json::Value::String(id)),
            ..
        }) = envelope
        else {
            return None;
        };
        let (correlation_id, client_id) = self.owned_by(conn, id)?;
        let here = self
            .conns
            .get(&conn)
            .is_some_and(|requests| requests.get(&client_id) == Some(&correlation_id));
        (!here).then_some((correlation_id, client_id))
    }

    /// Answers a resent `request` like an `attach` from the start (protocol §4.3).
    pub(super) fn reattach(
        &self,
        conn: S::Conn,
        correlation_id: Uuid,
        client_id: Arc<str>,
        ack: S::Ack,
    ) {
        info!(%correlation_id, %client_id, "a request resent with the id of one its owner has: attached, not run again");
        self.attach_to(conn, correlation_id, client_id, -1, ack, AckStyle::Request);
    }

    /// The connection owner's request `client_id`, if any.
    fn owned_by(&self, conn: S::Conn, client_id: &str) -> Option<(Uuid, Arc<str>)> {
        let owner = self.sessions.get(&conn)?.owner()?.clone();
        let client_id: Arc<str> = client_id.into();
        let correlation_id = *self.owned.get(&(owner, client_id.clone()))?;
        Some((correlation_id, client_id))
    }

    fn attach_to(
        &self,
        conn: S::Conn,
        correlation_id: Uuid,
        client_id: Arc<str>,
        after_seq: i64,
        ack: S::Ack,
        style: AckStyle,
    ) {
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
            let Some(resume) = request.resume.as_deref_mut() else {
                return;
            };
            if let Some(until) = resume.parked_until.take() {
                self.deadlines.remove(until, correlation_id);
            }
            resume.parked_slot = None;
            info!(%correlation_id, %client_id, after_seq, "request attached to a new connection");
            // Under the entry's lock: no live chunk can come between the ack and the replay.
            self.answer_attach(
                conn,
                ack,
                style,
                &client_id,
                &resume.replay,
                after_seq,
                None,
            );
            return;
        }
        // An ended task stays attachable until its outcome expires; another request's kept
        // outcome is delivered once.
        let detached = self.kept.get(&correlation_id).map(|kept| kept.detached);
        match detached {
            Some(true) => {
                if let Some(kept) = self.kept.get(&correlation_id) {
                    info!(%correlation_id, %client_id, after_seq, "a finished task attached");
                    return self.deliver_kept(conn, ack, style, &client_id, &kept, after_seq);
                }
            }
            Some(false) => {
                if let Some((_, kept)) = self.kept.remove(&correlation_id) {
                    self.deadlines.remove(kept.until, correlation_id);
                    self.forget_owned(&kept.owner, &kept.client_id, correlation_id, false);
                    info!(%correlation_id, %client_id, after_seq, "the outcome of a parked request delivered on attach");
                    return self.deliver_kept(conn, ack, style, &client_id, &kept, after_seq);
                }
            }
            None => {}
        }
        self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
    }

    /// Answers an attach with a kept outcome: its chunks after `after_seq`, then the outcome.
    fn deliver_kept(
        &self,
        conn: S::Conn,
        ack: S::Ack,
        style: AckStyle,
        client_id: &str,
        kept: &Kept,
        after_seq: i64,
    ) {
        let outcome = Some(&kept.outcome);
        self.answer_attach(
            conn,
            ack,
            style,
            client_id,
            &kept.replay,
            after_seq,
            outcome,
        );
    }

    /// The positive ack of an `attach` (or of a resent `request`), then the chunks the
    /// client lacks, then the outcome.
    #[allow(clippy::too_many_arguments)]
    fn answer_attach(
        &self,
        conn: S::Conn,
        ack: S::Ack,
        style: AckStyle,
        client_id: &str,
        replay: &Replay,
        after_seq: i64,
        outcome: Option<&OwnedResponse>,
    ) {
        let (first_seq, chunks) = replay.after(after_seq);
        let acked = match style {
            AckStyle::Attach => {
                let body = json!({ "ok": true, "state": state_of(outcome), "firstSeq": first_seq });
                self.sink.ack_json(ack, &body)
            }
            AckStyle::Request => self.sink.ack(ack, Ok(())),
        };
        if acked.is_err() {
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

    /// Handles a `tasks` event: the owner's detached tasks, running or kept, newest first.
    pub fn tasks(self: &Arc<Self>, conn: S::Conn, ack: S::Ack) {
        let ack = match self.tasks_shared(conn, ack) {
            Ok(()) => return,
            Err(ack) => ack,
        };
        let owner = self.sessions.get(&conn).and_then(|s| s.owner().cloned());
        let mut ids: Vec<(Arc<str>, Uuid)> = match &owner {
            Some(owner) => self
                .owned
                .iter()
                .filter(|entry| &entry.key().0 == owner)
                .map(|entry| (entry.key().1.clone(), *entry.value()))
                .collect(),
            None => Vec::new(),
        };
        ids.sort_unstable();
        let mut listed: Vec<serde_json::Value> = Vec::new();
        let mut started: Vec<u64> = Vec::new();
        for (client_id, correlation_id) in ids {
            let info = if let Some(request) = self.inflight.get(&correlation_id) {
                request.resume.as_deref().filter(|r| r.detached).map(|r| {
                    task_info(
                        &client_id,
                        &request.request_type,
                        r.started_at_ms,
                        None,
                        &r.replay,
                        None,
                    )
                })
            } else {
                self.kept
                    .get(&correlation_id)
                    .filter(|k| k.detached)
                    .map(|k| {
                        task_info(
                            &client_id,
                            &k.request_type,
                            k.started_at_ms,
                            Some(k.ended_at_ms),
                            &k.replay,
                            Some(&k.outcome),
                        )
                    })
            };
            if let Some((started_at, info)) = info {
                started.push(started_at);
                listed.push(info);
            }
        }
        let mut order: Vec<usize> = (0..listed.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(started[i]));
        let tasks: Vec<serde_json::Value> = order.into_iter().map(|i| listed[i].take()).collect();
        if let Err(EmitError::Full) = self
            .sink
            .ack_json(ack, &json!({ "ok": true, "tasks": tasks }))
        {
            self.sink.disconnect(conn);
        }
    }

    pub(super) fn refuse_attach(&self, conn: S::Conn, ack: S::Ack, error: &RequestError) {
        debug!(?conn, code = %error.code(), %error, "attach refused");
        if let Err(EmitError::Full) = self.sink.ack(ack, Err(&error.to_body())) {
            self.sink.disconnect(conn);
        }
    }

    /// Outcomes kept for parked requests (tests and metrics).
    pub fn tasks_kept(&self) -> usize {
        self.kept.len()
    }

    /// The bytes of chunks kept for replay by every request of the host (`[resume]
    /// max_kept_bytes`).
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes.used()
    }

    /// Requests parked for a client that has not come back (detached tasks included).
    pub fn parked(&self) -> usize {
        self.inflight
            .iter()
            .filter(|r| {
                r.resume
                    .as_deref()
                    .is_some_and(|r| r.parked_until.is_some())
            })
            .count()
    }

    /// The places `owner` holds under `[resume] max_parked_per_owner` (tests).
    pub fn parked_of(&self, owner: &Owner) -> usize {
        self.parked_per_owner.of(owner)
    }

    /// Sets the gauges of what sessions keep; called at each scrape (counting the parked
    /// requests walks the requests in flight, bounded by the limits, once per scrape).
    pub fn record_resume_gauges(&self) {
        metrics::gauge!(crate::metrics::RESUME_PARKED).set(self.parked() as f64);
        metrics::gauge!(crate::metrics::RESUME_KEPT_OUTCOMES).set(self.kept.len() as f64);
        metrics::gauge!(crate::metrics::RESUME_KEPT_BYTES).set(self.kept_bytes() as f64);
        let held = self.tasks_held();
        for (state, count) in TASK_STATES.iter().zip(held.by_state) {
            metrics::gauge!(crate::metrics::TASKS_HELD, "state" => *state).set(count as f64);
        }
        metrics::gauge!(crate::metrics::TASK_BYTES).set(held.bytes as f64);
    }

    /// The detached tasks this host holds in its maps (none with a shared store, which
    /// keeps them), by state, and the bytes of their chunks and outcomes.
    pub fn tasks_held(&self) -> TasksHeld {
        let mut held = TasksHeld::default();
        let mut count = |outcome: Option<&OwnedResponse>, replay: &Replay| {
            let state = state_of(outcome);
            if let Some(i) = TASK_STATES.iter().position(|s| *s == state) {
                held.by_state[i] += 1;
            }
            held.bytes += replay.bytes() + outcome.map_or(0, OwnedResponse::weight);
        };
        for request in self.inflight.iter() {
            if let Some(r) = request.resume.as_deref().filter(|r| r.detached) {
                count(r.outcome.as_ref(), &r.replay);
            }
        }
        for kept in self.kept.iter().filter(|k| k.detached) {
            count(Some(&kept.outcome), &kept.replay);
        }
        held
    }
}
