//! Issue 20 #2: the host bounds what a connection may cost before it is a Socket.IO
//! client. A request head trickled slowly is cut off after `[limits] handshake_timeout_ms`;
//! connections that send nothing count against `[limits] max_pending_connections` (more
//! are closed at once) and are closed after the same timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

const TIMEOUT: Duration = Duration::from_millis(800);
const MAX_PENDING: usize = 2;

/// Reads until the host closes the connection (or `limit` passes: `None`); returns what
/// it said.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut said = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut said)).await {
        Ok(_) => Some(String::from_utf8_lossy(&said).into_owned()),
        Err(_) => None,
    }
}

async fn healthz(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("answered")
}

#[tokio::test]
async fn slow_heads_and_silent_sockets_are_cut_off() {
    let (addr, stop, _plugins) = support::start_host(&format!(
        "handshake_timeout_ms = {}\nmax_pending_connections = {MAX_PENDING}",
        TIMEOUT.as_millis()
    ))
    .await;
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));

    // A head trickled one byte at a time is never answered: the connection is closed
    // once the timeout passed, whatever still trickles in.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(40)
    );
    let started = Instant::now();
    let mut cut_off = false;
    for byte in head.as_bytes() {
        if slow.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(n)) => {
                let said = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    !said.contains(" 200 "),
                    "a trickled head was answered: {said}"
                );
            }
            Err(_) => {}
        }
        if started.elapsed() > TIMEOUT * 4 {
            break;
        }
    }
    assert!(
        cut_off,
        "a head trickled for {:?} was not cut off",
        started.elapsed()
    );
    assert!(started.elapsed() >= TIMEOUT / 2, "cut off too early");

    // Silent sockets: as many as the pending limit are kept (for the timeout)…
    let mut silent = Vec::new();
    for _ in 0..MAX_PENDING {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …one more is closed at once…
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_millis(500))
            .await
            .is_some(),
        "a connection beyond the pending limit is closed at once"
    );
    // …and the others once the timeout passed.
    for stream in &mut silent {
        assert!(
            closed_within(stream, TIMEOUT * 3).await.is_some(),
            "a silent connection is closed after the timeout"
        );
    }
    // Then there is room again.
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
    stop.cancel();
}
