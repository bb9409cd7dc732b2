//! Phase "direct": the same C × K closed loop, but straight over AMQP to the same worker,
//! publishing exactly what the host publishes (protocol §2.2, with publisher confirms and
//! the mandatory flag) and reading replies from a reply queue of our own.
//!
//! This is the floor the host is compared with: the broker and worker costs without the
//! Socket.IO hop and the host's bookkeeping. Like the host, it uses one AMQP connection;
//! the C × K requests in flight are spread over `--direct-channels` closed loops (default 1,
//! the host's own topology), each with its own channel (confirm mode) and exclusive reply
//! queue, matching replies to requests by correlation id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use taskgate_protocol::amqp as names;
use taskgate_protocol::ReplyKind;

use crate::host_load::DRAIN;
use crate::stats::{TaskStats, Window};

/// What every request of the phase has in common.
#[derive(Debug, Clone)]
pub struct Target {
    pub queue: Arc<str>,
    pub request_type: Arc<str>,
    pub payload_json: Arc<str>,
    /// Sent as `expiration` and used for `x-deadline-ms`, as the host does.
    pub timeout_ms: u64,
    /// The request type streams (the `echo` plugin declares it does): header `x-stream`.
    pub streams: bool,
}

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")
}

/// One closed loop of phase direct, between runs: its channel, its reply queue and the
/// consumer of that queue, and how many requests it keeps in flight.
pub struct DirectLoop {
    channel: Channel,
    consumer: lapin::Consumer,
    reply_queue: String,
    in_flight: usize,
}

impl DirectLoop {
    /// Opens a channel in confirm mode consuming from a new exclusive reply queue.
    pub async fn open(
        connection: &Connection,
        reply_queue: String,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let (channel, consumer) = open_task(connection, &reply_queue).await?;
        Ok(DirectLoop {
            channel,
            consumer,
            reply_queue,
            in_flight,
        })
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "benchmark done".into()).await;
    }
}

/// RabbitMQ's Direct Reply-to pseudo-queue: replies go straight to the consuming
/// channel, without a queue (`--direct-reply-to`).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A channel in confirm mode consuming from a new exclusive reply queue (or from Direct
/// Reply-to, which needs no declaration and must be consumed before publishing).
async fn open_task(
    connection: &Connection,
    reply_queue: &str,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let direct_reply_to = reply_queue == DIRECT_REPLY_TO;
    if !direct_reply_to {
        channel
            .queue_declare(
                reply_queue.into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring reply queue {reply_queue}"))?;
    }
    let consumer = channel
        .basic_consume(
            reply_queue.into(),
            "taskgate-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: !direct_reply_to,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Runs one task's closed loop until the window has closed and its requests are done (or
/// [`DRAIN`] has passed); returns the loop for the next run. Correlation ids are fresh
/// UUIDs, so a straggler from an earlier run is never taken for a request of this one.
pub async fn run_task(
    mut task: DirectLoop,
    target: Target,
    window: Window,
) -> anyhow::Result<(DirectLoop, TaskStats)> {
    let DirectLoop {
        channel,
        consumer,
        reply_queue,
        in_flight,
    } = &mut task;
    let (channel, reply_queue, in_flight) = (&*channel, reply_queue.as_str(), *in_flight);
    let mut stats = TaskStats::new()?;
    // Correlation id → (sent at, broker confirmed yet).
    let mut pending: HashMap<String, (Instant, bool)> = HashMap::with_capacity(in_flight * 2);
    // Confirms are awaited concurrently with replies: awaiting each inline would serialise
    // the task's K requests on broker round trips, which the host does not do either.
    let mut confirms = FuturesUnordered::new();
    for _ in 0..in_flight {
        let (id, confirm) = publish(channel, reply_queue, &target).await?;
        pending.insert(id.clone(), (Instant::now(), false));
        confirms.push(confirmed(id, confirm));
    }
    let give_up = tokio::time::Instant::from_std(window.end + DRAIN);
    loop {
        if pending.is_empty() && !window.open_for_new(Instant::now()) {
            break;
        }
        let finished = tokio::select! {
            _ = tokio::time::sleep_until(give_up) => {
                stats.unfinished += pending.len() as u64;
                break;
            }
            Some((id, confirm)) = confirms.next(), if !confirms.is_empty() => {
                match confirm {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                        if let Some((_, confirmed)) = pending.get_mut(&id) {
                            *confirmed = true;
                        }
                        None
                    }
                    // Returned (unroutable) or refused: the request will never be answered.
                    Ok(_) => Some((id, false)),
                    Err(e) => bail!("publish confirm: {e}"),
                }
            }
            delivery = consumer.next() => {
                let delivery = match delivery {
                    None => bail!("the reply consumer was cancelled"),
                    Some(Err(e)) => bail!("reply consumer: {e}"),
                    Some(Ok(delivery)) => delivery,
                };
                let kind = delivery
                    .properties
                    .kind()
                    .as_ref()
                    .and_then(|k| ReplyKind::parse(k.as_str()));
                match (delivery.properties.correlation_id(), kind) {
                    (Some(id), Some(ReplyKind::Result)) => Some((id.as_str().to_owned(), true)),
                    (Some(id), Some(ReplyKind::Error)) => Some((id.as_str().to_owned(), false)),
                    (Some(id), Some(ReplyKind::Chunk)) => {
                        if pending.contains_key(id.as_str()) {
                            stats.record_chunk(&window, Instant::now());
                        }
                        None
                    }
                    _ => None,
                }
            }
        };
        if let Some((id, ok)) = finished {
            if let Some((started, was_confirmed)) = pending.remove(&id) {
                let now = Instant::now();
                if !was_confirmed && window.measures(now) {
                    // The host could not have relayed this reply yet: it answers a request's
                    // ack only after the confirm, and holds replies until then (protocol §1).
                    stats.replies_before_confirm += 1;
                }
                stats.record(&window, started, now, ok);
                if window.open_for_new(now) {
                    let (id, confirm) = publish(channel, reply_queue, &target).await?;
                    pending.insert(id.clone(), (Instant::now(), false));
                    confirms.push(confirmed(id, confirm));
                }
            }
        }
    }
    Ok((task, stats))
}

/// A confirm tagged with its request's correlation id.
async fn confirmed(id: String, confirm: PublisherConfirm) -> (String, lapin::Result<Confirmation>) {
    (id, confirm.await)
}

/// Publishes one request as the host would (protocol §2.2); returns its correlation id and
/// the pending confirm.
async fn publish(
    channel: &Channel,
    reply_queue: &str,
    target: &Target,
) -> anyhow::Result<(String, PublisherConfirm)> {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let deadline_ms = now.as_millis() as i64 + target.timeout_ms as i64;
    let mut headers = FieldTable::default();
    headers.insert(
        names::HEADER_DEADLINE_MS.into(),
        AMQPValue::LongLongInt(deadline_ms),
    );
    headers.insert(
        names::HEADER_STREAM.into(),
        AMQPValue::Boolean(target.streams),
    );
    let properties = BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON.into())
        .with_delivery_mode(names::DELIVERY_MODE_PERSISTENT)
        .with_correlation_id(correlation_id.as_str().into())
        .with_reply_to(reply_queue.into())
        .with_type(target.request_type.as_ref().into())
        .with_timestamp(now.as_secs())
        .with_expiration(target.timeout_ms.to_string().into())
        .with_headers(headers);
    let confirm = channel
        .basic_publish(
            "".into(),
            target.queue.as_ref().into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            target.payload_json.as_bytes(),
            properties,
        )
        .await
        .context("publishing a request")?;
    Ok((correlation_id, confirm))
}
