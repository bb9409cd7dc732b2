//! The RabbitMQ implementation of [`Broker`], on lapin.
//!
//! One connection per host. A supervisor loop ([`AmqpBroker::run`]) connects (retrying
//! with backoff and saying so in the log), declares the topology — the `taskgate.cancel`
//! fanout exchange, the queues of enabled request types and this host's own reply queue —
//! and then reads replies as one ordered stream until the connection is lost, when it
//! starts over. While it is down, publishes fail at once with `NotConnected`, so clients
//! get `UNAVAILABLE` promptly instead of a hang.
//!
//! Recovery is done here, not by lapin's auto-recovery: a session's reply queue is
//! exclusive, so it — and every reply still in it or on its way to it — is gone with the
//! connection. A lost session therefore calls the hook registered with
//! [`AmqpBroker::on_session_lost`] (the host ends the requests in flight at once rather
//! than letting them time out), and the next session declares everything again with a
//! reply queue of a new name. The reply queue is always named by the host
//! (`taskgate.reply.<uuid>`), never by the server. The connection carries the client
//! property `connection_name` = `taskgate-host <host id>`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::{Map, Value};
use taskgate_protocol::amqp as names;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

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

/// One broker session: a connection, its publish channel and the reply queue consumed on it.
struct Live {
    connection: Connection,
    publish: Channel,
    replies: Channel,
    /// This session's reply queue: exclusive, so it goes with the connection; the next
    /// session gets a new one.
    reply_queue: String,
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
        let connected = live
            .as_ref()
            .is_some_and(|l| l.connection.status().connected());
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
    async fn open_session(&self) -> Result<(lapin::Consumer, Arc<Live>), ConnectError> {
        let properties =
            ConnectionProperties::default().with_connection_name(self.connection_name().into());
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, connect_with(&self.shared.url, properties))
                .await
                .map_err(|_| ConnectError::Unreachable {
                    url: redact_url(&self.shared.url),
                    reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                })??;
        let setup = |what: &str, e: lapin::Error| ConnectError::Setup {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| setup("the publish channel", e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| setup("publisher confirms", e))?;
        publish
            .exchange_declare(
                names::CANCEL_EXCHANGE.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| setup("the cancel exchange", e))?;
        let queues = lock(&self.shared.queues).clone();
        for queue in &queues {
            declare_request_queue(&connection, queue).await;
        }
        let replies = connection
            .create_channel()
            .await
            .map_err(|e| setup("the reply channel", e))?;
        let reply_queue = self.next_reply_queue();
        replies
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| setup("the reply queue", e))?;
        let consumer = replies
            .basic_consume(
                reply_queue.as_str().into(),
                "taskgate-host".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| setup("the reply consumer", e))?;
        let live = Arc::new(Live {
            connection,
            publish,
            replies,
            reply_queue,
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

/// Resolves when a channel or the connection of `live` is no longer open (a closed
/// publish channel would otherwise fail every publish while replies still flow).
async fn watch(live: &Live) -> String {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        if !live.connection.status().connected() {
            return "the connection is closed".to_owned();
        }
        if !live.publish.status().connected() {
            return "the publish channel is closed".to_owned();
        }
        if !live.replies.status().connected() {
            return "the reply channel is closed".to_owned();
        }
    }
}

/// Closes a session's channels, then its connection (the broker then deletes the
/// exclusive reply queue), each step bounded in time.
async fn close(live: &Live, reason: &str) {
    for channel in [&live.replies, &live.publish] {
        if channel.status().connected() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
        }
    }
    if live.connection.status().connected() {
        let _ =
            tokio::time::timeout(CLOSE_TIMEOUT, live.connection.close(200, reason.into())).await;
    }
}

/// Opens one connection, classifying failures for a clear log line.
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_with(url, ConnectionProperties::default()).await
}

async fn connect_with(
    url: &str,
    properties: ConnectionProperties,
) -> Result<Connection, ConnectError> {
    Connection::connect(url, properties).await.map_err(|e| {
        let reason = e.to_string();
        let url = redact_url(url);
        let refused = reason.contains("ACCESS_REFUSED")
            || reason.contains("NOT_ALLOWED")
            || reason.contains("auth");
        if refused {
            ConnectError::Refused { url, reason }
        } else {
            ConnectError::Unreachable { url, reason }
        }
    })
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
    let result = async {
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await?;
        channel.close(200, "declared".into()).await
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
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) if n.is_i64() => {
                AMQPValue::LongLongInt(n.as_i64().unwrap_or_default())
            }
            Value::Number(n) if n.is_u64() => AMQPValue::LongLongInt(
                i64::try_from(n.as_u64().unwrap_or_default())
                    .map_err(|_| format!("queue argument `{key}` is too large"))?,
            ),
            Value::Number(n) => AMQPValue::Double(n.as_f64().unwrap_or_default()),
            other => {
                return Err(format!(
                    "queue argument `{key}` has an unsupported value {other}"
                ))
            }
        };
        table.insert(ShortString::from(key.as_str()), value);
    }
    Ok(table)
}

async fn read_replies<F: Fn(IncomingReply)>(
    consumer: &mut lapin::Consumer,
    on_reply: &F,
) -> String {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => on_reply(incoming_reply(delivery.properties, delivery.data)),
            Err(e) => return e.to_string(),
        }
    }
    "the reply consumer was cancelled".to_owned()
}

fn incoming_reply(properties: BasicProperties, body: Vec<u8>) -> IncomingReply {
    let seq = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(names::HEADER_SEQ))
        .and_then(amqp_int);
    IncomingReply {
        correlation_id: properties.correlation_id().as_ref().map(|c| c.to_string()),
        kind: properties.kind().as_ref().map(|k| k.to_string()),
        seq,
        body,
    }
}

fn amqp_int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => s.to_string().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// The AMQP properties of a request message (protocol §2.2).
pub fn request_properties(request: &OutgoingRequest, reply_queue: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        names::HEADER_DEADLINE_MS.into(),
        AMQPValue::LongLongInt(i64::try_from(request.deadline_ms).unwrap_or(i64::MAX)),
    );
    headers.insert(
        names::HEADER_STREAM.into(),
        AMQPValue::Boolean(request.streams),
    );
    if let Some(identity) = &request.identity {
        headers.insert(
            names::HEADER_IDENTITY.into(),
            AMQPValue::LongString(LongString::from(identity.as_ref())),
        );
    }
    headers.insert(
        names::HEADER_TRACEPARENT.into(),
        AMQPValue::LongString(request.traceparent.to_string().into()),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON.into())
        .with_delivery_mode(names::DELIVERY_MODE_PERSISTENT)
        .with_correlation_id(request.correlation_id.to_string().into())
        .with_reply_to(reply_queue.into())
        .with_type(request.request_type.as_ref().into())
        .with_timestamp(now.as_secs())
        .with_expiration(request.timeout.as_millis().max(1).to_string().into())
        .with_headers(headers)
}

fn amqp_error(e: lapin::Error) -> PublishError {
    PublishError::Amqp(e.to_string())
}

impl Broker for AmqpBroker {
    async fn publish(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
        let properties = request_properties(&request, &live.reply_queue);
        let confirm = live
            .publish
            .basic_publish(
                "".into(),
                request.queue.as_ref().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                request.body.as_bytes(),
                properties,
            )
            .await
            .map_err(amqp_error)?;
        match confirm.await.map_err(amqp_error)? {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => {
                Err(PublishError::Unroutable(request.queue.to_string()))
            }
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    /// While disconnected, the cancellation waits for the next session.
    async fn publish_cancel(&self, correlation_id: Uuid) -> Result<(), PublishError> {
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
            .with_content_type(names::CONTENT_TYPE_JSON.into())
            .with_correlation_id(correlation_id.to_string().into());
        let confirm = live
            .publish
            .basic_publish(
                names::CANCEL_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                b"",
                properties,
            )
            .await
            .map_err(amqp_error)?;
        confirm.await.map_err(amqp_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use taskgate_protocol::trace::TraceParent;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

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
        let inner = table.inner();
        assert!(matches!(
            inner.get("x-queue-type"),
            Some(AMQPValue::LongString(_))
        ));
        assert!(matches!(
            inner.get("x-max-length"),
            Some(AMQPValue::LongLongInt(10))
        ));
        assert!(matches!(
            inner.get("x-flag"),
            Some(AMQPValue::Boolean(true))
        ));
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
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            Some(request.correlation_id.to_string())
        );
        assert_eq!(
            p.reply_to().as_ref().map(|s| s.as_str()),
            Some("taskgate.reply.x")
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("text.wordcount")
        );
        assert_eq!(p.expiration().as_ref().map(|s| s.as_str()), Some("1500"));
        assert!(p.timestamp().is_some());
        let headers = p.headers().as_ref().unwrap().inner();
        assert!(matches!(
            headers.get("x-deadline-ms"),
            Some(AMQPValue::LongLongInt(42))
        ));
        assert!(matches!(
            headers.get("x-stream"),
            Some(AMQPValue::Boolean(true))
        ));
        assert_eq!(
            headers.get("traceparent"),
            Some(&AMQPValue::LongString(TRACEPARENT.into()))
        );
        assert!(
            headers.get("x-identity").is_none(),
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
        let headers = p.headers().as_ref().unwrap().inner();
        match headers.get("x-identity") {
            Some(AMQPValue::LongString(s)) => {
                assert_eq!(s.to_string(), r#"{"subject":"alice","roles":["admin"]}"#)
            }
            other => panic!("x-identity is {other:?}"),
        }
    }

    #[test]
    fn reply_seq_is_read_from_any_integer_header() {
        let mut headers = FieldTable::default();
        headers.insert("x-seq".into(), AMQPValue::LongInt(3));
        let p = BasicProperties::default()
            .with_headers(headers)
            .with_type("chunk".into())
            .with_correlation_id("c".into());
        let r = incoming_reply(p, b"1".to_vec());
        assert_eq!(r.seq, Some(3));
        assert_eq!(r.kind.as_deref(), Some("chunk"));
        assert_eq!(r.correlation_id.as_deref(), Some("c"));
    }
}
