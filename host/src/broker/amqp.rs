//! The RabbitMQ implementation of [`Broker`], on amqprs.
//!
//! One connection per host. A supervisor loop ([`AmqpBroker::run`]) connects (retrying
//! with backoff and saying so in the log), declares the topology — the `taskgate.cancel`
//! fanout exchange, the queues of enabled request types and this host's own reply queue —
//! and then reads replies as one ordered stream until the connection is lost, when it
//! starts over. While it is down, publishes fail at once with `NotConnected`, so clients
//! get `UNAVAILABLE` promptly instead of a hang.
//!
//! Why amqprs: its reader and writer are tasks on the host's own tokio runtime, so a
//! publish, its confirm and a reply never cross threads. (lapin, used before, does its
//! socket I/O on a thread of its own: each batch of confirms and replies was a hand-over
//! between threads, which cost the host about half of its CPU per request —
//! docs/performance.md.) amqprs reports publisher confirms through a callback;
//! [`super::confirms`] matches them to the waiting publishes.
//!
//! Recovery is done here: a session's reply queue is exclusive, so it — and every reply
//! still in it or on its way to it — is gone with the connection. A lost session therefore
//! calls the hook registered with [`AmqpBroker::on_session_lost`] (the host ends the
//! requests in flight at once rather than letting them time out), and the next session
//! declares everything again with a reply queue of a new name. The reply queue is always
//! named by the host (`taskgate.reply.<uuid>`), never by the server. The connection carries
//! the client property `connection_name` = `taskgate-host <host id>`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel, ConfirmSelectArguments, ConsumerMessage,
    ExchangeDeclareArguments, ExchangeType, QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{
    Ack, BasicProperties, Cancel, Close, CloseChannel, FieldName, FieldTable, FieldValue, LongStr,
    Nack, Return, DELIVERY_MODE_PERSISTENT,
};
use arc_swap::ArcSwapOption;
use serde_json::{Map, Value};
use taskgate_protocol::amqp as names;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::amqp_url;
use super::confirms::Confirms;
use super::{Broker, IncomingReply, OutgoingRequest, PublishError};
use crate::config::redact_url;

/// A queue the host declares for an enabled request type (protocol §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    pub name: String,
    pub arguments: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the broker at {url} refused the connection: {reason}")]
    Refused { url: String, reason: String },
    #[error("the broker URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot set up {what}: {reason}")]
    Setup { what: String, reason: String },
}

/// Exponential backoff between connection attempts: 100 ms doubling up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// How a session ends: the first reason given wins, and whoever waits is woken.
#[derive(Default)]
struct SessionEnd {
    reason: Mutex<Option<String>>,
    token: CancellationToken,
}

impl SessionEnd {
    fn end(&self, reason: String) {
        lock(&self.reason).get_or_insert(reason);
        self.token.cancel();
    }

    async fn ended(&self) -> String {
        self.token.cancelled().await;
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "the session ended".to_owned())
    }
}

/// The publish channel with its confirm numbering.
struct Publisher {
    channel: Channel,
    /// The number of the last publish sent on the channel. Held across the hand-over to
    /// the client so that numbers follow the order in which the broker receives messages.
    last_tag: tokio::sync::Mutex<u64>,
    confirms: Arc<Confirms>,
}

/// The message of a publish, as the AMQP client takes it.
struct Message<'a> {
    exchange: &'a str,
    routing_key: &'a Arc<str>,
    mandatory: bool,
    correlation_id: Uuid,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl Publisher {
    /// Sends a message and waits for the broker's confirm.
    async fn publish(&self, message: Message<'_>) -> Result<(), PublishError> {
        check_routing_key(message.routing_key)?;
        let confirmed = {
            let mut last_tag = self.last_tag.lock().await;
            let tag = *last_tag + 1;
            let confirmed =
                self.confirms
                    .expect(tag, message.correlation_id, message.routing_key.clone())?;
            // Until the client has the message, the number is only reserved: dropped here
            // (an error, or the caller gave up), the number is released.
            let reserved = Reserved {
                confirms: &self.confirms,
                tag,
            };
            let mut arguments = BasicPublishArguments::new(message.exchange, message.routing_key);
            arguments.mandatory(message.mandatory);
            self.channel
                .basic_publish(message.properties, message.body, arguments)
                .await
                .map_err(|e| PublishError::Amqp(e.to_string()))?;
            std::mem::forget(reserved);
            *last_tag = tag;
            confirmed
        };
        confirmed.await.unwrap_or_else(|_| {
            Err(PublishError::Amqp(
                "the session ended before the broker confirmed the message".to_owned(),
            ))
        })
    }
}

/// amqprs would panic on a routing key over 255 bytes; queue names come from plugins.toml.
fn check_routing_key(routing_key: &str) -> Result<(), PublishError> {
    if routing_key.len() <= 255 {
        return Ok(());
    }
    let start: String = routing_key.chars().take(32).collect();
    Err(PublishError::Amqp(format!(
        "queue name `{start}…` is longer than AMQP's 255 bytes"
    )))
}

/// A confirm number reserved for a message not yet handed to the client.
struct Reserved<'a> {
    confirms: &'a Confirms,
    tag: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.confirms.forget(self.tag);
    }
}

/// Broker events on the publish channel: confirms, returns, a close.
struct PublishEvents {
    confirms: Arc<Confirms>,
    end: Arc<SessionEnd>,
}

#[async_trait::async_trait]
impl ChannelCallback for PublishEvents {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let reason = format!("the broker closed the publish channel: {close}");
        self.confirms.close(&reason);
        self.end.end(reason);
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.confirms.ack(ack.delivery_tag(), ack.mutiple());
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.confirms.nack(nack.delivery_tag(), nack.multiple());
    }
    async fn publish_return(
        &mut self,
        _: &Channel,
        _: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        if let Some(correlation_id) = properties.correlation_id() {
            self.confirms.returned(correlation_id);
        }
    }
}

/// Broker events on the reply channel: a close, or the reply consumer cancelled (its queue
/// deleted) end the session.
struct ReplyEvents {
    end: Arc<SessionEnd>,
}

#[async_trait::async_trait]
impl ChannelCallback for ReplyEvents {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        self.end
            .end(format!("the broker closed the reply channel: {close}"));
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        self.end
            .end("the broker cancelled the reply consumer".to_owned());
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {}
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {}
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// Broker events on the connection: a close ends the session; a block (RabbitMQ's memory
/// or disk alarm: publishes stall until it lifts) is logged.
struct ConnectionEvents {
    end: Arc<SessionEnd>,
}

#[async_trait::async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), amqprs::error::Error> {
        self.end
            .end(format!("the broker closed the connection: {close}"));
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, reason: String) {
        warn!(%reason, "the broker blocks this connection: publishes wait until it unblocks");
    }
    async fn unblocked(&mut self, _: &Connection) {
        info!("the broker unblocked this connection");
    }
    async fn secret_updated(&mut self, _: &Connection) {}
}

/// One broker session: a connection, its publish channel and the reply queue consumed on it.
struct Live {
    connection: Connection,
    publisher: Publisher,
    replies: Channel,
    /// This session's reply queue: exclusive, so it goes with the connection; the next
    /// session gets a new one.
    reply_queue: String,
    end: Arc<SessionEnd>,
}

/// Called when a session ends other than by shutdown (see [`AmqpBroker::on_session_lost`]).
type LostHook = Arc<dyn Fn() + Send + Sync>;

/// What `/readyz` reports of the broker side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The connection is open.
    pub connected: bool,
    /// The reply consumer of the current session is running.
    pub consuming: bool,
    /// The current reply queue, if connected.
    pub reply_queue: Option<String>,
    /// Sessions opened since start (1 after the first connection).
    pub sessions: u64,
}

struct Shared {
    url: String,
    host_id: Uuid,
    live: ArcSwapOption<Live>,
    queues: Mutex<Vec<QueueDecl>>,
    on_lost: Mutex<Option<LostHook>>,
    /// Cancellations asked for while disconnected, published once connected again (the
    /// workers still run those requests; their replies have nowhere to go).
    pending_cancels: Mutex<VecDeque<Uuid>>,
    sessions: AtomicU64,
    consuming: AtomicBool,
}

/// At most this many cancellations wait for a connection; older ones are dropped first.
const MAX_PENDING_CANCELS: usize = 10_000;
/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a session may take (a dead connection must not hold up shutdown).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a session checks that its channels are still open.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The host's RabbitMQ connection. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
}

impl AmqpBroker {
    pub fn new(url: impl Into<String>, host_id: Uuid, queues: Vec<QueueDecl>) -> Self {
        AmqpBroker {
            shared: Arc::new(Shared {
                url: url.into(),
                host_id,
                live: ArcSwapOption::empty(),
                queues: Mutex::new(queues),
                on_lost: Mutex::new(None),
                pending_cancels: Mutex::new(VecDeque::new()),
                sessions: AtomicU64::new(0),
                consuming: AtomicBool::new(false),
            }),
        }
    }

    /// The name the host's connection carries on the broker (client property
    /// `connection_name`), so operators — and tests — can find it:
    /// `taskgate-host <host id>`.
    pub fn connection_name(&self) -> String {
        format!("taskgate-host {}", self.shared.host_id)
    }

    /// The reply queue of the current session, if connected. The first session's queue is
    /// `taskgate.reply.<host id>`; each later one gets a fresh UUID, because the replies
    /// meant for the old queue are gone with it.
    pub fn reply_queue(&self) -> Option<String> {
        self.shared
            .live
            .load()
            .as_ref()
            .map(|l| l.reply_queue.clone())
    }

    /// True while connected with the reply consumer running.
    pub fn is_connected(&self) -> bool {
        self.shared.live.load().is_some() && self.shared.consuming.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> BrokerStatus {
        let live = self.shared.live.load();
        let connected = live.as_ref().is_some_and(|l| l.connection.is_open());
        BrokerStatus {
            connected,
            consuming: connected && self.shared.consuming.load(Ordering::SeqCst),
            reply_queue: live.as_ref().map(|l| l.reply_queue.clone()),
            sessions: self.shared.sessions.load(Ordering::SeqCst),
        }
    }

    /// Registers what to do when a session is lost (not at shutdown): the host ends the
    /// requests in flight, whose replies went with the session's reply queue.
    pub fn on_session_lost(&self, hook: impl Fn() + Send + Sync + 'static) {
        *lock(&self.shared.on_lost) = Some(Arc::new(hook));
    }

    /// Replaces the request queues declared on every (re)connection, and declares them now
    /// when connected. Hot reload calls this before a new routing table serves.
    pub async fn declare_queues(&self, queues: Vec<QueueDecl>) {
        if let Ok(mut declared) = self.shared.queues.lock() {
            declared.clone_from(&queues);
        }
        if let Some(live) = self.shared.live.load_full() {
            for queue in &queues {
                declare_request_queue(&live.connection, queue).await;
            }
        }
    }

    /// Connects and serves until `shutdown` resolves, reconnecting whenever the connection
    /// is lost. Every reply is handed to `on_reply`, in the order the broker delivered them.
    pub async fn run<F>(&self, on_reply: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(IncomingReply) + Send + Sync,
    {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::default();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let session = tokio::select! {
                _ = &mut shutdown => break,
                session = self.open_session() => session,
            };
            match session {
                Ok((mut replies, live)) => {
                    let sessions = self.shared.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    if sessions > 1 {
                        metrics::counter!(crate::metrics::BROKER_RECONNECTS).increment(1);
                    }
                    metrics::gauge!(crate::metrics::BROKER_CONNECTED).set(1.0);
                    info!(url = %redact_url(&self.shared.url), reply_queue = %live.reply_queue, connection_name = %self.connection_name(), session = sessions, "connected to the broker");
                    attempt = 0;
                    backoff = Backoff::default();
                    self.flush_pending_cancels();
                    let lost = tokio::select! {
                        _ = &mut shutdown => None,
                        reason = read_replies(&mut replies, &on_reply) => Some(reason),
                        reason = watch(&live) => Some(reason),
                    };
                    self.shared.consuming.store(false, Ordering::SeqCst);
                    metrics::gauge!(crate::metrics::BROKER_CONNECTED).set(0.0);
                    match lost {
                        None => break,
                        Some(reason) => {
                            // Publishes fail fast from here on, before anything waits on
                            // the dead connection.
                            self.shared.live.store(None);
                            warn!(%reason, reply_queue = %live.reply_queue, "lost the broker connection; reconnecting");
                            let hook = lock(&self.shared.on_lost).clone();
                            if let Some(hook) = hook {
                                hook();
                            }
                            close(&live, "taskgate host: session lost").await;
                        }
                    }
                }
                Err(err) => {
                    let delay = jitter(backoff.next_delay());
                    warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "broker not available");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shared.consuming.store(false, Ordering::SeqCst);
        if let Some(live) = self.shared.live.swap(None) {
            close(&live, "taskgate host shutting down").await;
            info!(reply_queue = %live.reply_queue, "broker connection closed");
        }
    }

    /// Publishes the cancellations that waited for a connection, in the background.
    fn flush_pending_cancels(&self) {
        let pending: Vec<Uuid> = lock(&self.shared.pending_cancels).drain(..).collect();
        if pending.is_empty() {
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let count = pending.len();
            for correlation_id in pending {
                if let Err(error) = broker.publish_cancel(correlation_id).await {
                    debug!(%correlation_id, %error, "cancellation not published");
                }
            }
            debug!(
                count,
                "published the cancellations that waited for the connection"
            );
        });
    }

    /// The reply queue name of the next session.
    fn next_reply_queue(&self) -> String {
        let id = if self.shared.sessions.load(Ordering::SeqCst) == 0 {
            self.shared.host_id
        } else {
            Uuid::new_v4()
        };
        format!("{}{id}", names::REPLY_QUEUE_PREFIX)
    }

    /// One connection: declares everything, then returns the reply stream.
    async fn open_session(
        &self,
    ) -> Result<(UnboundedReceiver<ConsumerMessage>, Arc<Live>), ConnectError> {
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_named(&self.shared.url, &self.connection_name()),
        )
        .await
        .map_err(|_| ConnectError::Unreachable {
            url: redact_url(&self.shared.url),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })??;
        let setup = |what: &str, e: amqprs::error::Error| ConnectError::Setup {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let end = Arc::new(SessionEnd::default());
        connection
            .register_callback(ConnectionEvents { end: end.clone() })
            .await
            .map_err(|e| setup("the connection", e))?;
        let channel = connection
            .open_channel(None)
            .await
            .map_err(|e| setup("the publish channel", e))?;
        let confirms = Confirms::new();
        channel
            .register_callback(PublishEvents {
                confirms: confirms.clone(),
                end: end.clone(),
            })
            .await
            .map_err(|e| setup("the publish channel", e))?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| setup("publisher confirms", e))?;
        channel
            .exchange_declare(
                ExchangeDeclareArguments::of_type(names::CANCEL_EXCHANGE, ExchangeType::Fanout)
                    .durable(true)
                    .finish(),
            )
            .await
            .map_err(|e| setup("the cancel exchange", e))?;
        let queues = lock(&self.shared.queues).clone();
        for queue in &queues {
            declare_request_queue(&connection, queue).await;
        }
        let replies = connection
            .open_channel(None)
            .await
            .map_err(|e| setup("the reply channel", e))?;
        replies
            .register_callback(ReplyEvents { end: end.clone() })
            .await
            .map_err(|e| setup("the reply channel", e))?;
        let reply_queue = self.next_reply_queue();
        replies
            .queue_declare(reply_queue_declaration(&reply_queue))
            .await
            .map_err(|e| setup("the reply queue", e))?;
        let (_, consumer) = replies
            .basic_consume_rx(reply_consumer(&reply_queue, "taskgate-host"))
            .await
            .map_err(|e| setup("the reply consumer", e))?;
        let live = Arc::new(Live {
            connection,
            publisher: Publisher {
                channel,
                last_tag: tokio::sync::Mutex::new(0),
                confirms,
            },
            replies,
            reply_queue,
            end,
        });
        self.shared.consuming.store(true, Ordering::SeqCst);
        self.shared.live.store(Some(live.clone()));
        Ok((consumer, live))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// ±20 %, so that hosts cut off together do not all reconnect in the same instant.
fn jitter(delay: Duration) -> Duration {
    let random = (Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    delay.mul_f64(0.8 + 0.4 * random)
}

/// Resolves when the session of `live` is over: the broker closed the connection or a
/// channel, the socket failed, or — checked on a timer, as a backstop — the client says a
/// channel or the connection is no longer open. The waiting publishes then fail at once.
async fn watch(live: &Live) -> String {
    let reason = tokio::select! {
        reason = live.end.ended() => reason,
        _ = live.connection.listen_network_io_failure() => "the connection to the broker failed".to_owned(),
        reason = poll_open(live) => reason,
    };
    live.publisher.confirms.close(&reason);
    reason
}

async fn poll_open(live: &Live) -> String {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        if !live.connection.is_open() {
            return "the connection is closed".to_owned();
        }
        if !live.publisher.channel.is_open() {
            return "the publish channel is closed".to_owned();
        }
        if !live.replies.is_open() {
            return "the reply channel is closed".to_owned();
        }
    }
}

/// Closes a session's channels, then its connection (the broker then deletes the
/// exclusive reply queue), each step bounded in time.
async fn close(live: &Live, reason: &str) {
    live.publisher.confirms.close(reason);
    for channel in [&live.replies, &live.publisher.channel] {
        if channel.is_open() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.clone().close()).await;
        }
    }
    if live.connection.is_open() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, live.connection.clone().close()).await;
    }
}

/// Opens one connection, classifying failures for a clear log line.
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_named(url, "taskgate-host").await
}

async fn connect_named(url: &str, connection_name: &str) -> Result<Connection, ConnectError> {
    let arguments = amqp_url::parse(url)
        .and_then(|uri| uri.connection_arguments(connection_name))
        .map_err(|reason| ConnectError::BadUrl {
            url: redact_url(url),
            reason,
        })?;
    Connection::open(&arguments)
        .await
        .map_err(|e| classify(url, e.to_string()))
}

/// Refused (credentials, vhost) or unreachable, from the client's error text.
fn classify(url: &str, reason: String) -> ConnectError {
    let url = redact_url(url);
    if reason.contains("ACCESS_REFUSED") || reason.contains("NOT_ALLOWED") {
        ConnectError::Refused { url, reason }
    } else if reason.contains("reset by peer") {
        // RabbitMQ tells a client why its login failed only if the client announced the
        // `authentication_failure_close` capability, which amqprs does not: it just drops
        // the TCP connection, which it had accepted.
        ConnectError::Refused {
            url,
            reason: format!(
                "it dropped the connection during the login (wrong user or password?): {reason}"
            ),
        }
    } else {
        ConnectError::Unreachable { url, reason }
    }
}

/// Declares a request queue on its own channel: an argument mismatch with an existing
/// queue closes the channel, and must not take the others down.
async fn declare_request_queue(connection: &Connection, queue: &QueueDecl) {
    let arguments = match field_table(&queue.arguments) {
        Ok(arguments) => arguments,
        Err(reason) => {
            error!(queue = %queue.name, %reason, "queue not declared");
            return;
        }
    };
    if queue.name.len() > 255 {
        error!(queue = %queue.name, "queue not declared: AMQP queue names have at most 255 bytes");
        return;
    }
    let result = async {
        let channel = connection.open_channel(None).await?;
        channel
            .queue_declare(
                QueueDeclareArguments::new(&queue.name)
                    .durable(true)
                    .arguments(arguments)
                    .finish(),
            )
            .await?;
        channel.close().await
    }
    .await;
    match result {
        Ok(()) => debug!(queue = %queue.name, "request queue declared"),
        Err(e) => {
            error!(queue = %queue.name, error = %e, "request queue could not be declared (does it exist with other arguments?)")
        }
    }
}

/// JSON queue arguments (from plugins and plugins.toml) as an AMQP field table.
pub fn field_table(arguments: &Map<String, Value>) -> Result<FieldTable, String> {
    let mut table = FieldTable::new();
    for (key, value) in arguments {
        let value = match value {
            Value::String(s) => FieldValue::S(long_string(s)?),
            Value::Bool(b) => FieldValue::t(*b),
            Value::Number(n) if n.is_i64() => FieldValue::l(n.as_i64().unwrap_or_default()),
            Value::Number(n) if n.is_u64() => FieldValue::l(
                i64::try_from(n.as_u64().unwrap_or_default())
                    .map_err(|_| format!("queue argument `{key}` is too large"))?,
            ),
            Value::Number(n) => FieldValue::d(n.as_f64().unwrap_or_default()),
            other => {
                return Err(format!(
                    "queue argument `{key}` has an unsupported value {other}"
                ))
            }
        };
        let name = FieldName::try_from(key.as_str())
            .map_err(|_| format!("queue argument name `{key}` is longer than 255 bytes"))?;
        table.insert(name, value);
    }
    Ok(table)
}

fn long_string(s: &str) -> Result<LongStr, String> {
    LongStr::try_from(s).map_err(|_| "a header or argument value is over 4 GiB".to_owned())
}

async fn read_replies<F: Fn(IncomingReply)>(
    consumer: &mut UnboundedReceiver<ConsumerMessage>,
    on_reply: &F,
) -> String {
    while let Some(message) = consumer.recv().await {
        on_reply(incoming_reply(message.basic_properties, message.content));
    }
    "the reply consumer ended".to_owned()
}

static HEADER_SEQ: LazyLock<Option<FieldName>> =
    LazyLock::new(|| FieldName::try_from(names::HEADER_SEQ).ok());

fn incoming_reply(properties: Option<BasicProperties>, body: Option<Vec<u8>>) -> IncomingReply {
    let properties = properties.unwrap_or_default();
    let seq = properties
        .headers()
        .zip(HEADER_SEQ.as_ref())
        .and_then(|(headers, name)| headers.get(name))
        .and_then(amqp_int);
    IncomingReply {
        correlation_id: properties.correlation_id().cloned(),
        kind: properties.message_type().cloned(),
        seq,
        body: body.unwrap_or_default(),
    }
}

fn amqp_int(value: &FieldValue) -> Option<i64> {
    match value {
        FieldValue::b(v) => Some(i64::from(*v)),
        FieldValue::B(v) => Some(i64::from(*v)),
        FieldValue::s(v) => Some(i64::from(*v)),
        FieldValue::u(v) => Some(i64::from(*v)),
        FieldValue::I(v) => Some(i64::from(*v)),
        FieldValue::i(v) => Some(i64::from(*v)),
        FieldValue::l(v) => Some(*v),
        FieldValue::T(v) => i64::try_from(*v).ok(),
        FieldValue::S(s) => s.as_ref().parse().ok(),
        _ => None,
    }
}

/// A host's reply queue: exclusive and auto-deleted, it lives and dies with one broker
/// session. The benchmark's direct client declares the same, to measure the same thing.
pub fn reply_queue_declaration(name: &str) -> QueueDeclareArguments {
    QueueDeclareArguments::new(name)
        .exclusive(true)
        .auto_delete(true)
        .finish()
}

/// The consumer of a reply queue: exclusive, and auto-ack — a reply is relayed once, and a
/// lost session ends its requests anyway.
pub fn reply_consumer(queue: &str, tag: &str) -> BasicConsumeArguments {
    BasicConsumeArguments::new(queue, tag)
        .manual_ack(false)
        .exclusive(true)
        .finish()
}

/// The AMQP properties of a request message (protocol §2.2).
pub fn request_properties(request: &OutgoingRequest, reply_queue: &str) -> BasicProperties {
    let mut headers = FieldTable::new();
    let mut header = |name: &str, value: FieldValue| {
        if let Ok(name) = FieldName::try_from(name) {
            headers.insert(name, value);
        }
    };
    header(
        names::HEADER_DEADLINE_MS,
        FieldValue::l(i64::try_from(request.deadline_ms).unwrap_or(i64::MAX)),
    );
    header(names::HEADER_STREAM, FieldValue::t(request.streams));
    if let Some(identity) = request
        .identity
        .as_deref()
        .and_then(|i| long_string(i).ok())
    {
        header(names::HEADER_IDENTITY, FieldValue::S(identity));
    }
    if let Ok(traceparent) = long_string(&request.traceparent.to_string()) {
        header(names::HEADER_TRACEPARENT, FieldValue::S(traceparent));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_correlation_id(&request.correlation_id.to_string())
        .with_reply_to(reply_queue)
        .with_message_type(&request.request_type)
        .with_timestamp(now.as_secs())
        .with_expiration(&request.timeout.as_millis().max(1).to_string())
        .with_headers(headers)
        .finish()
}

impl Broker for AmqpBroker {
    /// The work is boxed: with amqprs's publish inside, it is a ~2.5 KiB future, and it would
    /// otherwise be part of every request's task — copied whole when the task is spawned and
    /// again when it completes (≈5% of the host's CPU per request, perf).
    async fn publish(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        Box::pin(self.publish_request(request)).await
    }

    /// While disconnected, the cancellation waits for the next session.
    async fn publish_cancel(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        Box::pin(self.publish_cancel_request(correlation_id)).await
    }
}

impl AmqpBroker {
    async fn publish_request(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
        let properties = request_properties(&request, &live.reply_queue);
        live.publisher
            .publish(Message {
                exchange: "",
                routing_key: &request.queue,
                mandatory: true,
                correlation_id: request.correlation_id,
                properties,
                // The host's one copy of the payload becomes the message body as it is.
                body: request.body.into_string().into_bytes(),
            })
            .await
    }

    async fn publish_cancel_request(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        let Some(live) = self.shared.live.load_full() else {
            let mut pending = lock(&self.shared.pending_cancels);
            if pending.len() >= MAX_PENDING_CANCELS {
                pending.pop_front();
            }
            pending.push_back(correlation_id);
            debug!(%correlation_id, "cancellation kept until the broker is connected again");
            return Ok(());
        };
        let properties = BasicProperties::default()
            .with_content_type(names::CONTENT_TYPE_JSON)
            .with_correlation_id(&correlation_id.to_string())
            .finish();
        live.publisher
            .publish(Message {
                exchange: names::CANCEL_EXCHANGE,
                routing_key: &EMPTY_ROUTING_KEY,
                mandatory: false,
                correlation_id,
                properties,
                body: Vec::new(),
            })
            .await
    }
}

static EMPTY_ROUTING_KEY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use taskgate_protocol::trace::TraceParent;

    fn get<'a>(table: &'a FieldTable, name: &str) -> Option<&'a FieldValue> {
        table.get(&FieldName::try_from(name).unwrap())
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn routing_keys_over_255_bytes_are_refused_without_splitting_a_character() {
        assert!(check_routing_key(&"q".repeat(255)).is_ok());
        // 'é' is two bytes: byte 32 falls inside one, which a byte slice would panic on.
        let long = format!("q{}", "é".repeat(200));
        match check_routing_key(&long) {
            Err(PublishError::Amqp(message)) => assert!(message.contains("255 bytes"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn queue_arguments_become_typed_amqp_values() {
        let args = json!({"x-queue-type": "quorum", "x-max-length": 10, "x-flag": true});
        let table = field_table(args.as_object().unwrap()).unwrap();
        assert!(matches!(
            get(&table, "x-queue-type"),
            Some(FieldValue::S(_))
        ));
        assert!(matches!(
            get(&table, "x-max-length"),
            Some(FieldValue::l(10))
        ));
        assert!(matches!(get(&table, "x-flag"), Some(FieldValue::t(true))));
        assert!(field_table(json!({"x": [1]}).as_object().unwrap()).is_err());
    }

    #[test]
    fn request_properties_carry_every_field_of_the_protocol() {
        let request = OutgoingRequest {
            correlation_id: Uuid::new_v4(),
            request_type: "text.wordcount".into(),
            queue: "taskgate.text.wordcount".into(),
            body: "{}".into(),
            streams: true,
            timeout: Duration::from_millis(1500),
            deadline_ms: 42,
            identity: None,
            traceparent: TraceParent::parse(TRACEPARENT).unwrap(),
        };
        let p = request_properties(&request, "taskgate.reply.x");
        assert_eq!(
            p.content_type().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(
            p.correlation_id().cloned(),
            Some(request.correlation_id.to_string())
        );
        assert_eq!(p.reply_to().map(|s| s.as_str()), Some("taskgate.reply.x"));
        assert_eq!(p.message_type().map(|s| s.as_str()), Some("text.wordcount"));
        assert_eq!(p.expiration().map(|s| s.as_str()), Some("1500"));
        assert!(p.timestamp().is_some());
        let headers = p.headers().unwrap();
        assert!(matches!(
            get(headers, "x-deadline-ms"),
            Some(FieldValue::l(42))
        ));
        assert!(matches!(
            get(headers, "x-stream"),
            Some(FieldValue::t(true))
        ));
        match get(headers, "traceparent") {
            Some(FieldValue::S(s)) => assert_eq!(s.as_ref(), TRACEPARENT),
            other => panic!("traceparent is {other:?}"),
        }
        assert!(
            get(headers, "x-identity").is_none(),
            "no identity, no header"
        );
    }

    #[test]
    fn the_identity_travels_as_a_json_string_header() {
        let request = OutgoingRequest {
            correlation_id: Uuid::new_v4(),
            request_type: "t".into(),
            queue: "q".into(),
            body: "{}".into(),
            streams: false,
            timeout: Duration::from_secs(1),
            deadline_ms: 1,
            identity: Some(r#"{"subject":"alice","roles":["admin"]}"#.into()),
            traceparent: TraceParent::parse(TRACEPARENT).unwrap(),
        };
        let p = request_properties(&request, "r");
        match get(p.headers().unwrap(), "x-identity") {
            Some(FieldValue::S(s)) => {
                assert_eq!(s.as_ref(), r#"{"subject":"alice","roles":["admin"]}"#)
            }
            other => panic!("x-identity is {other:?}"),
        }
    }

    #[test]
    fn reply_seq_is_read_from_any_integer_header() {
        for (value, seq) in [
            (FieldValue::I(3), Some(3)),
            (FieldValue::l(4), Some(4)),
            (FieldValue::u(5), Some(5)),
            (FieldValue::S("6".try_into().unwrap()), Some(6)),
            (FieldValue::t(true), None),
        ] {
            let mut headers = FieldTable::new();
            headers.insert(FieldName::try_from("x-seq").unwrap(), value);
            let p = BasicProperties::default()
                .with_headers(headers)
                .with_message_type("chunk")
                .with_correlation_id("c")
                .finish();
            let r = incoming_reply(Some(p), Some(b"1".to_vec()));
            assert_eq!(r.seq, seq);
            assert_eq!(r.kind.as_deref(), Some("chunk"));
            assert_eq!(r.correlation_id.as_deref(), Some("c"));
            assert_eq!(r.body, b"1");
        }
    }

    #[test]
    fn a_reply_without_properties_or_body_is_still_a_reply() {
        let r = incoming_reply(None, None);
        assert_eq!(r.correlation_id, None);
        assert!(r.body.is_empty());
    }
}
