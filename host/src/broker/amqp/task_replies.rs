//! The shared reply queue of detached tasks (protocol §4.3): when the hosts of a cluster
//! share a task store, a detached request is published with `reply_to` =
//! `taskgate.task-replies`, a durable quorum queue that every host declares and consumes
//! so the worker's replies outlive the host that took the task. A reply is acked only once
//! the handler says it is in the store; until then it is tried again (after a pause: the
//! store is down), and if this host dies first, the broker gives it to another host.
//!
//! One consumer at a time (`x-single-active-consumer`): the store keeps a task's chunks in
//! `seq` order and refuses one older than the last, so replies must be stored in the order
//! the worker sent them — competing consumers would race each other, and a reply given back
//! to the queue would come after the ones behind it. The other hosts stand by and take over
//! when the active one goes, from its first unacked reply.
//!
//! A connection of its own, apart from the session's: it must not share the session's fate
//! (a lost session ends the session's requests; this queue's replies just come again), and
//! the session's loop stays as it is.

use std::future::Future;
use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, QueueDeclareArguments,
};
use amqprs::{FieldName, FieldTable, FieldValue};
use tracing::{info, warn};

use super::connect::connect_named;
use super::message::{incoming_reply, long_string};
use super::session::Backoff;
use crate::broker::amqp_url::redact_url;
use crate::broker::IncomingReply;

/// Replies held at once by one host: each is written to the store before its ack.
const PREFETCH: u16 = 64;
/// How long a reply the store could not take waits before it is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The task-reply queue: durable and replicated (quorum), one active consumer.
pub fn task_reply_queue_declaration(name: &str) -> QueueDeclareArguments {
    let mut arguments = FieldTable::new();
    if let (Ok(key), Ok(value)) = (FieldName::try_from("x-queue-type"), long_string("quorum")) {
        arguments.insert(key, FieldValue::S(value));
    }
    if let Ok(key) = FieldName::try_from("x-single-active-consumer") {
        arguments.insert(key, FieldValue::t(true));
    }
    QueueDeclareArguments::new(name)
        .durable(true)
        .arguments(arguments)
        .finish()
}

/// Consumes `queue` until `shutdown` resolves, reconnecting when the connection is lost.
/// `keep` gets every reply and answers whether it is stored: only then is it acked.
pub async fn consume_task_replies<K, F>(
    url: &str,
    connection_name: &str,
    queue: &str,
    keep: K,
    shutdown: impl Future<Output = ()>,
) where
    K: Fn(IncomingReply) -> F + Send + Sync,
    F: Future<Output = bool> + Send,
{
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let ended = tokio::select! {
            _ = &mut shutdown => return,
            ended = consume_once(url, connection_name, queue, &keep, &mut backoff) => ended,
        };
        let delay = backoff.next_delay();
        warn!(queue, reason = %ended, retry_in_ms = delay.as_millis() as u64, "task replies: not consuming; retrying");
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's worth of consuming; returns why it ended.
async fn consume_once<K, F>(
    url: &str,
    connection_name: &str,
    queue: &str,
    keep: &K,
    backoff: &mut Backoff,
) -> String
where
    K: Fn(IncomingReply) -> F,
    F: Future<Output = bool>,
{
    let connection = match connect_named(url, connection_name).await {
        Ok(connection) => connection,
        Err(error) => return error.to_string(),
    };
    let setup = async {
        let channel = connection.open_channel(None).await?;
        channel
            .queue_declare(task_reply_queue_declaration(queue))
            .await?;
        channel
            .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
            .await?;
        let (_, consumer) = channel
            .basic_consume_rx(
                BasicConsumeArguments::new(queue, connection_name)
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        Ok::<_, amqprs::error::Error>((channel, consumer))
    };
    let (channel, mut consumer) = match setup.await {
        Ok(consuming) => consuming,
        Err(error) => {
            let _ = connection.close().await;
            return format!("setting up {queue}: {error}");
        }
    };
    info!(queue, url = %redact_url(url), "consuming the task-reply queue");
    *backoff = Backoff::default();
    let reason = loop {
        let Some(message) = consumer.recv().await else {
            break "the consumer ended".to_owned();
        };
        let Some(tag) = message.deliver.as_ref().map(|d| d.delivery_tag()) else {
            continue;
        };
        let reply = incoming_reply(message.basic_properties, message.content);
        // In place, not back to the queue: the replies behind it must wait their turn.
        while !keep(reply.clone()).await {
            if !connection.is_open() {
                return "the connection closed while the store was down".to_owned();
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        if let Err(error) = channel.basic_ack(BasicAckArguments::new(tag, false)).await {
            break format!("a reply could not be acknowledged: {error}");
        }
    };
    if connection.is_open() {
        let _ = connection.close().await;
    }
    reason
}
