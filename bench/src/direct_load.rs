//! Phase "direct": the same C × K closed loop, but straight over AMQP to the same worker,
//! publishing exactly what the host publishes (protocol §2.2, with publisher confirms and
//! the mandatory flag) and reading replies from a reply queue of our own.
//!
//! This is the floor the host is compared with: the broker and worker costs without the
//! Socket.IO hop and the host's bookkeeping. Like the host, it uses one AMQP connection;
//! the C × K requests in flight are spread over `--direct-channels` closed loops (default 1,
//! the host's own topology), each with its own channel (confirm mode) and exclusive reply
//! queue, matching replies to requests by correlation id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments, ConsumerMessage};
use amqprs::connection::Connection;
use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, FieldName, FieldTable, FieldValue, Nack, Return,
};
use anyhow::{anyhow, bail, Context as _};
use taskgate_host::broker::amqp::{reply_consumer, reply_queue_declaration};
use taskgate_protocol::amqp as names;
use taskgate_protocol::ReplyKind;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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

/// Phase direct's connection: amqprs, the host's own AMQP client, so that the baseline
/// pays no more per message than the host does (lapin, with its I/O thread, cost this
/// process about twice the CPU per request — CPU the broker then lacked on 2 cores).
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    let arguments = taskgate_host::broker::amqp_url::parse(url)
        .and_then(|uri| uri.connection_arguments("taskgate-bench"))
        .map_err(|e| anyhow!("the AMQP URL: {e}"))?;
    Connection::open(&arguments)
        .await
        .context("connecting to RabbitMQ")
}

/// A lapin connection, for the built-in worker and cleaning up.
pub async fn connect_lapin(url: &str) -> anyhow::Result<lapin::Connection> {
    lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")
}

/// What the broker says about a channel's publishes, forwarded from amqprs's callback.
enum ConfirmEvent {
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    /// The mandatory message with this correlation id reached no queue (its ack follows).
    Returned(String),
    Closed(String),
}

struct ConfirmForwarder(UnboundedSender<ConfirmEvent>);

#[async_trait::async_trait]
impl ChannelCallback for ConfirmForwarder {
    async fn close(
        &mut self,
        _: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let _ = self.0.send(ConfirmEvent::Closed(close.to_string()));
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), amqprs::error::Error> {
        let _ = self
            .0
            .send(ConfirmEvent::Closed("consumer cancelled".to_owned()));
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(ConfirmEvent::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(ConfirmEvent::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }
    async fn publish_return(
        &mut self,
        _: &Channel,
        _: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        if let Some(id) = properties.correlation_id() {
            let _ = self.0.send(ConfirmEvent::Returned(id.clone()));
        }
    }
}

/// One closed loop of phase direct, between runs: its channel (confirm mode), its reply
/// queue and the consumer of that queue, and how many requests it keeps in flight.
pub struct DirectLoop {
    channel: Channel,
    replies: UnboundedReceiver<ConsumerMessage>,
    confirms: UnboundedReceiver<ConfirmEvent>,
    /// The number of the channel's last publish (the broker numbers them 1, 2, 3 …).
    last_tag: u64,
    reply_queue: String,
    in_flight: usize,
}

impl DirectLoop {
    /// Opens a channel in confirm mode consuming from a new exclusive reply queue (or from
    /// Direct Reply-to, which needs no declaration and must be consumed before publishing).
    pub async fn open(
        connection: &Connection,
        reply_queue: String,
        in_flight: usize,
    ) -> anyhow::Result<Self> {
        let channel = connection.open_channel(None).await?;
        let (events, confirms) = unbounded_channel();
        channel.register_callback(ConfirmForwarder(events)).await?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        let direct_reply_to = reply_queue == DIRECT_REPLY_TO;
        if !direct_reply_to {
            channel
                .queue_declare(reply_queue_declaration(&reply_queue))
                .await
                .with_context(|| format!("declaring reply queue {reply_queue}"))?;
        }
        // Direct Reply-to's pseudo-queue cannot be consumed exclusively, nor with acks: this
        // loop reads without acks either way (the host acks, within a prefetch window).
        let mut consumer = reply_consumer(&reply_queue, "taskgate-bench");
        consumer.exclusive(!direct_reply_to).manual_ack(false);
        let (_, replies) = channel.basic_consume_rx(consumer).await?;
        Ok(DirectLoop {
            channel,
            replies,
            confirms,
            last_tag: 0,
            reply_queue,
            in_flight,
        })
    }

    pub async fn close(self) {
        let _ = self.channel.close().await;
    }
}

/// RabbitMQ's Direct Reply-to pseudo-queue: replies go straight to the consuming
/// channel, without a queue (`--direct-reply-to`).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Runs one task's closed loop until the window has closed and its requests are done (or
/// [`DRAIN`] has passed); returns the loop for the next run. Correlation ids are fresh
/// UUIDs, so a straggler from an earlier run is never taken for a request of this one.
pub async fn run_task(
    mut task: DirectLoop,
    target: Target,
    window: Window,
) -> anyhow::Result<(DirectLoop, TaskStats)> {
    let mut stats = TaskStats::new()?;
    // Correlation id → (sent at, broker confirmed yet).
    let mut pending: HashMap<String, (Instant, bool)> = HashMap::with_capacity(task.in_flight * 2);
    // Delivery tag → correlation id, for the confirms; ids the broker returned.
    let mut unconfirmed: BTreeMap<u64, String> = BTreeMap::new();
    let mut returned: HashSet<String> = HashSet::new();
    // Confirms are handled as events next to replies: awaiting each inline would serialise
    // the task's K requests on broker round trips, which the host does not do either.
    for _ in 0..task.in_flight {
        let id = publish(&mut task, &target).await?;
        unconfirmed.insert(task.last_tag, id.clone());
        pending.insert(id, (Instant::now(), false));
    }
    let give_up = tokio::time::Instant::from_std(window.end + DRAIN);
    let mut finished: Vec<(String, bool)> = Vec::new();
    loop {
        if pending.is_empty() && !window.open_for_new(Instant::now()) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(give_up) => {
                stats.unfinished += pending.len() as u64;
                break;
            }
            event = task.confirms.recv() => {
                let (tag, multiple, acked) = match event {
                    Some(ConfirmEvent::Ack { tag, multiple }) => (tag, multiple, true),
                    Some(ConfirmEvent::Nack { tag, multiple }) => (tag, multiple, false),
                    Some(ConfirmEvent::Returned(id)) => {
                        returned.insert(id);
                        continue;
                    }
                    Some(ConfirmEvent::Closed(reason)) => bail!("the channel closed: {reason}"),
                    None => bail!("the channel's events ended"),
                };
                let ids: Vec<String> = if multiple {
                    let rest = unconfirmed.split_off(&(tag + 1));
                    std::mem::replace(&mut unconfirmed, rest).into_values().collect()
                } else {
                    unconfirmed.remove(&tag).into_iter().collect()
                };
                for id in ids {
                    if !acked || returned.remove(&id) {
                        // Returned (unroutable) or refused: it will never be answered.
                        finished.push((id, false));
                    } else if let Some((_, confirmed)) = pending.get_mut(&id) {
                        *confirmed = true;
                    }
                }
            }
            message = task.replies.recv() => {
                let Some(message) = message else {
                    bail!("the reply consumer was cancelled");
                };
                let properties = message.basic_properties.unwrap_or_default();
                let kind = properties.message_type().and_then(|k| ReplyKind::parse(k));
                match (properties.correlation_id(), kind) {
                    (Some(id), Some(ReplyKind::Result)) => finished.push((id.clone(), true)),
                    (Some(id), Some(ReplyKind::Error)) => finished.push((id.clone(), false)),
                    (Some(id), Some(ReplyKind::Chunk)) if pending.contains_key(id.as_str()) => {
                        stats.record_chunk(&window, Instant::now());
                    }
                    _ => {}
                }
            }
        }
        for (id, ok) in finished.drain(..) {
            if let Some((started, was_confirmed)) = pending.remove(&id) {
                let now = Instant::now();
                if !was_confirmed && window.measures(now) {
                    // The host could not have relayed this reply yet: it answers a request's
                    // ack only after the confirm, and holds replies until then (protocol §1).
                    stats.replies_before_confirm += 1;
                }
                stats.record(&window, started, now, ok);
                if window.open_for_new(now) {
                    let id = publish(&mut task, &target).await?;
                    unconfirmed.insert(task.last_tag, id.clone());
                    pending.insert(id, (Instant::now(), false));
                }
            }
        }
    }
    Ok((task, stats))
}

/// Publishes one request as the host would (protocol §2.2) and numbers it; returns its
/// correlation id.
async fn publish(task: &mut DirectLoop, target: &Target) -> anyhow::Result<String> {
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let deadline_ms = now.as_millis() as i64 + target.timeout_ms as i64;
    let mut headers = FieldTable::new();
    headers.insert(
        FieldName::try_from(names::HEADER_DEADLINE_MS)?,
        FieldValue::l(deadline_ms),
    );
    headers.insert(
        FieldName::try_from(names::HEADER_STREAM)?,
        FieldValue::t(target.streams),
    );
    let properties = BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_delivery_mode(names::DELIVERY_MODE_PERSISTENT)
        .with_correlation_id(&correlation_id)
        .with_reply_to(&task.reply_queue)
        .with_message_type(&target.request_type)
        .with_timestamp(now.as_secs())
        .with_expiration(&target.timeout_ms.to_string())
        .with_headers(headers)
        .finish();
    let mut arguments = BasicPublishArguments::new("", &target.queue);
    arguments.mandatory(true);
    task.channel
        .basic_publish(
            properties,
            target.payload_json.as_bytes().to_vec(),
            arguments,
        )
        .await
        .context("publishing a request")?;
    task.last_tag += 1;
    Ok(correlation_id)
}
