//! Starting the server: it serves Socket.IO and health endpoints on an ephemeral port; a
//! port in use or a bad address fails with a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use taskgate_host::config::{FileConfig, Overrides, Settings};
use taskgate_host::server::{bind, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

mod support;

use support::TestDeadLetters;

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

fn settings(plugins_dir: &std::path::Path, dead_letters: &TestDeadLetters) -> Settings {
    let mut settings = Settings::resolve(
        FileConfig::default(),
        None,
        Overrides {
            plugins_dir: Some(plugins_dir.to_owned()),
            ..Overrides::default()
        },
    )
    .unwrap();
    settings.dead_letter_queue = dead_letters.names.queue.clone();
    settings
}

#[tokio::test]
async fn serves_socket_io_and_health_on_an_ephemeral_port() {
    let dir = std::env::temp_dir().join(format!("taskgate-empty-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let dead_letters = TestDeadLetters::new();
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(run(
        settings(&dir, &dead_letters),
        listener,
        stop.clone().cancelled_owned(),
    ));

    let health = http_get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The engine.io handshake of Socket.IO protocol v5 (EIO=4).
    let handshake = http_get(addr, "/socket.io/?EIO=4&transport=polling").await;
    assert!(handshake.starts_with("HTTP/1.1 200"), "{handshake}");
    assert!(handshake.contains("\"sid\""), "{handshake}");
    // Ready once the broker is connected.
    let mut ready = String::new();
    for _ in 0..100 {
        ready = http_get(addr, "/readyz").await;
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    for field in [
        r#""broker":"connected""#,
        r#""replyConsumer":"running""#,
        r#""plugins":["#,
        r#""shuttingDown":false"#,
        r#""replyQueue":"taskgate.reply."#,
        r#""hostId":""#,
    ] {
        assert!(ready.contains(field), "/readyz says {field}: {ready}");
    }

    // Prometheus text format, rendered on the host's own router.
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE taskgate_broker_connected gauge"),
        "{metrics}"
    );
    assert!(metrics.contains("taskgate_broker_connected 1"), "{metrics}");
    assert_eq!(
        taskgate_host::metrics::undescribed(&metrics),
        Vec::<String>::new(),
        "every metric the running host shows has a HELP text: {metrics}"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_error() {
    let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = bind(addr).await.unwrap_err().to_string();
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

#[tokio::test]
async fn an_address_not_on_this_machine_is_a_clear_error() {
    // 192.0.2.0/24 is reserved for documentation: never assigned to this machine.
    let err = bind("192.0.2.1:8080".parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot listen on 192.0.2.1:8080"), "{err}");
}

#[tokio::test]
async fn an_unreachable_task_store_stops_the_start_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("taskgate-empty-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = FileConfig::parse(
        "[resume]\nstore = \"redis://:s3cr3t-pw@127.0.0.1:1/\"\n",
        std::path::Path::new("plugins.toml"),
    )
    .unwrap();
    let overrides = Overrides {
        plugins_dir: Some(dir),
        ..Overrides::default()
    };
    let settings = Settings::resolve(file, None, overrides).unwrap();
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        run(settings, listener, std::future::pending()),
    )
    .await
    .expect("the start gives up soon");
    let error = result.unwrap_err().to_string();
    assert!(
        error.contains("[resume] store") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    assert!(!error.contains("s3cr3t-pw"), "{error}");
}
