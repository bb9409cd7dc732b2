//! Phase "host": C Socket.IO connections to the host, each a closed loop keeping K echo
//! requests in flight. A request counts as done at its final `response` (result or error),
//! or at a refusing ack; a new one is sent at once while the window is open. A final
//! response that was not preceded by its `{"ok":true}` ack breaks protocol §1 (the host
//! acks before relaying any response): it still completes the request, but is counted as
//! an error and in `missing_acks`, so a run with a broken ack path cannot look healthy.
//!
//! One task per connection owns both halves of its WebSocket, so there is no channel hop
//! between reading a response and sending the next request. Connections outlive one run of
//! the loop: the benchmark alternates slices of phase host and phase direct on the same
//! connections (see `main`), so a run hands its connection back.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{SplitSink, SplitStream, StreamExt};
use futures_util::SinkExt;
use taskgate_protocol::ReplyKind;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::sio::{self, Incoming, SioStream};
use crate::stats::{TaskStats, Window};

/// How long a task waits for its last in-flight requests after the window closes.
pub const DRAIN: Duration = Duration::from_secs(10);

/// One Socket.IO connection of the load, between runs of its closed loop.
pub struct HostConnection {
    sink: SplitSink<SioStream, Message>,
    stream: SplitStream<SioStream>,
    /// Request ids (= ack ids) keep counting across runs, so a straggler from an earlier
    /// run can never be taken for a request of this one.
    next_id: u64,
}

impl HostConnection {
    fn new(ws: SioStream) -> Self {
        let (sink, stream) = ws.split();
        HostConnection {
            sink,
            stream,
            next_id: 0,
        }
    }

    /// Says goodbye with a WebSocket close frame.
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
    }
}

/// Opens `connections` Socket.IO connections concurrently, before the phase's clock starts
/// (connection set-up is not what this benchmark measures).
/// With `session` every connection asks for a session (protocol §4.1).
pub async fn connect_all(
    addr: SocketAddr,
    connections: usize,
    session: bool,
) -> anyhow::Result<Vec<HostConnection>> {
    let mut streams = Vec::with_capacity(connections);
    let handles: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(sio::connect(addr, session)))
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let stream = handle
            .await
            .map_err(|e| anyhow!("connect task {i}: {e}"))?
            .with_context(|| format!("Socket.IO connection {i} to {addr}"))?;
        streams.push(HostConnection::new(stream));
    }
    Ok(streams)
}

/// Runs one connection's closed loop until the window has closed and its requests are
/// done (or [`DRAIN`] has passed); returns the connection for the next run.
pub async fn run_connection(
    mut conn: HostConnection,
    in_flight: usize,
    request_type: Arc<str>,
    payload_json: Arc<str>,
    window: Window,
) -> anyhow::Result<(HostConnection, TaskStats)> {
    let mut stats = TaskStats::new()?;
    let HostConnection {
        sink,
        stream,
        next_id,
    } = &mut conn;
    // Request id = ack id, so a refusing ack names the request it refuses.
    let mut pending = Outstanding::with_capacity(in_flight * 2);
    for _ in 0..in_flight {
        send_request(sink, &mut pending, next_id, &request_type, &payload_json).await?;
    }
    let give_up = tokio::time::Instant::from_std(window.end + DRAIN);
    loop {
        if pending.is_empty() && !window.open_for_new(Instant::now()) {
            break;
        }
        let message = match tokio::time::timeout_at(give_up, stream.next()).await {
            Err(_) => {
                stats.unfinished += pending.len() as u64;
                break;
            }
            Ok(None) => bail!("the host closed the connection"),
            Ok(Some(Err(e))) => bail!("websocket: {e}"),
            Ok(Some(Ok(message))) => message,
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("the host closed the connection: {frame:?}"),
            _ => continue,
        };
        let finished = match sio::decode(text.as_str())? {
            Incoming::Ping => {
                sink.send(Message::text(sio::PONG)).await?;
                None
            }
            Incoming::Ack { ack_id, ok } => pending.acked(ack_id, ok),
            Incoming::Response { id, kind } => {
                let id = id
                    .parse()
                    .map_err(|_| anyhow!("response for an id we never sent: {id:?}"))?;
                match kind {
                    ReplyKind::Chunk => {
                        // A chunk before its request's ack breaks protocol §1 as well.
                        if let Some(ack_seen) = pending.chunk(id) {
                            if !ack_seen {
                                stats.missing_acks += 1;
                            }
                            stats.record_chunk(&window, Instant::now());
                        }
                        None
                    }
                    ReplyKind::Result | ReplyKind::Error => {
                        pending.finished(id, kind == ReplyKind::Result)
                    }
                }
            }
            Incoming::ConnectError(message) => bail!("the host disconnected us: {message}"),
            Incoming::Ignored | Incoming::Open | Incoming::Connected | Incoming::OtherEvent(_) => {
                None
            }
        };
        // An error response after a refusing ack cannot happen (protocol §1); if it did, it
        // finds nothing pending and is ignored.
        if let Some(done) = finished {
            if !done.ack_seen {
                stats.missing_acks += 1;
            }
            let now = Instant::now();
            stats.record(&window, done.started, now, done.ok && done.ack_seen);
            if window.open_for_new(now) {
                send_request(sink, &mut pending, next_id, &request_type, &payload_json).await?;
            }
        }
    }
    Ok((conn, stats))
}

async fn send_request(
    sink: &mut SplitSink<SioStream, Message>,
    pending: &mut Outstanding,
    next_id: &mut u64,
    request_type: &str,
    payload_json: &str,
) -> anyhow::Result<()> {
    let id = *next_id;
    *next_id += 1;
    let frame = sio::encode_request(id, &id.to_string(), request_type, payload_json);
    pending.sent(id, Instant::now());
    sink.send(Message::text(frame))
        .await
        .context("sending a request")?;
    Ok(())
}

/// A request that has ended, as far as the closed loop is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub started: Instant,
    /// A `result` (not an `error` response or a refusing ack).
    pub ok: bool,
    /// Its `{"ok":true}` ack arrived before the final response (or it was a refusing ack).
    pub ack_seen: bool,
}

/// The requests one connection has in flight, keyed by request id (= ack id), and whether
/// each has been acknowledged yet.
#[derive(Debug, Default)]
pub struct Outstanding {
    requests: HashMap<u64, (Instant, bool)>,
}

impl Outstanding {
    pub fn with_capacity(capacity: usize) -> Self {
        Outstanding {
            requests: HashMap::with_capacity(capacity),
        }
    }

    pub fn sent(&mut self, id: u64, at: Instant) {
        self.requests.insert(id, (at, false));
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// An ack arrived: a refusing one ends its request; an accepting one is noted.
    /// Acks for ids not in flight are ignored.
    pub fn acked(&mut self, id: u64, ok: bool) -> Option<Done> {
        let Entry::Occupied(mut entry) = self.requests.entry(id) else {
            return None;
        };
        if ok {
            entry.get_mut().1 = true;
            None
        } else {
            let (started, _) = entry.remove();
            Some(Done {
                started,
                ok: false,
                ack_seen: true,
            })
        }
    }

    /// A chunk arrived for `id`: whether its ack came first, or `None` if `id` is not
    /// in flight.
    pub fn chunk(&self, id: u64) -> Option<bool> {
        self.requests.get(&id).map(|(_, ack_seen)| *ack_seen)
    }

    /// A final response (`result` if `ok`, else `error`) arrived for `id`.
    pub fn finished(&mut self, id: u64, ok: bool) -> Option<Done> {
        let (started, ack_seen) = self.requests.remove(&id)?;
        Some(Done {
            started,
            ok,
            ack_seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_done_at_its_final_response_after_its_ack() {
        let t = Instant::now();
        let mut pending = Outstanding::default();
        pending.sent(0, t);
        assert_eq!(pending.acked(0, true), None);
        assert_eq!(pending.len(), 1);
        assert_eq!(
            pending.finished(0, true),
            Some(Done {
                started: t,
                ok: true,
                ack_seen: true
            })
        );
        assert!(pending.is_empty());
    }

    #[test]
    fn chunks_say_whether_their_ack_came_first() {
        let t = Instant::now();
        let mut pending = Outstanding::default();
        pending.sent(4, t);
        assert_eq!(pending.chunk(4), Some(false));
        pending.acked(4, true);
        assert_eq!(pending.chunk(4), Some(true));
        assert_eq!(pending.chunk(5), None);
    }

    #[test]
    fn a_refusing_ack_ends_the_request_and_a_later_response_is_ignored() {
        let t = Instant::now();
        let mut pending = Outstanding::default();
        pending.sent(3, t);
        assert_eq!(
            pending.acked(3, false),
            Some(Done {
                started: t,
                ok: false,
                ack_seen: true
            })
        );
        assert_eq!(pending.finished(3, false), None);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_final_response_without_an_ack_is_flagged() {
        let t = Instant::now();
        let mut pending = Outstanding::default();
        pending.sent(1, t);
        pending.sent(2, t);
        assert_eq!(pending.acked(2, true), None);
        let done = pending.finished(1, true);
        assert_eq!(done.map(|d| d.ack_seen), Some(false));
        // Acks and responses for ids never sent (or already done) change nothing.
        assert_eq!(pending.acked(9, true), None);
        assert_eq!(pending.finished(1, true), None);
        assert_eq!(pending.len(), 1);
    }
}
