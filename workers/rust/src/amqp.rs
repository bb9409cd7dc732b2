//! The RabbitMQ side of a worker, on lapin: connect (retrying with backoff), make sure the
//! queues exist, consume them with a prefetch limit, listen for cancellations on the
//! `taskgate.cancel` fanout exchange, publish replies with confirms on one channel, and
//! shut down gracefully. Each delivery runs through [`crate::runner::process`].

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{select_all, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Map, Value};
use taskgate_protocol::amqp as names;
use tokio::task::JoinSet;
use tracing::{info, warn};
use uuid::Uuid;

use crate::handler::Handler;
use crate::runner::{
    process, BoxFuture, Cancellations, Delivery, PendingConfirm, Reply, Transport,
};

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("queue `{queue}` cannot be used: {reason}")]
    Queue { queue: String, reason: String },
    #[error("no handlers registered")]
    NoHandlers,
}

struct Route {
    queue: String,
    arguments: Map<String, Value>,
    handler: Arc<dyn Handler>,
}

/// Configures a [`Worker`].
pub struct WorkerBuilder {
    amqp_url: String,
    prefetch: u16,
    grace: Duration,
    routes: Vec<Route>,
}

impl WorkerBuilder {
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.amqp_url = url.into();
        self
    }

    /// Requests handled at once (the consumer's prefetch). Default 16.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How long shutdown waits for requests in progress. Default 30 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves `queue` with `handler`. If the queue does not exist yet it is declared
    /// durable (the host declares the queues of enabled request types too).
    pub fn handle(self, queue: impl Into<String>, handler: impl Handler) -> Self {
        self.handle_with_arguments(queue, Map::new(), handler)
    }

    /// Like [`WorkerBuilder::handle`], declaring a missing queue with these arguments
    /// (they must match the host's, e.g. `{"x-queue-type": "quorum"}`).
    pub fn handle_with_arguments(
        mut self,
        queue: impl Into<String>,
        arguments: Map<String, Value>,
        handler: impl Handler,
    ) -> Self {
        self.routes.push(Route {
            queue: queue.into(),
            arguments,
            handler: Arc::new(handler),
        });
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            config: Arc::new(self),
        }
    }
}

/// A worker: consumes its queues until shut down.
pub struct Worker {
    config: Arc<WorkerBuilder>,
}

enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            amqp_url: DEFAULT_AMQP_URL.to_owned(),
            prefetch: 16,
            grace: Duration::from_secs(30),
            routes: Vec::new(),
        }
    }

    /// Serves until `shutdown` resolves: then stops consuming, lets requests in progress
    /// finish (up to the grace period) and closes the connection. Reconnects with backoff
    /// whenever the broker is unreachable or the connection is lost.
    pub async fn run<S: Future + Send>(self, shutdown: S) -> Result<(), WorkerError> {
        if self.config.routes.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        lapin::uri::AMQPUri::from_str(&self.config.amqp_url)
            .map_err(|e| WorkerError::InvalidUrl(e.to_string()))?;
        let shutdown = shutdown;
        tokio::pin!(shutdown);
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let connection = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                c = Connection::connect(&self.config.amqp_url, ConnectionProperties::default()) => c,
            };
            match connection {
                Ok(connection) => {
                    attempt = 0;
                    delay = Duration::from_millis(100);
                    match self.session(connection, &mut shutdown).await? {
                        SessionEnd::Shutdown => return Ok(()),
                        SessionEnd::Lost(reason) => {
                            warn!(%reason, "lost the broker connection; reconnecting")
                        }
                    }
                }
                Err(e) => {
                    warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "broker not available");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn session<S: Future>(
        &self,
        connection: Connection,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> Result<SessionEnd, WorkerError> {
        match self.serve(&connection, shutdown).await {
            Ok(end) => {
                let _ = connection.close(200, "worker stopping".into()).await;
                Ok(end)
            }
            Err(SetupError::Fatal(e)) => {
                let _ = connection.close(200, "worker stopping".into()).await;
                Err(e)
            }
            Err(SetupError::Lost(reason)) => Ok(SessionEnd::Lost(reason)),
        }
    }

    async fn serve<S: Future>(
        &self,
        connection: &Connection,
        shutdown: &mut std::pin::Pin<&mut S>,
    ) -> Result<SessionEnd, SetupError> {
        let config = &self.config;
        for route in &config.routes {
            ensure_queue(connection, &route.queue, &route.arguments).await?;
        }
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut cancels = cancel_consumer(connection).await?;

        let consume = connection.create_channel().await?;
        consume
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumers = Vec::new();
        let mut tags = Vec::new();
        for (index, route) in config.routes.iter().enumerate() {
            let tag = format!("taskgate-worker-{}", Uuid::new_v4());
            let consumer = consume
                .basic_consume(
                    route.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tags.push(tag);
            consumers.push(consumer.map(move |d| (index, d)));
        }
        let mut deliveries = select_all(consumers);
        let queues: Vec<&str> = config.routes.iter().map(|r| r.queue.as_str()).collect();
        info!(?queues, prefetch = config.prefetch, "worker ready");

        let transport: Arc<dyn Transport> = Arc::new(AmqpTransport { channel: publish });
        let cancellations = Arc::new(Cancellations::default());
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.as_mut() => break,
                cancel = cancels.next() => match cancel {
                    Some(Ok(message)) => {
                        if let Some(id) = message.properties.correlation_id() {
                            cancellations.cancel(id.as_str());
                        }
                    }
                    Some(Err(e)) => return Err(SetupError::Lost(e.to_string())),
                    None => return Err(SetupError::Lost("the cancel consumer stopped".into())),
                },
                delivery = deliveries.next() => match delivery {
                    Some((index, Ok(delivery))) => {
                        let handler = config.routes[index].handler.clone();
                        let transport = transport.clone();
                        let cancellations = cancellations.clone();
                        tasks.spawn(async move {
                            let (request, acker) = split(delivery);
                            process(request, handler, transport, &cancellations, || async move {
                                acker.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| e.to_string())
                            })
                            .await
                        });
                    }
                    Some((_, Err(e))) => return Err(SetupError::Lost(e.to_string())),
                    None => return Err(SetupError::Lost("a consumer was cancelled by the broker".into())),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }

        info!(
            in_flight = tasks.len(),
            "shutting down: no new requests; finishing the ones in progress"
        );
        for tag in tags {
            let _ = consume
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        let drained = tokio::time::timeout(config.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                abandoned = tasks.len(),
                "grace period over; unfinished requests will be redelivered"
            );
            tasks.abort_all();
        }
        Ok(SessionEnd::Shutdown)
    }
}

enum SetupError {
    Fatal(WorkerError),
    Lost(String),
}

impl From<lapin::Error> for SetupError {
    fn from(e: lapin::Error) -> Self {
        SetupError::Lost(e.to_string())
    }
}

/// Declares the queue durable with `arguments`; when it already exists with other
/// arguments (e.g. the host made it a quorum queue), uses it as it is. Each attempt gets
/// its own channel: a refused declare closes its channel.
async fn ensure_queue(
    connection: &Connection,
    queue: &str,
    arguments: &Map<String, Value>,
) -> Result<(), SetupError> {
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), durable, field_table(arguments))
        .await;
    if declared.is_ok() {
        let _ = channel.close(200, "ok".into()).await;
        return Ok(());
    }
    let probe = connection.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            warn!(
                queue,
                "the queue exists with other arguments than this worker's; using it as it is"
            );
            let _ = probe.close(200, "ok".into()).await;
            Ok(())
        }
        Err(e) => Err(SetupError::Fatal(WorkerError::Queue {
            queue: queue.to_owned(),
            reason: e.to_string(),
        })),
    }
}

async fn cancel_consumer(connection: &Connection) -> Result<lapin::Consumer, SetupError> {
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            names::CANCEL_EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Named by us: server-named queues cannot be re-declared after a reconnect.
    let queue = format!("taskgate.cancel.{}", Uuid::new_v4());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            names::CANCEL_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?)
}

fn field_table(arguments: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
            },
            _ => continue,
        };
        table.insert(ShortString::from(key.as_str()), value);
    }
    table
}

fn header_i64(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => s.to_string().parse().ok(),
        _ => None,
    }
}

fn split(delivery: lapin::message::Delivery) -> (Delivery, lapin::Acker) {
    let properties = &delivery.properties;
    let headers = properties.headers().clone().unwrap_or_default();
    let request = Delivery {
        correlation_id: properties.correlation_id().as_ref().map(|c| c.to_string()),
        reply_to: properties.reply_to().as_ref().map(|r| r.to_string()),
        request_type: properties.kind().as_ref().map(|k| k.to_string()),
        deadline_ms: header_i64(&headers, names::HEADER_DEADLINE_MS),
        streams: matches!(
            headers.inner().get(names::HEADER_STREAM),
            Some(AMQPValue::Boolean(true))
        ),
        redelivered: delivery.redelivered,
        body: delivery.data,
    };
    (request, delivery.acker)
}

/// Publishes replies on one confirm-mode channel.
struct AmqpTransport {
    channel: Channel,
}

impl Transport for AmqpTransport {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, String>> {
        Box::pin(async move {
            let mut properties = BasicProperties::default()
                .with_content_type(names::CONTENT_TYPE_JSON.into())
                .with_correlation_id(reply.correlation_id.into())
                .with_type(reply.kind.as_str().into());
            if let Some(seq) = reply.seq {
                let mut headers = FieldTable::default();
                headers.insert(
                    names::HEADER_SEQ.into(),
                    AMQPValue::LongLongInt(i64::try_from(seq).unwrap_or(i64::MAX)),
                );
                properties = properties.with_headers(headers);
            }
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    reply.reply_to.into(),
                    BasicPublishOptions::default(),
                    &reply.body,
                    properties,
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::pin(async move {
                match confirm.await {
                    Ok(c) if c.is_nack() => Err("the broker refused the reply (nack)".to_owned()),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }) as PendingConfirm)
        })
    }
}
