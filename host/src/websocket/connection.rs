//! One WebSocket connection, from the engine.io open packet to its close, in one task:
//! the handshake (CONNECT, auth, room on the host), then reading events, writing what the
//! hub queued for it, and the engine.io heartbeat. Events of a connection are handled in
//! the order they arrive; each admitted request publishes on a task of its own.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt, TryFutureExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};
use uuid::Uuid;

use super::hub::{Closing, Conn, Hub, Urgency, WsAck, WsConnId};
use super::packet::{self, EventName, Incoming, DEFAULT_NAMESPACE};
use super::writes::{write_text_frame, DIRECT_WRITE_BYTES};
use crate::admission::Admission;
use crate::broker::Broker;
use crate::config::{Settings, DEFAULT_CHUNK_LINGER};
use crate::gateway::{AttachEnvelope, CancelEnvelope, Gateway, RequestEnvelope};
use crate::limits::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::session::Session;
use crate::sink::{record_slow_client_drop, ClientSink};
use crate::transport::{PING_INTERVAL, PING_TIMEOUT};

/// engine.io timings and limits of the transport.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// How often the host pings (engine.io `pingInterval`).
    pub ping_interval: Duration,
    /// How long a pong may take before the connection counts as dead (`pingTimeout`).
    pub ping_timeout: Duration,
    /// How long a client may take to send CONNECT after the socket opened
    /// (`[limits] handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// The largest message the client may send, announced as `maxPayload`.
    pub max_message_bytes: u64,
    /// How long chunks may wait for more frames to share their write (zero: never).
    pub chunk_linger: Duration,
}

impl From<&Settings> for WsSettings {
    /// The host's settings; the engine.io timings are those socketioxide is given too.
    fn from(settings: &Settings) -> Self {
        WsSettings {
            max_message_bytes: settings.max_message_bytes,
            chunk_linger: settings.chunk_linger,
            handshake_timeout: settings.limits.handshake_timeout,
            ..WsSettings::default()
        }
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        // engine.io's defaults, which socketioxide is given too.
        WsSettings {
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_message_bytes: 1_000_000,
            chunk_linger: DEFAULT_CHUNK_LINGER,
        }
    }
}

/// Everything a connection needs from the host.
pub struct Endpoint<B: Broker, S: ClientSink> {
    pub gateway: Arc<Gateway<B, S>>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub settings: WsSettings,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed, disconnected or the socket failed.
    Gone,
    /// The client broke the protocol.
    Protocol(String),
    /// The handshake was refused (CONNECT_ERROR sent).
    Refused,
    /// No CONNECT, or no pong, in time.
    Timeout(&'static str),
    /// The client read nothing for the slow-client policy's `stall`.
    Stalled,
    /// The host ended it (slow client, shutdown).
    Closed(Closing),
    /// The connection's token expired (issue 20 #9).
    Expired,
}

impl<B, S> Endpoint<B, S>
where
    B: Broker,
    S: ClientSink,
    S::Conn: From<WsConnId>,
    S::Ack: From<WsAck>,
{
    /// Serves one upgraded socket until it closes.
    pub async fn serve<IO>(self: Arc<Self>, mut ws: WebSocketStream<IO>)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let sid = Uuid::new_v4().simple().to_string();
        let open = packet::open(&packet::Open {
            sid: &sid,
            upgrades: [],
            ping_interval: millis(self.settings.ping_interval),
            ping_timeout: millis(self.settings.ping_timeout),
            max_payload: self.settings.max_message_bytes,
        });
        if self.send(&mut ws, open).await.is_err() {
            return;
        }
        let session = match timeout(
            self.settings.handshake_timeout,
            self.handshake(&mut ws, &sid),
        )
        .await
        {
            Ok(Ok(session)) => session,
            Ok(Err(end)) => return self.finish(ws, &sid, end).await,
            Err(_) => return self.finish(ws, &sid, End::Timeout("CONNECT")).await,
        };
        let (id, conn) = self.hub.register();
        let client = S::Conn::from(id);
        match session.identity() {
            Some(identity) => {
                debug!(%sid, conn = %id, subject = %identity.subject, "client connected")
            }
            None => debug!(%sid, conn = %id, "client connected"),
        }
        // The `session` event (protocol §4.1) follows CONNECT before anything else.
        let greeting = session.greeting().and_then(|g| {
            packet::event(taskgate_protocol::events::SESSION, g, g.token.len() + 48).ok()
        });
        let expires = session.lifetime_left().map(|left| Instant::now() + left);
        // Known to the gateway before the client learns it is connected: it may send a
        // request right after CONNECT.
        self.gateway.connected_as(client, session);
        let mut greeted = self.send(&mut ws, packet::connected(&sid)).await;
        if let (Ok(()), Some(frame)) = (&greeted, greeting) {
            greeted = self.send(&mut ws, frame).await;
        }
        let end = match greeted {
            Ok(()) => self.run(&mut ws, id, &conn, expires).await,
            Err(end) => end,
        };
        self.hub.unregister(id);
        self.gateway.disconnected(client);
        self.finish(ws, &sid, end).await
    }

    /// Until CONNECT of the default namespace: returns the session, or why not.
    async fn handshake<IO>(&self, ws: &mut WebSocketStream<IO>, sid: &str) -> Result<Session, End>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let text = match next_text(ws).await? {
                Some(text) => text,
                None => continue,
            };
            match packet::parse(&text) {
                Ok(Incoming::Connect {
                    namespace: DEFAULT_NAMESPACE,
                    auth,
                }) => {
                    let auth = auth.and_then(|a| serde_json::from_str::<Value>(a).ok());
                    return match self.admission.admit(auth.as_ref(), &sid) {
                        Ok(session) => Ok(session),
                        Err(refused) => {
                            let frame =
                                packet::connect_error(DEFAULT_NAMESPACE, &refused.to_string());
                            self.send(ws, frame).await?;
                            Err(End::Refused)
                        }
                    };
                }
                Ok(Incoming::Connect { namespace, .. }) => {
                    self.send(ws, packet::connect_error(namespace, "Invalid namespace"))
                        .await?;
                }
                Ok(Incoming::Ping(data)) => self.send(ws, packet::pong(data)).await?,
                Ok(Incoming::Pong | Incoming::Noop) => {}
                Ok(Incoming::Close | Incoming::Disconnect) => return Err(End::Gone),
                Ok(other) => {
                    return Err(End::Protocol(format!("{other:?} before CONNECT")));
                }
                Err(e) => return Err(End::Protocol(e.to_string())),
            }
        }
    }

    /// The connected life of a socket; it ends at `expires` (when its token does) at the latest.
    async fn run<IO>(
        &self,
        ws: &mut WebSocketStream<IO>,
        id: WsConnId,
        conn: &Conn,
        expires: Option<Instant>,
    ) -> End
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut frames = VecDeque::new();
        let mut state = Reading {
            last_ping: Instant::now(),
            awaiting_pong: false,
            binary: None,
        };
        let heartbeat = sleep_until(state.last_ping + self.settings.ping_interval);
        tokio::pin!(heartbeat);
        let linger = self.settings.chunk_linger;
        // While chunks linger: the timer that lets them go.
        let mut lingering = false;
        let linger_over = sleep_until(Instant::now());
        tokio::pin!(linger_over);
        let expiry = sleep_until(expires.unwrap_or_else(Instant::now));
        tokio::pin!(expiry);
        loop {
            // Not biased: a client that keeps sending must not starve its responses, nor
            // a stream of responses the client's requests.
            tokio::select! {
                by_frames = async {
                    tokio::select! {
                        () = conn.woken() => true,
                        () = &mut linger_over, if lingering => false,
                    }
                } => {
                    // Woken by a frame, chunks may (still) linger; once the timer is up,
                    // everything goes.
                    let taken = conn.take(&mut frames, by_frames && !linger.is_zero());
                    if taken.lingering {
                        if !lingering {
                            lingering = true;
                            linger_over.as_mut().reset(Instant::now() + linger);
                        }
                        continue;
                    }
                    lingering = false;
                    let closing = taken.closing;
                    if !frames.is_empty() {
                        if let Err(end) = self.write(ws, &mut frames).await {
                            // Dropped while the write waited: already counted and logged.
                            return match (end, conn.closing()) {
                                (End::Stalled, Some(why)) => End::Closed(why),
                                (end, _) => end,
                            };
                        }
                    }
                    if let Some(why) = closing {
                        return End::Closed(why);
                    }
                }
                message = ws.next() => {
                    let was_awaiting = state.awaiting_pong;
                    if let Err(end) = self.on_message(message, id, conn, &mut state) {
                        return end;
                    }
                    if was_awaiting && !state.awaiting_pong {
                        heartbeat.as_mut().reset(state.last_ping + self.settings.ping_interval);
                    }
                }
                () = &mut expiry, if expires.is_some() => return End::Expired,
                () = &mut heartbeat => {
                    if state.awaiting_pong {
                        // The task may have been writing to a slow reader: the pong can be
                        // waiting, unread, in the socket.
                        while state.awaiting_pong {
                            let Some(message) = ws.next().now_or_never() else { break };
                            if let Err(end) = self.on_message(message, id, conn, &mut state) {
                                return end;
                            }
                        }
                        if state.awaiting_pong {
                            return End::Timeout("a pong");
                        }
                        heartbeat.as_mut().reset(state.last_ping + self.settings.ping_interval);
                        continue;
                    }
                    if let Err(end) = self.send(ws, packet::PING.to_owned()).await {
                        return end;
                    }
                    state.last_ping = Instant::now();
                    state.awaiting_pong = true;
                    heartbeat.as_mut().reset(state.last_ping + self.settings.ping_timeout);
                }
            }
        }
    }

    /// Handles one frame (or the end of the stream) of a connected socket.
    fn on_message(
        &self,
        message: Option<Result<Message, WsError>>,
        id: WsConnId,
        conn: &Conn,
        state: &mut Reading,
    ) -> Result<(), End> {
        let text = match message {
            None => return Err(End::Gone),
            Some(Err(e)) => return Err(ws_error(e)),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                // An attachment of a binary event: dropped (protocol §1 is JSON). The event
                // is handled once its last attachment arrived.
                let Some(pending) = state.binary.as_mut() else {
                    return Err(End::Protocol("a binary frame nothing announced".into()));
                };
                pending.attachments -= 1;
                if pending.attachments == 0 {
                    if let Some(pending) = state.binary.take() {
                        if let Some(data) = pending.event {
                            self.event(id, pending.ack, &data).map_err(End::Protocol)?;
                        }
                    }
                }
                return Ok(());
            }
            Some(Ok(Message::Close(_))) => return Err(End::Gone),
            // Control frames: tungstenite answers pings itself.
            Some(Ok(_)) => return Ok(()),
        };
        if state.binary.is_some() {
            return Err(End::Protocol(
                "a text frame while binary attachments were due".into(),
            ));
        }
        match packet::parse(text.as_str()) {
            Ok(Incoming::Pong) => state.awaiting_pong = false,
            Ok(Incoming::Event {
                namespace: DEFAULT_NAMESPACE,
                ack,
                data,
            }) => self.event(id, ack, data).map_err(End::Protocol)?,
            Ok(Incoming::BinaryEvent {
                namespace: DEFAULT_NAMESPACE,
                ack,
                attachments,
                data,
            }) => match attachments {
                0 => self.event(id, ack, data).map_err(End::Protocol)?,
                _ => {
                    state.binary = Some(PendingBinary {
                        attachments,
                        ack,
                        event: Some(data.into()),
                    })
                }
            },
            Ok(Incoming::BinaryAck { attachments }) if attachments > 0 => {
                state.binary = Some(PendingBinary {
                    attachments,
                    ack: None,
                    event: None,
                })
            }
            // Answers are bounded like responses: a client that sends but never reads
            // cannot make the host queue without end.
            Ok(Incoming::Ping(data)) => conn
                .push(packet::pong(data), self.hub.policy(), Urgency::Now)
                .map_err(|_| End::Closed(Closing::Dropped))?,
            Ok(Incoming::Noop | Incoming::Ack | Incoming::BinaryAck { .. }) => {}
            Ok(Incoming::Connect {
                namespace: DEFAULT_NAMESPACE,
                ..
            }) => {}
            Ok(Incoming::Connect { namespace, .. }) => conn
                .push(
                    packet::connect_error(namespace, "Invalid namespace"),
                    self.hub.policy(),
                    Urgency::Now,
                )
                .map_err(|_| End::Closed(Closing::Dropped))?,
            Ok(Incoming::Close | Incoming::Disconnect) => return Err(End::Gone),
            Ok(Incoming::Event { namespace, .. } | Incoming::BinaryEvent { namespace, .. }) => {
                return Err(End::Protocol(format!(
                    "an event for namespace {namespace:?}, which it did not connect"
                )))
            }
            Err(e) => return Err(End::Protocol(e.to_string())),
        }
        Ok(())
    }

    /// Handles one event of the default namespace.
    fn event(&self, id: WsConnId, ack: Option<u64>, data: &str) -> Result<(), String> {
        let client = S::Conn::from(id);
        if let Some(envelope) = packet::parse_request_fast::<RequestEnvelope>(data) {
            let ack = S::Ack::from(WsAck { conn: id, id: ack });
            if let Some(publish) = self.gateway.submit(client, Ok(envelope), ack) {
                tokio::spawn(publish);
            }
            return Ok(());
        }
        let event = packet::parse_event(data).map_err(|e| e.to_string())?;
        match event.name {
            EventName::Request => {
                let envelope = argument::<RequestEnvelope>(event.arg);
                let ack = S::Ack::from(WsAck { conn: id, id: ack });
                if let Some(publish) = self.gateway.submit(client, envelope, ack) {
                    tokio::spawn(publish);
                }
            }
            EventName::Cancel => self
                .gateway
                .cancel(client, argument::<CancelEnvelope>(event.arg)),
            EventName::Attach => {
                let ack = S::Ack::from(WsAck { conn: id, id: ack });
                self.gateway
                    .attach(client, argument::<AttachEnvelope>(event.arg), ack);
            }
            EventName::Tasks => {
                let ack = S::Ack::from(WsAck { conn: id, id: ack });
                self.gateway.tasks(client, ack);
            }
            // As a Socket.IO server does with events it has no handler for.
            EventName::Other => {}
        }
        Ok(())
    }

    /// Writes `frames`, in order, in as few writes as the socket allows; large frames go
    /// past tungstenite's write buffer ([`super::writes`]). A client that
    /// lets one step (a frame into the write buffer, a flush) wait longer than `stall`
    /// is dropped: it reads nothing.
    async fn write<IO>(
        &self,
        ws: &mut WebSocketStream<IO>,
        frames: &mut VecDeque<String>,
    ) -> Result<(), End>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut waited = false;
        for frame in frames.drain(..) {
            if frame.len() >= DIRECT_WRITE_BYTES {
                // What tungstenite holds goes first, then this frame without its copy.
                self.progress(ws.flush(), &mut waited).await?;
                let direct = write_text_frame(ws.get_mut(), &frame).map_err(WsError::Io);
                self.progress(direct, &mut waited).await?;
                continue;
            }
            self.progress(ws.feed(Message::text(frame)), &mut waited)
                .await?;
        }
        self.progress(ws.flush(), &mut waited).await
    }

    /// One write step; says once per write when the socket is full (the client is
    /// behind and responses wait).
    async fn progress(
        &self,
        step: impl Future<Output = Result<(), WsError>>,
        waited: &mut bool,
    ) -> Result<(), End> {
        tokio::pin!(step);
        if let Poll::Ready(done) = futures_util::poll!(&mut step) {
            return done.map_err(ws_error);
        }
        if !*waited {
            *waited = true;
            debug!("send buffer full; responses wait in the backlog");
        }
        match timeout(self.hub.policy().stall, step).await {
            Ok(done) => done.map_err(ws_error),
            Err(_) => Err(End::Stalled),
        }
    }

    async fn send<IO>(&self, ws: &mut WebSocketStream<IO>, frame: String) -> Result<(), End>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut waited = false;
        self.progress(ws.send(Message::text(frame)), &mut waited)
            .await
    }

    /// Logs why the connection ends; says goodbye when the host ends it; closes.
    async fn finish<IO>(&self, mut ws: WebSocketStream<IO>, sid: &str, end: End)
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match &end {
            End::Gone => debug!(%sid, "client disconnected"),
            End::Protocol(why) => {
                debug!(%sid, reason = %why, "closing a connection that broke the protocol")
            }
            End::Refused => debug!(%sid, "handshake refused"),
            End::Timeout(what) => debug!(%sid, "closing a connection: no {what} in time"),
            End::Stalled => record_slow_client_drop(&sid, "its responses made no progress"),
            End::Closed(why) => debug!(%sid, ?why, "the host closes the connection"),
            End::Expired => info!(%sid, "closing a connection: its token expired"),
        }
        let goodbye = async {
            // A dropped client is told it was disconnected (Socket.IO clients then stay
            // away); at shutdown the socket only closes, so clients reconnect — to another
            // host, or to this one once it is back.
            if end == End::Expired {
                if let Ok(frame) = token_expired_frame() {
                    let _ = ws.send(Message::text(frame)).await;
                }
            }
            if matches!(end, End::Closed(Closing::Dropped) | End::Expired) {
                let _ = ws.send(Message::text(packet::DISCONNECT)).await;
            }
            if !matches!(end, End::Gone | End::Stalled) {
                let _ = ws.close(None).await;
            }
        };
        // A client that reads nothing must not keep the task alive.
        let _ = timeout(CLOSE_GRACE, goodbye).await;
    }
}

const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The `token_expired` event (protocol §3.9) sent right before the DISCONNECT.
fn token_expired_frame() -> Result<String, serde_json::Error> {
    packet::event(
        taskgate_protocol::events::TOKEN_EXPIRED,
        &crate::sink::TokenExpired::default(),
        96,
    )
}

/// What the reading side of a connection keeps between frames.
struct Reading {
    last_ping: Instant,
    awaiting_pong: bool,
    /// A binary event (or ack) whose attachments are still due.
    binary: Option<PendingBinary>,
}

struct PendingBinary {
    attachments: usize,
    ack: Option<u64>,
    /// `None` for a binary ack, which is dropped.
    event: Option<Box<str>>,
}

/// The next text frame; `None` for control frames; `Err` when the socket ends.
async fn next_text<IO>(ws: &mut WebSocketStream<IO>) -> Result<Option<String>, End>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match ws.next().await {
        None => Err(End::Gone),
        Some(Err(e)) => Err(ws_error(e)),
        Some(Ok(Message::Text(text))) => Ok(Some(text.to_string())),
        Some(Ok(Message::Binary(_))) => Err(End::Protocol("a binary frame".into())),
        Some(Ok(Message::Close(_))) => Err(End::Gone),
        Some(Ok(_)) => Ok(None),
    }
}

fn ws_error(e: WsError) -> End {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => End::Gone,
        other => End::Protocol(other.to_string()),
    }
}

/// An event's argument as `T`; a precise message when it is missing or has the wrong shape.
fn argument<T: serde::de::DeserializeOwned>(
    arg: Option<&serde_json::value::RawValue>,
) -> Result<T, String> {
    let arg = arg.ok_or_else(|| "the event carries no envelope".to_owned())?;
    serde_json::from_str(arg.get()).map_err(|e| e.to_string())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
