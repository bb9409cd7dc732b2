//! Issue 20 #1: a flood of CONNECTs to an unknown namespace over long-polling fills
//! socketioxide's packet buffer, so the CONNECT of the default namespace that follows
//! cannot be queued and socketioxide drops the socket without running its disconnect
//! handler. The connection slot and the gateway's session taken at admission must be
//! freed anyway, or such pairs lock every client out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

const MAX_CONNECTIONS: usize = 3;
/// More than socketioxide's buffer (`socket_buffer`, 1,024 packets by default).
const FLOOD: usize = 1_100;

/// One HTTP/1.1 exchange on a fresh connection; returns the status line and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the host answers")
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// Opens an engine.io long-polling session; returns its sid.
async fn open_session(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    assert!(status.contains("200"), "{status} {body}");
    let open: serde_json::Value = serde_json::from_str(body.trim_start_matches('0')).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(addr: SocketAddr, sid: &str, packets: &str) {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, body) = http(addr, "POST", &path, packets).await;
    assert!(status.contains("200"), "{status} {body}");
}

async fn connected_sockets(addr: SocketAddr) -> Option<u64> {
    let (_, metrics) = http(addr, "GET", "/metrics", "").await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("taskgate_connected_sockets "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

#[tokio::test]
async fn a_connect_flood_to_an_unknown_namespace_leaks_no_connection_slot() {
    let (addr, stop, _plugins) =
        support::start_host(&format!("max_connections = {MAX_CONNECTIONS}")).await;

    // As many flooded sessions as the host has room for.
    let flood = format!("{}40", "40/x,\u{1e}".repeat(FLOOD));
    for _ in 0..MAX_CONNECTIONS {
        let sid = open_session(addr).await;
        post(addr, &sid, &flood).await;
    }

    // None of them could be told CONNECT, so none is connected, and a new client is let in.
    let mut count = None;
    for _ in 0..100 {
        count = connected_sockets(addr).await;
        if count == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, Some(0), "connected sockets after the flood");
    let sid = open_session(addr).await;
    post(addr, &sid, "40").await;
    let (status, body) = http(
        addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        "",
    )
    .await;
    assert!(status.contains("200"), "{status} {body}");
    assert!(
        body.split('\u{1e}').any(|p| p.starts_with("40{\"sid\"")),
        "a new client is admitted: {body:?}"
    );
    assert_eq!(connected_sockets(addr).await, Some(1));

    stop.cancel();
}
