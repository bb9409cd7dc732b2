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

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use taskgate_protocol::trace::TraceParent;
use taskgate_protocol::{ErrorBody, ErrorCode, ReplyKind, WorkerErrorBody, MAX_CLIENT_ID_LEN};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::broker::{Broker, IncomingReply, OutgoingRequest, PublishError};
use crate::deadlines::Deadlines;
use crate::error::{RateLimit, RequestError};
use crate::limits::Limits;
use crate::metrics::{GatewayMetrics, Outcome, RequestMetrics, TypeMetrics};
use crate::routes::{Checked, RequestTypeSpec, RoutingTable};
use crate::session::Session;
use crate::sink::{ClientSink, EmitError, ResponseEvent};
use crate::trace::{self, ClientTrace};

/// The `request` event body as received. Fields are loosely typed so that a wrong type is
/// answered with a precise `BAD_REQUEST` instead of a generic parse error.
#[derive(Debug, Deserialize)]
pub struct RequestEnvelope {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default, rename = "requestType")]
    pub request_type: Option<Value>,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Optional W3C trace context (protocol §3.10); an invalid one is ignored.
    #[serde(default)]
    pub traceparent: Option<Value>,
}

/// The `cancel` event body.
#[derive(Debug, Deserialize)]
pub struct CancelEnvelope {
    #[serde(default)]
    pub id: Option<Value>,
}

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

#[derive(Debug)]
enum Stage {
    Publishing {
        buffered: Vec<Outbound>,
        /// The request was ended while publishing (cancelled by the client, or failed by
        /// the host): this error follows the ack, and workers are told to stop.
        ended: Option<ErrorBody>,
    },
    Active,
}

#[derive(Debug)]
struct InFlight<C> {
    conn: C,
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
    /// Deadlines of active requests, watched by one task (started with the first one).
    deadlines: Arc<Deadlines>,
    watching_deadlines: AtomicBool,
    options: GatewayOptions,
    metrics: GatewayMetrics,
    /// False once the host is shutting down: every new request is refused `UNAVAILABLE`.
    admitting: AtomicBool,
    /// Cancellations spawned and not yet handed to the broker (shutdown waits for them).
    pending_cancels: Arc<AtomicUsize>,
}

impl<B: Broker, S: ClientSink> Drop for Gateway<B, S> {
    fn drop(&mut self) {
        // Lets the deadline watcher notice that the gateway is gone and end.
        self.deadlines.wake();
    }
}

struct Admitted<C> {
    conn: C,
    correlation_id: Uuid,
    spec: Arc<RequestTypeSpec>,
    body: Box<str>,
    identity: Option<Arc<str>>,
    traceparent: TraceParent,
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
            deadlines: Arc::default(),
            watching_deadlines: AtomicBool::new(false),
            options,
            metrics: GatewayMetrics::new(),
            admitting: AtomicBool::new(true),
            pending_cancels: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Applies the per-connection limits the gateway enforces (requests in flight); the
    /// request rate is each connection's [`Session`].
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.max_in_flight = limits.in_flight_limit();
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

    /// Ends every request in flight with `UNAVAILABLE` (`reason` is the message) and tells
    /// workers to stop them: for shutdown after the grace period, and when the broker
    /// connection is lost (the replies of requests in flight went with their reply queue,
    /// so waiting for them could only end in `TIMEOUT`). A request still being published
    /// gets its ack first, then the error. Returns how many requests were ended.
    pub fn fail_all(&self, reason: &str) -> usize {
        let error = RequestError::Unavailable(reason.to_owned()).to_body();
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
                debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, reason, "request ended UNAVAILABLE");
                self.release_id(correlation_id, &request);
                self.spawn_cancel(correlation_id);
            }
            failed += usize::from(known);
        }
        failed
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

    /// The connection is gone: forget its requests and tell workers to stop them.
    pub fn disconnected(&self, conn: S::Conn) {
        self.sessions.remove(&conn);
        let Some((_, requests)) = self.conns.remove(&conn) else {
            return;
        };
        self.metrics.socket_disconnected();
        for correlation_id in requests.into_values() {
            if let Some((_, request)) = self.inflight.remove(&correlation_id) {
                if let Some(deadline) = request.deadline {
                    self.deadlines.remove(deadline, correlation_id);
                }
                debug!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "client disconnected; cancelling");
                // A request still publishing is cancelled when its confirm arrives.
                if matches!(request.stage, Stage::Active) {
                    self.spawn_cancel(correlation_id);
                }
            }
        }
    }

    /// Handles one `request` event in two steps. Admission (checks, id reservation) runs
    /// now, synchronously, so that it is ordered with the connection's other events — a
    /// `cancel` sent right after a `request` always finds it. The returned future publishes
    /// and acknowledges; `None` means the request was refused and the refusal already sent.
    /// `envelope` is `Err` with a parse message when the event body had the wrong shape.
    pub fn submit(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
        ack: S::Ack,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let mut type_metrics = None;
        match self.admit(conn, envelope, &mut type_metrics) {
            Ok(admitted) => {
                let gateway = self.clone();
                Some(async move { gateway.publish(admitted, ack).await })
            }
            Err(error) => {
                self.metrics
                    .refused(type_metrics.as_ref(), error.code().as_str());
                debug!(?conn, code = %error.code(), %error, "request refused");
                self.send_refusal(conn, ack, &error);
                None
            }
        }
    }

    /// [`Gateway::submit`] and its publish step, in one call.
    pub async fn handle_request(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
        ack: S::Ack,
    ) {
        if let Some(publish) = self.submit(conn, envelope, ack) {
            publish.await;
        }
    }

    async fn publish(self: Arc<Self>, admitted: Admitted<S::Conn>, ack: S::Ack) {
        let Admitted {
            conn,
            correlation_id,
            spec,
            body,
            identity,
            traceparent,
        } = admitted;
        let deadline = Instant::now() + spec.timeout;
        let request = OutgoingRequest {
            correlation_id,
            request_type: spec.name.as_str().into(),
            queue: spec.queue.as_str().into(),
            body,
            streams: spec.streams,
            timeout: spec.timeout,
            deadline_ms: unix_ms_after(spec.timeout),
            identity,
            traceparent,
        };
        let wait = self.options.publish_timeout.min(spec.timeout);
        let published = match tokio::time::timeout(wait, self.broker.publish(request)).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::ConfirmTimeout(wait)),
        };
        match published {
            Ok(()) => self.activate(conn, correlation_id, ack, deadline),
            Err(error) => {
                warn!(%correlation_id, %traceparent, request_type = %spec.name, %error, "publish failed");
                if let Some((_, mut request)) = self.inflight.remove(&correlation_id) {
                    request
                        .metrics
                        .finish(Outcome::Error(ErrorCode::Unavailable.as_str()));
                    self.release_id(correlation_id, &request);
                }
                // The broker may have taken the message before the failure (no confirm
                // seen): tell workers not to run it.
                if matches!(
                    error,
                    PublishError::ConfirmTimeout(_) | PublishError::Amqp(_)
                ) {
                    self.spawn_cancel(correlation_id);
                }
                let error = RequestError::Unavailable(error.to_string());
                self.send_refusal(conn, ack, &error);
            }
        }
    }

    /// Checks a request and reserves its id. `type_metrics` is set as soon as the request
    /// type is known to be served, so that a refusal after that counts against it.
    fn admit(
        &self,
        conn: S::Conn,
        envelope: Result<RequestEnvelope, String>,
        type_metrics: &mut Option<Arc<TypeMetrics>>,
    ) -> Result<Admitted<S::Conn>, RequestError> {
        let started = Instant::now();
        let session = self.sessions.get(&conn).map(|s| s.value().clone());
        // Every event counts against the rate, malformed ones too, and it is the first
        // check: a flooding client costs as little as possible.
        if let Some(session) = &session {
            session.check_rate().map_err(|wait| {
                RequestError::RateLimited(RateLimit::Rate {
                    per_second: session.requests_per_second(),
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                })
            })?;
        }
        if !self.is_admitting() {
            return Err(RequestError::Unavailable(
                "the host is shutting down".to_owned(),
            ));
        }
        let envelope = envelope.map_err(RequestError::bad_request)?;
        let id = required_string(envelope.id, "id")?;
        let len = id.chars().count();
        if len == 0 || len > MAX_CLIENT_ID_LEN {
            return Err(RequestError::BadRequest(format!(
                "`id` must be 1 to {MAX_CLIENT_ID_LEN} characters long (got {len})"
            )));
        }
        let request_type = required_string(envelope.request_type, "requestType")?;
        let spec = self
            .routes
            .load()
            .get(&request_type)
            .cloned()
            .ok_or(RequestError::UnknownRequestType(request_type))?;
        let type_metrics = type_metrics
            .insert(self.metrics.for_type(&spec.name))
            .clone();
        if !session
            .as_ref()
            .map_or(spec.required_roles.is_empty(), |s| {
                s.may_call(&spec.required_roles)
            })
        {
            return Err(RequestError::Forbidden(spec.name.clone()));
        }
        if let Some(max) = self.max_in_flight {
            // Admission runs in event order per connection, so the count cannot grow
            // between this check and the reservation below.
            if self.conns.get(&conn).is_some_and(|r| r.len() >= max) {
                return Err(RequestError::RateLimited(RateLimit::InFlight { max }));
            }
        }
        let payload = match envelope.payload {
            Some(payload) => payload,
            None => null_payload(),
        };
        let body: Box<str> = match spec.check(&payload)? {
            Checked::Unchanged => payload.into(),
            Checked::Normalised(json) => json.into_boxed_str(),
        };

        let correlation_id = Uuid::new_v4();
        let client_trace = ClientTrace::from_envelope(envelope.traceparent.as_ref());
        let traceparent = trace::for_request(client_trace, correlation_id);
        if client_trace == ClientTrace::Invalid {
            debug!(%correlation_id, %traceparent, "the client's traceparent is not valid; a new trace was started");
        }
        let client_id: Arc<str> = id.into();
        {
            let mut requests = self
                .conns
                .get_mut(&conn)
                .ok_or_else(|| RequestError::Unavailable("the connection is closing".to_owned()))?;
            match requests.entry(client_id.clone()) {
                Entry::Occupied(_) => return Err(RequestError::DuplicateId(client_id.to_string())),
                Entry::Vacant(slot) => {
                    slot.insert(correlation_id);
                }
            }
        }
        self.inflight.insert(
            correlation_id,
            InFlight {
                conn,
                client_id,
                request_type: spec.name.as_str().into(),
                timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
                stage: Stage::Publishing {
                    buffered: Vec::new(),
                    ended: None,
                },
                next_seq: 0,
                deadline: None,
                trace: traceparent,
                metrics: RequestMetrics::start(type_metrics, started),
            },
        );
        debug!(%correlation_id, %traceparent, request_type = %spec.name, "request admitted");
        Ok(Admitted {
            conn,
            correlation_id,
            spec,
            body,
            identity: session.and_then(|s| s.identity_header().cloned()),
            traceparent,
        })
    }

    /// The broker confirmed the publish: acknowledge, then deliver what arrived meanwhile.
    fn activate(
        self: &Arc<Self>,
        conn: S::Conn,
        correlation_id: Uuid,
        ack: S::Ack,
        deadline: Instant,
    ) {
        let mut ack = Some(ack);
        let mut known = false;
        let mut ended_early = false;
        let mut ack_lost = false;
        let finished = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            known = true;
            if let Some(ack) = ack.take() {
                if self.sink.ack(ack, Ok(())).is_err() {
                    ack_lost = true;
                    return true;
                }
            }
            let Stage::Publishing { buffered, ended } =
                std::mem::replace(&mut request.stage, Stage::Active)
            else {
                return false;
            };
            for outbound in buffered {
                if self.deliver(request, outbound) {
                    return true;
                }
            }
            if let Some(error) = ended {
                ended_early = true;
                self.emit_error(request, &error);
                return true;
            }
            self.watch_deadline(correlation_id, deadline);
            request.deadline = Some(deadline);
            false
        });
        if let Some((_, request)) = finished {
            self.release_id(correlation_id, &request);
            if ended_early || ack_lost {
                self.spawn_cancel(correlation_id);
            }
            if ack_lost {
                warn!(%correlation_id, traceparent = %request.trace, ?conn, "the ack could not be sent (client not reading); request cancelled and client disconnected");
                self.sink.disconnect(conn);
            } else {
                // Its final reply (or its end) came before the confirm.
                debug!(%correlation_id, traceparent = %request.trace, request_type = %request.request_type, "request finished");
            }
        } else if !known {
            // The client disconnected while we were publishing: nobody waits for this.
            if let Some(ack) = ack.take() {
                let _ = self.sink.ack(ack, Ok(()));
            }
            self.spawn_cancel(correlation_id);
        }
    }

    /// Sends a refusal; a client that cannot even receive that is dropped, so it does not
    /// wait forever for an answer.
    fn send_refusal(&self, conn: S::Conn, ack: S::Ack, error: &RequestError) {
        if self.sink.ack(ack, Err(&error.to_body())).is_err() {
            warn!(
                ?conn,
                "a refusal could not be sent (client not reading); disconnecting it"
            );
            self.sink.disconnect(conn);
        }
    }

    /// Sends one reply to the client. Returns true when it was the final one.
    fn deliver(&self, request: &mut InFlight<S::Conn>, outbound: Outbound) -> bool {
        match outbound {
            Outbound::Chunk { seq, data } => {
                if let Some(worker_seq) = seq {
                    // A redelivered request starts its chunks over: skip the ones sent.
                    if worker_seq >= 0 && (worker_seq as u64) < request.next_seq {
                        debug!(traceparent = %request.trace, client_id = %request.client_id, worker_seq, "duplicate chunk dropped");
                        return false;
                    }
                }
                let seq = request.next_seq;
                request.next_seq += 1;
                request.metrics.chunk();
                self.emit(
                    request.conn,
                    &ResponseEvent::chunk(&request.client_id, seq, &data),
                );
                false
            }
            Outbound::Result(data) => {
                request.metrics.finish(Outcome::Ok);
                self.emit(
                    request.conn,
                    &ResponseEvent::result(&request.client_id, &data),
                );
                true
            }
            Outbound::Error(error) => {
                self.emit_error(request, &error);
                true
            }
        }
    }

    /// Sends a final error (the request's outcome, for metrics).
    fn emit_error(&self, request: &mut InFlight<S::Conn>, error: &ErrorBody) {
        request.metrics.finish(Outcome::Error(&error.code));
        self.emit(
            request.conn,
            &ResponseEvent::error(&request.client_id, error),
        );
    }

    fn emit(&self, conn: S::Conn, event: &ResponseEvent<'_>) {
        match self.sink.emit(conn, event) {
            Ok(()) => {}
            Err(EmitError::Gone) => debug!(?conn, "response for a closed connection dropped"),
            Err(EmitError::Full) => {
                warn!(
                    ?conn,
                    "client is not reading its responses (send buffer full); disconnecting it"
                );
                self.sink.disconnect(conn);
            }
            Err(EmitError::Encode) => warn!(?conn, "response could not be encoded"),
        }
    }

    /// Handles one reply message from a worker.
    pub fn on_reply(&self, reply: IncomingReply) {
        let Some(correlation_id) = reply
            .correlation_id
            .as_deref()
            .and_then(|c| Uuid::parse_str(c).ok())
        else {
            debug!(correlation_id = ?reply.correlation_id, "reply without a valid correlation id dropped");
            return;
        };
        if !self.inflight.contains_key(&correlation_id) {
            debug!(%correlation_id, "reply for an unknown or finished request dropped");
            return;
        }
        let Some(kind) = reply.kind.as_deref().and_then(ReplyKind::parse) else {
            warn!(%correlation_id, kind = ?reply.kind, "reply with an unknown `type` dropped");
            return;
        };
        let outbound = match kind {
            ReplyKind::Chunk => match raw_json(reply.body) {
                Some(data) => Outbound::Chunk {
                    seq: reply.seq,
                    data,
                },
                None => {
                    warn!(%correlation_id, "chunk whose body is not JSON dropped");
                    return;
                }
            },
            ReplyKind::Result => match raw_json(reply.body) {
                Some(data) => Outbound::Result(data),
                None => {
                    warn!(%correlation_id, "result whose body is not JSON");
                    Outbound::Error(ErrorBody::new(
                        ErrorCode::WorkerError,
                        "the worker's result was not valid JSON",
                    ))
                }
            },
            ReplyKind::Error => match serde_json::from_slice::<WorkerErrorBody>(&reply.body) {
                Ok(body) => Outbound::Error(body.into_error_body()),
                Err(error) => {
                    warn!(%correlation_id, %error, "malformed error reply");
                    Outbound::Error(ErrorBody::new(
                        ErrorCode::WorkerError,
                        "the worker reported an error in a malformed reply",
                    ))
                }
            },
        };
        self.route_reply(correlation_id, outbound);
    }

    fn route_reply(&self, correlation_id: Uuid, outbound: Outbound) {
        if let Outbound::Chunk { .. } = outbound {
            if let Some(mut request) = self.inflight.get_mut(&correlation_id) {
                match &mut request.stage {
                    Stage::Publishing { buffered, .. } => buffered.push(outbound),
                    Stage::Active => {
                        self.deliver(&mut request, outbound);
                    }
                }
            }
            return;
        }
        let mut outbound = Some(outbound);
        let finished = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            let Some(outbound) = outbound.take() else {
                return false;
            };
            match &mut request.stage {
                Stage::Publishing { buffered, .. } => {
                    buffered.push(outbound);
                    false
                }
                Stage::Active => self.deliver(request, outbound),
            }
        });
        if let Some((_, request)) = finished {
            debug!(%correlation_id, traceparent = %request.trace, request_type = %request.request_type, "request finished");
            self.release_id(correlation_id, &request);
        }
    }

    /// Handles a client's `cancel` event.
    pub fn cancel(&self, conn: S::Conn, envelope: Result<CancelEnvelope, String>) {
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
            debug!(?conn, client_id = %id, "cancel for a request not in flight ignored");
            return;
        };
        let cancelled =
            self.inflight
                .remove_if_mut(&correlation_id, |_, request| match &mut request.stage {
                    Stage::Publishing { ended, .. } => {
                        ended.get_or_insert_with(|| RequestError::Cancelled.to_body());
                        false
                    }
                    Stage::Active => {
                        self.emit_error(request, &RequestError::Cancelled.to_body());
                        true
                    }
                });
        if let Some((_, request)) = cancelled {
            info!(%correlation_id, traceparent = %request.trace, client_id = %request.client_id, "request cancelled by the client");
            self.release_id(correlation_id, &request);
            self.spawn_cancel(correlation_id);
        }
    }

    /// Times the request out at `deadline` unless it ends first (`release_id`).
    fn watch_deadline(self: &Arc<Self>, correlation_id: Uuid, deadline: Instant) {
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

    fn expire(&self, correlation_id: Uuid) {
        let expired = self.inflight.remove_if_mut(&correlation_id, |_, request| {
            if !matches!(request.stage, Stage::Active) {
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
            self.release_id(correlation_id, &request);
            self.spawn_cancel(correlation_id);
        }
    }

    /// Frees the client id of a finished request and stops watching its deadline.
    fn release_id(&self, correlation_id: Uuid, request: &InFlight<S::Conn>) {
        if let Some(deadline) = request.deadline {
            self.deadlines.remove(deadline, correlation_id);
        }
        if let Some(mut requests) = self.conns.get_mut(&request.conn) {
            if requests.get(&request.client_id) == Some(&correlation_id) {
                requests.remove(&request.client_id);
            }
        }
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

fn required_string(value: Option<Value>, field: &str) -> Result<String, RequestError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RequestError::BadRequest(format!(
            "`{field}` must be a string"
        ))),
        None => Err(RequestError::BadRequest(format!("missing `{field}`"))),
    }
}

fn null_payload() -> Box<RawValue> {
    Box::<RawValue>::default()
}

/// Takes a worker's body as JSON without copying it when it is already tight.
fn raw_json(body: Vec<u8>) -> Option<Box<RawValue>> {
    let text = String::from_utf8(body).ok()?;
    if text.trim().len() == text.len() {
        RawValue::from_string(text).ok()
    } else {
        // Surrounding whitespace is legal JSON but not a valid RawValue: copy it out.
        serde_json::from_str::<Box<RawValue>>(&text).ok()
    }
}

fn unix_ms_after(timeout: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + timeout).as_millis() as u64
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gateway_security_tests.rs"]
mod security_tests;
