//! The idle-connections case: how much host memory one connected, idle Socket.IO
//! WebSocket costs.
//!
//! The clients live in a child process (`taskgate-bench idle-clients`, this same binary),
//! so their memory and file descriptors are not the host's nor this process's. The child
//! opens the connections (a few hundred handshakes at a time), answers the host's
//! engine.io pings so nothing times out, prints `connected N` and holds them until its
//! stdin closes. The host's resident memory (`VmRSS`) is read before and after; the
//! difference divided by the connections is the cost of one.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::procs;
use crate::sio::{self, Incoming};

/// Handshakes in progress at once in the child.
const CONNECT_CONCURRENCY: usize = 256;
/// How long the child may take to open all connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(240);
/// Pause between the last connection and the memory reading, so the host's tasks for
/// each connection have run and settled.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: u64,
    pub host_rss_before_kib: u64,
    pub host_rss_after_kib: u64,
    pub host_peak_rss_kib: u64,
    /// (after − before) ÷ connections.
    pub host_kib_per_connection: f64,
    pub connect_seconds: f64,
}

impl IdleReport {
    pub fn print(&self) {
        println!(
            "idle: {} connections in {:.1} s; host RSS {:.1} → {:.1} MiB (peak {:.1} MiB): {:.1} KiB per connection",
            self.connections,
            self.connect_seconds,
            self.host_rss_before_kib as f64 / 1024.0,
            self.host_rss_after_kib as f64 / 1024.0,
            self.host_peak_rss_kib as f64 / 1024.0,
            self.host_kib_per_connection
        );
    }
}

/// Measures the host `host_pid` listening on `addr` with `connections` idle connections.
pub async fn measure(
    addr: SocketAddr,
    host_pid: u32,
    connections: u64,
) -> anyhow::Result<IdleReport> {
    let before = procs::rss_kib(host_pid)?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut child = Command::new(exe)
        .args([
            "idle-clients",
            "--addr",
            &addr.to_string(),
            "--connections",
            &connections.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the idle clients")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("idle clients: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let started = std::time::Instant::now();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(n) = line.strip_prefix("connected ") {
                return n.trim().parse::<u64>().map_err(anyhow::Error::from);
            }
            if let Some(why) = line.strip_prefix("failed ") {
                bail!("idle clients failed: {why}");
            }
        }
        bail!("the idle clients exited before connecting")
    })
    .await
    .map_err(|_| anyhow!("the idle clients did not connect within {CONNECT_TIMEOUT:?}"))??;
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let after = procs::rss_kib(host_pid)?;
    let peak = procs::peak_rss_kib(host_pid)?;
    // Closing stdin tells the child to close its connections and exit.
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    Ok(IdleReport {
        connections: connected,
        host_rss_before_kib: before,
        host_rss_after_kib: after,
        host_peak_rss_kib: peak,
        host_kib_per_connection: after.saturating_sub(before) as f64 / connected.max(1) as f64,
        connect_seconds,
    })
}

/// The child process: opens `connections` Socket.IO connections to `addr`, keeps them
/// alive, prints `connected N` (or `failed …`), and exits when stdin closes.
pub async fn clients(addr: SocketAddr, connections: u64) -> anyhow::Result<()> {
    let opened: Vec<_> = stream::iter(0..connections)
        .map(|_| sio::connect(addr, false))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let mut streams = Vec::with_capacity(opened.len());
    for result in opened {
        match result {
            Ok(ws) => streams.push(ws),
            Err(e) => {
                println!("failed after {} connections: {e}", streams.len());
                bail!("connecting: {e}");
            }
        }
    }
    println!("connected {}", streams.len());
    let holders: Vec<_> = streams
        .into_iter()
        .map(|ws| tokio::spawn(hold(ws)))
        .collect();
    // Wait for the parent to close our stdin (or to die).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    for holder in holders {
        holder.abort();
    }
    Ok(())
}

/// Answers pings until the connection ends.
async fn hold(mut ws: sio::SioStream) {
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Text(text) = message {
            if let Ok(Incoming::Ping) = sio::decode(text.as_str()) {
                if ws.send(Message::text(sio::PONG)).await.is_err() {
                    return;
                }
            }
        }
    }
}
