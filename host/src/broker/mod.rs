//! The broker side of the host, as a trait: publish a request (resolving once the broker
//! confirmed it), publish a cancellation, and receive replies.
//!
//! `amqp` is the RabbitMQ implementation (with `confirms` and `amqp_url`); `memory` is an
//! in-process one for unit tests of everything above the broker. Only `amqp` knows the
//! AMQP client (amqprs).

pub mod amqp;
pub mod amqp_url;
pub mod confirms;
pub mod memory;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskgate_protocol::trace::TraceParent;
use uuid::Uuid;

/// A request message for a worker (protocol §2.2).
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    pub correlation_id: Uuid,
    pub request_type: Arc<str>,
    pub queue: Arc<str>,
    pub body: Box<str>,
    pub streams: bool,
    /// The request type's timeout, published as the message `expiration`.
    pub timeout: Duration,
    /// Unix milliseconds after which nobody waits for the reply anymore.
    pub deadline_ms: u64,
    /// The client's identity as JSON, sent as header `x-identity` (none without auth).
    pub identity: Option<Arc<str>>,
    /// The W3C trace context forwarded in the `traceparent` header (§3.10).
    pub traceparent: TraceParent,
    /// Where the worker replies: `None` for the host's own reply queue; the shared task-reply
    /// queue for a detached task of a shared store (§4.3).
    pub reply_to: Option<Arc<str>>,
    /// The request type's retry policy as JSON, sent as header `x-retry` (§3.12).
    pub retry: Option<Arc<str>>,
}

/// A reply message from a worker (protocol §2.3), as received: nothing is trusted yet.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingReply {
    pub correlation_id: Option<String>,
    /// The AMQP `type` property.
    pub kind: Option<String>,
    /// The `x-seq` header of a chunk, if present and an integer.
    pub seq: Option<i64>,
    pub body: Vec<u8>,
}

/// A worker's reply body as JSON, taken without a copy when it is already tight; `None` when
/// it is not JSON. Surrounding whitespace is legal JSON but not a valid `RawValue`: such a
/// body is copied out without it.
pub fn reply_json(body: Vec<u8>) -> Option<Box<serde_json::value::RawValue>> {
    let text = String::from_utf8(body).ok()?;
    if text.trim().len() == text.len() {
        serde_json::value::RawValue::from_string(text).ok()
    } else {
        serde_json::from_str(&text).ok()
    }
}

/// A message from one host to others (protocol §4.5): a claim (to every host), a hand-off,
/// or a worker reply forwarded to the host that took its request over (to one host's reply
/// queue). The receiver reads it as an [`IncomingReply`]: the same properties, the same path.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMessage {
    pub correlation_id: Uuid,
    /// The AMQP `type`: a reply kind, or a claim or hand-off type (`taskgate_protocol::amqp`).
    pub kind: Box<str>,
    /// The `x-seq` header, if any.
    pub seq: Option<i64>,
    pub body: Vec<u8>,
}

impl HostMessage {
    /// As the receiving host reads it.
    pub fn into_reply(self) -> IncomingReply {
        IncomingReply {
            correlation_id: Some(self.correlation_id.to_string()),
            kind: Some(self.kind.into_string()),
            seq: self.seq,
            body: self.body,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue `{0}` to route the message to (is the request type's queue declared?)")]
    Unroutable(String),
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("{0}")]
    Amqp(String),
}

/// The host's view of the message broker.
pub trait Broker: Send + Sync + 'static {
    /// Publishes a request and resolves once the broker has confirmed it.
    fn publish(
        &self,
        request: OutgoingRequest,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Tells workers that a request is cancelled (fanout, §2.4). Best effort.
    fn publish_cancel(
        &self,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// A publish's confirm did not come in time: the link may be half-open (packets stop,
    /// TCP stays open), which heartbeats notice only much later. The broker checks its
    /// connection now and reconnects if it is dead. Returns at once.
    fn confirm_timed_out(&self) {}

    /// `queue`'s ready messages and consumers now (a passive declare: one round trip), or why
    /// that could not be told (not connected, no such queue). `serving` asks every few seconds,
    /// and the console reads its answers.
    fn look(&self, queue: &str) -> impl Future<Output = crate::console::cluster::Look> + Send;

    /// This host's reply queue while connected: where other hosts send hand-offs for it.
    fn own_queue(&self) -> Option<String>;

    /// Sends a claim to every host (the `taskgate.tasks` fanout, §4.5). Best effort.
    fn publish_claim(
        &self,
        message: HostMessage,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// Sends a message to another host's reply queue. Resolves once the message is handed
    /// to the broker, in order with this host's earlier sends: a hand-off and the replies
    /// that follow it must arrive in the order they were sent, so the broker's confirm is
    /// not waited for here (a message that finds no queue is logged, §4.5).
    fn send_to_host(
        &self,
        queue: Arc<str>,
        message: HostMessage,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

#[cfg(test)]
mod reply_json_tests {
    #![allow(clippy::unwrap_used)]
    use super::reply_json;

    #[test]
    fn a_reply_body_is_json_or_nothing() {
        assert_eq!(
            reply_json(br#"{"n":1}"#.to_vec()).unwrap().get(),
            r#"{"n":1}"#
        );
        assert_eq!(reply_json(b" [1, 2]\n".to_vec()).unwrap().get(), "[1, 2]");
        assert!(reply_json(b"{\"n\":".to_vec()).is_none(), "cut short");
        assert!(reply_json(b"not json".to_vec()).is_none());
        assert!(reply_json(vec![b'"', 0xff, b'"']).is_none(), "not UTF-8");
        assert!(reply_json(Vec::new()).is_none(), "empty");
    }
}
