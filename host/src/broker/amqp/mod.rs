//! The RabbitMQ implementation of [`Broker`], on amqprs.
//!
//! One connection per host. A supervisor loop ([`AmqpBroker::run`]) connects (retrying
//! with backoff and saying so in the log), declares the topology — the `taskgate.cancel`
//! fanout exchange, the queues of enabled request types and this host's own reply queue —
//! and then reads replies as one ordered stream until the connection is lost, when it
//! starts over. While it is down, publishes fail at once with `NotConnected`, so clients
//! get `UNAVAILABLE` promptly instead of a hang.
//!
//! Why amqprs: its reader and writer are tasks on the host's own tokio runtime, so a
//! publish, its confirm and a reply never cross threads. (lapin, used before, does its
//! socket I/O on a thread of its own: each batch of confirms and replies was a hand-over
//! between threads, which cost the host about half of its CPU per request —
//! docs/performance.md.) amqprs reports publisher confirms through a callback;
//! [`super::confirms`] matches them to the waiting publishes.
//!
//! Recovery is done here: a session's reply queue is exclusive, so it — and every reply
//! still in it or on its way to it — is gone with the connection. A lost session therefore
//! calls the hook registered with [`AmqpBroker::on_session_lost`] (the host ends the
//! requests in flight at once rather than letting them time out), and the next session
//! declares everything again with a reply queue of a new name. The reply queue is always
//! named by the host (`taskgate.reply.<uuid>`), never by the server. The connection carries
//! the client property `connection_name` = `taskgate-host <host id>`.
//!
//! The parts, one idea each: `session` (the connect/reconnect loop and what a session is),
//! `callbacks` (what the broker tells a session), `publisher` (a publish and its
//! confirm), `topology` (the queues and exchange the host declares), `message` (how
//! requests, cancellations and replies look as AMQP messages), `connect` (opening one
//! connection, and why it failed), `dead_letters` (the inbox of poison requests every
//! session consumes, and the operators' commands on the dead-letter queue), `looks` (a passive
//! declare: a queue's consumers, for `serving` and the console).

mod callbacks;
pub mod cluster;
mod connect;
pub mod dead_letters;
mod looks;
mod message;
mod publisher;
mod session;
mod task_replies;
mod topology;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use arc_swap::ArcSwapOption;
use taskgate_protocol::amqp as names;
use tracing::debug;
use uuid::Uuid;

pub use self::connect::{connect, ConnectError};
pub use self::looks::consumers_now;
pub use self::message::request_properties;
use self::message::{cancel_properties, host_message_properties};
use self::publisher::Message;
pub use self::session::Backoff;
use self::session::Live;
pub use self::task_replies::{consume_task_replies, task_reply_queue_declaration};
use self::topology::declare_request_queue;
pub use self::topology::{
    field_table, reply_consumer, reply_queue_declaration, QueueDecl, REPLY_PREFETCH,
};
use super::{Broker, HostMessage, OutgoingRequest, PublishError};
use crate::dead_letters::DeadLetterNames;

/// Called when a session ends other than by shutdown (see [`AmqpBroker::on_session_lost`]).
type LostHook = Arc<dyn Fn() + Send + Sync>;

/// What `/readyz` reports of the broker side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    /// The connection is open.
    pub connected: bool,
    /// The reply consumer of the current session is running.
    pub consuming: bool,
    /// The current reply queue, if connected.
    pub reply_queue: Option<String>,
    /// Sessions opened since start (1 after the first connection).
    pub sessions: u64,
}

struct Shared {
    url: String,
    host_id: Uuid,
    live: ArcSwapOption<Live>,
    queues: Mutex<Vec<QueueDecl>>,
    dead_letters: DeadLetterNames,
    on_lost: Mutex<Option<LostHook>>,
    /// Cancellations asked for while disconnected, published once connected again (the
    /// workers still run those requests; their replies have nowhere to go).
    pending_cancels: Mutex<VecDeque<Uuid>>,
    sessions: AtomicU64,
    consuming: AtomicBool,
    /// The channel of passive declares (`Broker::consumers`), opened on first use and again
    /// after a look closed it or its session ended.
    looker: tokio::sync::Mutex<Option<amqprs::channel::Channel>>,
}

/// At most this many cancellations wait for a connection; older ones are dropped first.
const MAX_PENDING_CANCELS: usize = 10_000;

/// The host's RabbitMQ connection. Cheap to clone.
#[derive(Clone)]
pub struct AmqpBroker {
    shared: Arc<Shared>,
}

impl AmqpBroker {
    pub fn new(url: impl Into<String>, host_id: Uuid, queues: Vec<QueueDecl>) -> Self {
        Self::with_dead_letters(url, host_id, queues, DeadLetterNames::default())
    }

    /// A broker whose request queues dead-letter to `dead_letters` (`[host] dead_letter_queue`).
    pub fn with_dead_letters(
        url: impl Into<String>,
        host_id: Uuid,
        queues: Vec<QueueDecl>,
        dead_letters: DeadLetterNames,
    ) -> Self {
        AmqpBroker {
            shared: Arc::new(Shared {
                url: url.into(),
                host_id,
                live: ArcSwapOption::empty(),
                queues: Mutex::new(queues),
                dead_letters,
                on_lost: Mutex::new(None),
                pending_cancels: Mutex::new(VecDeque::new()),
                sessions: AtomicU64::new(0),
                consuming: AtomicBool::new(false),
                looker: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The name the host's connection carries on the broker (client property
    /// `connection_name`), so operators — and tests — can find it:
    /// `taskgate-host <host id>`.
    pub fn connection_name(&self) -> String {
        format!("taskgate-host {}", self.shared.host_id)
    }

    /// The reply queue of the current session, if connected. The first session's queue is
    /// `taskgate.reply.<host id>`; each later one gets a fresh UUID, because the replies
    /// meant for the old queue are gone with it.
    pub fn reply_queue(&self) -> Option<String> {
        self.shared
            .live
            .load()
            .as_ref()
            .map(|l| l.reply_queue.clone())
    }

    /// True while connected with the reply consumer running.
    pub fn is_connected(&self) -> bool {
        self.shared.live.load().is_some() && self.shared.consuming.load(Ordering::SeqCst)
    }

    pub fn status(&self) -> BrokerStatus {
        let live = self.shared.live.load();
        let connected = live.as_ref().is_some_and(|l| l.connection.is_open());
        BrokerStatus {
            connected,
            consuming: connected && self.shared.consuming.load(Ordering::SeqCst),
            reply_queue: live.as_ref().map(|l| l.reply_queue.clone()),
            sessions: self.shared.sessions.load(Ordering::SeqCst),
        }
    }

    /// Registers what to do when a session is lost (not at shutdown): the host ends the
    /// requests in flight, whose replies went with the session's reply queue.
    pub fn on_session_lost(&self, hook: impl Fn() + Send + Sync + 'static) {
        *lock(&self.shared.on_lost) = Some(Arc::new(hook));
    }

    /// Replaces the request queues declared on every (re)connection, and declares them now
    /// when connected. Hot reload calls this before a new routing table serves.
    pub async fn declare_queues(&self, queues: Vec<QueueDecl>) {
        if let Ok(mut declared) = self.shared.queues.lock() {
            declared.clone_from(&queues);
        }
        if let Some(live) = self.shared.live.load_full() {
            for queue in &queues {
                declare_request_queue(&live.connection, queue).await;
            }
        }
    }
}

impl Broker for AmqpBroker {
    /// The work is boxed: with amqprs's publish inside, it is a ~2.5 KiB future, and it would
    /// otherwise be part of every request's task — copied whole when the task is spawned and
    /// again when it completes (≈5% of the host's CPU per request, perf).
    async fn publish(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        Box::pin(self.publish_request(request)).await
    }

    /// While disconnected, the cancellation waits for the next session.
    async fn publish_cancel(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        Box::pin(self.publish_cancel_request(correlation_id)).await
    }

    fn confirm_timed_out(&self) {
        if let Some(live) = self.shared.live.load_full() {
            live.check_link();
        }
    }

    async fn look(&self, queue: &str) -> crate::console::cluster::Look {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or_else(|| "not connected to the broker".to_owned())?;
        let mut looker = self.shared.looker.lock().await;
        looks::look_at(&live.connection, &mut looker, queue).await
    }

    fn own_queue(&self) -> Option<String> {
        self.reply_queue()
    }

    async fn publish_claim(&self, message: HostMessage) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
        live.publisher
            .publish(Message {
                exchange: names::TASKS_EXCHANGE,
                routing_key: &EMPTY_ROUTING_KEY,
                mandatory: false,
                correlation_id: message.correlation_id,
                properties: host_message_properties(&message),
                body: message.body,
            })
            .await
    }

    /// The confirm is awaited on a task of its own: the next message must not wait for it.
    async fn send_to_host(
        &self,
        queue: Arc<str>,
        message: HostMessage,
    ) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
        let correlation_id = message.correlation_id;
        let confirmed = live
            .publisher
            .send(Message {
                exchange: "",
                routing_key: &queue,
                mandatory: true,
                correlation_id,
                properties: host_message_properties(&message),
                body: message.body,
            })
            .await?;
        tokio::spawn(async move {
            if let Ok(Err(error)) = confirmed.await {
                debug!(%correlation_id, %queue, %error, "a message for another host was not delivered");
            }
        });
        Ok(())
    }
}

impl AmqpBroker {
    async fn publish_request(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        let live = self
            .shared
            .live
            .load_full()
            .ok_or(PublishError::NotConnected)?;
        let reply_to = request.reply_to.as_deref().unwrap_or(&live.reply_queue);
        let properties = request_properties(&request, reply_to);
        live.publisher
            .publish(Message {
                exchange: "",
                routing_key: &request.queue,
                mandatory: true,
                correlation_id: request.correlation_id,
                properties,
                // The host's one copy of the payload becomes the message body as it is.
                body: request.body.into_string().into_bytes(),
            })
            .await
    }

    async fn publish_cancel_request(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        let Some(live) = self.shared.live.load_full() else {
            let mut pending = lock(&self.shared.pending_cancels);
            if pending.len() >= MAX_PENDING_CANCELS {
                pending.pop_front();
            }
            pending.push_back(correlation_id);
            debug!(%correlation_id, "cancellation kept until the broker is connected again");
            return Ok(());
        };
        let properties = cancel_properties(correlation_id);
        live.publisher
            .publish(Message {
                exchange: names::CANCEL_EXCHANGE,
                routing_key: &EMPTY_ROUTING_KEY,
                mandatory: false,
                correlation_id,
                properties,
                body: Vec::new(),
            })
            .await
    }

    /// Publishes the cancellations that waited for a connection, in the background.
    fn flush_pending_cancels(&self) {
        let pending: Vec<Uuid> = lock(&self.shared.pending_cancels).drain(..).collect();
        if pending.is_empty() {
            return;
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let count = pending.len();
            for correlation_id in pending {
                if let Err(error) = broker.publish_cancel(correlation_id).await {
                    debug!(%correlation_id, %error, "cancellation not published");
                }
            }
            debug!(
                count,
                "published the cancellations that waited for the connection"
            );
        });
    }
}

static EMPTY_ROUTING_KEY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
