//! The operator console's API on a real host (real RabbitMQ, real sockets): off by default,
//! loopback-only without authentication, a strict Content-Security-Policy, and draining
//! takes the host out of `/readyz`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod support;

async fn http(addr: SocketAddr, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

async fn start(toml: &str) -> (SocketAddr, CancellationToken, support::HostGuard) {
    support::start_host_with(toml).await
}

async fn until(addr: SocketAddr, path: &str, wanted: &str) -> String {
    let mut seen = String::new();
    for _ in 0..100 {
        seen = http(addr, "GET", path).await;
        if seen.contains(wanted) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never said {wanted}: {seen}");
}

#[tokio::test]
async fn hosts_with_the_console_on_see_each_other_through_the_broker() {
    let (a, stop_a, _pa) = start("[console]\nenabled = true\n").await;
    let (b, stop_b, _pb) = start("[console]\nenabled = true\n").await;
    let id_of = |overview: &str| {
        let body = &overview[overview.find("\r\n\r\n").unwrap() + 4..];
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        json["host"]["id"].as_str().unwrap().to_owned()
    };
    let id_a = id_of(&until(a, "/console/api/overview", r#""brokerConnected":true"#).await);
    let id_b = id_of(&until(b, "/console/api/overview", r#""brokerConnected":true"#).await);
    // Every host's console shows every host (beats every 2 s).
    let mut seen = String::new();
    for _ in 0..100 {
        seen = http(a, "GET", "/console/api/overview").await;
        if seen.contains(&id_b)
            && http(b, "GET", "/console/api/overview")
                .await
                .contains(&id_a)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains(&format!(r#""id":"{id_b}""#)), "{seen}");
    assert!(seen.contains(r#""gone":false"#), "{seen}");
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test]
async fn the_console_is_off_unless_enabled() {
    let (addr, stop, _plugins) = start("").await;
    let response = http(addr, "GET", "/console/api/overview").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    let status = taskgate_status(addr).await;
    assert_eq!(status.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(stderr.contains("[console] enabled"), "{stderr}");
    stop.cancel();
}

async fn taskgate_status(addr: SocketAddr) -> std::process::Output {
    // The host runs on this test's runtime: the child is waited for off it.
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_taskgate"))
            .args(["status", "--url", &format!("http://{addr}")])
            .env_remove("TASKGATE_CONSOLE_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn taskgate_status_prints_the_tables_of_a_real_host() {
    let (addr, stop, _plugins) = start("[console]\nenabled = true\n").await;
    until(addr, "/console/api/overview", r#""brokerConnected":true"#).await;
    let status = taskgate_status(addr).await;
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{stdout}");
    for heading in ["HOST", "REQUEST TYPE", "QUEUE", "WORKERS"] {
        assert!(stdout.contains(heading), "{stdout}");
    }
    assert!(stdout.contains(&addr.to_string()), "{stdout}");
    let overview = taskgate_host::status::fetch(&format!("http://{addr}/"), None)
        .await
        .unwrap();
    assert!(overview["host"]["id"].is_string());
    stop.cancel();
}

#[tokio::test]
async fn an_enabled_console_shows_this_host_to_loopback_and_drains_it() {
    let (addr, stop, _plugins) = start("[console]\nenabled = true\n").await;
    let overview = until(addr, "/console/api/overview", r#""brokerConnected":true"#).await;
    assert!(overview.starts_with("HTTP/1.1 200"), "{overview}");
    let lower = overview.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{overview}"
    );
    assert!(lower.contains("cache-control: no-store"), "{overview}");
    assert!(
        overview.contains(&format!(r#""listen":"{addr}""#)),
        "{overview}"
    );
    assert!(overview.contains(r#""draining":false"#), "{overview}");

    until(addr, "/readyz", "HTTP/1.1 200").await;
    let drained = http(addr, "POST", "/console/api/drain").await;
    assert!(drained.starts_with("HTTP/1.1 200"), "{drained}");
    let ready = http(addr, "GET", "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains(r#""draining":true"#), "{ready}");
    http(addr, "POST", "/console/api/undrain").await;
    until(addr, "/readyz", "HTTP/1.1 200").await;
    stop.cancel();
}
