//! Phase "host": C Socket.IO connections to the host, each a closed loop keeping K echo
//! requests in flight. A request counts as done at its final `response` (result or error),
//! or at a refusing ack; a new one is sent at once while the window is open.
//!
//! One task per connection owns both halves of its WebSocket, so there is no channel hop
//! between reading a response and sending the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use taskgate_protocol::ReplyKind;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::sio::{self, Incoming, SioStream};
use crate::stats::{TaskStats, Window};

/// How long a task waits for its last in-flight requests after the window closes.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Opens `connections` Socket.IO connections concurrently, before the phase's clock starts
/// (connection set-up is not what this benchmark measures).
pub async fn connect_all(addr: SocketAddr, connections: usize) -> anyhow::Result<Vec<SioStream>> {
    let mut streams = Vec::with_capacity(connections);
    let handles: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(sio::connect(addr)))
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let stream = handle
            .await
            .map_err(|e| anyhow!("connect task {i}: {e}"))?
            .with_context(|| format!("Socket.IO connection {i} to {addr}"))?;
        streams.push(stream);
    }
    Ok(streams)
}

/// Runs one connection's closed loop until the window has closed and its requests are
/// done (or [`DRAIN`] has passed).
pub async fn run_connection(
    ws: SioStream,
    in_flight: usize,
    request_type: Arc<str>,
    payload_json: Arc<str>,
    window: Window,
) -> anyhow::Result<TaskStats> {
    let mut stats = TaskStats::new()?;
    let (mut sink, mut stream) = ws.split();
    // Request id = ack id, so a refusing ack names the request it refuses.
    let mut pending: HashMap<u64, Instant> = HashMap::with_capacity(in_flight * 2);
    let mut next_id: u64 = 0;
    for _ in 0..in_flight {
        send_request(
            &mut sink,
            &mut pending,
            &mut next_id,
            &request_type,
            &payload_json,
        )
        .await?;
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
            Incoming::Ack { ack_id, ok: false } => Some((ack_id, false)),
            Incoming::Response { id, kind } => match kind {
                ReplyKind::Chunk => None,
                ReplyKind::Result | ReplyKind::Error => {
                    let id = id
                        .parse()
                        .map_err(|_| anyhow!("response for an id we never sent: {id:?}"))?;
                    Some((id, kind == ReplyKind::Result))
                }
            },
            Incoming::ConnectError(message) => bail!("the host disconnected us: {message}"),
            Incoming::Ack { ok: true, .. }
            | Incoming::Ignored
            | Incoming::Open
            | Incoming::Connected
            | Incoming::OtherEvent(_) => None,
        };
        if let Some((id, ok)) = finished {
            // An error response after a refusing ack cannot happen (protocol §1); if it
            // did, the second one finds nothing pending and is ignored.
            if let Some(started) = pending.remove(&id) {
                let now = Instant::now();
                stats.record(&window, started, now, ok);
                if window.open_for_new(now) {
                    send_request(
                        &mut sink,
                        &mut pending,
                        &mut next_id,
                        &request_type,
                        &payload_json,
                    )
                    .await?;
                }
            }
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    Ok(stats)
}

async fn send_request(
    sink: &mut SplitSink<SioStream, Message>,
    pending: &mut HashMap<u64, Instant>,
    next_id: &mut u64,
    request_type: &str,
    payload_json: &str,
) -> anyhow::Result<()> {
    let id = *next_id;
    *next_id += 1;
    let frame = sio::encode_request(id, &id.to_string(), request_type, payload_json);
    pending.insert(id, Instant::now());
    sink.send(Message::text(frame))
        .await
        .context("sending a request")?;
    Ok(())
}
