//! The connections served by [`super::connection`], and the sending side of them: acks
//! and `response` events are encoded into frames here, queued in the connection's outbox
//! and written by the connection's own task.
//!
//! An outbox is bounded by the host's [`SlowClientPolicy`] (`client_backlog_bytes`): a
//! client that falls further behind is dropped, as over socketioxide. Its queue allocates nothing until the first
//! frame, so an idle connection costs only its task.
//!
//! Chunks may linger (`[host] chunk_linger`): a connection whose outbox holds only chunks
//! lets them wait a moment so that later frames leave in the same write. Acks, results and
//! errors never wait, and take the chunks queued before them along. Why: a write to a
//! client costs the host far more than its bytes (mostly the kernel waking the reader), and
//! chunks spread over many connections went out only a few to a write; the measurements
//! are in docs/performance.md.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use taskgate_protocol::{ErrorBody, ReplyKind};
use tokio::sync::Notify;

use super::packet;
use crate::sink::{
    record_slow_client_drop, AckBody, ClientSink, DropReporter, EmitError, ResponseEvent,
};
use crate::transport::SlowClientPolicy;

/// Names one connection served by the host's own WebSocket transport.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WsConnId(u64);

impl fmt::Debug for WsConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws-{}", self.0)
    }
}

impl fmt::Display for WsConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The ack callback of one `request`: the ack id the client sent, if any.
#[derive(Debug)]
pub struct WsAck {
    pub conn: WsConnId,
    pub id: Option<u64>,
}

/// Why the host ends a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The client fell too far behind (or an ack could not be queued).
    Dropped,
    /// The host is shutting down.
    Shutdown,
}

/// Frames' worth of queue capacity a connection keeps between bursts.
const KEPT_CAPACITY: usize = 64;

/// Chunks of this many bytes fill a write well enough: they leave without lingering.
pub const LINGER_MAX_BYTES: usize = 16 * 1024;

/// Whether a frame may wait for others to share its write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Acks, results, errors: written as soon as the task runs.
    Now,
    /// Chunks: may linger (`chunk_linger`) so that more leave in the same write.
    MayLinger,
}

/// What [`Conn::take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The connection is to close.
    pub closing: Option<Closing>,
    /// Only chunks were queued, and they were left to linger.
    pub lingering: bool,
}

#[derive(Default)]
struct Outbox {
    frames: VecDeque<String>,
    bytes: usize,
    /// A frame that must not wait is queued.
    urgent: bool,
    closing: Option<Closing>,
}

impl Outbox {
    fn may_linger(&self) -> bool {
        !self.urgent
            && self.closing.is_none()
            && !self.frames.is_empty()
            && self.bytes < LINGER_MAX_BYTES
    }
}

/// What the hub and a connection's task share.
pub struct Conn {
    outbox: Mutex<Outbox>,
    /// Wakes the task when frames were queued or the connection is to close.
    wake: Notify,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves the queued frames into `into` (which the task keeps, so its capacity is
    /// reused) and says whether the connection is to close. With `linger`, frames that
    /// may all wait ([`Urgency::MayLinger`], less than [`LINGER_MAX_BYTES`]) stay queued
    /// (still counted against the backlog limit) and `lingering` says so.
    pub fn take(&self, into: &mut VecDeque<String>, linger: bool) -> Taken {
        // After a burst, the drained queue would keep its capacity for the connection's
        // whole life: give it back.
        if into.is_empty() && into.capacity() > KEPT_CAPACITY {
            *into = VecDeque::new();
        }
        let mut outbox = self.lock();
        if linger && outbox.may_linger() {
            return Taken {
                closing: None,
                lingering: true,
            };
        }
        std::mem::swap(&mut outbox.frames, into);
        outbox.bytes = 0;
        outbox.urgent = false;
        Taken {
            closing: outbox.closing,
            lingering: false,
        }
    }

    /// Why the host is closing the connection, if it is.
    pub fn closing(&self) -> Option<Closing> {
        self.lock().closing
    }

    /// Waits until frames are queued or the connection is to close.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Queues a frame unless the client already left more unread than `policy` allows.
    pub fn push(
        &self,
        frame: String,
        policy: &SlowClientPolicy,
        urgency: Urgency,
    ) -> Result<(), EmitError> {
        let mut outbox = self.lock();
        if outbox.closing.is_some() {
            return Err(EmitError::Gone);
        }
        let was_empty = outbox.frames.is_empty();
        let waiting = if was_empty { 0 } else { outbox.bytes };
        if !policy.fits(waiting, frame.len()) {
            return Err(EmitError::Full);
        }
        outbox.bytes += frame.len();
        outbox.frames.push_back(frame);
        outbox.urgent |= urgency == Urgency::Now;
        // A chunk joining chunks already queued changes nothing for the task: it was woken
        // by the first, and writes them all when they stop lingering.
        let wake = was_empty || !outbox.may_linger();
        drop(outbox);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    fn close(&self, why: Closing) -> bool {
        let mut outbox = self.lock();
        if outbox.closing.is_some() {
            return false;
        }
        outbox.closing = Some(why);
        drop(outbox);
        self.wake.notify_one();
        true
    }
}

/// The registry of connections served by the host's WebSocket transport.
pub struct Hub {
    conns: DashMap<WsConnId, Arc<Conn>>,
    next_id: AtomicU64,
    /// When a client counts as too slow.
    policy: SlowClientPolicy,
    /// Where dropped clients are reported (the gateway).
    dropped: DropReporter<WsConnId>,
}

impl Hub {
    pub fn new(policy: SlowClientPolicy, dropped: DropReporter<WsConnId>) -> Self {
        Hub {
            conns: DashMap::new(),
            next_id: AtomicU64::new(1),
            policy,
            dropped,
        }
    }

    /// A new connection, before it is announced to the client.
    pub fn register(&self) -> (WsConnId, Arc<Conn>) {
        let id = WsConnId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let conn = Arc::new(Conn {
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
        });
        self.conns.insert(id, conn.clone());
        (id, conn)
    }

    /// The connection's task ended.
    pub fn unregister(&self, id: WsConnId) {
        self.conns.remove(&id);
    }

    /// When a client counts as too slow.
    pub fn policy(&self) -> &SlowClientPolicy {
        &self.policy
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Asks every connection to say goodbye and close (shutdown).
    pub fn close_all(&self) {
        for conn in self.conns.iter() {
            conn.close(Closing::Shutdown);
        }
    }

    fn push(&self, id: WsConnId, frame: String, urgency: Urgency) -> Result<(), EmitError> {
        let conn = self.conns.get(&id).ok_or(EmitError::Gone)?;
        conn.push(frame, &self.policy, urgency)
    }

    pub fn ack(&self, ack: WsAck, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError> {
        let body = AckBody {
            ok: outcome.is_ok(),
            error: outcome.err(),
        };
        self.ack_with(ack, &body)
    }

    /// An ack with any body (`attach`'s); a client that asked for no ack gets none, as over
    /// socketioxide.
    pub fn ack_with(&self, ack: WsAck, body: &impl serde::Serialize) -> Result<(), EmitError> {
        let Some(id) = ack.id else {
            return Ok(());
        };
        self.push(ack.conn, encode(packet::ack(id, body))?, Urgency::Now)
    }

    pub fn emit(&self, id: WsConnId, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        // The envelope around the data: id, type, seq and the keys take ≈ 60 bytes more.
        let size_hint = 64
            + event.id.len()
            + event.data.map_or(0, |d| d.get().len())
            + event.error.map_or(0, |e| e.message.len() + 64);
        let urgency = match event.kind {
            ReplyKind::Chunk => Urgency::MayLinger,
            ReplyKind::Result | ReplyKind::Error => Urgency::Now,
        };
        self.push(id, encode(packet::response(event, size_hint))?, urgency)
    }

    /// Drops a client that does not keep up: its requests are forgotten now (reported to
    /// the gateway), its task says goodbye and closes the socket as soon as it can.
    pub fn disconnect(&self, id: WsConnId, why: &str) {
        let Some(conn) = self.conns.get(&id).map(|c| c.clone()) else {
            return;
        };
        if !conn.close(Closing::Dropped) {
            return;
        }
        record_slow_client_drop(&id, why);
        self.dropped.report(id);
    }
}

fn encode(frame: Result<String, serde_json::Error>) -> Result<String, EmitError> {
    frame.map_err(|_| EmitError::Encode)
}

impl ClientSink for Hub {
    type Conn = WsConnId;
    type Ack = WsAck;

    fn ack(&self, ack: WsAck, outcome: Result<(), &ErrorBody>) -> Result<(), EmitError> {
        Hub::ack(self, ack, outcome)
    }

    fn ack_json(&self, ack: WsAck, body: &serde_json::Value) -> Result<(), EmitError> {
        Hub::ack_with(self, ack, body)
    }

    fn emit(&self, conn: WsConnId, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        Hub::emit(self, conn, event)
    }

    fn disconnect(&self, conn: WsConnId) {
        Hub::disconnect(
            self,
            conn,
            "its backlog passed the limit or an ack could not be sent",
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use futures_util::FutureExt;

    use super::*;
    use crate::sink::ClientDropped;

    /// A hub whose outboxes hold `backlog_bytes`.
    fn hub(backlog_bytes: usize) -> Hub {
        Hub::new(
            SlowClientPolicy {
                backlog_bytes,
                ..SlowClientPolicy::default()
            },
            DropReporter::none(),
        )
    }

    #[tokio::test]
    async fn an_outbox_takes_one_frame_of_any_size_then_stays_under_its_limit() {
        let hub = hub(10);
        let (id, conn) = hub.register();
        hub.push(id, "x".repeat(100), Urgency::Now).unwrap();
        assert_eq!(hub.push(id, "y".into(), Urgency::Now), Err(EmitError::Full));
        let mut frames = VecDeque::new();
        assert_eq!(conn.take(&mut frames, false).closing, None);
        assert_eq!(frames.len(), 1);
        // Taken frames no longer count.
        hub.push(id, "y".repeat(6), Urgency::Now).unwrap();
        hub.push(id, "z".repeat(4), Urgency::Now).unwrap();
        assert_eq!(hub.push(id, "w".into(), Urgency::Now), Err(EmitError::Full));
    }

    #[tokio::test]
    async fn acks_without_an_id_send_nothing_and_closed_or_unknown_connections_are_gone() {
        let hub = hub(1000);
        let (id, conn) = hub.register();
        hub.ack(WsAck { conn: id, id: None }, Ok(())).unwrap();
        hub.ack(
            WsAck {
                conn: id,
                id: Some(9),
            },
            Ok(()),
        )
        .unwrap();
        let mut frames = VecDeque::new();
        conn.take(&mut frames, false);
        assert_eq!(Vec::from(frames), vec![r#"439[{"ok":true}]"#.to_owned()]);

        hub.close_all();
        assert_eq!(hub.push(id, "a".into(), Urgency::Now), Err(EmitError::Gone));
        assert_eq!(
            conn.take(&mut VecDeque::new(), false).closing,
            Some(Closing::Shutdown)
        );
        hub.unregister(id);
        assert_eq!(hub.push(id, "a".into(), Urgency::Now), Err(EmitError::Gone));
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn a_burst_leaves_no_large_queue_behind() {
        let hub = hub(1 << 20);
        let (id, conn) = hub.register();
        for i in 0..1000 {
            hub.push(id, i.to_string(), Urgency::Now).unwrap();
        }
        let mut frames = VecDeque::new();
        conn.take(&mut frames, false);
        assert_eq!(frames.len(), 1000);
        frames.clear(); // written
        conn.take(&mut frames, false);
        assert!(frames.capacity() <= KEPT_CAPACITY);
        assert!(conn.lock().frames.capacity() <= KEPT_CAPACITY);
    }

    #[tokio::test]
    async fn a_dropped_client_is_reported_once_to_the_gateway() {
        struct Recorder(Mutex<Vec<WsConnId>>);
        impl ClientDropped<WsConnId> for Recorder {
            fn client_dropped(self: Arc<Self>, conn: WsConnId) {
                self.0.lock().unwrap().push(conn);
            }
        }
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let to: Arc<dyn ClientDropped<WsConnId>> = recorder.clone();
        let hub = Hub::new(
            SlowClientPolicy::default(),
            DropReporter::new(Arc::downgrade(&to)),
        );
        let (id, conn) = hub.register();
        hub.disconnect(id, "test");
        hub.disconnect(id, "test");
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(*recorder.0.lock().unwrap(), vec![id]);
        assert_eq!(
            conn.take(&mut VecDeque::new(), false).closing,
            Some(Closing::Dropped)
        );
    }

    #[tokio::test]
    async fn chunks_linger_until_an_urgent_frame_or_a_full_write_joins_them() {
        let hub = hub(1 << 20);
        let (id, conn) = hub.register();
        let mut frames = VecDeque::new();
        hub.push(id, "c1".into(), Urgency::MayLinger).unwrap();
        hub.push(id, "c2".into(), Urgency::MayLinger).unwrap();
        let taken = conn.take(&mut frames, true);
        assert!(taken.lingering);
        assert!(frames.is_empty());
        // Lingering frames still count against the backlog.
        assert_eq!(conn.lock().bytes, 4);
        // Without the linger (its time is up) they all go.
        assert!(!conn.take(&mut frames, false).lingering);
        assert_eq!(Vec::from(std::mem::take(&mut frames)), ["c1", "c2"]);

        hub.push(id, "c3".into(), Urgency::MayLinger).unwrap();
        hub.push(id, "r".into(), Urgency::Now).unwrap();
        assert!(!conn.take(&mut frames, true).lingering);
        assert_eq!(Vec::from(std::mem::take(&mut frames)), ["c3", "r"]);

        // The urgency is spent with the frames that carried it.
        hub.push(id, "c4".into(), Urgency::MayLinger).unwrap();
        assert!(conn.take(&mut frames, true).lingering);
        hub.push(id, "x".repeat(LINGER_MAX_BYTES), Urgency::MayLinger)
            .unwrap();
        assert!(!conn.take(&mut frames, true).lingering);
        assert_eq!(frames.len(), 2);
    }

    #[tokio::test]
    async fn the_task_is_woken_by_the_first_chunk_and_by_what_may_not_wait() {
        let hub = hub(1 << 20);
        let (id, conn) = hub.register();
        let woken = |conn: &Conn| conn.woken().now_or_never().is_some();
        hub.push(id, "c1".into(), Urgency::MayLinger).unwrap();
        assert!(woken(&conn));
        hub.push(id, "c2".into(), Urgency::MayLinger).unwrap();
        assert!(
            !woken(&conn),
            "a chunk joining lingering chunks needs no wake-up"
        );
        hub.push(id, "r".into(), Urgency::Now).unwrap();
        assert!(woken(&conn));
    }
}
