//! Poison messages (protocol §3.11): a request delivered to workers `delivery_limit` times
//! without an answer — a worker that crashes on it, again and again — is not delivered
//! again. RabbitMQ counts the deliveries (a quorum queue's `x-delivery-limit`) and
//! dead-letters the request to the host's dead-letter exchange; a host copies it to the
//! dead-letter queue kept for operators and answers its client with a final error at once.
//!
//! This module holds the decisions, without AMQP: which arguments a request queue is
//! declared with, which dead letters the host keeps and answers, and the error the client
//! gets. `broker::amqp::dead_letters` does the AMQP side; `taskgate dead-letters` (the CLI)
//! prints what [`DeadLetter`]s the queue holds.

use serde_json::{json, Map, Value};
use taskgate_protocol::amqp as names;
use taskgate_protocol::ErrorCode;

/// Deliveries without an answer before a request is dead-lettered, when neither its plugin
/// nor plugins.toml says otherwise: a worker crash, a retry elsewhere, one more to be sure.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 3;

const QUEUE_TYPE: &str = "x-queue-type";
const QUORUM: &str = "quorum";
const DELIVERY_LIMIT: &str = "x-delivery-limit";
const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";

/// The names of the dead-letter topology, all derived from `[host] dead_letter_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterNames {
    /// The exchange request queues dead-letter to (fanout; the same name as the queue).
    pub exchange: String,
    /// Where dead letters are kept for operators (`taskgate dead-letters`).
    pub queue: String,
    /// What hosts consume to answer the clients of dead letters and copy them to `queue`.
    pub inbox: String,
}

impl DeadLetterNames {
    pub fn new(queue: &str) -> Self {
        DeadLetterNames {
            exchange: queue.to_owned(),
            queue: queue.to_owned(),
            inbox: format!("{queue}{}", names::DEAD_LETTER_INBOX_SUFFIX),
        }
    }
}

impl Default for DeadLetterNames {
    fn default() -> Self {
        Self::new(names::DEAD_LETTER_QUEUE)
    }
}

/// A request queue's arguments, with poison-message protection added.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueArguments {
    pub arguments: Map<String, Value>,
    /// Deliveries before a request is dead-lettered; `None` when the queue does not count
    /// them (a classic queue).
    pub delivery_limit: Option<u32>,
}

/// The arguments a request queue is declared with: the plugin's (or plugins.toml's), and
/// unless they say otherwise a quorum queue (the only kind that counts deliveries) whose
/// `x-delivery-limit` lets a request be delivered `deliveries` times and which dead-letters
/// to the host's exchange. An explicit `x-delivery-limit` or `x-dead-letter-exchange` is
/// kept as written; another queue type gets no protection (the caller says so in the log).
pub fn request_queue_arguments(
    declared: &Map<String, Value>,
    deliveries: u32,
    exchange: &str,
) -> QueueArguments {
    let mut arguments = declared.clone();
    let queue_type = arguments
        .entry(QUEUE_TYPE)
        .or_insert_with(|| Value::from(QUORUM));
    if queue_type.as_str() != Some(QUORUM) {
        return QueueArguments {
            arguments,
            delivery_limit: None,
        };
    }
    // RabbitMQ's limit counts redeliveries: `x-delivery-limit` N allows N + 1 deliveries.
    let limit = arguments
        .entry(DELIVERY_LIMIT)
        .or_insert_with(|| Value::from(deliveries.max(1) - 1))
        .as_u64()
        .and_then(|n| u32::try_from(n.saturating_add(1)).ok());
    arguments
        .entry(DEAD_LETTER_EXCHANGE)
        .or_insert_with(|| Value::from(exchange));
    QueueArguments {
        arguments,
        delivery_limit: limit,
    }
}

/// What a dead-lettered message says about why it died (RabbitMQ's `x-first-death-*`
/// headers), read by the broker side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// `delivery_limit`, `expired`, `rejected`, `maxlen` …
    pub reason: String,
    /// The request queue it died in.
    pub queue: String,
}

impl Death {
    /// Only requests delivered too often are poison: expired ones have no client waiting
    /// any more (it got `TIMEOUT`), and those are dropped.
    pub fn is_poison(&self) -> bool {
        self.reason == names::DEATH_REASON_DELIVERY_LIMIT
    }
}

/// The final error a dead-lettered request's client gets, as a worker's `error` reply body
/// (protocol §2.3): `WORKER_ERROR`, with details that say why.
pub fn final_error(id: &str, deliveries: Option<u32>, dead_letter_queue: &str) -> Value {
    let times = deliveries.map_or_else(|| "too many".to_owned(), |n| n.to_string());
    let mut details = Map::new();
    details.insert("reason".to_owned(), json!("deliveryLimit"));
    if let Some(n) = deliveries {
        details.insert("deliveries".to_owned(), json!(n));
    }
    details.insert("deadLetterQueue".to_owned(), json!(dead_letter_queue));
    details.insert("deadLetterId".to_owned(), json!(id));
    json!({
        "code": ErrorCode::WorkerError.as_str(),
        "message": format!(
            "the request was delivered to workers {times} times without an answer (did they crash on it?): it is not delivered again, and is kept in the dead-letter queue `{dead_letter_queue}`"
        ),
        "details": details,
    })
}

/// One message of the dead-letter queue, as `taskgate dead-letters` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The request's correlation id: what `show` and `requeue` take.
    pub id: String,
    pub request_type: Option<String>,
    /// The request queue it came from, where `requeue` sends it back.
    pub queue: Option<String>,
    pub reason: Option<String>,
    pub deliveries: Option<u32>,
    /// When it was dead-lettered, Unix seconds.
    pub died_at: Option<u64>,
    /// The request's own headers (deadline, identity, trace context …), as JSON.
    pub headers: Map<String, Value>,
    pub body: Vec<u8>,
}

impl DeadLetter {
    /// One line of `taskgate dead-letters list`.
    pub fn summary(&self) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        format!(
            "{}  {:<24} {:<32} {} deliveries, {}, {} bytes, dead-lettered {}",
            self.id,
            or_dash(&self.request_type),
            or_dash(&self.queue),
            self.deliveries
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            or_dash(&self.reason),
            self.body.len(),
            self.died_at
                .map_or_else(|| "-".to_owned(), |t| format!("at {t} (Unix s)")),
        )
    }

    /// What `taskgate dead-letters show ID` prints: the summary's fields, the request's
    /// headers and its payload.
    pub fn details(&self) -> String {
        let headers = serde_json::to_string_pretty(&self.headers).unwrap_or_default();
        let payload = match std::str::from_utf8(&self.body) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("({} bytes, not UTF-8)", self.body.len()),
        };
        format!(
            "id:            {}\nrequest type:  {}\nqueue:         {}\nreason:        {}\ndeliveries:    {}\ndead-lettered: {}\nheaders:       {headers}\npayload:       {payload}\n",
            self.id,
            self.request_type.as_deref().unwrap_or("-"),
            self.queue.as_deref().unwrap_or("-"),
            self.reason.as_deref().unwrap_or("-"),
            self.deliveries
                .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            self.died_at
                .map_or_else(|| "-".to_owned(), |t| format!("{t} (Unix s)")),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_queue_without_a_type_becomes_a_quorum_queue_that_dead_letters() {
        let q = request_queue_arguments(&Map::new(), 3, "dl");
        assert_eq!(
            Value::Object(q.arguments),
            json!({"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": "dl"})
        );
        assert_eq!(q.delivery_limit, Some(3));
        let once = request_queue_arguments(&Map::new(), 1, "dl");
        assert_eq!(once.arguments["x-delivery-limit"], json!(0));
        assert_eq!(once.delivery_limit, Some(1));
    }

    #[test]
    fn what_the_plugin_or_operator_wrote_wins() {
        let q = request_queue_arguments(
            &args(json!({"x-queue-type": "quorum", "x-delivery-limit": 9, "x-max-length": 5})),
            3,
            "dl",
        );
        assert_eq!(q.arguments["x-delivery-limit"], json!(9));
        assert_eq!(q.arguments["x-max-length"], json!(5));
        assert_eq!(q.delivery_limit, Some(10));
        let own =
            request_queue_arguments(&args(json!({"x-dead-letter-exchange": "mine"})), 3, "dl");
        assert_eq!(own.arguments["x-dead-letter-exchange"], json!("mine"));
    }

    #[test]
    fn a_classic_queue_gets_no_protection() {
        let declared = args(json!({"x-queue-type": "classic"}));
        let q = request_queue_arguments(&declared, 3, "dl");
        assert_eq!(q.arguments, declared);
        assert_eq!(q.delivery_limit, None);
    }

    #[test]
    fn only_deliveries_over_the_limit_are_poison() {
        let death = |reason: &str| Death {
            reason: reason.to_owned(),
            queue: "q".to_owned(),
        };
        assert!(death("delivery_limit").is_poison());
        assert!(!death("expired").is_poison());
        assert!(!death("rejected").is_poison());
    }

    #[test]
    fn the_final_error_is_a_worker_error_that_says_why() {
        let e = final_error("c-1", Some(3), "taskgate.dead-letters");
        assert_eq!(e["code"], "WORKER_ERROR");
        assert!(e["message"].as_str().unwrap().contains("3 times"));
        assert_eq!(
            e["details"],
            json!({"reason": "deliveryLimit", "deliveries": 3, "deadLetterQueue": "taskgate.dead-letters", "deadLetterId": "c-1"})
        );
        let unknown = final_error("c-2", None, "dl");
        assert!(unknown["details"].get("deliveries").is_none());
    }

    #[test]
    fn names_derive_from_the_queue() {
        let n = DeadLetterNames::default();
        assert_eq!(n.queue, "taskgate.dead-letters");
        assert_eq!(n.exchange, "taskgate.dead-letters");
        assert_eq!(n.inbox, "taskgate.dead-letters.inbox");
    }
}
