//! The client side of the host, as a trait: acknowledge a `request` and emit `response`
//! events to one connection. Both transports implement it — `socketio` over socketioxide,
//! `websocket::hub` over the host's own WebSocket transport — and `clients` routes each
//! connection to its transport; `memory` records everything for unit tests. Dropping a
//! client that does not keep up is logged and counted here, the same for both. The other
//! direction — a transport telling the gateway that a client is gone — is
//! [`ClientDropped`], reached through a [`DropReporter`].

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Weak};

use serde::Serialize;
use serde_json::value::RawValue;
use taskgate_protocol::{ErrorBody, ReplyKind};

/// The body of a `response` event (protocol §1). `data` is the worker's JSON, relayed as
/// raw bytes: the host never re-serialises what it only passes through.
#[derive(Debug, Serialize)]
pub struct ResponseEvent<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: ReplyKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a ErrorBody>,
}

impl<'a> ResponseEvent<'a> {
    pub fn chunk(id: &'a str, seq: u64, data: &'a RawValue) -> Self {
        ResponseEvent {
            id,
            kind: ReplyKind::Chunk,
            seq: Some(seq),
            data: Some(data),
            error: None,
        }
    }
    pub fn result(id: &'a str, data: &'a RawValue) -> Self {
        ResponseEvent {
            id,
            kind: ReplyKind::Result,
            seq: None,
            data: Some(data),
            error: None,
        }
    }
    pub fn error(id: &'a str, error: &'a ErrorBody) -> Self {
        ResponseEvent {
            id,
            kind: ReplyKind::Error,
            seq: None,
            data: None,
            error: Some(error),
        }
    }
}

/// A [`ResponseEvent`] that owns its data: kept when it cannot be sent at once.
#[derive(Debug, Clone)]
pub struct OwnedResponse {
    pub id: Box<str>,
    pub kind: ReplyKind,
    pub seq: Option<u64>,
    pub data: Option<Box<RawValue>>,
    pub error: Option<ErrorBody>,
}

impl OwnedResponse {
    pub fn as_event(&self) -> ResponseEvent<'_> {
        ResponseEvent {
            id: &self.id,
            kind: self.kind,
            seq: self.seq,
            data: self.data.as_deref(),
            error: self.error.as_ref(),
        }
    }

    /// Approximate size in memory, to bound what is kept per connection.
    pub fn weight(&self) -> usize {
        self.id.len() + self.data.as_ref().map_or(0, |d| d.get().len()) + 64
    }
}

impl ResponseEvent<'_> {
    pub fn to_owned_response(&self) -> OwnedResponse {
        OwnedResponse {
            id: self.id.into(),
            kind: self.kind,
            seq: self.seq,
            data: self.data.map(ToOwned::to_owned),
            error: self.error.cloned(),
        }
    }
}

/// The ack body of a `request` (protocol §1).
#[derive(Debug, Serialize)]
pub struct AckBody<'a> {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a ErrorBody>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    #[error("the connection is gone")]
    Gone,
    /// The client does not read fast enough; its send buffer is full.
    #[error("the connection's send buffer is full")]
    Full,
    #[error("the event could not be encoded")]
    Encode,
}

/// Logs and counts a client dropped because it does not keep up: one log line and one
/// metric for both transports (operators and the e2e tests look for this line).
pub fn record_slow_client_drop(conn: &dyn std::fmt::Display, reason: &str) {
    tracing::warn!(%conn, reason, "disconnecting a client that does not keep up");
    metrics::counter!(crate::metrics::SLOW_CLIENTS_DROPPED).increment(1);
}

pub trait ClientSink: Send + Sync + 'static {
    /// Identifies one client connection.
    type Conn: Copy + Eq + Hash + Debug + Send + Sync + 'static;
    /// The acknowledgement callback of one `request`.
    type Ack: Send + 'static;

    /// Sends the ack. An error means the client will never see it: the caller must end
    /// the request and drop the connection rather than leave the client waiting.
    fn ack(&self, ack: Self::Ack, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError>;
    /// Sends an ack with a body of its own (`attach`'s `{ ok, state, firstSeq }`).
    fn ack_json(&self, ack: Self::Ack, body: &serde_json::Value) -> Result<(), EmitError>;
    /// Sends a response, in order with the connection's earlier ones. `Full` means the
    /// client fell too far behind (its backlog passed the limit).
    fn emit(&self, conn: Self::Conn, event: &ResponseEvent<'_>) -> Result<(), EmitError>;
    /// Drops a connection that cannot keep up; its requests are then cleaned up through
    /// the ordinary disconnect path.
    fn disconnect(&self, conn: Self::Conn);
}

/// How a transport tells the gateway that a client is gone without the gateway having
/// asked: a slow client the transport dropped, or a connection it lost on a path that
/// runs no disconnect handler. The gateway implements it (it forgets the client's
/// requests and tells workers to stop them); `C` is the transport's connection id.
pub trait ClientDropped<C>: Send + Sync + 'static {
    /// By `Arc`: the gateway may start its deadline watcher here (a session's requests are
    /// parked with a deadline).
    fn client_dropped(self: Arc<Self>, conn: C);
}

/// A transport's handle on the [`ClientDropped`] side — one interface for both transports.
///
/// It holds the gateway weakly: the gateway owns the transports through its sink. A report
/// runs on a task of its own, because a transport may report while its caller holds
/// gateway locks (`ClientSink::disconnect` is called from inside the gateway).
pub struct DropReporter<C> {
    to: Option<Weak<dyn ClientDropped<C>>>,
}

impl<C> Clone for DropReporter<C> {
    fn clone(&self) -> Self {
        DropReporter {
            to: self.to.clone(),
        }
    }
}

impl<C: Send + 'static> DropReporter<C> {
    pub fn new(to: Weak<dyn ClientDropped<C>>) -> Self {
        DropReporter { to: Some(to) }
    }

    /// Reports to no one (tests of a transport alone).
    pub fn none() -> Self {
        DropReporter { to: None }
    }

    /// The client `conn` is gone.
    pub fn report(&self, conn: C) {
        let Some(to) = self.to.clone() else {
            return;
        };
        let report = move || {
            if let Some(to) = to.upgrade() {
                to.client_dropped(conn);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { report() });
            }
            // No runtime, no task that could hold a lock.
            Err(_) => report(),
        }
    }
}

pub mod memory {
    //! A [`ClientSink`] that records acks and events as JSON, for unit tests.
    use std::sync::Mutex;

    use serde_json::Value;

    use super::*;

    #[derive(Default)]
    pub struct MemorySink {
        events: Mutex<Vec<(u32, Value)>>,
        acks: Mutex<Vec<(u32, Value)>>,
        full: Mutex<Vec<u32>>,
        failing_acks: Mutex<Vec<u32>>,
        disconnected: Mutex<Vec<u32>>,
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl MemorySink {
        /// Events emitted to `conn`, in order.
        pub fn events(&self, conn: u32) -> Vec<Value> {
            lock(&self.events)
                .iter()
                .filter(|(c, _)| *c == conn)
                .map(|(_, v)| v.clone())
                .collect()
        }
        /// Ack bodies for `(conn, tag)` acks, in order; the tag is the test's name for the ack.
        pub fn acks(&self, tag: u32) -> Vec<Value> {
            lock(&self.acks)
                .iter()
                .filter(|(t, _)| *t == tag)
                .map(|(_, v)| v.clone())
                .collect()
        }
        /// From now on, emits to `conn` fail as if its buffer were full.
        pub fn make_full(&self, conn: u32) {
            lock(&self.full).push(conn);
        }
        /// The ack with this tag will fail to send.
        pub fn fail_ack(&self, tag: u32) {
            lock(&self.failing_acks).push(tag);
        }
        pub fn disconnected(&self) -> Vec<u32> {
            lock(&self.disconnected).clone()
        }
    }

    impl ClientSink for MemorySink {
        type Conn = u32;
        type Ack = u32;

        fn ack(&self, tag: u32, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError> {
            if lock(&self.failing_acks).contains(&tag) {
                return Err(EmitError::Full);
            }
            let body = AckBody {
                ok: outcome.is_ok(),
                error: outcome.err(),
            };
            let value = serde_json::to_value(&body).unwrap_or(Value::Null);
            lock(&self.acks).push((tag, value));
            Ok(())
        }

        fn ack_json(&self, tag: u32, body: &Value) -> Result<(), EmitError> {
            if lock(&self.failing_acks).contains(&tag) {
                return Err(EmitError::Full);
            }
            lock(&self.acks).push((tag, body.clone()));
            Ok(())
        }

        fn emit(&self, conn: u32, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
            if lock(&self.full).contains(&conn) {
                return Err(EmitError::Full);
            }
            let value = serde_json::to_value(event).map_err(|_| EmitError::Encode)?;
            lock(&self.events).push((conn, value));
            Ok(())
        }

        fn disconnect(&self, conn: u32) {
            lock(&self.disconnected).push(conn);
        }
    }
}

/// The body of the `token_expired` event (protocol §3.9), sent right before the host
/// disconnects a connection whose token expired.
#[derive(Debug, Serialize)]
pub struct TokenExpired {
    pub message: &'static str,
}

impl Default for TokenExpired {
    fn default() -> Self {
        TokenExpired {
            message: "the connection's token expired: reconnect with a fresh one",
        }
    }
}
