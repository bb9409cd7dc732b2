//! The operator console's link to RabbitMQ: its own connection (named `taskgate-console
//! <host id>`), so that the console's traffic never waits in line with requests and replies,
//! and nothing of it exists while the console is off.
//!
//! - Every [`BEAT_EVERY`] it publishes this host's heartbeat to the `taskgate.hosts` fanout
//!   exchange (protocol §2.6) and hands every beat it receives (its own included) to
//!   `on_beat`, through an exclusive auto-deleted queue `taskgate.hosts.<host id>`.
//! - Every [`QUEUES_EVERY`] it asks the console for the queues to declare passively (the
//!   answer carries the ready messages and the consumers, without the management plugin; a
//!   passive declare of a queue that does not exist closes its channel, and the next look
//!   opens another). A console on a host declares none: it reads the looks the host's
//!   `serving` watch takes anyway (`HostControl::queue_looks`).
//!
//! The link reconnects every few seconds while the broker is away, and ends with `stop`.

use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel, ExchangeDeclareArguments, ExchangeType,
    QueueBindArguments, QueueDeclareArguments,
};
use amqprs::BasicProperties;
use taskgate_protocol::amqp as names;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use uuid::Uuid;

use super::connect::connect_named;
use super::looks::look_at;
use crate::console::cluster::{Look, BEAT_EVERY, QUEUES_EVERY};

/// What the link reads from and reports to the console.
pub trait ClusterObserver: Send + Sync + 'static {
    /// This host's heartbeat, as JSON.
    fn beat(&self) -> Vec<u8>;
    /// A heartbeat arrived.
    fn on_beat(&self, body: &[u8]);
    /// The request queues to look at.
    fn queues(&self) -> Vec<String>;
    /// A look at `queue`: `(ready, consumers)` or why it failed.
    fn on_queue(&self, queue: &str, look: Look);
}

const RETRY: Duration = Duration::from_secs(3);

/// The exchange every host declares the same way.
fn hosts_exchange() -> ExchangeDeclareArguments {
    ExchangeDeclareArguments::of_type(names::HOSTS_EXCHANGE, ExchangeType::Fanout)
        .durable(true)
        .finish()
}

/// Runs the link until `stop`.
pub async fn run(
    url: String,
    host_id: Uuid,
    observer: Arc<dyn ClusterObserver>,
    stop: CancellationToken,
) {
    loop {
        let reason = tokio::select! {
            reason = session(&url, host_id, observer.as_ref()) => reason,
            () = stop.cancelled() => return,
        };
        debug!(%reason, "console: the cluster link ended; reconnecting");
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One connection's life; returns why it ended.
async fn session(url: &str, host_id: Uuid, observer: &dyn ClusterObserver) -> String {
    let connection = match connect_named(url, &format!("taskgate-console {host_id}")).await {
        Ok(connection) => connection,
        Err(e) => return e.to_string(),
    };
    let result = beat_and_look(&connection, host_id, observer).await;
    let _ = connection.close().await;
    result
}

async fn beat_and_look(
    connection: &amqprs::connection::Connection,
    host_id: Uuid,
    observer: &dyn ClusterObserver,
) -> String {
    let channel = match connection.open_channel(None).await {
        Ok(channel) => channel,
        Err(e) => return format!("cannot open a channel: {e}"),
    };
    if let Err(e) = channel.exchange_declare(hosts_exchange()).await {
        return format!("cannot declare {}: {e}", names::HOSTS_EXCHANGE);
    }
    let inbox = format!("{}.{host_id}", names::HOSTS_EXCHANGE);
    let declare = QueueDeclareArguments::new(&inbox)
        .exclusive(true)
        .auto_delete(true)
        .finish();
    if let Err(e) = channel.queue_declare(declare).await {
        return format!("cannot declare {inbox}: {e}");
    }
    if let Err(e) = channel
        .queue_bind(QueueBindArguments::new(&inbox, names::HOSTS_EXCHANGE, ""))
        .await
    {
        return format!("cannot bind {inbox}: {e}");
    }
    let consume = BasicConsumeArguments::new(&inbox, "taskgate-console")
        .manual_ack(false)
        .exclusive(true)
        .finish();
    let mut beats = match channel.basic_consume_rx(consume).await {
        Ok((_, beats)) => beats,
        Err(e) => return format!("cannot consume {inbox}: {e}"),
    };
    info!(
        exchange = names::HOSTS_EXCHANGE,
        "console: publishing this host's heartbeat and reading the others'"
    );
    let mut looker: Option<Channel> = None;
    let mut beat_tick = tokio::time::interval(BEAT_EVERY);
    let mut queue_tick = tokio::time::interval(QUEUES_EVERY);
    loop {
        tokio::select! {
            _ = beat_tick.tick() => {
                let properties = BasicProperties::default()
                    .with_content_type(names::CONTENT_TYPE_JSON)
                    .finish();
                if let Err(e) = channel
                    .basic_publish(properties, observer.beat(), BasicPublishArguments::new(names::HOSTS_EXCHANGE, ""))
                    .await
                {
                    return format!("cannot publish the heartbeat: {e}");
                }
            }
            _ = queue_tick.tick() => {
                for queue in observer.queues() {
                    let look = look_at(connection, &mut looker, &queue).await;
                    observer.on_queue(&queue, look);
                }
            }
            delivery = beats.recv() => match delivery {
                Some(message) => {
                    if let Some(body) = message.content {
                        observer.on_beat(&body);
                    }
                }
                None => return "the heartbeat consumer ended".to_owned(),
            },
        }
        if !connection.is_open() {
            return "the connection closed".to_owned();
        }
    }
}
