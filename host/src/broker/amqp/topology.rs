//! What the host declares on the broker (protocol §2.1): the request queues of enabled
//! request types ([`QueueDecl`], with their arguments as an AMQP field table), the
//! `taskgate.cancel` fanout exchange, the `taskgate.tasks` fanout exchange between hosts
//! (§4.5), and a session's exclusive reply queue (bound to it) and its consumer.

use amqprs::channel::{
    BasicConsumeArguments, BasicQosArguments, ExchangeDeclareArguments, ExchangeType,
    QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::Connection;
use amqprs::{FieldName, FieldTable, FieldValue};
use serde_json::{Map, Value};
use taskgate_protocol::amqp as names;
use tracing::{debug, error};

use super::message::long_string;

/// A queue the host declares for an enabled request type (protocol §2.1).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDecl {
    pub name: String,
    pub arguments: Map<String, Value>,
    /// Deliveries before the queue dead-letters a request (`None`: it does not count them),
    /// for the error a dead letter's client gets.
    pub delivery_limit: Option<u32>,
}

/// Declares a request queue on its own channel: an argument mismatch with an existing
/// queue closes the channel, and must not take the others down.
pub(super) async fn declare_request_queue(connection: &Connection, queue: &QueueDecl) {
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
            let error = e.to_string();
            match mismatch_advice(&error) {
                Some(advice) => {
                    error!(queue = %queue.name, %error, "request queue exists with other arguments; it is used as it is. {advice}")
                }
                None => {
                    error!(queue = %queue.name, %error, "request queue could not be declared (does it exist with other arguments?)")
                }
            }
        }
    }
}

/// What to do about a queue that exists with other arguments than the host declares —
/// typically a classic queue from before the host made request queues quorum queues.
fn mismatch_advice(error: &str) -> Option<&'static str> {
    if !error.contains("PRECONDITION_FAILED") {
        return None;
    }
    Some(if error.contains("x-queue-type") {
        "It is not the quorum queue the host declares (a classic queue from an older taskgate?): RabbitMQ does not count its deliveries, so requests its workers crash on are not dead-lettered. To migrate: stop its workers, let the hosts drain it, delete it (`rabbitmqctl delete_queue <queue>`) and restart a host, which declares it anew; or keep it as it is with queue_arguments = { \"x-queue-type\" = \"classic\" } in plugins.toml (README, \"When workers fail\")"
    } else if error.contains("x-delivery-limit") || error.contains("x-dead-letter-exchange") {
        "Its delivery limit or dead-letter exchange differs from this host's (another delivery_limit or [host] dead_letter_queue, or another host's plugins.toml): the queue keeps its own. To change it, delete the queue while it is empty and restart a host; hosts that share a queue need the same settings"
    } else {
        "Hosts that share a queue need the same queue arguments; delete the queue while it is empty to declare it anew"
    })
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

/// The fanout exchange that carries cancellations to every worker (protocol §2.4).
pub(super) fn cancel_exchange_declaration() -> ExchangeDeclareArguments {
    ExchangeDeclareArguments::of_type(names::CANCEL_EXCHANGE, ExchangeType::Fanout)
        .durable(true)
        .finish()
}

/// The fanout exchange on which hosts claim requests from each other (protocol §4.5).
pub(super) fn tasks_exchange_declaration() -> ExchangeDeclareArguments {
    ExchangeDeclareArguments::of_type(names::TASKS_EXCHANGE, ExchangeType::Fanout)
        .durable(true)
        .finish()
}

/// Binds a session's reply queue to the claims of other hosts. The reply queue rather than
/// a second control queue: a claim is then read in order with the worker replies on the
/// one consumer, so a request handed over between two replies can lose neither (the
/// hand-off and the forwarding that replaces delivery happen between two replies), and a
/// host needs no second queue, channel or consumer. Claims are rare (one per request of a
/// dropped connection that comes back elsewhere), so sharing the prefetch costs nothing in
/// steady state.
pub(super) fn claims_binding(reply_queue: &str) -> QueueBindArguments {
    QueueBindArguments::new(reply_queue, names::TASKS_EXCHANGE, "")
}

/// A host's reply queue: exclusive and auto-deleted, it lives and dies with one broker
/// session. The benchmark's direct client declares the same, to measure the same thing.
pub fn reply_queue_declaration(name: &str) -> QueueDeclareArguments {
    QueueDeclareArguments::new(name)
        .exclusive(true)
        .auto_delete(true)
        .finish()
}

/// Replies the broker may hand the host before the host acknowledges them: the backlog
/// of a flood stays in the reply queue, on the broker, instead of in the host's memory.
/// The host holds at most this many replies at once, each at most the broker's message
/// size limit (a larger one ends its request, `[limits] max_reply_bytes`).
///
/// Why 256: a streamed request is one reply per chunk, and the window has to cover the
/// chunks of many streams for one ack round trip. At 64 the streaming benchmark
/// (50 × 4 requests of 20 chunks) waited for acks with thousands of chunks ready in the
/// reply queue, at 0.54–0.58× the throughput of a client without a window; at 256 it ran
/// at 0.76–0.79×, p99 1.2× instead of 2× (docs/performance.md, "Streaming below direct
/// again: the reply window"). Acks go out in batches ([`REPLY_ACK_BATCH`]) and whenever
/// the host has caught up, so a host that keeps up never holds the whole window.
///
/// The window, not speed, is why replies are acked: without acks streaming ran at
/// 0.88–0.90× direct instead of 0.77–0.80× and RabbitMQ spent a quarter less per request,
/// but the broker then hands every reply over at once, and cancelling the consumer when
/// the host falls behind reaches it only after what it has already sent (docs/performance.md,
/// "Replies without acks: measured, not taken"; `host/tests/reply_backlog.rs` holds the bound).
pub const REPLY_PREFETCH: u16 = 256;
/// The host acknowledges replies (`multiple`) at least every this many: eight acks per
/// window, so the broker refills it long before it runs dry.
pub const REPLY_ACK_BATCH: u64 = REPLY_PREFETCH as u64 / 8;

// The window covers a dozen streams of 20 chunks and a result each, and acks refill it
// at least eight times per window.
const _: () = assert!(REPLY_PREFETCH as usize >= 12 * 21);
const _: () = assert!(REPLY_ACK_BATCH >= 1 && REPLY_ACK_BATCH * 8 <= REPLY_PREFETCH as u64);

/// The reply channel's prefetch window ([`REPLY_PREFETCH`]).
pub(super) fn reply_qos() -> BasicQosArguments {
    BasicQosArguments::new(0, REPLY_PREFETCH, false)
}

/// The consumer of a reply queue: exclusive, and with manual acks, so that the prefetch
/// window bounds the replies the host holds — why not a bounded channel instead: amqprs
/// reads frames into unbounded channels of its own, so only the broker can hold a backlog.
/// A reply is acked once relayed; one unacked when a session ends goes with its exclusive
/// queue, as the requests it answered end anyway.
pub fn reply_consumer(queue: &str, tag: &str) -> BasicConsumeArguments {
    BasicConsumeArguments::new(queue, tag)
        .manual_ack(true)
        .exclusive(true)
        .finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn a_classic_queue_where_a_quorum_one_is_declared_gets_migration_advice() {
        let classic = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received 'quorum' but current is 'classic'";
        assert!(mismatch_advice(classic).unwrap().contains("delete_queue"));
        let limit = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q'";
        assert!(mismatch_advice(limit).unwrap().contains("delivery limit"));
        assert_eq!(mismatch_advice("connection reset"), None);
    }

    #[test]
    fn the_reply_channel_asks_for_the_whole_window() {
        assert_eq!(reply_qos().prefetch_count, REPLY_PREFETCH);
        assert_eq!(
            reply_qos().prefetch_size,
            0,
            "RabbitMQ does not implement it"
        );
    }

    #[test]
    fn queue_arguments_become_typed_amqp_values() {
        let args = json!({"x-queue-type": "quorum", "x-max-length": 10, "x-flag": true});
        let table = field_table(args.as_object().unwrap()).unwrap();
        let get = |name: &str| table.get(&FieldName::try_from(name).unwrap());
        assert!(matches!(get("x-queue-type"), Some(FieldValue::S(_))));
        assert!(matches!(get("x-max-length"), Some(FieldValue::l(10))));
        assert!(matches!(get("x-flag"), Some(FieldValue::t(true))));
        assert!(field_table(json!({"x": [1]}).as_object().unwrap()).is_err());
    }
}
