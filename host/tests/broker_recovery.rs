//! Broker recovery against the real RabbitMQ, through a TCP proxy the test can cut: the
//! host notices the loss at once, tells the gateway (the hook), refuses publishes while
//! down, keeps cancellations for later, reconnects with backoff, declares a reply queue
//! of a new name, and publishes the kept cancellations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use taskgate_host::broker::amqp::AmqpBroker;
use taskgate_host::broker::{Broker, PublishError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BROKER: &str = "127.0.0.1:5672";
mod support;

use support::{request, TestDeadLetters, URL};

/// A TCP proxy to RabbitMQ. `cut` drops every proxied connection; while `down`, new
/// connections are closed at once.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = {
            let (up, links, accepted) = (up.clone(), links.clone(), accepted.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::SeqCst);
                    links.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(BROKER).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    }));
                }
            })
        };
        Proxy {
            port,
            up,
            links,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_reported_refused_while_down_and_recovered_with_a_new_reply_queue() {
    let metrics = taskgate_host::metrics::install();
    let reconnects_before = taskgate_host::metrics::sample(
        &metrics.render(),
        taskgate_host::metrics::BROKER_RECONNECTS,
        &[],
    )
    .unwrap_or(0.0);

    // Our own view of the cancellation exchange, straight to RabbitMQ.
    let observer = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = observer.create_channel().await.unwrap();
    let cancels_queue = format!("taskgate-test.cancels.{}", Uuid::new_v4());
    channel
        .queue_declare(
            cancels_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let proxy = Proxy::start().await;
    let host_id = Uuid::new_v4();
    let dead_letters = TestDeadLetters::new();
    let broker =
        AmqpBroker::with_dead_letters(proxy.url(), host_id, vec![], dead_letters.names.clone());
    let losses = Arc::new(AtomicUsize::new(0));
    {
        let losses = losses.clone();
        broker.on_session_lost(move || {
            losses.fetch_add(1, Ordering::SeqCst);
        });
    }
    let stop = CancellationToken::new();
    let task = {
        let broker = broker.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move { broker.run(|_| {}, stopped).await })
    };
    eventually("the first session", || broker.is_connected()).await;
    // The exchange exists now (the host declared it): bind our observer queue.
    channel
        .queue_bind(
            cancels_queue.as_str().into(),
            "taskgate.cancel".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut cancels = channel
        .basic_consume(
            cancels_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = broker.status();
    assert_eq!(first.sessions, 1);
    assert!(first.connected && first.consuming);
    assert_eq!(
        first.reply_queue.as_deref(),
        Some(format!("taskgate.reply.{host_id}").as_str()),
        "the first reply queue is named after the host"
    );
    assert_eq!(broker.connection_name(), format!("taskgate-host {host_id}"));

    // The connection goes; the broker stays unreachable for a while.
    proxy.set_up(false);
    proxy.cut();
    eventually("the loss to be noticed", || {
        losses.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(!broker.is_connected());
    assert_eq!(broker.status().reply_queue, None);
    let started = std::time::Instant::now();
    assert_eq!(
        broker.publish(request("anything")).await.unwrap_err(),
        PublishError::NotConnected
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "refused at once"
    );
    let kept = Uuid::new_v4();
    broker.publish_cancel(kept).await.unwrap();

    // Back: a new session, a reply queue of a new name, the kept cancellation published.
    proxy.set_up(true);
    eventually("the second session", || broker.is_connected()).await;
    let second = broker.status();
    assert_eq!(second.sessions, 2);
    let new_queue = second.reply_queue.unwrap();
    assert!(new_queue.starts_with("taskgate.reply."), "{new_queue}");
    assert_ne!(new_queue, first.reply_queue.unwrap());
    assert_eq!(losses.load(Ordering::SeqCst), 1, "the hook ran once");
    let cancel = tokio::time::timeout(Duration::from_secs(10), cancels.next())
        .await
        .expect("the kept cancellation is published after reconnecting")
        .unwrap()
        .unwrap();
    assert_eq!(
        cancel
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string()),
        Some(kept.to_string())
    );
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2);
    let reconnects_after = taskgate_host::metrics::sample(
        &metrics.render(),
        taskgate_host::metrics::BROKER_RECONNECTS,
        &[],
    )
    .unwrap_or(0.0);
    assert!(
        reconnects_after > reconnects_before,
        "{reconnects_before} -> {reconnects_after}"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(!broker.is_connected());
    // Closed cleanly: the exclusive reply queue is gone with the connection.
    let probe = observer.create_channel().await.unwrap();
    let gone = probe
        .queue_declare(
            new_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(gone.is_err(), "the reply queue {new_queue} still exists");
    let _ = observer.close(200, "done".into()).await;
}
