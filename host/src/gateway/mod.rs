//! The gateway: the host's core, independent of socketioxide and the AMQP client.
//!
//! It admits `request`s (envelope checks, routing, size and payload validation, duplicate
//! ids), publishes them through a [`Broker`], acknowledges them once the broker confirmed,
//! relays worker replies to the right connection in order, and ends requests on result,
//! error, cancel, timeout or disconnect — leaving nothing behind in its maps.
//!
//! Two maps hold all state:
//! - `inflight`: correlation id → the request (its connection, client id, stream state).
//! - `conns`: connection → client id → correlation id (duplicate ids, cancel, disconnect).
//!
//! A request is `Publishing` until the broker confirms it: replies that arrive before the
//! confirm (a fast worker) are buffered, so a client always sees the ack before any
//! `response`. Then it is `Active` until its final reply. Final transitions happen under
//! the map's entry lock (`remove_if_mut`), so no event can follow a final one.
//!
//! Every in-flight entry carries its [`RequestMetrics`]: whichever path takes a request
//! out of the map, dropping the entry records its outcome and duration. Log lines about a
//! request carry its `correlation_id` and `traceparent`.
//!
//! The parts: `envelope` (the event bodies and the checks of a request that need no
//! state), `admission` (the rate, the reservation of a request's id and entry, its publish
//! and ack), `relay` (worker replies to the client, in order), `ending` (cancel, timeouts,
//! and ending everything at once with [`Gateway::fail_all`]).

mod admission;
mod ending;
mod envelope;
mod handoff;
mod relay;
mod resume;
mod shared_tasks;
pub mod task_list;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde_json::value::RawValue;
use taskgate_protocol::trace::TraceParent;
use taskgate_protocol::ErrorBody;
use tokio::time::Instant;
use tracing::debug;
use uuid::Uuid;

pub use self::envelope::{AttachEnvelope, CancelEnvelope, RequestEnvelope};
pub use self::handoff::CLAIM_TIMEOUT;
use self::handoff::{Claims, Forwarding, Outbox};
use self::resume::{Kept, Resumable};
pub use self::resume::{TasksHeld, TASK_STATES};
use crate::broker::Broker;
use crate::deadlines::Deadlines;
use crate::limits::Limits;
use crate::metrics::{GatewayMetrics, RequestMetrics};
use crate::resume::{KeptBytes, Owner, ParkedPerOwner, ResumeSettings};
use crate::routes::RoutingTable;
use crate::serving::Serving;
use crate::session::Session;
use crate::sink::{ClientDropped, ClientSink};

#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// How long to wait for the broker's publisher confirm before answering `UNAVAILABLE`.
    pub publish_timeout: Duration,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            publish_timeout: Duration::from_secs(10),
        }
    }
}

/// A reply on its way to a client.
#[derive(Debug)]
enum Outbound {
    Chunk {
        seq: Option<i64>,
        data: Box<RawValue>,
    },
    Result(Box<RawValue>),
    Error(ErrorBody),
}

/// Replies one request may have buffered while it waits for its publish confirm (their
/// bytes are capped too, at `[limits] max_reply_bytes`): a worker that floods replies for a
/// request not yet confirmed cannot grow the host's memory without bound.
pub(crate) const MAX_EARLY_REPLIES: usize = 1_000;

#[derive(Debug)]
enum Stage {
    Publishing {
        buffered: Vec<Outbound>,
        /// The body bytes of `buffered`, as the workers sent them.
        buffered_bytes: usize,
        /// The request was ended while publishing (cancelled by the client, or failed by
        /// the host): this error follows the ack, and workers are told to stop.
        ended: Option<ErrorBody>,
    },
    Active,
}

#[derive(Debug)]
struct InFlight<C> {
    conn: C,
    /// Its key in `inflight`, kept here for what is told about its end (recent failures).
    correlation_id: Uuid,
    client_id: Arc<str>,
    request_type: Arc<str>,
    /// The timeout the request was admitted with: a reload may change or remove its type
    /// meanwhile, and the `TIMEOUT` error must name the timeout that applied.
    timeout_ms: u64,
    stage: Stage,
    /// The `seq` of the next chunk sent to the client.
    next_seq: u64,
    /// When it times out, once it is `Active` (watched in `Gateway::deadlines`).
    deadline: Option<Instant>,
    trace: TraceParent,
    metrics: RequestMetrics,
    /// Set for a request of a session (protocol §4): its owner, the chunks it relayed, and
    /// whether it is parked.
    resume: Option<Box<Resumable>>,
}

impl<C: Copy> InFlight<C> {
    /// Its connection, client id and session state, borrowed apart: a response event
    /// borrows the id while `Gateway::send` updates the session state.
    fn parts(&mut self) -> (C, &str, Option<&mut Resumable>) {
        (self.conn, &self.client_id, self.resume.as_deref_mut())
    }
}

pub struct Gateway<B: Broker, S: ClientSink> {
    broker: Arc<B>,
    sink: Arc<S>,
    routes: ArcSwap<RoutingTable>,
    inflight: DashMap<Uuid, InFlight<S::Conn>>,
    conns: DashMap<S::Conn, HashMap<Arc<str>, Uuid>>,
    /// Who each connection is and its request budget (`session`).
    sessions: DashMap<S::Conn, Arc<Session>>,
    /// Requests one connection may have in flight (`None`: no limit).
    max_in_flight: Option<usize>,
    /// The largest worker reply body relayed (`[limits] max_reply_bytes`).
    max_reply_bytes: usize,
    /// Deadlines of active requests, watched by one task (started with the first one).
    deadlines: Arc<Deadlines>,
    watching_deadlines: AtomicBool,
    options: GatewayOptions,
    metrics: GatewayMetrics,
    /// False once the host is shutting down: every new request is refused `UNAVAILABLE`.
    admitting: AtomicBool,
    /// Cancellations spawned and not yet handed to the broker (shutdown waits for them).
    pending_cancels: Arc<AtomicUsize>,
    /// Sessions (protocol §4); `None`: off, every request ends with its connection.
    resume: Option<ResumeSettings>,
    /// (owner, client id) → correlation id of every request of a session, in flight or
    /// kept: what `attach` looks up.
    owned: DashMap<(Owner, Arc<str>), Uuid>,
    /// Requests that ended while parked: their outcome waits for an `attach` until the
    /// window passes.
    kept: DashMap<Uuid, Kept>,
    /// Detached tasks (running or kept) per owner, against `[resume] max_tasks`.
    tasks_per_owner: DashMap<Owner, usize>,
    /// The chunks every request's replay keeps, against `[resume] max_kept_bytes`.
    kept_bytes: Arc<KeptBytes>,
    /// Requests parked (or kept) per owner, against `[resume] max_parked_per_owner`.
    parked_per_owner: Arc<ParkedPerOwner>,
    /// The task store the hosts of a cluster share; `None`: detached tasks live in the
    /// maps above (`shared_tasks`).
    store: Option<Arc<dyn crate::tasks::TaskStore>>,
    /// What each connection is relayed from the shared store, stopped when it goes.
    relays: DashMap<S::Conn, Vec<tokio::task::AbortHandle>>,
    /// Where workers reply to the shared store's tasks.
    task_reply_queue: Arc<str>,
    /// Hosts hand requests to each other (§4.4): on with the cluster secret.
    handoff: bool,
    /// Attaches waiting for another host to hand their request over (`handoff`).
    claims: Claims<S::Conn, S::Ack>,
    /// Requests handed to another host: where their worker replies are forwarded.
    forwarding: DashMap<Uuid, Forwarding>,
    /// The one sender of messages to other hosts, started with the first.
    outbox: std::sync::OnceLock<Outbox>,
    /// The last requests that ended with an error, for the operator console; `None`
    /// while the console is off.
    failures: Option<Arc<crate::console::failures::RecentFailures>>,
    /// Which queues have consumers (`serving`): a request to a type without workers is
    /// refused before its publish.
    serving: Arc<Serving>,
}

impl<B: Broker, S: ClientSink> Drop for Gateway<B, S> {
    fn drop(&mut self) {
        // Lets the deadline watcher notice that the gateway is gone and end.
        self.deadlines.wake();
    }
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    pub fn new(
        broker: Arc<B>,
        sink: Arc<S>,
        routes: RoutingTable,
        options: GatewayOptions,
    ) -> Self {
        Gateway {
            broker,
            sink,
            routes: ArcSwap::from_pointee(routes),
            inflight: DashMap::new(),
            conns: DashMap::new(),
            sessions: DashMap::new(),
            max_in_flight: None,
            max_reply_bytes: crate::limits::DEFAULT_MAX_REPLY_BYTES,
            deadlines: Arc::default(),
            watching_deadlines: AtomicBool::new(false),
            options,
            metrics: GatewayMetrics::new(),
            admitting: AtomicBool::new(true),
            pending_cancels: Arc::new(AtomicUsize::new(0)),
            resume: None,
            owned: DashMap::new(),
            kept: DashMap::new(),
            tasks_per_owner: DashMap::new(),
            kept_bytes: Arc::new(KeptBytes::new(usize::MAX)),
            parked_per_owner: ParkedPerOwner::new(0),
            store: None,
            relays: DashMap::new(),
            task_reply_queue: Arc::from(""),
            handoff: false,
            claims: Claims::default(),
            forwarding: DashMap::new(),
            outbox: std::sync::OnceLock::new(),
            failures: None,
            serving: Arc::default(),
        }
    }

    /// Keeps the last requests that end with an error in `failures` (the console).
    pub fn with_recent_failures(
        mut self,
        failures: Arc<crate::console::failures::RecentFailures>,
    ) -> Self {
        self.failures = Some(failures);
        self
    }

    /// Requests in flight per request type (the console; walks the map, so not for the
    /// request path).
    pub fn in_flight_by_type(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for entry in self.inflight.iter() {
            *counts
                .entry(entry.value().request_type.to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    /// What the host knows of the consumers of its request queues (`serving::watch` feeds it).
    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    /// Turns sessions on (protocol §4): the requests of a connection that opted in are
    /// parked when it drops, for `settings.window`.
    pub fn with_resume(mut self, settings: ResumeSettings) -> Self {
        self.kept_bytes = Arc::new(KeptBytes::new(settings.max_kept_bytes));
        self.parked_per_owner = ParkedPerOwner::new(settings.max_parked_per_owner);
        self.resume = settings.enabled().then_some(settings);
        self
    }

    /// Applies the limits the gateway enforces (requests in flight per connection, the size
    /// of worker replies); the request rate is each connection's [`Session`].
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.max_in_flight = limits.in_flight_limit();
        self.max_reply_bytes = limits.max_reply_bytes;
        self
    }

    /// From now on every new request is refused with `UNAVAILABLE` (shutdown). Requests in
    /// flight go on.
    pub fn stop_admitting(&self) {
        self.admitting.store(false, Ordering::SeqCst);
    }

    /// False once [`Gateway::stop_admitting`] was called.
    pub fn is_admitting(&self) -> bool {
        self.admitting.load(Ordering::SeqCst)
    }

    /// Nothing in flight and every cancellation handed to the broker.
    pub fn is_settled(&self) -> bool {
        self.inflight.is_empty() && self.pending_cancels.load(Ordering::SeqCst) == 0
    }

    /// The current routing table.
    pub fn routes(&self) -> Arc<RoutingTable> {
        self.routes.load_full()
    }

    /// Replaces the routing table; requests already in flight are not affected.
    pub fn set_routes(&self, routes: RoutingTable) {
        self.routes.store(Arc::new(routes));
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Client ids reserved across all connections (equals `in_flight` when idle paths are
    /// clean; tests assert both reach zero).
    pub fn reserved_ids(&self) -> usize {
        self.conns.iter().map(|c| c.len()).sum()
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// A connection without identity or limits (tests, and hosts without auth).
    pub fn connected(&self, conn: S::Conn) {
        self.connected_as(conn, Session::anonymous());
    }

    /// A connection that passed the handshake, with who it is and its budget.
    pub fn connected_as(&self, conn: S::Conn, session: Session) {
        self.sessions.insert(conn, Arc::new(session));
        if self.conns.insert(conn, HashMap::new()).is_none() {
            self.metrics.socket_connected();
        }
    }

    /// The connection is gone: forget its requests and tell workers to stop them — or,
    /// for a session's connection, park them until the window passes.
    pub fn disconnected(self: &Arc<Self>, conn: S::Conn) {
        self.stop_relays(conn);
        let session = self.sessions.remove(&conn);
        let Some((_, requests)) = self.conns.remove(&conn) else {
            return;
        };
        self.metrics.socket_disconnected();
        if let Some(window) = self.resume.as_ref().map(|r| r.window) {
            if session.is_some_and(|(_, s)| s.owner().is_some()) {
                self.park(requests.into_values(), window);
                return;
            }
        }
        for correlation_id in requests.into_values() {
            self.end_with_connection(correlation_id);
        }
    }

    /// Ends a request whose client is gone for good: forgotten, and workers told to stop.
    fn end_with_connection(&self, correlation_id: Uuid) {
        let Some((_, request)) = self.inflight.remove(&correlation_id) else {
            return;
        };
        if let Some(deadline) = request.deadline {
            self.deadlines.remove(deadline, correlation_id);
        }
        if let Some(resume) = &request.resume {
            self.forget_owned(
                &resume.owner,
                &request.client_id,
                correlation_id,
                resume.detached,
            );
        }
        debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "client disconnected; cancelling");
        // A request still publishing is cancelled when its confirm arrives.
        if matches!(request.stage, Stage::Active) {
            self.spawn_cancel(correlation_id);
        }
    }

    /// Frees the client id of a finished request and stops watching its deadline; the
    /// outcome of a parked one is kept for its client (`resume`).
    fn release_id(&self, correlation_id: Uuid, request: InFlight<S::Conn>) {
        if let Some(deadline) = request.deadline {
            self.deadlines.remove(deadline, correlation_id);
        }
        if let Some(mut requests) = self.conns.get_mut(&request.conn) {
            if requests.get(&request.client_id) == Some(&correlation_id) {
                requests.remove(&request.client_id);
            }
        }
        self.keep_if_parked(correlation_id, request);
    }

    fn spawn_cancel(&self, correlation_id: Uuid) {
        let broker = self.broker.clone();
        let pending = self.pending_cancels.clone();
        pending.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            if let Err(error) = broker.publish_cancel(correlation_id).await {
                debug!(%correlation_id, %error, "cancellation not published");
            }
            pending.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A client a transport dropped or lost is disconnected like any other.
impl<B: Broker, S: ClientSink, C: 'static> ClientDropped<C> for Gateway<B, S>
where
    S::Conn: From<C>,
{
    fn client_dropped(self: Arc<Self>, conn: C) {
        self.disconnected(conn.into());
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod security_tests;
