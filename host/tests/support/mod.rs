//! Pieces shared by the host's integration tests: against the real RabbitMQ, and a host
//! started in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Each test binary uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use taskgate_host::broker::amqp::{AmqpBroker, QueueDecl};
use taskgate_host::broker::OutgoingRequest;
use taskgate_host::dead_letters::DeadLetterNames;
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

/// Publishes a worker reply to `queue` as a worker would (protocol §2.3): its correlation id,
/// its kind as the AMQP `type`, and a chunk's `x-seq` header.
pub async fn publish_reply(
    channel: &lapin::Channel,
    queue: &str,
    correlation_id: &str,
    kind: &str,
    seq: Option<i64>,
    body: &[u8],
) {
    use lapin::types::{AMQPValue, FieldTable};
    let mut headers = FieldTable::default();
    if let Some(seq) = seq {
        headers.insert("x-seq".into(), AMQPValue::LongLongInt(seq));
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            lapin::options::BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default()
                .with_correlation_id(correlation_id.into())
                .with_type(kind.into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// A dead-letter queue, exchange and inbox of the test's own (protocol §3.11), deleted when
/// dropped. Every host consumes its inbox and `taskgate dead-letters purge` empties its
/// queue: tests that used the default `taskgate.dead-letters` together (or with a host
/// running on this machine) could take, see or purge each other's dead letters.
pub struct TestDeadLetters {
    pub names: DeadLetterNames,
}

impl TestDeadLetters {
    pub fn new() -> Self {
        TestDeadLetters {
            names: DeadLetterNames::new(&format!("taskgate-test.{}.dead-letters", Uuid::new_v4())),
        }
    }

    /// A broker whose request queues dead-letter here.
    pub fn broker(&self, url: impl Into<String>, queues: Vec<QueueDecl>) -> AmqpBroker {
        AmqpBroker::with_dead_letters(url, Uuid::new_v4(), queues, self.names.clone())
    }
}

impl Drop for TestDeadLetters {
    fn drop(&mut self) {
        // Drop cannot await, and the test's runtime may run on this very thread: delete from
        // a thread with a runtime of its own. Best effort (a test may never have connected).
        let names = self.names.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(delete_dead_letters(&names));
            }
        })
        .join();
    }
}

async fn delete_dead_letters(names: &DeadLetterNames) {
    let Ok(connection) = lapin::Connection::connect(URL, Default::default()).await else {
        return;
    };
    // A failed deletion closes its channel: one channel each.
    for queue in [&names.queue, &names.inbox] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
    }
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .exchange_delete(names.exchange.as_str().into(), Default::default())
            .await;
    }
    let _ = connection.close(0, "".into()).await;
}

/// What keeps a host of [`start_host`] whole until the test ends: its plugins directory and
/// its dead-letter topology.
pub struct HostGuard {
    pub plugins: tempfile::TempDir,
    pub dead_letters: TestDeadLetters,
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

/// Runs a host on an ephemeral port with `limits` as its `[limits]` table (TOML), an empty
/// plugins directory and a dead-letter topology of its own (kept alive by the returned
/// guard); cancel the token to stop it.
pub async fn start_host(
    limits: &str,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    HostGuard,
) {
    let toml = format!("[limits]\n{limits}\n");
    start_host_with(&toml).await
}

/// [`start_host`] with a whole plugins.toml.
pub async fn start_host_with(
    toml: &str,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    HostGuard,
) {
    use taskgate_host::config::{FileConfig, Overrides, Settings};
    let plugins = tempfile::tempdir().unwrap();
    let file = FileConfig::parse(toml, std::path::Path::new("plugins.toml")).unwrap();
    let overrides = Overrides {
        plugins_dir: Some(plugins.path().to_owned()),
        ..Overrides::default()
    };
    let mut settings = Settings::resolve(file, None, overrides).unwrap();
    let dead_letters = TestDeadLetters::new();
    settings.dead_letter_queue = dead_letters.names.queue.clone();
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
    (
        addr,
        stop,
        HostGuard {
            plugins,
            dead_letters,
        },
    )
}
