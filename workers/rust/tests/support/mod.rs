//! What the integration tests do in the host's place: publish requests exactly as
//! protocol §2.2 says, read the replies from a reply queue of their own, publish
//! cancellations, and look at queues afterwards. Every queue gets a unique name and an
//! `x-expires`, so a failed test leaves nothing behind for long.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::Value;
use taskgate_worker::{Worker, WorkerBuilder, WorkerError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const WAIT: Duration = Duration::from_secs(15);
/// Queues made by the tests disappear this long after their last use.
pub const QUEUE_EXPIRES_MS: i64 = 120_000;

pub fn unique(what: &str) -> String {
    format!("taskgate.test.worker.{what}.{}", Uuid::new_v4())
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,taskgate_worker=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The test's own connection to RabbitMQ, playing the host.
pub struct Host {
    pub connection: Connection,
    pub channel: Channel,
    pub reply_queue: String,
    pub replies: Consumer,
}

impl Host {
    pub async fn connect() -> Host {
        init_logs();
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let reply_queue = unique("reply");
        channel
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Host {
            connection,
            channel,
            reply_queue,
            replies,
        }
    }

    /// Declares a request queue as the host does (durable), plus `x-expires` for clean-up
    /// and any `extra` arguments.
    pub async fn declare_queue(&self, name: &str, extra: &[(&str, AMQPValue)]) {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRES_MS));
        for (k, v) in extra {
            arguments.insert(ShortString::from(*k), v.clone());
        }
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .unwrap();
    }

    /// (ready messages, consumers) of a queue; `None` if it does not exist.
    pub async fn queue_state(&self, name: &str) -> Option<(u32, u32)> {
        let channel = self.connection.create_channel().await.unwrap();
        let state = channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()));
        if state.is_some() {
            let _ = channel.close(200, "ok".into()).await;
        }
        state
    }

    pub async fn delete_queue(&self, name: &str) {
        let channel = self.connection.create_channel().await.unwrap();
        let _ = channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await;
    }

    /// Waits until `queue` has a consumer (the worker is ready).
    pub async fn wait_for_consumer(&self, queue: &str) {
        tokio::time::timeout(WAIT, async {
            loop {
                if matches!(self.queue_state(queue).await, Some((_, c)) if c > 0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the worker consumes its queue");
    }

    /// Publishes a request with every property of protocol §2.2; returns its
    /// correlation id.
    pub async fn request(&self, queue: &str, request_type: &str, body: &[u8]) -> String {
        let correlation_id = Uuid::new_v4().to_string();
        self.publish(
            queue,
            request(&correlation_id, &self.reply_queue, request_type, 30_000),
            body,
        )
        .await;
        correlation_id
    }

    pub async fn publish(&self, queue: &str, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Publishes a cancellation as the host does (§2.4).
    pub async fn cancel(&self, correlation_id: &str) {
        self.channel
            .basic_publish(
                "taskgate.cancel".into(),
                "".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_correlation_id(correlation_id.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The next reply message.
    pub async fn next_reply(&mut self) -> Delivery {
        tokio::time::timeout(WAIT, self.replies.next())
            .await
            .expect("a reply in time")
            .expect("the reply consumer is open")
            .expect("a reply")
    }

    /// Replies until (and with) the final one of `correlation_id`; replies of other
    /// requests are kept aside in `others`.
    pub async fn replies_of(
        &mut self,
        correlation_id: &str,
        others: &mut Vec<Delivery>,
    ) -> Vec<Delivery> {
        let mut mine = Vec::new();
        loop {
            let reply = self.next_reply().await;
            if correlation(&reply) != correlation_id {
                others.push(reply);
                continue;
            }
            let last = kind(&reply) != "chunk";
            mine.push(reply);
            if last {
                return mine;
            }
        }
    }

    /// The final reply of `correlation_id`, the chunks before it being skipped.
    pub async fn final_reply(&mut self, correlation_id: &str) -> Delivery {
        let mut others = Vec::new();
        self.replies_of(correlation_id, &mut others)
            .await
            .pop()
            .unwrap()
    }

    /// No reply arrives within `wait`.
    pub async fn assert_no_reply(&mut self, wait: Duration) {
        if let Ok(Some(Ok(reply))) = tokio::time::timeout(wait, self.replies.next()).await {
            panic!("unexpected reply {:?}: {}", reply.properties, text(&reply));
        }
    }
}

/// The properties of a request as the host publishes it (§2.2).
pub fn request(
    correlation_id: &str,
    reply_to: &str,
    request_type: &str,
    timeout_ms: i64,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-deadline-ms".into(),
        AMQPValue::LongLongInt(now_ms() + timeout_ms),
    );
    headers.insert("x-stream".into(), AMQPValue::Boolean(true));
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_correlation_id(correlation_id.into())
        .with_reply_to(reply_to.into())
        .with_type(request_type.into())
        .with_timestamp((now_ms() / 1000) as u64)
        .with_expiration(timeout_ms.to_string().into())
        .with_headers(headers)
}

pub fn correlation(reply: &Delivery) -> String {
    reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default()
}

pub fn kind(reply: &Delivery) -> String {
    reply
        .properties
        .kind()
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_default()
}

pub fn seq(reply: &Delivery) -> Option<i64> {
    match reply.properties.headers().as_ref()?.inner().get("x-seq")? {
        AMQPValue::LongLongInt(v) => Some(*v),
        other => panic!("x-seq of unexpected type {other:?}"),
    }
}

pub fn json(reply: &Delivery) -> Value {
    serde_json::from_slice(&reply.data).unwrap_or_else(|e| panic!("{e}: {}", text(reply)))
}

pub fn text(reply: &Delivery) -> String {
    String::from_utf8_lossy(&reply.data).into_owned()
}

/// A worker running in this process.
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), WorkerError>>,
}

impl RunningWorker {
    pub fn start(builder: WorkerBuilder) -> RunningWorker {
        let (stop, stopped) = oneshot::channel::<()>();
        let worker = builder.amqp_url(AMQP_URL).build();
        let task = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        RunningWorker {
            stop: Some(stop),
            task,
        }
    }

    /// Asks it to shut down and waits until it has.
    pub async fn stop(mut self) -> Result<(), WorkerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the worker stops")
            .expect("the worker task did not panic")
    }
}

pub fn builder() -> WorkerBuilder {
    Worker::builder().shutdown_grace(Duration::from_secs(10))
}

/// A TCP proxy to RabbitMQ that can drop every connection and refuse new ones, then come
/// back on the same port: a broker outage, as the worker sees it.
pub struct Proxy {
    pub port: u16,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Proxy {
            port,
            task: Some(tokio::spawn(serve_proxy(listener))),
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drops every connection and stops listening.
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.task = Some(tokio::spawn(serve_proxy(listener)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Forwards each accepted connection to RabbitMQ; aborting it drops them all.
async fn serve_proxy(listener: tokio::net::TcpListener) {
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut client, _)) = listener.accept().await {
        connections.spawn(async move {
            if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            }
        });
    }
}
