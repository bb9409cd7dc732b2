//! A blip that comes back through another host (protocol §4.5): the request is *handed
//! off* from the host that holds it to the one the client reconnected to.
//!
//! - The new host gets an `attach` for a request of the owner it does not hold: it sends a
//!   *claim* to every host (the `taskgate.tasks` fanout) — claim id, owner, client id,
//!   `afterSeq` and its own reply queue; the attaches of one reconnect leave together, one
//!   message per owner — and waits [`CLAIM_TIMEOUT`] for a hand-off; none:
//!   `TASK_NOT_FOUND`, as on one host.
//! - The host that holds the request parked (or attached to a connection that is in fact
//!   gone) and owned by exactly that owner takes it out of its maps and sends the claimer,
//!   on the claimer's reply queue, a *hand-off* (the request's metadata, the claim id, and
//!   the chunks after `afterSeq` it kept and a kept outcome) — and from then on *forwards*
//!   every worker reply for the request there, until the final one or the request's
//!   deadline. One sender task for all of it (claims too): the order is kept.
//! - A request that comes back to a host that forwards it is held there from the claim on:
//!   the replies forwarded before the claim reach the holder first, and the ones after it
//!   wait for the hand-off.
//! - The new host accepts only the hand-off of a claim it made, for the owner and id it
//!   asked for; it enters the request in flight under the same correlation id, bound to the
//!   attaching connection, acks the attach, and the replies that follow take the ordinary
//!   relay path. It can hand the request on again (a second blip) the same way.
//!
//! Nothing of this runs while no connection drops: a host looks at a claim, a hand-off or
//! its forwarding map only for a message whose correlation id is not in flight.
//!
//! Claims and hand-offs come from the broker, which every host and worker can publish to:
//! they are checked like any other input (a malformed one is dropped with a log line). A
//! host sends hand-offs only to reply queues (`taskgate.reply.*`), never to a request queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use taskgate_protocol::amqp as names;
use taskgate_protocol::trace::TraceParent;
use taskgate_protocol::ReplyKind;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::resume::{state_of, Kept, Resumable};
use super::{Gateway, InFlight, Stage, MAX_EARLY_REPLIES};
use crate::broker::{Broker, HostMessage, IncomingReply};
use crate::error::RequestError;
use crate::metrics::{Outcome, RequestMetrics};
use crate::resume::{Owner, Replay, SessionId};
use crate::sink::{ClientSink, OwnedResponse};
use crate::trace::ClientTrace;

/// How long a host waits for the hand-off of a request it claimed before it answers
/// `TASK_NOT_FOUND`: a round trip through the broker is milliseconds; this covers a busy
/// holder.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the first claim of a batch waits for the others (the attaches of one
/// reconnect arrive together): one message per owner instead of one per request.
const CLAIM_LINGER: Duration = Duration::from_millis(2);

/// Requests named in one claim message at most (a bounded body).
const MAX_CLAIMS_PER_MESSAGE: usize = 500;

/// The longest remaining time a hand-off may give its request (a week, as the longest
/// request timeout one could configure is far below).
const MAX_REMAINING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest request type name accepted in a hand-off (an AMQP short string).
const MAX_TYPE_LEN: usize = 255;

/// An `attach` waiting for the hand-off of the request it claimed.
pub(super) struct PendingClaim<C, A> {
    conn: C,
    owner: Owner,
    client_id: Arc<str>,
    ack: A,
    until: Instant,
}

/// What this host does for a request it handed to another: where the worker's later
/// replies go, and until when.
#[derive(Debug)]
pub(super) struct Forwarding {
    queue: Arc<str>,
    until: Instant,
    owner: Owner,
    client_id: Arc<str>,
    /// Set when the client came back here and this host claimed the request back: the
    /// replies are held (not forwarded) until the hand-off brings the rest.
    held: Option<Vec<IncomingReply>>,
}

/// The pending claims of a host, by claim id, and those not yet published. Mutexes over
/// plain collections rather than a `DashMap`: an ack is `Send` but not `Sync`, and claims
/// are rare.
pub(super) struct Claims<C, A> {
    pending: Mutex<HashMap<Uuid, PendingClaim<C, A>>>,
    outgoing: Mutex<Vec<(Owner, ClaimedRequest)>>,
}

impl<C, A> Default for Claims<C, A> {
    fn default() -> Self {
        Claims {
            pending: Mutex::default(),
            outgoing: Mutex::default(),
        }
    }
}

impl<C, A> Claims<C, A> {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, PendingClaim<C, A>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn outgoing(&self) -> MutexGuard<'_, Vec<(Owner, ClaimedRequest)>> {
        self.outgoing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The sender of messages to other hosts: one task, so that they leave in order.
pub(super) type Outbox = mpsc::UnboundedSender<Outgoing>;

/// An owner as hosts name it to each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireOwner {
    Subject(String),
    Session(SessionId),
}

impl From<&Owner> for WireOwner {
    fn from(owner: &Owner) -> Self {
        match owner {
            Owner::Subject(subject) => WireOwner::Subject(subject.to_string()),
            Owner::Session(id) => WireOwner::Session(*id),
        }
    }
}

impl From<WireOwner> for Owner {
    fn from(owner: WireOwner) -> Self {
        match owner {
            WireOwner::Subject(subject) => Owner::Subject(subject.into()),
            WireOwner::Session(id) => Owner::Session(id),
        }
    }
}

/// The body of a claim (protocol §4.5): requests of one owner, for one host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimBody {
    owner: WireOwner,
    reply_to: String,
    requests: Vec<ClaimedRequest>,
}

/// One request of a claim: the hand-off names its claim id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClaimedRequest {
    claim_id: Uuid,
    client_id: String,
    after_seq: i64,
}

/// The body of a hand-off (protocol §4.5); its correlation id is the request's.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HandoffBody {
    claim_id: Uuid,
    owner: WireOwner,
    client_id: String,
    request_type: String,
    /// The request type's timeout (for the `TIMEOUT` error's text).
    timeout_ms: u64,
    /// How long the request may still run: hosts' clocks need not agree.
    remaining_ms: u64,
    /// The `seq` the next chunk sent after the hand-off has.
    next_seq: u64,
    /// The attach ack's `firstSeq` and `state`.
    first_seq: u64,
    state: String,
    traceparent: String,
    started_at_ms: u64,
    /// The kept chunks after the claim's `afterSeq`, `[seq, data]`: in the hand-off itself,
    /// so that nothing can come between them and it.
    #[serde(default)]
    chunks: Vec<(u64, Box<RawValue>)>,
    /// The request's outcome, if it ended while parked.
    #[serde(default)]
    outcome: Option<WireOutcome>,
}

/// A kept outcome in a hand-off: a `result`'s data or an `error`'s error object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireOutcome {
    kind: ReplyKind,
    body: Box<RawValue>,
}

/// What the sender of messages to other hosts sends, in this order.
pub(super) enum Outgoing {
    /// To another host's reply queue.
    ToHost(Arc<str>, HostMessage),
    /// To every host (`taskgate.tasks`): behind the replies forwarded before it, so that
    /// the holder has them when it answers.
    Claim(HostMessage),
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// Turns hand-offs between hosts on: for hosts that share the cluster secret, so that a
    /// session token one issued is accepted by all. Off (a host on its own), an `attach` for
    /// a request the host does not hold is refused at once.
    pub fn with_handoff(mut self, on: bool) -> Self {
        self.handoff = on;
        self
    }

    /// An `attach` (`id`, `after_seq`) for a request this host does not hold: claims it from
    /// the other hosts, or refuses it at once when it cannot (no session, no broker).
    pub(super) fn claim(
        self: &Arc<Self>,
        conn: S::Conn,
        client_id: &str,
        after_seq: i64,
        ack: S::Ack,
    ) {
        let owner = self.sessions.get(&conn).and_then(|s| s.owner().cloned());
        let queue = self.handoff.then(|| self.broker.own_queue()).flatten();
        let (Some(owner), Some(reply_to)) = (owner, queue) else {
            return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
        };
        let claim_id = Uuid::new_v4();
        let until = Instant::now() + CLAIM_TIMEOUT;
        self.hold_forwarded(&owner, client_id);
        self.claims.lock().insert(
            claim_id,
            PendingClaim {
                conn,
                owner: owner.clone(),
                client_id: client_id.into(),
                ack,
                until,
            },
        );
        self.watch_deadline(claim_id, until);
        debug!(%claim_id, %client_id, after_seq, "request not held here: claiming it from the other hosts");
        let first = {
            let mut outgoing = self.claims.outgoing();
            outgoing.push((
                owner,
                ClaimedRequest {
                    claim_id,
                    client_id: client_id.to_owned(),
                    after_seq,
                },
            ));
            outgoing.len() == 1
        };
        if first {
            // The first claim of a batch: the attaches a reconnecting client sends together
            // (one per request it had) leave as one message per owner.
            let gateway = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(CLAIM_LINGER).await;
                if let Some(gateway) = gateway.upgrade() {
                    gateway.publish_claims(reply_to);
                }
            });
        }
    }

    /// A request this host handed off comes back: the replies that reach it from now on are
    /// held here rather than forwarded, and the claim leaves behind the ones forwarded
    /// before (one sender, one channel), so the holder's hand-off has every reply up to the
    /// held ones — none lost, none out of order.
    fn hold_forwarded(&self, owner: &Owner, client_id: &str) {
        for mut forwarding in self.forwarding.iter_mut() {
            if forwarding.owner == *owner && *forwarding.client_id == *client_id {
                forwarding.held.get_or_insert_with(Vec::new);
            }
        }
    }

    /// Sends the claims made since the last batch, one message per owner and at most
    /// [`MAX_CLAIMS_PER_MESSAGE`] requests each.
    fn publish_claims(&self, reply_to: String) {
        let outgoing = std::mem::take(&mut *self.claims.outgoing());
        let mut by_owner: Vec<(Owner, Vec<ClaimedRequest>)> = Vec::new();
        for (owner, request) in outgoing {
            match by_owner.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, requests)) => requests.push(request),
                None => by_owner.push((owner, vec![request])),
            }
        }
        for (owner, requests) in by_owner {
            for batch in requests.chunks(MAX_CLAIMS_PER_MESSAGE) {
                let body = ClaimBody {
                    owner: WireOwner::from(&owner),
                    reply_to: reply_to.clone(),
                    requests: batch.to_vec(),
                };
                let body = match serde_json::to_vec(&body) {
                    Ok(body) => body,
                    Err(error) => {
                        warn!(%error, "claims could not be encoded; their attaches will find nothing");
                        continue;
                    }
                };
                self.to_hosts(Outgoing::Claim(HostMessage {
                    correlation_id: Uuid::new_v4(),
                    kind: names::CLAIM_TYPE.into(),
                    seq: None,
                    body,
                }));
            }
        }
    }

    /// A message whose correlation id is not in flight here: a claim, a hand-off, or a
    /// reply of a request this host handed off — or a late reply, dropped.
    pub(super) fn not_in_flight(self: &Arc<Self>, correlation_id: Uuid, reply: IncomingReply) {
        match reply.kind.as_deref() {
            Some(names::CLAIM_TYPE) => self.on_claim(correlation_id, &reply.body),
            Some(names::HANDOFF_TYPE) => self.on_handoff(correlation_id, &reply.body),
            _ => self.forward_reply(correlation_id, reply),
        }
    }

    /// A worker reply of a request handed to another host goes there; the final one ends
    /// the forwarding.
    fn forward_reply(&self, correlation_id: Uuid, reply: IncomingReply) {
        let queue = match self.forwarding.get_mut(&correlation_id) {
            None => {
                log_dropped_reply(correlation_id, &reply);
                return;
            }
            Some(mut forwarding) => match &mut forwarding.held {
                Some(held) if held.len() < MAX_EARLY_REPLIES => {
                    held.push(reply);
                    return;
                }
                Some(_) => {
                    warn!(%correlation_id, "too many replies held for a request claimed back; dropped");
                    return;
                }
                None => forwarding.queue.clone(),
            },
        };
        let Some(kind) = reply.kind.filter(|k| ReplyKind::parse(k).is_some()) else {
            debug!(%correlation_id, "reply with an unknown `type` not forwarded");
            return;
        };
        let last = ReplyKind::parse(&kind) != Some(ReplyKind::Chunk);
        self.send_to_host(
            &queue,
            HostMessage {
                correlation_id,
                kind: kind.into(),
                seq: reply.seq,
                body: reply.body,
            },
        );
        if last {
            if let Some((_, forwarding)) = self.forwarding.remove(&correlation_id) {
                self.deadlines.remove(forwarding.until, correlation_id);
                debug!(%correlation_id, queue = %forwarding.queue, "final reply forwarded; the request is forgotten here");
            }
        }
    }

    /// Another host claims requests: hand over those this host holds for that owner.
    fn on_claim(self: &Arc<Self>, message_id: Uuid, body: &[u8]) {
        if self.resume.is_none() || !self.handoff {
            return;
        }
        let claim = match serde_json::from_slice::<ClaimBody>(body) {
            Ok(claim) => claim,
            Err(error) => {
                warn!(%message_id, %error, "malformed claim dropped");
                return;
            }
        };
        if self.broker.own_queue().as_deref() == Some(claim.reply_to.as_str()) {
            return;
        }
        if !claim.reply_to.starts_with(names::REPLY_QUEUE_PREFIX) || claim.reply_to.len() > 255 {
            warn!(%message_id, reply_to = %claim.reply_to, "claim whose reply queue is not a host's dropped");
            return;
        }
        let owner = Owner::from(claim.owner);
        let queue: Arc<str> = claim.reply_to.into();
        for request in claim.requests.into_iter().take(MAX_CLAIMS_PER_MESSAGE) {
            self.answer_claim(&owner, &queue, request);
        }
    }

    /// Hands one claimed request over if this host holds it for `owner`.
    fn answer_claim(self: &Arc<Self>, owner: &Owner, queue: &Arc<str>, claimed: ClaimedRequest) {
        let ClaimedRequest {
            claim_id,
            client_id,
            after_seq,
        } = claimed;
        let client_id: Arc<str> = client_id.into();
        let Some(correlation_id) = self
            .owned
            .get(&(owner.clone(), client_id))
            .map(|entry| *entry.value())
        else {
            return;
        };
        // An active request of a session, not a task (a detached task is left to its holder: tasks get a shared store of their own, docs/long-running-tasks.md): parked,
        // or on a connection the client evidently left.
        let taken = self.inflight.remove_if(&correlation_id, |_, request| {
            matches!(request.stage, Stage::Active)
                && request.resume.as_deref().is_some_and(|r| !r.detached)
        });
        if let Some((_, request)) = taken {
            return self.hand_over(correlation_id, claim_id, after_seq, queue.clone(), request);
        }
        if let Some((_, kept)) = self
            .kept
            .remove_if(&correlation_id, |_, kept| !kept.detached)
        {
            self.hand_over_kept(correlation_id, claim_id, after_seq, queue, kept);
        }
    }

    /// Hands a request in flight to the claimer, then forwards its replies there.
    fn hand_over(
        self: &Arc<Self>,
        correlation_id: Uuid,
        claim_id: Uuid,
        after_seq: i64,
        queue: Arc<str>,
        request: InFlight<S::Conn>,
    ) {
        let InFlight {
            conn,
            client_id,
            request_type,
            timeout_ms,
            next_seq,
            deadline,
            trace,
            mut metrics,
            resume,
            ..
        } = request;
        // Its outcome is counted by the host that takes it.
        metrics.finish(Outcome::HandedOff);
        let Some(resume) = resume else {
            return;
        };
        if let Some(deadline) = deadline {
            self.deadlines.remove(deadline, correlation_id);
        }
        if let Some(until) = resume.parked_until {
            self.deadlines.remove(until, correlation_id);
        }
        if let Some(mut requests) = self.conns.get_mut(&conn) {
            // Still attached to a connection here: the client left it (half-open).
            if requests.get(&client_id) == Some(&correlation_id) {
                requests.remove(&client_id);
            }
        }
        self.forget_owned(&resume.owner, &client_id, correlation_id, false);
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_millis(timeout_ms));
        self.forwarding.insert(
            correlation_id,
            Forwarding {
                queue: queue.clone(),
                until,
                owner: resume.owner.clone(),
                client_id: client_id.clone(),
                held: None,
            },
        );
        self.watch_deadline(correlation_id, until);
        let handed = Handed {
            correlation_id,
            claim_id,
            owner: &resume.owner,
            client_id: &client_id,
            request_type: &request_type,
            timeout_ms,
            remaining: until.saturating_duration_since(Instant::now()),
            replay: &resume.replay,
            next_seq,
            after_seq,
            outcome: None,
            trace,
            started_at_ms: resume.started_at_ms,
        };
        info!(%correlation_id, traceparent = %trace, %client_id, %queue, after_seq, "request handed to the host its client reconnected to; forwarding its replies");
        self.send_handoff(&queue, &handed);
    }

    /// Hands the kept outcome of a request that ended while parked to the claimer.
    fn hand_over_kept(
        &self,
        correlation_id: Uuid,
        claim_id: Uuid,
        after_seq: i64,
        queue: &Arc<str>,
        kept: Kept,
    ) {
        self.deadlines.remove(kept.until, correlation_id);
        self.forget_owned(&kept.owner, &kept.client_id, correlation_id, false);
        let handed = Handed {
            correlation_id,
            claim_id,
            owner: &kept.owner,
            client_id: &kept.client_id,
            request_type: &kept.request_type,
            timeout_ms: 0,
            remaining: CLAIM_TIMEOUT,
            replay: &kept.replay,
            next_seq: 0,
            after_seq,
            outcome: Some(&kept.outcome),
            trace: crate::trace::for_request(ClientTrace::Absent, correlation_id),
            started_at_ms: kept.started_at_ms,
        };
        info!(%correlation_id, client_id = %kept.client_id, %queue, after_seq, "the kept outcome of a parked request handed to the host its client reconnected to");
        self.send_handoff(queue, &handed);
    }

    /// Sends the hand-off, with the kept chunks after `after_seq` and a kept outcome in it.
    fn send_handoff(&self, queue: &Arc<str>, handed: &Handed<'_>) {
        let (first_seq, chunks) = handed.replay.after(handed.after_seq);
        let chunks: Vec<(u64, Box<RawValue>)> =
            chunks.map(|(seq, data)| (seq, data.to_owned())).collect();
        // The next chunk B sends is the first replayed one, or else the worker's next.
        let next_seq = chunks
            .first()
            .map_or(handed.next_seq.max(handed.replay.next_seq()), |(seq, _)| {
                *seq
            });
        let body = HandoffBody {
            claim_id: handed.claim_id,
            owner: WireOwner::from(handed.owner),
            client_id: handed.client_id.to_owned(),
            request_type: handed.request_type.to_owned(),
            timeout_ms: handed.timeout_ms,
            remaining_ms: u64::try_from(handed.remaining.as_millis()).unwrap_or(u64::MAX),
            next_seq,
            first_seq,
            state: state_of(handed.outcome).to_owned(),
            traceparent: handed.trace.to_string(),
            started_at_ms: handed.started_at_ms,
            chunks,
            outcome: handed.outcome.and_then(wire_outcome),
        };
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(error) => {
                warn!(correlation_id = %handed.correlation_id, %error, "a hand-off could not be encoded");
                return;
            }
        };
        self.send_to_host(
            queue,
            HostMessage {
                correlation_id: handed.correlation_id,
                kind: names::HANDOFF_TYPE.into(),
                seq: None,
                body,
            },
        );
    }

    /// Queues a message for another host behind the ones before it.
    fn send_to_host(&self, queue: &Arc<str>, message: HostMessage) {
        self.to_hosts(Outgoing::ToHost(queue.clone(), message));
    }

    /// Queues a message for other hosts; one task sends them all, in order.
    fn to_hosts(&self, outgoing: Outgoing) {
        let outbox = self.outbox.get_or_init(|| {
            let (sender, mut messages) = mpsc::unbounded_channel::<Outgoing>();
            let broker = self.broker.clone();
            // Ends when the gateway (the sender) is dropped.
            tokio::spawn(async move {
                while let Some(outgoing) = messages.recv().await {
                    let (sent, correlation_id) = match outgoing {
                        Outgoing::ToHost(queue, message) => {
                            let correlation_id = message.correlation_id;
                            (broker.send_to_host(queue, message).await, correlation_id)
                        }
                        Outgoing::Claim(message) => {
                            let correlation_id = message.correlation_id;
                            (broker.publish_claim(message).await, correlation_id)
                        }
                    };
                    if let Err(error) = sent {
                        debug!(%correlation_id, %error, "a message for other hosts was not sent");
                    }
                }
            });
            sender
        });
        if outbox.send(outgoing).is_err() {
            debug!("the sender of messages to other hosts is gone");
        }
    }

    /// The hand-off of a request this host claimed: enter it in flight and ack the attach.
    fn on_handoff(self: &Arc<Self>, correlation_id: Uuid, body: &[u8]) {
        let handoff = match serde_json::from_slice::<HandoffBody>(body) {
            Ok(handoff) => handoff,
            Err(error) => {
                warn!(%correlation_id, %error, "malformed hand-off dropped");
                return;
            }
        };
        let owner = Owner::from(handoff.owner.clone());
        let claim = {
            let mut claims = self.claims.lock();
            match claims.remove(&handoff.claim_id) {
                Some(claim) if claim.owner == owner && *claim.client_id == *handoff.client_id => {
                    claim
                }
                Some(claim) => {
                    // Not what was asked for: the right one may still come.
                    claims.insert(handoff.claim_id, claim);
                    warn!(%correlation_id, claim_id = %handoff.claim_id, "hand-off for another owner or id than claimed dropped");
                    return;
                }
                None => {
                    drop(claims);
                    // Late (the claim timed out) or not asked for: nobody here will relay
                    // its replies, and its holder let it go — the worker is told to stop,
                    // as the window's end would have.
                    info!(%correlation_id, claim_id = %handoff.claim_id, "hand-off of no pending claim (late or not asked for); cancelling the request");
                    self.spawn_cancel(correlation_id);
                    return;
                }
            }
        };
        self.deadlines.remove(claim.until, handoff.claim_id);
        let PendingClaim {
            conn,
            client_id,
            ack,
            ..
        } = claim;
        if handoff.request_type.is_empty()
            || handoff.request_type.len() > MAX_TYPE_LEN
            || self.inflight.contains_key(&correlation_id)
        {
            warn!(%correlation_id, "hand-off with an invalid request type or a correlation id in flight here dropped");
            return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
        }
        let Some(settings) = &self.resume else {
            return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
        };
        // The owner may have started a request of that id here meanwhile.
        match self.owned.entry((owner.clone(), client_id.clone())) {
            dashmap::Entry::Occupied(_) => {
                self.spawn_cancel(correlation_id);
                return self.refuse_attach(
                    conn,
                    ack,
                    &RequestError::DuplicateId(client_id.to_string()),
                );
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(correlation_id);
            }
        }
        // Back on a host that forwarded it (A → B → A): relayed here again, after the replies
        // held since it was claimed back.
        let held = self
            .forwarding
            .remove(&correlation_id)
            .and_then(|(_, forwarding)| {
                self.deadlines.remove(forwarding.until, correlation_id);
                forwarding.held
            })
            .unwrap_or_default();
        let now = Instant::now();
        let deadline = now + Duration::from_millis(handoff.remaining_ms).min(MAX_REMAINING);
        // On the attaching connection; if it dropped while the claim was out, parked.
        let attached = self.conns.get_mut(&conn).map(|mut requests| {
            requests.insert(client_id.clone(), correlation_id);
        });
        let parked_until = attached.is_none().then(|| now + settings.window);
        let trace = TraceParent::parse(&handoff.traceparent)
            .unwrap_or_else(|| crate::trace::for_request(ClientTrace::Absent, correlation_id));
        let request_type: Arc<str> = handoff.request_type.into();
        self.inflight.insert(
            correlation_id,
            InFlight {
                conn,
                correlation_id,
                client_id: client_id.clone(),
                request_type: request_type.clone(),
                timeout_ms: handoff.timeout_ms,
                stage: Stage::Active,
                next_seq: handoff.next_seq,
                deadline: Some(deadline),
                trace,
                metrics: RequestMetrics::start(self.metrics.for_type(&request_type), now),
                resume: Some(Box::new(Resumable {
                    owner,
                    // Counts against `[resume] max_kept_bytes` like any replay of this host.
                    replay: Replay::shared(settings.request_bytes, self.kept_bytes.clone()),
                    parked_until,
                    // Handed over for an attach whose connection went meanwhile: bounded by
                    // the claims of the owner's connections, not by `max_parked_per_owner`.
                    parked_slot: None,
                    outcome: None,
                    detached: false,
                    started_at_ms: handoff.started_at_ms,
                })),
            },
        );
        self.watch_deadline(correlation_id, deadline);
        if let Some(until) = parked_until {
            self.watch_deadline(correlation_id, until);
        }
        info!(%correlation_id, traceparent = %trace, %client_id, "request taken over from another host");
        let state = match handoff.state.as_str() {
            state @ ("running" | "succeeded" | "failed" | "cancelled") => state,
            _ => "running",
        };
        let body = json!({ "ok": true, "state": state, "firstSeq": handoff.first_seq });
        if attached.is_some() && self.sink.ack_json(ack, &body).is_err() {
            // Not reading: as on a lost ack, the connection goes; the request parks.
            self.sink.disconnect(conn);
        }
        // After the ack, as worker replies: the kept chunks, the outcome, what was held.
        let replayed = handoff.chunks.into_iter().map(|(seq, data)| IncomingReply {
            correlation_id: Some(correlation_id.to_string()),
            kind: Some(ReplyKind::Chunk.as_str().to_owned()),
            seq: i64::try_from(seq).ok(),
            body: data.get().as_bytes().to_vec(),
        });
        let outcome = handoff.outcome.map(|outcome| IncomingReply {
            correlation_id: Some(correlation_id.to_string()),
            kind: Some(outcome.kind.as_str().to_owned()),
            seq: None,
            body: outcome.body.get().as_bytes().to_vec(),
        });
        for reply in replayed.chain(outcome).chain(held) {
            self.on_reply(reply);
        }
    }

    /// A claim, or the forwarding of a handed-off request, came due (`expire` found nothing
    /// else due under this id). A claim unanswered: `TASK_NOT_FOUND`.
    pub(super) fn end_of_handoff(&self, id: Uuid, now: Instant) {
        let expired = {
            let mut claims = self.claims.lock();
            match claims.get(&id) {
                Some(claim) if claim.until <= now => claims.remove(&id),
                _ => None,
            }
        };
        if let Some(claim) = expired {
            debug!(claim_id = %id, client_id = %claim.client_id, "no host handed the claimed request over in time");
            return self.refuse_attach(claim.conn, claim.ack, &RequestError::TaskNotFound);
        }
        if let Some((_, forwarding)) = self.forwarding.remove_if(&id, |_, f| f.until <= now) {
            debug!(correlation_id = %id, queue = %forwarding.queue, "forwarding of a handed-off request ended by its deadline");
        }
    }

    /// Requests handed to another host whose replies this host still forwards (tests).
    pub fn forwarding(&self) -> usize {
        self.forwarding.len()
    }

    /// Attaches waiting for a hand-off (tests).
    pub fn pending_claims(&self) -> usize {
        self.claims.len()
    }
}

/// A request on its way to another host, as `send_handoff` needs it.
struct Handed<'a> {
    correlation_id: Uuid,
    claim_id: Uuid,
    owner: &'a Owner,
    client_id: &'a str,
    request_type: &'a str,
    timeout_ms: u64,
    remaining: Duration,
    replay: &'a Replay,
    next_seq: u64,
    after_seq: i64,
    outcome: Option<&'a OwnedResponse>,
    trace: TraceParent,
    started_at_ms: u64,
}

/// A kept outcome as a hand-off carries it.
fn wire_outcome(outcome: &OwnedResponse) -> Option<WireOutcome> {
    let body = match outcome.kind {
        ReplyKind::Result => outcome.data.as_ref()?.clone(),
        ReplyKind::Error => serde_json::value::to_raw_value(outcome.error.as_ref()?).ok()?,
        ReplyKind::Chunk => return None,
    };
    Some(WireOutcome {
        kind: outcome.kind,
        body,
    })
}

/// A reply for a request this host does not know (any more) is dropped. A final one is
/// logged at info with its outcome: it may be all that is left of a request whose client no
/// longer waits — a dead letter sent back with `taskgate dead-letters requeue` after a fix
/// (protocol §3.11), a worker that finished after the client's `TIMEOUT` or cancel.
fn log_dropped_reply(correlation_id: Uuid, reply: &IncomingReply) {
    match reply.kind.as_deref().and_then(ReplyKind::parse) {
        Some(ReplyKind::Result) => {
            info!(%correlation_id, kind = "result", "final reply of a request nobody here waits for (its client had its final response already): dropped");
        }
        Some(ReplyKind::Error) => {
            let code = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|e| e.get("code")?.as_str().map(str::to_owned));
            info!(%correlation_id, kind = "error", code = code.as_deref().unwrap_or("?"), "final reply of a request nobody here waits for (its client had its final response already): dropped");
        }
        _ => {
            debug!(%correlation_id, kind = ?reply.kind, "reply for an unknown or finished request dropped")
        }
    }
}
