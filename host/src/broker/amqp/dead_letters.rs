//! Dead letters on the broker (protocol §3.11; the decisions are `crate::dead_letters`).
//!
//! Request queues dead-letter to a fanout exchange (`[host] dead_letter_queue`, by default
//! `taskgate.dead-letters`) bound to one *inbox* queue that every host consumes as a
//! competing consumer. For each poison request there, a host copies the request into the
//! dead-letter queue kept for operators, publishes the final error to the request's
//! `reply_to` as a worker would (so it reaches whichever host has the client), and only then
//! acks it. Dead letters of other kinds (`expired`: nobody waits any more) are dropped.
//! Why not bind the operators' queue to the exchange directly: RabbitMQ's headers exchange
//! ignores `x-` headers, so nothing on the broker can tell a poison request from an expired
//! one, and expired ones would pile up.
//!
//! The operators' side — `taskgate dead-letters list | show | requeue | purge` — reads the
//! queue with `basic.get` and closes its channel without acking, which puts every message
//! back where it was; `requeue` acks the one it republished.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicNackArguments,
    BasicQosArguments, Channel, ConfirmSelectArguments, ConsumerMessage, ExchangeDeclareArguments,
    ExchangeType, QueueBindArguments, QueueDeclareArguments, QueuePurgeArguments,
};
use amqprs::connection::Connection;
use amqprs::{BasicProperties, FieldName, FieldTable, FieldValue, DELIVERY_MODE_PERSISTENT};
use serde_json::{Map, Value};
use taskgate_protocol::amqp as names;
use taskgate_protocol::ReplyKind;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::callbacks::PublishEvents;
use super::connect::connect;
use super::publisher::{Message, Publisher};
use super::session::SessionEnd;
use crate::broker::confirms::Confirms;
use crate::broker::PublishError;
use crate::dead_letters::{final_error, DeadLetter, DeadLetterNames, Death};

/// Dead letters a host holds unacked at once.
const INBOX_PREFETCH: u16 = 16;
/// How long a host waits before it retries a dead letter it could not handle (the
/// dead-letter queue missing, a publish refused): the broker puts it back at once.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How long `requeue` waits for the broker to confirm the request it sent back.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

const FIRST_DEATH_REASON: &str = "x-first-death-reason";
const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
const DEATHS: &str = "x-death";
/// RabbitMQ's own headers about a message's deaths: dropped when it is sent back.
const DEATH_HEADERS: [&str; 7] = [
    DEATHS,
    FIRST_DEATH_REASON,
    FIRST_DEATH_QUEUE,
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// Declares the dead-letter exchange, the operators' queue and the hosts' inbox bound to
/// the exchange, on a channel of its own (a declaration that fails closes its channel).
pub(super) async fn declare_topology(connection: &Connection, names: &DeadLetterNames) -> bool {
    let result = async {
        let channel = connection.open_channel(None).await?;
        channel
            .exchange_declare(
                ExchangeDeclareArguments::of_type(&names.exchange, ExchangeType::Fanout)
                    .durable(true)
                    .finish(),
            )
            .await?;
        for queue in [&names.queue, &names.inbox] {
            channel
                .queue_declare(QueueDeclareArguments::new(queue).durable(true).finish())
                .await?;
        }
        channel
            .queue_bind(QueueBindArguments::new(&names.inbox, &names.exchange, ""))
            .await?;
        channel.close().await
    }
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            error!(exchange = %names.exchange, queue = %names.queue, inbox = %names.inbox, error = %e, "the dead-letter exchange and queues could not be declared: poison requests are not dead-lettered, and their clients wait for their timeout");
            false
        }
    }
}

/// The inbox consumer of a session: its channel and its deliveries.
pub(super) struct Inbox {
    pub(super) channel: Channel,
    deliveries: UnboundedReceiver<ConsumerMessage>,
}

/// Consumes the inbox with manual acks within a small prefetch window.
pub(super) async fn open_inbox(connection: &Connection, names: &DeadLetterNames) -> Option<Inbox> {
    let result = async {
        let channel = connection.open_channel(None).await?;
        channel
            .basic_qos(BasicQosArguments::new(0, INBOX_PREFETCH, false))
            .await?;
        let (_, deliveries) = channel
            .basic_consume_rx(
                BasicConsumeArguments::new(&names.inbox, "taskgate-host-dead-letters")
                    .manual_ack(true)
                    .finish(),
            )
            .await?;
        Ok::<_, amqprs::error::Error>(Inbox {
            channel,
            deliveries,
        })
    }
    .await;
    match result {
        Ok(inbox) => Some(inbox),
        Err(e) => {
            error!(inbox = %names.inbox, error = %e, "cannot consume the dead-letter inbox: clients of poison requests wait for their timeout");
            None
        }
    }
}

/// Handles the inbox's dead letters until its channel ends; returns why it ended.
/// `delivery_limit` gives the limit of a request queue this host declared.
pub(super) async fn serve_inbox(
    inbox: &mut Inbox,
    publisher: &Publisher,
    names: &DeadLetterNames,
    delivery_limit: impl Fn(&str) -> Option<u32>,
) -> String {
    while let Some(message) = inbox.deliveries.recv().await {
        let Some(tag) = message.deliver.as_ref().map(|d| d.delivery_tag()) else {
            continue;
        };
        let properties = message.basic_properties.unwrap_or_default();
        let body = message.content.unwrap_or_default();
        let settled = match handle(publisher, names, &properties, body, &delivery_limit).await {
            Ok(()) => {
                inbox
                    .channel
                    .basic_ack(BasicAckArguments::new(tag, false))
                    .await
            }
            Err(reason) => {
                warn!(correlation_id = ?properties.correlation_id(), %reason, "a dead letter could not be handled; it is tried again");
                tokio::time::sleep(RETRY_DELAY).await;
                inbox
                    .channel
                    .basic_nack(BasicNackArguments::new(tag, false, true))
                    .await
            }
        };
        if let Err(e) = settled {
            return format!("a dead letter could not be settled: {e}");
        }
    }
    "the dead-letter consumer ended".to_owned()
}

/// One dead letter: a poison request is copied to the operators' queue and its client
/// answered; anything else is dropped.
async fn handle(
    publisher: &Publisher,
    names: &DeadLetterNames,
    properties: &BasicProperties,
    body: Vec<u8>,
    delivery_limit: &impl Fn(&str) -> Option<u32>,
) -> Result<(), String> {
    let correlation = properties.correlation_id().cloned().unwrap_or_default();
    let request_type = properties.message_type().cloned().unwrap_or_default();
    let Some(death) = death(properties.headers()) else {
        debug!(correlation_id = %correlation, "dropped a message of the dead-letter inbox that says nothing of its death");
        return Ok(());
    };
    if !death.is_poison() {
        debug!(correlation_id = %correlation, reason = %death.reason, queue = %death.queue, "dropped a dead letter that is not poison");
        return Ok(());
    }
    let deliveries = delivery_limit(&death.queue);
    let id = Uuid::parse_str(&correlation).unwrap_or_default();
    let mut headers = properties.headers().cloned().unwrap_or_default();
    if let (Some(n), Ok(name)) = (deliveries, FieldName::try_from(names::HEADER_DELIVERIES)) {
        replace(&mut headers, name, FieldValue::l(i64::from(n)));
    }
    // No `expiration`: a dead letter waits for an operator, however long.
    let mut copy = BasicProperties::default();
    copy.with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_headers(headers);
    copy.with_timestamp(now().as_secs());
    if let Some(value) = properties.correlation_id() {
        copy.with_correlation_id(value);
    }
    if let Some(value) = properties.reply_to() {
        copy.with_reply_to(value);
    }
    if let Some(value) = properties.message_type() {
        copy.with_message_type(value);
    }
    let queue: Arc<str> = Arc::from(names.queue.as_str());
    publisher
        .publish(Message {
            exchange: "",
            routing_key: &queue,
            mandatory: true,
            correlation_id: id,
            properties: copy,
            body,
        })
        .await
        .map_err(|e| format!("not copied to the dead-letter queue `{}`: {e}", names.queue))?;
    metrics::counter!(crate::metrics::DEAD_LETTERS, "request_type" => request_type.clone())
        .increment(1);
    info!(correlation_id = %correlation, request_type = %request_type, queue = %death.queue, deliveries = ?deliveries, dead_letter_queue = %names.queue, "a request was delivered too often without an answer: dead-lettered, and its client told");
    let Some(reply_to) = properties.reply_to().filter(|r| !r.is_empty()) else {
        return Ok(());
    };
    let mut reply = BasicProperties::default();
    reply
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_correlation_id(&correlation)
        .with_message_type(ReplyKind::Error.as_str());
    let error = final_error(&correlation, deliveries, &names.queue);
    // The reply queue may be gone with its host (the client with it): not mandatory.
    publisher
        .publish(Message {
            exchange: "",
            routing_key: &Arc::from(reply_to.as_str()),
            mandatory: false,
            correlation_id: id,
            properties: reply,
            body: error.to_string().into_bytes(),
        })
        .await
        .map_err(|e| format!("the client's final error was not published: {e}"))
}

/// Sets a header, whether or not the table has it: amqprs's `FieldTable::insert` keeps
/// the encoded length of a replaced value, and the frame it then writes is corrupt (the
/// broker waits for bytes that never come).
fn replace(table: &mut FieldTable, name: FieldName, value: FieldValue) {
    table.remove(&name);
    table.insert(name, value);
}

fn header<'a>(headers: Option<&'a FieldTable>, name: &str) -> Option<&'a FieldValue> {
    headers?.get(&FieldName::try_from(name).ok()?)
}

fn header_string(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match header(headers, name)? {
        FieldValue::S(s) => Some(s.as_ref().clone()),
        _ => None,
    }
}

/// Why and where a dead letter died last: the first `x-death` entry (RabbitMQ keeps the
/// most recent first), else the `x-first-death-*` headers. Not the first death alone: a
/// request that went through a retry wait queue (which dead-letters it back to its queue
/// when its delay is over) died `expired` there first.
fn death(headers: Option<&FieldTable>) -> Option<Death> {
    if let Some(last) = first_death(headers) {
        let text = |key: &str| last.get(key).and_then(Value::as_str).map(str::to_owned);
        if let Some(reason) = text("reason") {
            return Some(Death {
                reason,
                queue: text("queue").unwrap_or_default(),
            });
        }
    }
    Some(Death {
        reason: header_string(headers, FIRST_DEATH_REASON)?,
        queue: header_string(headers, FIRST_DEATH_QUEUE).unwrap_or_default(),
    })
}

/// The first `x-death` entry, as JSON (it has the `original-expiration` and the time).
fn first_death(headers: Option<&FieldTable>) -> Option<Map<String, Value>> {
    match header(headers, DEATHS)? {
        FieldValue::A(entries) => Vec::<FieldValue>::from(entries.clone())
            .first()
            .map(json_of)
            .and_then(|v| v.as_object().cloned()),
        _ => None,
    }
}

/// An AMQP field value as JSON, for people (`taskgate dead-letters show`).
fn json_of(value: &FieldValue) -> Value {
    match value {
        FieldValue::t(b) => Value::from(*b),
        FieldValue::b(v) => Value::from(*v),
        FieldValue::B(v) => Value::from(*v),
        FieldValue::s(v) => Value::from(*v),
        FieldValue::u(v) => Value::from(*v),
        FieldValue::I(v) => Value::from(*v),
        FieldValue::i(v) => Value::from(*v),
        FieldValue::l(v) => Value::from(*v),
        FieldValue::f(v) => Value::from(*v),
        FieldValue::d(v) => Value::from(*v),
        FieldValue::T(v) => Value::from(*v),
        FieldValue::S(s) => Value::from(s.as_ref().as_str()),
        FieldValue::A(a) => Value::Array(
            Vec::<FieldValue>::from(a.clone())
                .iter()
                .map(json_of)
                .collect(),
        ),
        FieldValue::F(t) => Value::Object(table_json(t)),
        FieldValue::V => Value::Null,
        other => Value::from(other.to_string()),
    }
}

fn table_json(table: &FieldTable) -> Map<String, Value> {
    table
        .as_ref()
        .iter()
        .map(|(k, v)| (k.to_string(), json_of(v)))
        .collect()
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A message of the operators' queue, as `taskgate dead-letters` shows it.
fn dead_letter(properties: &BasicProperties, body: Vec<u8>) -> DeadLetter {
    let headers = properties.headers();
    let last_death = death(headers);
    let deliveries = header(headers, names::HEADER_DELIVERIES)
        .map(json_of)
        .and_then(|v| v.as_u64())
        .and_then(|n| u32::try_from(n).ok());
    let died_at = first_death(headers)
        .and_then(|d| d.get("time").and_then(Value::as_u64))
        .or(properties.timestamp());
    let request_headers = headers
        .map(table_json)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !DEATH_HEADERS.contains(&k.as_str()) && k != names::HEADER_DELIVERIES)
        .collect();
    DeadLetter {
        id: properties.correlation_id().cloned().unwrap_or_default(),
        request_type: properties.message_type().cloned(),
        queue: last_death.as_ref().map(|d| d.queue.clone()),
        reason: last_death.map(|d| d.reason),
        deliveries,
        died_at,
        headers: request_headers,
        body,
    }
}

/// What went wrong with `taskgate dead-letters`.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Connect(#[from] super::ConnectError),
    #[error("no dead-letter queue `{0}` on the broker (has a host run against it?)")]
    NoQueue(String),
    #[error("no dead letter with id `{0}` in `{1}`")]
    NotFound(String, String),
    #[error("dead letter `{0}` does not say which queue it came from")]
    NoOrigin(String),
    #[error("cannot send dead letter `{id}` back to `{queue}`: {reason}")]
    Requeue {
        id: String,
        queue: String,
        reason: String,
    },
    #[error("the broker: {0}")]
    Amqp(String),
}

impl From<amqprs::error::Error> for DeadLetterError {
    fn from(e: amqprs::error::Error) -> Self {
        DeadLetterError::Amqp(e.to_string())
    }
}

/// Opens a connection for one operator command, runs `work` on it and closes it.
async fn with_connection<T, F, Fut>(url: &str, work: F) -> Result<T, DeadLetterError>
where
    F: FnOnce(Connection) -> Fut,
    Fut: Future<Output = Result<T, DeadLetterError>>,
{
    let connection = connect(url).await?;
    let outcome = work(connection.clone()).await;
    let _ = connection.close().await;
    outcome
}

async fn check_queue(channel: &Channel, queue: &str) -> Result<(), DeadLetterError> {
    channel
        .queue_declare(QueueDeclareArguments::new(queue).passive(true).finish())
        .await
        .map(|_| ())
        .map_err(|_| DeadLetterError::NoQueue(queue.to_owned()))
}

/// Every dead letter, oldest first. Nothing is removed: the channel closes without acking.
pub async fn list(url: &str, names: &DeadLetterNames) -> Result<Vec<DeadLetter>, DeadLetterError> {
    with_connection(url, |connection| async move {
        let channel = connection.open_channel(None).await?;
        check_queue(&channel, &names.queue).await?;
        let mut letters = Vec::new();
        while let Some((_, properties, body)) = channel
            .basic_get(BasicGetArguments::new(&names.queue))
            .await?
        {
            letters.push(dead_letter(&properties, body));
        }
        let _ = channel.close().await;
        Ok(letters)
    })
    .await
}

/// Sends dead letter `id` back to the queue it came from, as a new request: RabbitMQ's
/// death headers dropped, its `expiration` restored and its deadline moved to now plus
/// that timeout (so a worker runs it). Its original client gets the outcome if it still
/// waits for one; otherwise the host drops the reply as one for a request it does not know.
/// Returns the queue.
pub async fn requeue(
    url: &str,
    names: &DeadLetterNames,
    id: &str,
) -> Result<String, DeadLetterError> {
    with_connection(url, |connection| async move {
        let channel = connection.open_channel(None).await?;
        check_queue(&channel, &names.queue).await?;
        let confirms = Confirms::new();
        channel
            .register_callback(PublishEvents {
                confirms: confirms.clone(),
                end: Arc::new(SessionEnd::default()),
            })
            .await?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await?;
        let publisher = Publisher {
            channel: channel.clone(),
            last_tag: tokio::sync::Mutex::new(0),
            confirms,
        };
        let gets = connection.open_channel(None).await?;
        let outcome = loop {
            let Some((get_ok, properties, body)) =
                gets.basic_get(BasicGetArguments::new(&names.queue)).await?
            else {
                break Err(DeadLetterError::NotFound(
                    id.to_owned(),
                    names.queue.clone(),
                ));
            };
            if properties.correlation_id().map(String::as_str) != Some(id) {
                continue;
            }
            let queue = death(properties.headers())
                .map(|d| d.queue)
                .filter(|q| !q.is_empty())
                .ok_or_else(|| DeadLetterError::NoOrigin(id.to_owned()))?;
            let routing_key: Arc<str> = Arc::from(queue.as_str());
            let published = publisher.publish(Message {
                exchange: "",
                routing_key: &routing_key,
                mandatory: true,
                correlation_id: Uuid::parse_str(id).unwrap_or_default(),
                properties: sent_back(&properties),
                body,
            });
            tokio::time::timeout(CONFIRM_TIMEOUT, published)
                .await
                .unwrap_or(Err(PublishError::ConfirmTimeout(CONFIRM_TIMEOUT)))
                .map_err(|e| DeadLetterError::Requeue {
                    id: id.to_owned(),
                    queue: queue.clone(),
                    reason: e.to_string(),
                })?;
            gets.basic_ack(BasicAckArguments::new(get_ok.delivery_tag(), false))
                .await?;
            break Ok(queue);
        };
        // Every other message read goes back where it was.
        let _ = gets.close().await;
        let _ = channel.close().await;
        outcome
    })
    .await
}

/// The properties of a dead letter sent back to its queue.
fn sent_back(dead: &BasicProperties) -> BasicProperties {
    let headers = dead.headers();
    let expiration = first_death(headers).and_then(|d| {
        d.get("original-expiration")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let mut table = FieldTable::new();
    if let Some(headers) = headers {
        for (name, value) in headers.as_ref() {
            let name_text = name.to_string();
            if !DEATH_HEADERS.contains(&name_text.as_str()) && name_text != names::HEADER_DELIVERIES
            {
                table.insert(name.clone(), value.clone());
            }
        }
    }
    let timeout_ms = expiration.as_deref().and_then(|e| e.parse::<u64>().ok());
    if let (Some(timeout_ms), Ok(name)) =
        (timeout_ms, FieldName::try_from(names::HEADER_DEADLINE_MS))
    {
        let deadline = u64::try_from(now().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(timeout_ms);
        replace(
            &mut table,
            name,
            FieldValue::l(i64::try_from(deadline).unwrap_or(i64::MAX)),
        );
    }
    let mut properties = BasicProperties::default();
    properties
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_timestamp(now().as_secs())
        .with_headers(table);
    if let Some(value) = dead.correlation_id() {
        properties.with_correlation_id(value);
    }
    if let Some(value) = dead.reply_to() {
        properties.with_reply_to(value);
    }
    if let Some(value) = dead.message_type() {
        properties.with_message_type(value);
    }
    if let Some(value) = &expiration {
        properties.with_expiration(value);
    }
    properties
}

/// Deletes every dead letter; returns how many there were.
pub async fn purge(url: &str, names: &DeadLetterNames) -> Result<u32, DeadLetterError> {
    with_connection(url, |connection| async move {
        let channel = connection.open_channel(None).await?;
        check_queue(&channel, &names.queue).await?;
        let purged = channel
            .queue_purge(QueuePurgeArguments::new(&names.queue))
            .await?
            .unwrap_or_default();
        let _ = channel.close().await;
        Ok(purged)
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::broker::amqp::message::long_string;
    use amqprs::FieldArray;

    fn s(text: &str) -> FieldValue {
        FieldValue::S(long_string(text).unwrap())
    }

    fn dead_properties() -> BasicProperties {
        let mut death = FieldTable::new();
        death.insert("reason".try_into().unwrap(), s("delivery_limit"));
        death.insert("queue".try_into().unwrap(), s("q.echo"));
        death.insert("original-expiration".try_into().unwrap(), s("30000"));
        death.insert("time".try_into().unwrap(), FieldValue::T(1_700_000_000));
        let mut headers = FieldTable::new();
        headers.insert(
            DEATHS.try_into().unwrap(),
            FieldValue::A(FieldArray::try_from(vec![FieldValue::F(death)]).unwrap()),
        );
        headers.insert(FIRST_DEATH_REASON.try_into().unwrap(), s("delivery_limit"));
        headers.insert(FIRST_DEATH_QUEUE.try_into().unwrap(), s("q.echo"));
        headers.insert(
            names::HEADER_DELIVERIES.try_into().unwrap(),
            FieldValue::l(3),
        );
        headers.insert(
            names::HEADER_DEADLINE_MS.try_into().unwrap(),
            FieldValue::l(5),
        );
        headers.insert(names::HEADER_TRACEPARENT.try_into().unwrap(), s("00-x"));
        let mut p = BasicProperties::default();
        p.with_correlation_id("c-1")
            .with_reply_to("taskgate.reply.1")
            .with_message_type("echo")
            .with_headers(headers);
        p
    }

    #[test]
    fn a_dead_letter_is_read_for_people() {
        let letter = dead_letter(&dead_properties(), b"{\"a\":1}".to_vec());
        assert_eq!(letter.id, "c-1");
        assert_eq!(letter.request_type.as_deref(), Some("echo"));
        assert_eq!(letter.queue.as_deref(), Some("q.echo"));
        assert_eq!(letter.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(letter.deliveries, Some(3));
        assert_eq!(letter.died_at, Some(1_700_000_000));
        let keys: Vec<&str> = letter.headers.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(
            letter.summary().contains("3 deliveries"),
            "{}",
            letter.summary()
        );
        assert!(letter.details().contains("{\"a\":1}"));
    }

    #[test]
    fn a_requeued_request_is_new_again_with_its_timeout_restored() {
        let before = u64::try_from(now().as_millis()).unwrap();
        let p = sent_back(&dead_properties());
        assert_eq!(p.correlation_id().map(String::as_str), Some("c-1"));
        assert_eq!(p.reply_to().map(String::as_str), Some("taskgate.reply.1"));
        assert_eq!(p.message_type().map(String::as_str), Some("echo"));
        assert_eq!(p.expiration().map(String::as_str), Some("30000"));
        let headers = table_json(p.headers().unwrap());
        let mut keys: Vec<&str> = headers.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec!["traceparent", "x-deadline-ms"]);
        let deadline = headers["x-deadline-ms"].as_u64().unwrap();
        assert!(
            deadline >= before + 30_000 && deadline < before + 40_000,
            "{deadline}"
        );
    }

    #[test]
    fn a_replaced_header_keeps_the_table_length_right() {
        let name = || FieldName::try_from("x-deadline-ms").unwrap();
        let mut table = FieldTable::new();
        table.insert(
            name(),
            s("a much longer value than the one that replaces it"),
        );
        replace(&mut table, name(), FieldValue::l(1));
        let mut fresh = FieldTable::new();
        fresh.insert(name(), FieldValue::l(1));
        // FieldTable's equality compares its encoded length too.
        assert_eq!(table, fresh);
    }

    #[test]
    fn deaths_are_read_from_rabbitmq_headers() {
        let p = dead_properties();
        let d = death(p.headers()).unwrap();
        assert!(d.is_poison());
        assert_eq!(d.queue, "q.echo");
        assert_eq!(death(None), None);
        // Without x-death, the x-first-death-* headers.
        let mut headers = FieldTable::new();
        headers.insert(FIRST_DEATH_REASON.try_into().unwrap(), s("delivery_limit"));
        headers.insert(FIRST_DEATH_QUEUE.try_into().unwrap(), s("q.echo"));
        let d = death(Some(&headers)).unwrap();
        assert!(d.is_poison());
        assert_eq!(d.queue, "q.echo");
    }

    #[test]
    fn the_latest_death_decides_not_the_first() {
        let entry = |reason: &str, queue: &str| {
            let mut t = FieldTable::new();
            t.insert("reason".try_into().unwrap(), s(reason));
            t.insert("queue".try_into().unwrap(), s(queue));
            FieldValue::F(t)
        };
        let mut headers = FieldTable::new();
        headers.insert(
            DEATHS.try_into().unwrap(),
            FieldValue::A(
                FieldArray::try_from(vec![
                    entry("delivery_limit", "q.echo"),
                    entry("expired", "q.echo.retry.1000"),
                ])
                .unwrap(),
            ),
        );
        headers.insert(FIRST_DEATH_REASON.try_into().unwrap(), s("expired"));
        let d = death(Some(&headers)).unwrap();
        assert!(d.is_poison());
        assert_eq!(d.queue, "q.echo");
    }
}
