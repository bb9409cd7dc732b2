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
}
