//! Clients that hold the console's live stream (`GET /console/api/events`, server-sent
//! events) open, as operators' browser tabs do, for `--phases consoles` (issue 15: ten
//! consoles open must not move the relay's numbers).
//!
//! A minimal HTTP/1.1 client over a tokio `TcpStream`: the benchmark only needs to send one
//! GET and count `event: overview` lines, and a full HTTP client would add a dependency for
//! that. Counting the events shows the stream was live during the phase, not just accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The console's live stream (README, "The operator console").
pub const EVENTS_PATH: &str = "/console/api/events";
/// One pushed overview, as axum's SSE writer frames the `event` field: a whole line.
const EVENT_LINE: &[u8] = b"\nevent: overview\n";
/// A response head longer than this is not the console's.
const MAX_HEAD_BYTES: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Open console streams, each read by its own task until [`Consoles::close`].
pub struct Consoles {
    readers: Vec<JoinHandle<anyhow::Result<()>>>,
    events: Arc<AtomicU64>,
}

impl Consoles {
    /// Opens `count` streams on the host at `addr`; each has answered 200 with an event
    /// stream when this returns.
    pub async fn open(addr: SocketAddr, count: u32) -> anyhow::Result<Self> {
        let events = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (stream, after_head) = tokio::time::timeout(CONNECT_TIMEOUT, subscribe(addr))
                .await
                .map_err(|_| anyhow!("the console's event stream did not answer in time"))??;
            readers.push(tokio::spawn(read_events(
                stream,
                after_head,
                Arc::clone(&events),
            )));
        }
        Ok(Consoles { readers, events })
    }

    /// Closes the streams; returns the overview events they received in all. A stream the
    /// host ended or broke while open is an error (the console did not stay live).
    pub async fn close(self) -> anyhow::Result<u64> {
        let mut failure = None;
        for reader in self.readers {
            if reader.is_finished() {
                match reader.await {
                    Ok(Ok(())) => {
                        failure = failure.or(Some(anyhow!("the host ended a console stream")));
                    }
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(e) => failure = failure.or(Some(anyhow!("console reader panicked: {e}"))),
                }
            } else {
                reader.abort();
            }
        }
        match failure {
            Some(e) => Err(e.context("a console stream")),
            None => Ok(self.events.load(Ordering::Relaxed)),
        }
    }
}

/// Sends the GET and reads the response head; returns the stream and the body bytes that
/// arrived with the head.
async fn subscribe(addr: SocketAddr) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the console at {addr}"))?;
    let request =
        format!("GET {EVENTS_PATH} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            break end + 4;
        }
        if received.len() > MAX_HEAD_BYTES {
            bail!("the console's response head is over {MAX_HEAD_BYTES} bytes");
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("the host closed the console stream before answering");
        }
        received.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!(
            "GET {EVENTS_PATH} answered {status_line:?} (is [console] enabled, and the benchmark on loopback?)"
        );
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: text/event-stream")
    {
        bail!("GET {EVENTS_PATH} is not an event stream: {head}");
    }
    Ok((stream, received[head_end..].to_vec()))
}

/// Counts overview events until the host closes the stream (or the task is aborted).
async fn read_events(
    mut stream: TcpStream,
    first: Vec<u8>,
    events: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut counter = EventCounter::default();
    events.fetch_add(counter.feed(&first), Ordering::Relaxed);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        events.fetch_add(counter.feed(&buf[..n]), Ordering::Relaxed);
    }
}

/// Counts [`EVENT_LINE`]s in a byte stream that arrives in arbitrary pieces (a line may be
/// split between two reads; chunked-encoding sizes between events do not matter).
#[derive(Debug)]
struct EventCounter {
    /// The end of the previous piece that could still begin an event line.
    carry: Vec<u8>,
}

impl Default for EventCounter {
    /// The stream starts at the beginning of a line.
    fn default() -> Self {
        EventCounter {
            carry: b"\n".to_vec(),
        }
    }
}

impl EventCounter {
    fn feed(&mut self, piece: &[u8]) -> u64 {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(piece);
        let mut count = 0;
        let mut from = 0;
        while let Some(at) = find(&data[from..], EVENT_LINE) {
            count += 1;
            // The closing newline may open the next line.
            from += at + EVENT_LINE.len() - 1;
        }
        let keep_from = data.len().saturating_sub(EVENT_LINE.len() - 1).max(from);
        self.carry = data[keep_from..].to_vec();
        count
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_EVENTS: &[u8] =
        b"4a\r\nevent: overview\ndata: {\"a\":1}\n\n\r\n4a\r\nevent: overview\ndata: {}\n\n\r\n: keep\n\n";

    #[test]
    fn counts_events_however_the_stream_is_cut() {
        for cut in 1..TWO_EVENTS.len() {
            let mut counter = EventCounter::default();
            let total: u64 = TWO_EVENTS
                .chunks(cut)
                .map(|piece| counter.feed(piece))
                .sum();
            assert_eq!(total, 2, "pieces of {cut} bytes");
        }
    }

    #[test]
    fn other_events_and_comments_are_not_counted() {
        let mut counter = EventCounter::default();
        assert_eq!(
            counter.feed(b"event: error\ndata: x\n\n: keep-alive\n\n"),
            0
        );
        assert_eq!(counter.feed(b"data: event: overview\n"), 0);
        // At the very start of the stream, the line counts.
        assert_eq!(EventCounter::default().feed(b"event: overview\n"), 1);
    }
}
