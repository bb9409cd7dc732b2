//! The Socket.IO side (protocol §1) over socketioxide, for HTTP long-polling and polling
//! sessions upgraded to WebSocket: builds socketioxide's layer from the settings, registers
//! the `request` and `cancel` handlers on the default namespace and implements
//! [`ClientSink`] for them. Everything protocol-specific is decided in the gateway; this
//! module only translates. It is the only module that knows socketioxide: the rest of the
//! host sees [`SocketIoId`], [`SocketIoAck`] and [`SocketIoSink`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use taskgate_protocol::{events, ErrorBody};
use tracing::{debug, info};

use crate::admission::{Admission, HandshakeRefused};
use crate::broker::Broker;
use crate::config::Settings;
use crate::gateway::{AttachEnvelope, CancelEnvelope, Gateway, RequestEnvelope};
use crate::resume::SessionGreeting;
use crate::session::Session;
use crate::sink::{
    record_slow_client_drop, AckBody, ClientSink, DropReporter, EmitError, OwnedResponse,
    ResponseEvent, TokenExpired,
};
use crate::transport::{
    SlowClientPolicy, PING_INTERVAL, PING_TIMEOUT, READ_BUFFER_BYTES, SOCKET_IO_PATH,
};

/// Names one connection served by socketioxide (its engine.io session id).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketIoId(Sid);

impl fmt::Debug for SocketIoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for SocketIoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The ack callback of one `request` served by socketioxide.
pub struct SocketIoAck(AckSender);

/// socketioxide's layer, to put on the router: it serves every Socket.IO request the
/// WebSocket transport does not take over.
pub type Layer = SocketIoLayer;

/// Builds socketioxide's layer (to put on the router) and the sink that sends through it.
/// socketioxide announces and keeps the same engine.io timings and message limit as the
/// host's own WebSocket transport, on the same path.
/// Clients the sink drops are reported to `dropped` (the gateway).
pub fn build(
    settings: &Settings,
    dropped: DropReporter<SocketIoId>,
) -> (SocketIoLayer, SocketIoSink) {
    // One message limit for both transports: socketioxide's `max_payload` bounds only
    // long-polling bodies, and a WebSocket message could otherwise be 64 MiB.
    let message_limit = usize::try_from(settings.max_message_bytes).unwrap_or(usize::MAX);
    let (layer, io) = SocketIo::builder()
        .req_path(SOCKET_IO_PATH)
        .ws_read_buffer_size(READ_BUFFER_BYTES)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .max_buffer_size(settings.socket_buffer)
        .max_payload(settings.max_message_bytes)
        .ws_max_message_size(message_limit)
        .ws_max_frame_size(message_limit)
        .connect_timeout(settings.limits.handshake_timeout)
        .build_layer();
    let sink = SocketIoSink {
        inner: Arc::new(Inner {
            io,
            policy: SlowClientPolicy::from(&settings.limits),
            backlogs: DashMap::new(),
            closing: DashMap::new(),
            dropped,
        }),
    };
    (layer, sink)
}

/// Responses waiting for room in a connection's socketioxide buffer, in order.
#[derive(Default)]
struct Backlog {
    queue: VecDeque<OwnedResponse>,
    bytes: usize,
}

struct Inner {
    io: SocketIo,
    policy: SlowClientPolicy,
    /// Only connections whose socketioxide buffer was full have an entry. While one
    /// exists, new responses queue behind it, so the order is kept.
    backlogs: DashMap<SocketIoId, Backlog>,
    /// Connections being dropped, so each is dropped (and logged) once.
    closing: DashMap<SocketIoId, ()>,
    /// Told once of each dropped client, before its transport is closed (which can take
    /// up to a heartbeat when the client reads nothing): the gateway forgets its requests
    /// at once and tells workers to stop them.
    dropped: DropReporter<SocketIoId>,
}

/// Sends acks and responses through socketioxide.
///
/// socketioxide's per-socket buffer (`socket_buffer` packets) fills whenever replies
/// arrive faster than the transport writes them — even for a client reading at full
/// speed — and its `emit` then fails. Instead of dropping the client, the response waits
/// in a per-connection backlog drained by one task; only a client that passes the host's
/// [`SlowClientPolicy`] (which says why the backlog is polled) is disconnected.
#[derive(Clone)]
pub struct SocketIoSink {
    inner: Arc<Inner>,
}

impl SocketIoSink {
    /// Connections with responses waiting (for tests and metrics).
    pub fn backlogged(&self) -> usize {
        self.inner.backlogs.len()
    }

    /// Closes every socketioxide connection (shutdown).
    pub async fn close(&self) {
        self.inner.io.close().await;
    }
}

fn emit_error(e: SendError) -> EmitError {
    match e {
        SendError::Socket(SocketError::InternalChannelFull) => EmitError::Full,
        SendError::Socket(SocketError::Closed) => EmitError::Gone,
        SendError::Serialize(_) => EmitError::Encode,
    }
}

impl Inner {
    fn enqueue(&self, backlog: &mut Backlog, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        let owned = event.to_owned_response();
        let weight = owned.weight();
        if !self.policy.fits(backlog.bytes, weight) {
            return Err(EmitError::Full);
        }
        backlog.bytes += weight;
        backlog.queue.push_back(owned);
        Ok(())
    }

    /// Sends the backlog of `conn` as room frees up, until it is empty: socketioxide does
    /// not say when that is, so this polls (see [`SlowClientPolicy`]).
    async fn drain(self: Arc<Self>, conn: SocketIoId) {
        let mut progress = Instant::now();
        loop {
            let Some(socket) = self.io.get_socket(conn.0) else {
                self.backlogs.remove(&conn);
                return;
            };
            if let Some(mut backlog) = self.backlogs.get_mut(&conn) {
                while let Some(front) = backlog.queue.front() {
                    match socket.emit(events::RESPONSE, &front.as_event()) {
                        Ok(()) => {
                            let weight = front.weight();
                            backlog.queue.pop_front();
                            backlog.bytes = backlog.bytes.saturating_sub(weight);
                            progress = Instant::now();
                        }
                        Err(SendError::Socket(SocketError::InternalChannelFull)) => break,
                        Err(_) => {
                            drop(backlog);
                            self.backlogs.remove(&conn);
                            return;
                        }
                    }
                }
            }
            if self
                .backlogs
                .remove_if(&conn, |_, b| b.queue.is_empty())
                .is_some()
                || !self.backlogs.contains_key(&conn)
            {
                return;
            }
            if progress.elapsed() > self.policy.stall {
                self.backlogs.remove(&conn);
                drop_client(&self, conn, "its responses made no progress");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn drop_client(inner: &Arc<Inner>, conn: SocketIoId, why: &str) {
    if inner.closing.insert(conn, ()).is_some() {
        return;
    }
    record_slow_client_drop(&conn, why);
    inner.backlogs.remove(&conn);
    let Some(socket) = inner.io.get_socket(conn.0) else {
        inner.closing.remove(&conn);
        return;
    };
    let inner = inner.clone();
    // The disconnect packet itself needs room in the full buffer: retry for a while; the
    // engine.io heartbeat closes a client that never reads in the end anyway. Its
    // requests are cleaned up first (the report's task is spawned before this one).
    inner.dropped.report(conn);
    tokio::spawn(async move {
        for _ in 0..100 {
            match socket.clone().disconnect() {
                Err(SocketError::InternalChannelFull) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                _ => break,
            }
        }
        inner.closing.remove(&conn);
    });
}

impl ClientSink for SocketIoSink {
    type Conn = SocketIoId;
    type Ack = SocketIoAck;

    fn ack(&self, ack: SocketIoAck, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError> {
        let body = AckBody {
            ok: outcome.is_ok(),
            error: outcome.err(),
        };
        ack.0.send(&body).map_err(emit_error)
    }

    fn ack_json(&self, ack: SocketIoAck, body: &serde_json::Value) -> Result<(), EmitError> {
        ack.0.send(body).map_err(emit_error)
    }

    fn emit(&self, conn: SocketIoId, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        let inner = &self.inner;
        match inner.backlogs.entry(conn) {
            Entry::Occupied(mut backlog) => inner.enqueue(backlog.get_mut(), event),
            Entry::Vacant(slot) => {
                let socket = inner.io.get_socket(conn.0).ok_or(EmitError::Gone)?;
                match socket.emit(events::RESPONSE, event).map_err(emit_error) {
                    Err(EmitError::Full) => {
                        let mut backlog = Backlog::default();
                        inner.enqueue(&mut backlog, event)?;
                        slot.insert(backlog);
                        debug!(sid = %conn, "send buffer full; responses wait in the backlog");
                        tokio::spawn(inner.clone().drain(conn));
                        Ok(())
                    }
                    other => other,
                }
            }
        }
    }

    fn disconnect(&self, conn: SocketIoId) {
        drop_client(
            &self.inner,
            conn,
            "its backlog passed the limit or an ack could not be sent",
        );
    }
}

/// Serves protocol §1 on the default namespace of the sink's socketioxide instance.
///
/// Everything happens in a connect middleware, which socketioxide awaits before it
/// sends the CONNECT packet. It first decides whether the client may connect at all
/// (room on the host, a valid token) — a refused client gets `connect_error` and the
/// host keeps nothing for it — then registers the handlers: a client that emits right
/// after connecting must find them (the connect handler itself runs only after CONNECT
/// was sent). Each handler does its gateway work synchronously in the closure body, so
/// events of one connection are handled in the order they arrived; only publishing runs
/// in the spawned future.
pub fn attach<B, S>(sink: &SocketIoSink, gateway: Arc<Gateway<B, S>>, admission: Arc<Admission>)
where
    B: Broker,
    S: ClientSink,
    S::Conn: From<SocketIoId>,
    S::Ack: From<SocketIoAck>,
{
    let dropped = sink.inner.dropped.clone();
    let admit = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let gateway = gateway.clone();
        let admission = admission.clone();
        let dropped = dropped.clone();
        async move {
            // `auth` holds the token: it is dropped with this future, never logged.
            let session = admission.admit(auth.ok().as_ref(), &socket.id)?;
            if let Some(left) = session.lifetime_left() {
                socket.extensions.insert(ValidFor(left));
            }
            register_handlers(&socket, gateway, session);
            // From here the socket owns its registration (and through the session, its
            // connection slot): however socketioxide lets go of it, it is freed.
            socket
                .extensions
                .insert(Registration::new(SocketIoId(socket.id), dropped));
            Ok::<(), HandshakeRefused>(())
        }
    };
    let io = sink.inner.io.clone();
    let greet = move |socket: SocketRef| {
        let io = io.clone();
        async move { greet(socket, io) }
    };
    sink.inner.io.ns("/", greet.with(admit));
}

/// The connect handler: socketioxide runs it once CONNECT is sent, so the `session` event
/// comes right after it, before anything else. It also starts the timer that closes the
/// connection when its token expires (the socket is in place by now).
fn greet(socket: SocketRef, io: SocketIo) {
    if let Some(greeting) = socket.extensions.get::<SessionGreeting>() {
        if let Err(error) = socket.emit(events::SESSION, &greeting) {
            debug!(sid = %socket.id, %error, "the session event could not be sent");
        }
    }
    if let Some(ValidFor(left)) = socket.extensions.get::<ValidFor>() {
        let sid = socket.id;
        // The timer holds the instance, not the socket: a socket that goes away first is
        // not kept alive by it, and its extensions (this guard) stop the timer.
        let timer = tokio::spawn(async move {
            tokio::time::sleep(left).await;
            if let Some(socket) = io.get_socket(sid) {
                close_expired(socket).await;
            }
        });
        socket
            .extensions
            .insert(ExpiryTimer(Arc::new(timer.abort_handle())));
    }
}

/// How long the connection's token is still good (from admission to its connect handler).
#[derive(Clone, Copy)]
struct ValidFor(Duration);

/// Stops the expiry timer of a socket that went away (socketioxide's extensions hold
/// clones: the last one dropped stops it).
#[derive(Clone)]
struct ExpiryTimer(Arc<tokio::task::AbortHandle>);

impl Drop for ExpiryTimer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.0) == 1 {
            self.0.abort();
        }
    }
}

/// Tells the client its token expired (protocol §3.9), then disconnects it; both wait for
/// room in a full buffer for a while (the heartbeat ends a client that reads nothing).
async fn close_expired(socket: SocketRef) {
    info!(sid = %socket.id, "closing a connection: its token expired");
    let body = TokenExpired::default();
    for _ in 0..100 {
        match socket.emit(events::TOKEN_EXPIRED, &body) {
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
    for _ in 0..100 {
        match socket.clone().disconnect() {
            Err(SocketError::InternalChannelFull) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => break,
        }
    }
}

/// Kept in the socket's extensions from admission on: when socketioxide drops the socket,
/// the gateway is told the client is gone, which frees its session and connection slot.
///
/// The disconnect handler does that on the ordinary paths, and first. This is for the
/// others: when CONNECT cannot be queued (socketioxide's buffer is full, e.g. after a
/// flood of CONNECTs to an unknown namespace), socketioxide removes the socket without
/// running its disconnect handler (issue 20 #1). Telling the gateway twice is harmless.
/// (socketioxide's extensions hold clones: the last one dropped reports.)
#[derive(Clone)]
struct Registration {
    _registered: Arc<Registered>,
}

struct Registered {
    id: SocketIoId,
    dropped: DropReporter<SocketIoId>,
}

impl Registration {
    fn new(id: SocketIoId, dropped: DropReporter<SocketIoId>) -> Self {
        Registration {
            _registered: Arc::new(Registered { id, dropped }),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.dropped.report(self.id);
    }
}

fn register_handlers<B, S>(socket: &SocketRef, gateway: Arc<Gateway<B, S>>, session: Session)
where
    B: Broker,
    S: ClientSink,
    S::Conn: From<SocketIoId>,
    S::Ack: From<SocketIoAck>,
{
    match session.identity() {
        Some(identity) => debug!(sid = %socket.id, subject = %identity.subject, "client connected"),
        None => debug!(sid = %socket.id, "client connected"),
    }
    // The `session` event (protocol §4.1) waits for CONNECT: the connect handler sends it.
    if let Some(greeting) = session.greeting() {
        socket.extensions.insert(greeting.clone());
    }
    gateway.connected_as(SocketIoId(socket.id).into(), session);
    let on_request = gateway.clone();
    socket.on(
        events::REQUEST,
        move |socket: SocketRef, TryData(envelope): TryData<RequestEnvelope>, ack: AckSender| {
            let envelope = envelope.map_err(|e| e.to_string());
            let publish = on_request.submit(
                SocketIoId(socket.id).into(),
                envelope,
                SocketIoAck(ack).into(),
            );
            async move {
                if let Some(publish) = publish {
                    publish.await;
                }
            }
        },
    );
    let on_cancel = gateway.clone();
    socket.on(
        events::CANCEL,
        move |socket: SocketRef, TryData(envelope): TryData<CancelEnvelope>| {
            on_cancel.cancel(
                SocketIoId(socket.id).into(),
                envelope.map_err(|e| e.to_string()),
            );
            async {}
        },
    );
    let on_attach = gateway.clone();
    socket.on(
        events::ATTACH,
        move |socket: SocketRef, TryData(envelope): TryData<AttachEnvelope>, ack: AckSender| {
            on_attach.attach(
                SocketIoId(socket.id).into(),
                envelope.map_err(|e| e.to_string()),
                SocketIoAck(ack).into(),
            );
            async {}
        },
    );
    let on_tasks = gateway.clone();
    socket.on(events::TASKS, move |socket: SocketRef, ack: AckSender| {
        on_tasks.tasks(SocketIoId(socket.id).into(), SocketIoAck(ack).into());
        async {}
    });
    socket.on_disconnect(move |socket: SocketRef| {
        debug!(sid = %socket.id, "client disconnected");
        gateway.disconnected(SocketIoId(socket.id).into());
        async {}
    });
}
