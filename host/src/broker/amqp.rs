//! The RabbitMQ implementation of [`Broker`], on lapin.
//!
//! One connection per host. A supervisor loop ([`AmqpBroker::run`]) connects (retrying
//! with backoff and saying so in the log), declares the topology — the `taskgate.cancel`
//! fanout exchange, the queues of enabled request types and this host's own reply queue —
//! and then reads replies as one ordered stream until the connection is lost, when it
//! starts over. While it is down, publishes fail at once with `NotConnected`, so clients
//! get `UNAVAILABLE` promptly instead of a hang.
//!
//! The reply queue is named by the host (`taskgate.reply.<host uuid>`): server-named
//! queues cannot be re-declared after a reconnect.

use std::future::Future;
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

struct Live {
    connection: Connection,
    publish: Channel,
}

struct Shared {
    url: String,
    reply_queue: String,
    live: ArcSwapOption<Live>,
    queues: Mutex<Vec<QueueDecl>>,
}

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
                reply_queue: format!("{}{host_id}", names::REPLY_QUEUE_PREFIX),
                live: ArcSwapOption::empty(),
                queues: Mutex::new(queues),
            }),
        }
    }

    pub fn reply_queue(&self) -> &str {
        &self.shared.reply_queue
    }

    /// True while connected with the reply consumer running.
    pub fn is_connected(&self) -> bool {
        self.shared.live.load().is_some()
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
                Ok(mut replies) => {
                    info!(url = %redact_url(&self.shared.url), reply_queue = %self.shared.reply_queue, "connected to the broker");
                    attempt = 0;
                    backoff = Backoff::default();
                    let lost = tokio::select! {
                        _ = &mut shutdown => None,
                        reason = read_replies(&mut replies, &on_reply) => Some(reason),
                    };
                    self.close_live().await;
                    match lost {
                        None => break,
                        Some(reason) => warn!(%reason, "lost the broker connection; reconnecting"),
                    }
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "broker not available");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.close_live().await;
    }

    async fn close_live(&self) {
        if let Some(live) = self.shared.live.swap(None) {
            let _ = live
                .connection
                .close(200, "taskgate host closing".into())
                .await;
        }
    }

    /// One connection: declares everything, then returns the reply stream.
    async fn open_session(&self) -> Result<lapin::Consumer, ConnectError> {
        let connection = connect(&self.shared.url).await?;
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
        let queues = self
            .shared
            .queues
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default();
        for queue in &queues {
            declare_request_queue(&connection, queue).await;
        }
        let replies = connection
            .create_channel()
            .await
            .map_err(|e| setup("the reply channel", e))?;
        replies
            .queue_declare(
                self.shared.reply_queue.as_str().into(),
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
                self.shared.reply_queue.as_str().into(),
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
        self.shared.live.store(Some(Arc::new(Live {
            connection,
            publish,
        })));
        Ok(consumer)
    }
}

/// Opens one connection, classifying failures for a clear log line.
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| {
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
        let properties = request_properties(&request, &self.shared.reply_queue);
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

    async fn publish_cancel(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
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
