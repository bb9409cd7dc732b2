//! Pieces shared by the host's integration tests: against the real RabbitMQ, and a host
//! started in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test binary uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use taskgate_host::broker::OutgoingRequest;
use taskgate_protocol::trace::TraceParent;
use uuid::Uuid;

/// The RabbitMQ every test shares (isolation is by unique queue names).
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A request of type `test` with an empty-object payload for `queue`, its own correlation id.
pub fn request(queue: &str) -> OutgoingRequest {
    OutgoingRequest {
        correlation_id: Uuid::new_v4(),
        request_type: "test".into(),
        queue: queue.into(),
        body: "{}".into(),
        streams: false,
        timeout: Duration::from_secs(5),
        deadline_ms: 0,
        identity: None,
        traceparent: TraceParent::new(1, 1, 1).unwrap(),
        reply_to: None,
        retry: None,
    }
}

/// Deletes `queue` through a connection of the test's own; returns how many messages it held.
pub async fn delete_queue(queue: &str) -> u32 {
    let connection = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(queue.into(), Default::default())
        .await
        .unwrap()
}

/// Stops a broker started with `run`, and waits (at most 5 s) for it to end.
pub async fn stop_broker(
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// Runs a host on an ephemeral port with `limits` as its `[limits]` table (TOML) and an
/// empty plugins directory (kept alive by the returned guard); cancel the token to stop it.
pub async fn start_host(
    limits: &str,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tempfile::TempDir,
) {
    use taskgate_host::config::{FileConfig, Overrides, Settings};
    let plugins = tempfile::tempdir().unwrap();
    let file = FileConfig::parse(
        &format!("[limits]\n{limits}\n"),
        std::path::Path::new("plugins.toml"),
    )
    .unwrap();
    let overrides = Overrides {
        plugins_dir: Some(plugins.path().to_owned()),
        ..Overrides::default()
    };
    let settings = Settings::resolve(file, None, overrides).unwrap();
    let listener = taskgate_host::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(taskgate_host::server::run(
        settings,
        listener,
        stop.clone().cancelled_owned(),
    ));
    (addr, stop, plugins)
}
