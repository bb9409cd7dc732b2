//! What the request runner needs from a broker, as plain types: a delivered request, a
//! reply, somewhere to publish replies and how a delivery is settled (ack / requeue).
//! [`crate::rabbitmq`] implements them on lapin, [`crate::testing`] in memory (the Node and
//! Python SDKs have the same seam in `transport.ts` / `transport.py`).
//!
//! Both the runner and [`crate::context`] depend on this module, and it depends on
//! neither: a handler's [`crate::Context`] publishes chunks through the same [`Transport`]
//! the runner publishes the final reply through.

use futures_util::future::BoxFuture;
use taskgate_protocol::Identity;

use crate::retry::RetryPolicy;
pub(crate) use taskgate_protocol::ReplyKind;

/// Why a reply or an ack did not reach the broker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TransportError(pub String);

/// A reply's publisher confirm, still to be awaited.
pub(crate) type PendingConfirm = BoxFuture<'static, Result<(), TransportError>>;

/// A reply message (protocol §2.3).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub reply_to: String,
    pub correlation_id: String,
    pub kind: ReplyKind,
    /// `x-seq`, on chunks only.
    pub seq: Option<u64>,
    pub body: Vec<u8>,
}

/// Where replies go. `publish` resolves once the message is handed to the broker's
/// channel, in call order, and returns its confirm; one channel carries all replies, so
/// RabbitMQ keeps them in order.
pub(crate) trait Transport: Send + Sync + 'static {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, TransportError>>;
}

/// A request message as delivered (protocol §2.2), nothing trusted yet.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delivery {
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub request_type: Option<String>,
    pub deadline_ms: Option<i64>,
    pub streams: bool,
    pub redelivered: bool,
    /// Header `x-identity`, when present and well-formed.
    pub identity: Option<Identity>,
    /// Header `traceparent` (W3C trace context, protocol §3.10), as received.
    pub traceparent: Option<String>,
    pub body: Vec<u8>,
    /// Header `x-attempt` (protocol §3.12); 0 (absent) is the first attempt, as 1.
    pub attempt: u32,
    /// Header `x-retry`: the request type's retry policy, if it has one.
    pub retry: Option<RetryPolicy>,
}

/// What the runner tells the broker about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done with it (answered, or nothing to answer).
    Ack,
    /// Its replies did not all reach the broker: back to the queue, for another try.
    Requeue,
    /// Failed retryably (protocol §3.12): republish it as attempt `attempt` to the wait
    /// queue of `delay_ms`, then ack it. When the republish fails, the delivery is requeued
    /// and the error returned.
    Retry { attempt: u32, delay_ms: u64 },
}
