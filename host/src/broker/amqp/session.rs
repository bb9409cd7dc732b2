//! The session loop: connect (retrying with backoff), declare the topology, read replies
//! until the session ends, then start over. A session is one connection with its publish
//! channel and the reply queue consumed on it ([`Live`]); how it ends is one [`SessionEnd`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::channel::{BasicAckArguments, Channel, ConfirmSelectArguments, ConsumerMessage};
use amqprs::connection::Connection;
use taskgate_protocol::amqp as names;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::callbacks::{ConnectionEvents, PublishEvents, ReplyEvents};
use super::connect::{connect_named, ConnectError};
use super::dead_letters::{declare_topology, open_inbox, serve_inbox, Inbox};
use super::message::incoming_reply;
use super::publisher::Publisher;
use super::topology::{
    cancel_exchange_declaration, claims_binding, declare_request_queue, reply_consumer, reply_qos,
    reply_queue_declaration, tasks_exchange_declaration, REPLY_ACK_BATCH,
};
use super::{lock, AmqpBroker};
use crate::broker::amqp_url::redact_url;
use crate::broker::confirms::Confirms;
use crate::broker::IncomingReply;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a session may take (a dead connection must not hold up shutdown).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a session checks that its channels are still open.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Exponential backoff between connection attempts: 100 ms doubling up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// How long the broker may take to answer the check of a link after a publish confirm
/// timed out (opening a channel: one round trip).
const LINK_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How a session ends: the first reason given wins, and whoever waits is woken.
#[derive(Default)]
pub(super) struct SessionEnd {
    reason: Mutex<Option<String>>,
    token: CancellationToken,
    /// The link carries nothing any more: closing it politely would only wait.
    dead: AtomicBool,
}

impl SessionEnd {
    pub(super) fn end(&self, reason: String) {
        lock(&self.reason).get_or_insert(reason);
        self.token.cancel();
    }

    /// Ends the session of a link that no longer answers.
    fn end_dead(&self, reason: String) {
        self.dead.store(true, Ordering::SeqCst);
        self.end(reason);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    async fn ended(&self) -> String {
        self.token.cancelled().await;
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "the session ended".to_owned())
    }
}

/// One broker session: a connection, its publish channel and the reply queue consumed on it.
pub(super) struct Live {
    pub(super) connection: Connection,
    pub(super) publisher: Publisher,
    replies: Channel,
    /// The channel of the dead-letter inbox consumer, if it runs.
    dead_letters: Option<Channel>,
    /// This session's reply queue: exclusive, so it goes with the connection; the next
    /// session gets a new one.
    pub(super) reply_queue: String,
    end: Arc<SessionEnd>,
    /// The broker blocks the connection (a resource alarm): confirms stall, and that is
    /// no sign of a dead link.
    blocked: Arc<AtomicBool>,
    /// A check of the link runs (one at a time).
    checking: AtomicBool,
}

impl Live {
    /// A publish confirm timed out: checks at once that the broker still answers on this
    /// connection (a half-open link — packets stop, TCP stays open — is otherwise noticed
    /// only after two missed heartbeats), and ends the session if it does not.
    pub(super) fn check_link(self: &Arc<Self>) {
        if self.blocked.load(Ordering::SeqCst) {
            debug!("a publish confirm timed out while the broker blocks the connection");
            return;
        }
        if self.checking.swap(true, Ordering::SeqCst) {
            return;
        }
        let live = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(LINK_CHECK_TIMEOUT, live.connection.open_channel(None)).await
            {
                Ok(Ok(channel)) => {
                    info!("a publish confirm timed out, but the broker answers on the connection");
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close()).await;
                }
                Ok(Err(e)) => live.end.end_dead(format!(
                    "a publish confirm timed out and the connection failed a check: {e}"
                )),
                Err(_) => live.end.end_dead(format!(
                    "a publish confirm timed out and the broker did not answer a check within {LINK_CHECK_TIMEOUT:?}: the link is dead"
                )),
            }
            live.checking.store(false, Ordering::SeqCst);
        });
    }
}

impl AmqpBroker {
    /// Connects and serves until `shutdown` resolves, reconnecting whenever the connection
    /// is lost. Every reply is handed to `on_reply`, in the order the broker delivered them.
    pub async fn run<F>(&self, on_reply: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(IncomingReply) + Send + Sync,
    {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::default();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let session = tokio::select! {
                _ = &mut shutdown => break,
                session = self.open_session() => session,
            };
            match session {
                Ok((mut replies, live, mut inbox)) => {
                    let sessions = self.shared.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                    if sessions > 1 {
                        metrics::counter!(crate::metrics::BROKER_RECONNECTS).increment(1);
                    }
                    metrics::gauge!(crate::metrics::BROKER_CONNECTED).set(1.0);
                    info!(url = %redact_url(&self.shared.url), reply_queue = %live.reply_queue, connection_name = %self.connection_name(), session = sessions, "connected to the broker");
                    attempt = 0;
                    backoff = Backoff::default();
                    self.flush_pending_cancels();
                    let lost = tokio::select! {
                        _ = &mut shutdown => None,
                        reason = read_replies(&mut replies, &live.replies, &on_reply) => Some(reason),
                        reason = watch(&live) => Some(reason),
                        reason = self.serve_dead_letters(inbox.as_mut(), &live) => Some(reason),
                    };
                    self.shared.consuming.store(false, Ordering::SeqCst);
                    metrics::gauge!(crate::metrics::BROKER_CONNECTED).set(0.0);
                    match lost {
                        None => break,
                        Some(reason) => {
                            // Publishes fail fast from here on, before anything waits on
                            // the dead connection.
                            self.shared.live.store(None);
                            warn!(%reason, reply_queue = %live.reply_queue, "lost the broker connection; reconnecting");
                            let hook = lock(&self.shared.on_lost).clone();
                            if let Some(hook) = hook {
                                hook();
                            }
                            // A dead link is left to amqprs's heartbeat to tear down:
                            // a polite close would wait for answers that do not come.
                            if !live.end.is_dead() {
                                close(&live, "taskgate host: session lost").await;
                            }
                        }
                    }
                }
                Err(err) => {
                    let delay = jitter(backoff.next_delay());
                    warn!(attempt, error = %err, retry_in_ms = delay.as_millis() as u64, "broker not available");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.shared.consuming.store(false, Ordering::SeqCst);
        if let Some(live) = self.shared.live.swap(None) {
            close(&live, "taskgate host shutting down").await;
            info!(reply_queue = %live.reply_queue, "broker connection closed");
        }
    }

    /// The reply queue name of the next session.
    fn next_reply_queue(&self) -> String {
        let id = if self.shared.sessions.load(Ordering::SeqCst) == 0 {
            self.shared.host_id
        } else {
            Uuid::new_v4()
        };
        format!("{}{id}", names::REPLY_QUEUE_PREFIX)
    }

    /// Answers the clients of poison requests for as long as the session lasts. The inbox
    /// failing does not end the session (replies still flow): it is logged, and the next
    /// session tries again.
    async fn serve_dead_letters(&self, inbox: Option<&mut Inbox>, live: &Live) -> String {
        if let Some(inbox) = inbox {
            let shared = &self.shared;
            let reason = serve_inbox(inbox, &live.publisher, &shared.dead_letters, |queue| {
                lock(&shared.queues)
                    .iter()
                    .find(|q| q.name == queue)
                    .and_then(|q| q.delivery_limit)
            })
            .await;
            error!(%reason, "the dead-letter inbox stopped: clients of poison requests wait for their timeout until the broker connection is renewed");
        }
        std::future::pending().await
    }

    /// One connection: declares everything, then returns the reply stream and the
    /// dead-letter inbox.
    #[allow(clippy::type_complexity)]
    async fn open_session(
        &self,
    ) -> Result<(UnboundedReceiver<ConsumerMessage>, Arc<Live>, Option<Inbox>), ConnectError> {
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect_named(&self.shared.url, &self.connection_name()),
        )
        .await
        .map_err(|_| ConnectError::Unreachable {
            url: redact_url(&self.shared.url),
            reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })??;
        let setup = |what: &str, e: amqprs::error::Error| ConnectError::Setup {
            what: what.to_owned(),
            reason: e.to_string(),
        };
        let end = Arc::new(SessionEnd::default());
        let blocked = Arc::new(AtomicBool::new(false));
        connection
            .register_callback(ConnectionEvents {
                end: end.clone(),
                blocked: blocked.clone(),
            })
            .await
            .map_err(|e| setup("the connection", e))?;
        let channel = connection
            .open_channel(None)
            .await
            .map_err(|e| setup("the publish channel", e))?;
        let confirms = Confirms::new();
        channel
            .register_callback(PublishEvents {
                confirms: confirms.clone(),
                end: end.clone(),
            })
            .await
            .map_err(|e| setup("the publish channel", e))?;
        channel
            .confirm_select(ConfirmSelectArguments::default())
            .await
            .map_err(|e| setup("publisher confirms", e))?;
        channel
            .exchange_declare(cancel_exchange_declaration())
            .await
            .map_err(|e| setup("the cancel exchange", e))?;
        channel
            .exchange_declare(tasks_exchange_declaration())
            .await
            .map_err(|e| setup("the tasks exchange", e))?;
        // Before the request queues, whose arguments name the dead-letter exchange.
        let inbox = if declare_topology(&connection, &self.shared.dead_letters).await {
            open_inbox(&connection, &self.shared.dead_letters).await
        } else {
            None
        };
        let queues = lock(&self.shared.queues).clone();
        for queue in &queues {
            declare_request_queue(&connection, queue).await;
        }
        let replies = connection
            .open_channel(None)
            .await
            .map_err(|e| setup("the reply channel", e))?;
        replies
            .register_callback(ReplyEvents { end: end.clone() })
            .await
            .map_err(|e| setup("the reply channel", e))?;
        let reply_queue = self.next_reply_queue();
        replies
            .queue_declare(reply_queue_declaration(&reply_queue))
            .await
            .map_err(|e| setup("the reply queue", e))?;
        replies
            .queue_bind(claims_binding(&reply_queue))
            .await
            .map_err(|e| setup("the reply queue's binding to the tasks exchange", e))?;
        replies
            .basic_qos(reply_qos())
            .await
            .map_err(|e| setup("the reply prefetch window", e))?;
        let (_, consumer) = replies
            .basic_consume_rx(reply_consumer(&reply_queue, "taskgate-host"))
            .await
            .map_err(|e| setup("the reply consumer", e))?;
        let live = Arc::new(Live {
            connection,
            publisher: Publisher {
                channel,
                last_tag: tokio::sync::Mutex::new(0),
                confirms,
            },
            replies,
            dead_letters: inbox.as_ref().map(|inbox| inbox.channel.clone()),
            reply_queue,
            end,
            blocked,
            checking: AtomicBool::new(false),
        });
        self.shared.consuming.store(true, Ordering::SeqCst);
        self.shared.live.store(Some(live.clone()));
        Ok((consumer, live, inbox))
    }
}

/// ±20 %, so that hosts cut off together do not all reconnect in the same instant.
fn jitter(delay: Duration) -> Duration {
    let random = (Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    delay.mul_f64(0.8 + 0.4 * random)
}

/// Resolves when the session of `live` is over: the broker closed the connection or a
/// channel, the socket failed, or — checked on a timer, as a backstop — the client says a
/// channel or the connection is no longer open. The waiting publishes then fail at once.
async fn watch(live: &Live) -> String {
    let reason = tokio::select! {
        reason = live.end.ended() => reason,
        _ = live.connection.listen_network_io_failure() => "the connection to the broker failed".to_owned(),
        reason = poll_open(live) => reason,
    };
    live.publisher.confirms.close(&reason);
    reason
}

async fn poll_open(live: &Live) -> String {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tick.tick().await;
        if !live.connection.is_open() {
            return "the connection is closed".to_owned();
        }
        if !live.publisher.channel.is_open() {
            return "the publish channel is closed".to_owned();
        }
        if !live.replies.is_open() {
            return "the reply channel is closed".to_owned();
        }
    }
}

/// Closes a session's channels, then its connection (the broker then deletes the
/// exclusive reply queue), each step bounded in time.
async fn close(live: &Live, reason: &str) {
    live.publisher.confirms.close(reason);
    for channel in live
        .dead_letters
        .iter()
        .chain([&live.replies, &live.publisher.channel])
    {
        if channel.is_open() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.clone().close()).await;
        }
    }
    if live.connection.is_open() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, live.connection.clone().close()).await;
    }
}

/// Hands every reply to `on_reply`, then acknowledges it: together (`multiple`) every
/// [`REPLY_ACK_BATCH`] replies, and whenever no more are waiting, so that the broker's
/// prefetch window refills while the host keeps up, and stops while it does not.
async fn read_replies<F: Fn(IncomingReply)>(
    consumer: &mut UnboundedReceiver<ConsumerMessage>,
    channel: &Channel,
    on_reply: &F,
) -> String {
    let mut unacked: u64 = 0;
    while let Some(message) = consumer.recv().await {
        let tag = message.deliver.as_ref().map(|d| d.delivery_tag());
        on_reply(incoming_reply(message.basic_properties, message.content));
        let Some(tag) = tag else {
            continue;
        };
        unacked += 1;
        if unacked >= REPLY_ACK_BATCH || consumer.is_empty() {
            if let Err(e) = channel.basic_ack(BasicAckArguments::new(tag, true)).await {
                return format!("replies could not be acknowledged: {e}");
            }
            unacked = 0;
        }
    }
    "the reply consumer ended".to_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }
}
