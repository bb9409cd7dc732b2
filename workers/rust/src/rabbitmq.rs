//! The RabbitMQ side of a worker, on lapin: connect (retrying with backoff), make sure the
//! queues exist, consume them with a prefetch limit, listen for cancellations on the
//! `taskgate.cancel` fanout exchange, publish replies with confirms on one channel, and
//! shut down gracefully. Each delivery runs through the runner (`crate::runner`), which holds
//! the protocol's rules; this module only translates between lapin and it. It is the only
//! module that knows lapin; what it serves is [`crate::settings::Settings`].
//!
//! Reconnection is done here rather than with lapin's auto-recovery: a lost connection
//! ends the session (its in-flight requests are redelivered by RabbitMQ, and acks on the
//! old channels could not succeed anyway) and a new session declares and consumes afresh.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, select_all, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use serde_json::Value;
use taskgate_protocol::amqp as names;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::WorkerError;
use crate::retry::{wait_queue, RetryPolicy};
use crate::runner::{Cancellations, Runner};
use crate::settings::Settings;
use crate::transport::{Delivery, PendingConfirm, Reply, Settlement, Transport, TransportError};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How a session with the broker ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Why a session could not go on.
enum SessionError {
    /// Retrying cannot help.
    Fatal(WorkerError),
    /// The connection or a channel failed: reconnect.
    Lost(String),
}

impl From<lapin::Error> for SessionError {
    fn from(e: lapin::Error) -> Self {
        SessionError::Lost(e.to_string())
    }
}

/// What a session learned before it ended.
#[derive(Default)]
struct Progress {
    /// It got as far as consuming: the next reconnection starts with a short delay.
    ready: bool,
}

/// Serves `settings` until `shutdown` resolves; see [`crate::Worker::run`].
pub(crate) async fn run<S: Future + Send>(
    settings: Settings,
    shutdown: S,
) -> Result<(), WorkerError> {
    check(&settings)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let properties =
            ConnectionProperties::default().with_connection_name("taskgate-worker".into());
        let connecting = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(&settings.amqp_url, properties),
        );
        let connected = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            connected = connecting => connected,
        };
        let retry_in_ms = |delay: Duration| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        match connected {
            Ok(Ok(connection)) => {
                debug!(attempt, "connected to the broker");
                let mut progress = Progress::default();
                let end = session(&settings, connection, &mut shutdown, &mut progress).await?;
                let SessionEnd::Lost(reason) = end else {
                    return Ok(());
                };
                if progress.ready {
                    attempt = 0;
                    delay = FIRST_RETRY_DELAY;
                }
                warn!(
                    retry_in_ms = retry_in_ms(delay),
                    "lost the broker connection: {reason}"
                );
            }
            Ok(Err(error)) if is_refusal(&error) => {
                return Err(WorkerError::Refused(error.to_string()))
            }
            Ok(Err(error)) => {
                warn!(
                    attempt,
                    retry_in_ms = retry_in_ms(delay),
                    "broker not available: {error}"
                )
            }
            Err(_) => warn!(
                attempt,
                retry_in_ms = retry_in_ms(delay),
                "broker not available: no answer within {CONNECT_TIMEOUT:?}"
            ),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// Refuses settings that could never work, before connecting.
fn check(config: &Settings) -> Result<(), WorkerError> {
    lapin::uri::AMQPUri::from_str(&config.amqp_url).map_err(WorkerError::InvalidUrl)?;
    if config.routes.is_empty() {
        return Err(WorkerError::Config("no handlers registered".into()));
    }
    for (i, route) in config.routes.iter().enumerate() {
        if route.queue.is_empty() || route.queue.len() > 255 {
            return Err(WorkerError::Config(format!(
                "queue name `{}` must be 1 to 255 bytes long",
                route.queue
            )));
        }
        if config.routes[..i].iter().any(|r| r.queue == route.queue) {
            return Err(WorkerError::Config(format!(
                "queue `{}` has two handlers",
                route.queue
            )));
        }
        if let Some(arguments) = &route.arguments {
            field_table(arguments).map_err(|reason| {
                WorkerError::Config(format!("arguments of queue `{}`: {reason}", route.queue))
            })?;
        }
    }
    Ok(())
}

async fn session<S: Future>(
    settings: &Settings,
    connection: Connection,
    shutdown: &mut Pin<&mut S>,
    progress: &mut Progress,
) -> Result<SessionEnd, WorkerError> {
    let end = serve(settings, &connection, shutdown, progress).await;
    if connection.status().connected() {
        let _ = connection.close(200, "worker stopping".into()).await;
    }
    match end {
        Ok(end) => Ok(end),
        Err(SessionError::Fatal(e)) => Err(e),
        Err(SessionError::Lost(reason)) => Ok(SessionEnd::Lost(reason)),
    }
}

async fn serve<S: Future>(
    config: &Settings,
    connection: &Connection,
    shutdown: &mut Pin<&mut S>,
    progress: &mut Progress,
) -> Result<SessionEnd, SessionError> {
    for route in &config.routes {
        ensure_queue(connection, &route.queue, route.arguments.as_ref()).await?;
    }
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // Wait queues are declared on a channel of their own: a refused declaration closes it.
    let retrier = Arc::new(Retrier {
        publish: publish.clone(),
        declare: connection.create_channel().await?,
    });
    let broken = Arc::new(Notify::new());
    let transport: Arc<dyn Transport> = Arc::new(AmqpTransport {
        channel: publish.clone(),
        broken: broken.clone(),
    });
    // Before the request consumers: a request must not start before its
    // cancellation could reach it.
    let (cancel_channel, mut cancels) = cancel_consumer(connection).await?;

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
            .await
            .map_err(|e| queue_error(&route.queue, e))?;
        tags.push(tag);
        // A consumer's end is an item too: `select_all` alone would only end once
        // every consumer has.
        consumers.push(
            consumer
                .map(move |d| (index, Some(d)))
                .chain(stream::once(std::future::ready((index, None)))),
        );
    }
    let mut deliveries = select_all(consumers);
    let queues: Vec<&str> = config.routes.iter().map(|r| r.queue.as_str()).collect();
    info!(?queues, prefetch = config.prefetch, "worker ready");
    progress.ready = true;

    let runner = Arc::new(Runner {
        transport,
        cancellations: Arc::new(Cancellations::default()),
        cancel_grace: config.cancel_grace,
    });
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.as_mut() => break,
            _ = broken.notified() => {
                return Err(SessionError::Lost("the reply channel failed".into()))
            }
            cancel = cancels.next() => match cancel {
                Some(Ok(message)) => cancel_one(&runner.cancellations, &message),
                Some(Err(e)) => return Err(SessionError::Lost(e.to_string())),
                None => return Err(SessionError::Lost("the cancellation consumer stopped".into())),
            },
            delivery = deliveries.next() => match delivery {
                Some((index, Some(Ok(delivery)))) => {
                    let handler = config.routes[index].handler.clone();
                    let runner = runner.clone();
                    let retrier = retrier.clone();
                    let queue = config.routes[index].queue.clone();
                    tasks.spawn(async move {
                        let (request, acker, retained) = split(delivery);
                        let retry = retained.map(|r| (retrier, queue, r));
                        runner.process(request, &handler, |settlement| settle(acker, settlement, retry)).await
                    });
                }
                Some((_, Some(Err(e)))) => return Err(SessionError::Lost(e.to_string())),
                Some((index, None)) => return Err(SessionError::Lost(format!(
                    "the broker cancelled the consumer of queue `{}` (was it deleted?)",
                    config.routes[index].queue
                ))),
                None => return Err(SessionError::Lost("no consumers left".into())),
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
    // Deliveries already prefetched but not started stay unacked and go back to the
    // queue when the connection closes.
    let grace_over = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace_over);
    let mut cancels_open = true;
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            // Requests still running can still be cancelled.
            cancel = cancels.next(), if cancels_open => match cancel {
                Some(Ok(message)) => cancel_one(&runner.cancellations, &message),
                _ => cancels_open = false,
            },
            _ = &mut grace_over => {
                warn!(
                    abandoned = tasks.len(),
                    "shutdown grace period over; unfinished requests will be redelivered"
                );
                tasks.abort_all();
                break;
            }
        }
    }
    // Closed one by one before the connection: channels dropped while the connection
    // closes make lapin log errors.
    for channel in [&consume, &cancel_channel, &retrier.declare, &publish] {
        let _ = channel.close(200, "worker stopping".into()).await;
    }
    info!("worker stopped");
    Ok(SessionEnd::Shutdown)
}

fn cancel_one(cancellations: &Cancellations, message: &lapin::message::Delivery) {
    match message.properties.correlation_id() {
        Some(id) => {
            debug!(correlation_id = %id, "cancellation");
            cancellations.cancel(id.as_str());
        }
        None => debug!("cancellation without correlation_id ignored"),
    }
}

/// A request as it came, kept to be republished for another attempt (only for request
/// types with a retry policy: the others need no copy of their body).
struct Retained {
    properties: BasicProperties,
    body: Vec<u8>,
}

/// Schedules attempts (protocol §3.12): the session's confirm channel, and a channel of
/// its own for declaring wait queues.
struct Retrier {
    publish: Channel,
    declare: Channel,
}

impl Retrier {
    /// Republishes `retained` as attempt `attempt` to the wait queue of `delay_ms`, whose
    /// TTL dead-letters it back to `queue`; resolves once the broker confirmed it.
    async fn republish(
        &self,
        queue: &str,
        retained: Retained,
        attempt: u32,
        delay_ms: u64,
    ) -> Result<(), TransportError> {
        let failed = |e: lapin::Error| TransportError(e.to_string());
        let waiting = wait_queue(queue, delay_ms);
        let delay = i64::try_from(delay_ms).unwrap_or(i64::MAX);
        let mut arguments = FieldTable::default();
        arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        arguments.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(delay.saturating_add(60_000)),
        );
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.declare
            .queue_declare(waiting.as_str().into(), durable, arguments)
            .await
            .map_err(failed)?;
        let original = &retained.properties;
        let mut headers = original.headers().clone().unwrap_or_default();
        headers.insert(
            names::HEADER_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(attempt)),
        );
        let mut properties = BasicProperties::default()
            .with_content_type(
                original
                    .content_type()
                    .clone()
                    .unwrap_or_else(|| names::CONTENT_TYPE_JSON.into()),
            )
            .with_delivery_mode(names::DELIVERY_MODE_PERSISTENT)
            .with_headers(headers);
        if let Some(id) = original.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        if let Some(reply_to) = original.reply_to() {
            properties = properties.with_reply_to(reply_to.clone());
        }
        if let Some(kind) = original.kind() {
            properties = properties.with_type(kind.clone());
        }
        if let Some(timestamp) = original.timestamp() {
            properties = properties.with_timestamp(*timestamp);
        }
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirm = self
            .publish
            .basic_publish(
                "".into(),
                waiting.as_str().into(),
                mandatory,
                &retained.body,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        if confirm.is_nack() {
            return Err(TransportError("the broker refused the retry (nack)".into()));
        }
        self.notify(original, attempt, delay_ms).await;
        Ok(())
    }

    /// Tells the host that the request's next attempt is scheduled (a retry notice,
    /// protocol §3.12: it counts them). Best effort: the retry itself is what matters.
    async fn notify(&self, original: &BasicProperties, attempt: u32, delay_ms: u64) {
        let Some(reply_to) = original.reply_to() else {
            return;
        };
        let mut properties = BasicProperties::default()
            .with_content_type(names::CONTENT_TYPE_JSON.into())
            .with_type(names::REPLY_TYPE_RETRY.into());
        if let Some(id) = original.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let body = serde_json::json!({ "attempt": attempt, "delayMs": delay_ms }).to_string();
        let published = self
            .publish
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await;
        if let Err(error) = published {
            debug!(%error, "retry notice not published");
        }
    }
}

/// Acks a delivery, gives it back to the queue, or schedules its next attempt and acks it
/// (requeued instead when that fails).
async fn settle(
    acker: lapin::Acker,
    settlement: Settlement,
    retry: Option<(Arc<Retrier>, String, Retained)>,
) -> Result<(), TransportError> {
    let requeue = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let settled = match settlement {
        Settlement::Ack => acker.ack(BasicAckOptions::default()).await,
        Settlement::Requeue => acker.nack(requeue).await,
        Settlement::Retry { attempt, delay_ms } => {
            let republished = match retry {
                Some((retrier, queue, retained)) => {
                    retrier.republish(&queue, retained, attempt, delay_ms).await
                }
                None => Err(TransportError(
                    "the request was not kept for a retry".into(),
                )),
            };
            if let Err(error) = republished {
                let _ = acker.nack(requeue).await;
                return Err(error);
            }
            acker.ack(BasicAckOptions::default()).await
        }
    };
    settled
        .map(|_| ())
        .map_err(|e| TransportError(e.to_string()))
}

/// The AMQP code of a protocol error, if it is one.
fn amqp_kind(error: &lapin::Error) -> Option<&AMQPErrorKind> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => Some(e.kind()),
        _ => None,
    }
}

/// Errors at connection time that retrying cannot fix.
fn is_refusal(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AuthProviderError(_) | ErrorKind::InvalidProtocolVersion(_)
    ) || matches!(
        amqp_kind(error),
        Some(
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::INVALIDPATH)
        )
    )
}

/// A channel-level refusal about a queue is final; anything else is a lost connection.
fn queue_error(queue: &str, error: lapin::Error) -> SessionError {
    match amqp_kind(&error) {
        Some(AMQPErrorKind::Soft(_)) => SessionError::Fatal(WorkerError::Queue {
            queue: queue.to_owned(),
            reason: error.to_string(),
        }),
        _ => SessionError::Lost(error.to_string()),
    }
}

fn is_soft(error: &lapin::Error, code: AMQPSoftError) -> bool {
    matches!(amqp_kind(error), Some(AMQPErrorKind::Soft(c)) if *c == code)
}

/// How long a session waits for a missing queue to be declared by the host (which declares
/// its request types' queues, with their arguments, when it starts) before declaring it
/// itself, and how often it looks meanwhile.
const QUEUE_PATIENCE: Duration = Duration::from_secs(5);
const QUEUE_POLL: Duration = Duration::from_secs(1);

/// Makes sure `queue` exists. An existing queue is used as it is: the host declares the
/// queues of its request types with their arguments, and a declaration with other
/// arguments would be refused. A missing queue is waited for (the host may be starting
/// too; see [`wait_for_queue`]), then declared durable with `arguments`.
/// When the worker has `arguments` and the queue exists, they are checked, and a
/// mismatch is logged. Each step gets its own channel: a refused declaration closes it.
async fn ensure_queue(
    connection: &Connection,
    queue: &str,
    arguments: Option<&Value>,
) -> Result<(), SessionError> {
    let table = match arguments {
        Some(arguments) => field_table(arguments)
            .map_err(|reason| SessionError::Fatal(WorkerError::Config(reason)))?,
        None => FieldTable::default(),
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let exists = wait_for_queue(queue, QUEUE_PATIENCE, QUEUE_POLL, || {
        queue_exists(connection, queue)
    })
    .await?;
    if exists && arguments.is_none() {
        return Ok(());
    }
    let declare = connection.create_channel().await?;
    match declare.queue_declare(queue.into(), durable, table).await {
        Ok(_) => {
            if !exists {
                info!(
                    queue,
                    "declared the queue (no host declared it within {QUEUE_PATIENCE:?})"
                );
            }
            let _ = declare.close(200, "ok".into()).await;
            Ok(())
        }
        Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => {
            warn!(queue, error = %e, "the queue exists with other arguments than this worker's; using it as it is");
            Ok(())
        }
        Err(e) => Err(queue_error(queue, e)),
    }
}

/// Whether `queue` exists (a passive declaration, on a channel of its own: the broker
/// closes the channel when the queue is missing, and lapin logs that close at ERROR under
/// the target `lapin::channel`).
async fn queue_exists(connection: &Connection, queue: &str) -> Result<bool, SessionError> {
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
            let _ = probe.close(200, "ok".into()).await;
            Ok(true)
        }
        Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => Ok(false),
        Err(e) => Err(queue_error(queue, e)),
    }
}

/// Waits for `queue` to exist, asking `exists` now and then every `poll` until `patience`
/// is over; whether it exists in the end. A queue that is missing at first is announced
/// by one INFO line, and nothing is logged while waiting: a worker started before the host
/// is not an error.
async fn wait_for_queue<E, F, Fut>(
    queue: &str,
    patience: Duration,
    poll: Duration,
    mut exists: F,
) -> Result<bool, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    if exists().await? {
        return Ok(true);
    }
    info!(
        queue,
        patience_ms = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX),
        "waiting for queue {queue} to be declared by the host"
    );
    let give_up = tokio::time::Instant::now() + patience;
    loop {
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        tokio::time::sleep(poll.min(left)).await;
        if exists().await? {
            debug!(queue, "the queue exists now");
            return Ok(true);
        }
    }
}

/// Declares the cancellation exchange and consumes it through a queue of this worker's
/// own (exclusive, auto-delete, named by us: a server-named queue cannot be declared
/// again by name).
async fn cancel_consumer(
    connection: &Connection,
) -> Result<(Channel, lapin::Consumer), SessionError> {
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
    let queue = format!("{}.{}", names::CANCEL_EXCHANGE, Uuid::new_v4());
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
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Queue arguments from a JSON object.
fn field_table(arguments: &Value) -> Result<FieldTable, String> {
    let Value::Object(arguments) = arguments else {
        return Err(format!(
            "queue arguments must be a JSON object, not `{arguments}`"
        ));
    };
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            Value::Bool(b) => AMQPValue::Boolean(*b),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => AMQPValue::LongLongInt(i),
                (None, Some(f)) => AMQPValue::Double(f),
                (None, None) => return Err(format!("`{key}`: {n} is out of range")),
            },
            other => {
                return Err(format!(
                    "`{key}`: only strings, numbers and booleans are supported, not `{other}`"
                ))
            }
        };
        table.insert(ShortString::from(key.as_str()), value);
    }
    Ok(table)
}

fn header_i64(headers: &FieldTable, name: &str) -> Option<i64> {
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        AMQPValue::LongString(s) => s.to_string().trim().parse().ok(),
        _ => None,
    }
}

fn header_string(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The request as the runner sees it, the means to ack it, and — when its request type
/// has a retry policy — what a retry republishes.
fn split(delivery: lapin::message::Delivery) -> (Delivery, lapin::Acker, Option<Retained>) {
    let properties = &delivery.properties;
    let headers = properties.headers().clone().unwrap_or_default();
    let retry =
        header_string(&headers, names::HEADER_RETRY).and_then(|text| RetryPolicy::parse(&text));
    let retained = retry.as_ref().map(|_| Retained {
        properties: delivery.properties.clone(),
        body: delivery.data.clone(),
    });
    let attempt = header_i64(&headers, names::HEADER_ATTEMPT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
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
        identity: identity_header(&headers),
        traceparent: header_string(&headers, names::HEADER_TRACEPARENT),
        body: delivery.data,
        attempt,
        retry,
    };
    (request, delivery.acker, retained)
}

/// Header `x-identity` (protocol §3.9): a JSON string. One that does not parse is
/// ignored (logged): the handler then sees no identity, never a wrong one.
fn identity_header(headers: &FieldTable) -> Option<taskgate_protocol::Identity> {
    let text = match headers.inner().get(names::HEADER_IDENTITY)? {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        _ => {
            warn!("x-identity header is not a string; ignored");
            return None;
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| warn!(error = %e, "x-identity header is not an identity; ignored"))
        .ok()
}

/// Publishes replies on one confirm-mode channel. A failed publish also reports the
/// channel as broken, which ends the session: requests could not be answered on it.
struct AmqpTransport {
    channel: Channel,
    broken: Arc<Notify>,
}

impl Transport for AmqpTransport {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, TransportError>> {
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
            let confirm = match self
                .channel
                .basic_publish(
                    "".into(),
                    reply.reply_to.into(),
                    BasicPublishOptions::default(),
                    &reply.body,
                    properties,
                )
                .await
            {
                Ok(confirm) => confirm,
                Err(e) => {
                    self.broken.notify_one();
                    return Err(TransportError(e.to_string()));
                }
            };
            let broken = self.broken.clone();
            Ok(Box::pin(async move {
                match confirm.await {
                    Ok(c) if c.is_nack() => {
                        Err(TransportError("the broker refused the reply (nack)".into()))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => {
                        broken.notify_one();
                        Err(TransportError(e.to_string()))
                    }
                }
            }) as PendingConfirm)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn queue_arguments_become_a_field_table() {
        let table = field_table(
            &json!({"x-queue-type": "quorum", "x-max-length": 10, "x": true, "f": 1.5}),
        )
        .unwrap();
        let inner = table.inner();
        assert_eq!(
            inner.get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(inner.get("x-max-length"), Some(&AMQPValue::LongLongInt(10)));
        assert_eq!(inner.get("x"), Some(&AMQPValue::Boolean(true)));
        assert_eq!(inner.get("f"), Some(&AMQPValue::Double(1.5)));
        assert!(field_table(&json!([1])).is_err());
        assert!(field_table(&json!({"a": {"b": 1}})).is_err());
    }

    #[test]
    fn deadline_headers_of_any_integer_type_are_read() {
        let mut headers = FieldTable::default();
        headers.insert("a".into(), AMQPValue::LongLongInt(5));
        headers.insert("b".into(), AMQPValue::LongUInt(6));
        headers.insert("c".into(), AMQPValue::LongString("7".into()));
        headers.insert("d".into(), AMQPValue::Boolean(true));
        assert_eq!(header_i64(&headers, "a"), Some(5));
        assert_eq!(header_i64(&headers, "b"), Some(6));
        assert_eq!(header_i64(&headers, "c"), Some(7));
        assert_eq!(header_i64(&headers, "d"), None);
        assert_eq!(header_i64(&headers, "missing"), None);
    }

    #[test]
    fn the_identity_header_is_read_and_a_malformed_one_ignored() {
        let with = |value: AMQPValue| {
            let mut headers = FieldTable::default();
            headers.insert(names::HEADER_IDENTITY.into(), value);
            identity_header(&headers)
        };
        assert_eq!(
            with(AMQPValue::LongString(
                r#"{"subject":"alice","roles":["admin"]}"#.into()
            )),
            Some(taskgate_protocol::Identity::new("alice", ["admin"]))
        );
        assert_eq!(with(AMQPValue::LongString("not json".into())), None);
        assert_eq!(with(AMQPValue::LongString(r#"{"roles":[]}"#.into())), None);
        assert_eq!(with(AMQPValue::Boolean(true)), None);
        assert_eq!(identity_header(&FieldTable::default()), None);
    }

    #[test]
    fn string_headers_of_either_string_type_are_read() {
        let mut headers = FieldTable::default();
        headers.insert("long".into(), AMQPValue::LongString("a".into()));
        headers.insert("short".into(), AMQPValue::ShortString("b".into()));
        headers.insert("int".into(), AMQPValue::LongInt(1));
        assert_eq!(header_string(&headers, "long").as_deref(), Some("a"));
        assert_eq!(header_string(&headers, "short").as_deref(), Some("b"));
        assert_eq!(header_string(&headers, "int"), None);
        assert_eq!(header_string(&headers, "missing"), None);
    }

    /// A probe that answers "missing" `missing` times, then "exists", and counts its calls.
    fn probe(
        missing: usize,
    ) -> (
        Arc<std::sync::atomic::AtomicUsize>,
        impl FnMut() -> std::future::Ready<Result<bool, String>>,
    ) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let probe = move || {
            let call = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(call >= missing))
        };
        (calls, probe)
    }

    #[tokio::test]
    async fn a_queue_that_exists_is_not_waited_for() {
        let (calls, exists) = probe(0);
        let patience = Duration::from_secs(60);
        let waited = wait_for_queue("q", patience, patience, exists).await;
        assert_eq!(waited, Ok(true));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_missing_queue_is_waited_for_until_the_host_declares_it() {
        let (calls, exists) = probe(3);
        let poll = Duration::from_millis(5);
        let waited = wait_for_queue("q", Duration::from_secs(60), poll, exists).await;
        assert_eq!(waited, Ok(true));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_wait_for_a_queue_ends_with_the_patience() {
        let (calls, exists) = probe(usize::MAX);
        let started = std::time::Instant::now();
        let patience = Duration::from_millis(100);
        let waited = wait_for_queue("q", patience, Duration::from_millis(30), exists).await;
        assert_eq!(waited, Ok(false));
        assert!(started.elapsed() >= patience);
        // At once, then every 30 ms up to 100 ms (fewer when the machine is slow).
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!((2..=5).contains(&calls), "{calls} probes");
    }

    #[tokio::test]
    async fn a_failing_probe_ends_the_wait() {
        let mut calls = 0;
        let exists = || {
            calls += 1;
            std::future::ready(if calls == 1 {
                Ok(false)
            } else {
                Err("refused")
            })
        };
        let poll = Duration::from_millis(5);
        let waited = wait_for_queue("q", Duration::from_secs(60), poll, exists).await;
        assert_eq!(waited, Err("refused"));
    }
}
