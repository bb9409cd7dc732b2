//! An in-memory [`Broker`] for unit tests: it records what was published and can be told
//! to fail or to hold confirms, so tests can drive every branch of the gateway without
//! RabbitMQ. Replies are injected by calling the gateway directly.
//!
//! Several gateways can share one [`MemoryBus`], which carries what hosts send each other
//! (claims to all, hand-offs and forwarded replies to one reply queue), as RabbitMQ does
//! between hosts (protocol §4.5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use uuid::Uuid;

use super::{Broker, HostMessage, IncomingReply, OutgoingRequest, PublishError};

/// What a host does with a message on its reply queue (the gateway's `on_reply`).
type Receiver = Arc<dyn Fn(IncomingReply) + Send + Sync>;

/// The reply queues of several in-memory hosts, by name.
#[derive(Default)]
pub struct MemoryBus {
    queues: Mutex<HashMap<String, Receiver>>,
    /// Every message sent between hosts, in order (queue, message), for assertions.
    sent: Mutex<Vec<(String, HostMessage)>>,
}

impl MemoryBus {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Messages for `queue` go to `receive` from now on.
    pub fn serve(&self, queue: &str, receive: impl Fn(IncomingReply) + Send + Sync + 'static) {
        lock(&self.queues).insert(queue.to_owned(), Arc::new(receive));
    }

    /// The queue is gone (its host died): messages for it are unroutable.
    pub fn close(&self, queue: &str) {
        lock(&self.queues).remove(queue);
    }

    /// Every message sent between hosts so far: (queue or `*` for a claim, message).
    pub fn sent(&self) -> Vec<(String, HostMessage)> {
        lock(&self.sent).clone()
    }
}

#[derive(Default)]
pub struct MemoryBroker {
    published: Mutex<Vec<OutgoingRequest>>,
    cancels: Mutex<Vec<Uuid>>,
    fail_with: Mutex<Option<PublishError>>,
    hold_confirms: Mutex<bool>,
    release: Notify,
    confirm_timeouts: AtomicUsize,
    /// The bus and this host's reply queue on it.
    bus: Option<(Arc<MemoryBus>, String)>,
    /// Consumers per queue as a passive declare would tell, or why it fails (none unless set).
    consumers: Mutex<HashMap<String, Result<u32, String>>>,
    /// Ready messages per queue, as looks tell them (0 unless set).
    ready: Mutex<HashMap<String, u32>>,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A broker whose host has reply queue `queue` on `bus`.
    pub fn on_bus(bus: Arc<MemoryBus>, queue: &str) -> Self {
        MemoryBroker {
            bus: Some((bus, queue.to_owned())),
            ..Self::default()
        }
    }

    /// Looks at `queue` tell `count` ready messages from now on.
    pub fn set_ready(&self, queue: &str, count: u32) {
        lock(&self.ready).insert(queue.to_owned(), count);
    }

    /// `queue` has `count` consumers from now on.
    pub fn set_consumers(&self, queue: &str, count: u32) {
        lock(&self.consumers).insert(queue.to_owned(), Ok(count));
    }

    /// Looks at `queue` fail with `reason` from now on (as with the broker away).
    pub fn fail_looks(&self, queue: &str, reason: &str) {
        lock(&self.consumers).insert(queue.to_owned(), Err(reason.to_owned()));
    }

    /// Every later publish fails with this error (None: succeed again).
    pub fn fail_with(&self, error: Option<PublishError>) {
        *lock(&self.fail_with) = error;
    }

    /// While held, publishes wait for [`MemoryBroker::release_confirms`].
    pub fn hold_confirms(&self, hold: bool) {
        *lock(&self.hold_confirms) = hold;
    }

    pub fn release_confirms(&self) {
        *lock(&self.hold_confirms) = false;
        self.release.notify_waiters();
    }

    pub fn published(&self) -> Vec<OutgoingRequest> {
        lock(&self.published).clone()
    }

    pub fn cancels(&self) -> Vec<Uuid> {
        lock(&self.cancels).clone()
    }

    /// How often the gateway said a confirm did not come in time.
    pub fn confirm_timeouts(&self) -> usize {
        self.confirm_timeouts.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker for MemoryBroker {
    async fn publish(&self, request: OutgoingRequest) -> Result<(), PublishError> {
        if let Some(err) = lock(&self.fail_with).clone() {
            return Err(err);
        }
        lock(&self.published).push(request);
        loop {
            let released = self.release.notified();
            if !*lock(&self.hold_confirms) {
                return Ok(());
            }
            released.await;
        }
    }

    async fn publish_cancel(&self, correlation_id: Uuid) -> Result<(), PublishError> {
        lock(&self.cancels).push(correlation_id);
        Ok(())
    }

    fn confirm_timed_out(&self) {
        self.confirm_timeouts.fetch_add(1, Ordering::SeqCst);
    }

    async fn look(&self, queue: &str) -> crate::console::cluster::Look {
        let ready = lock(&self.ready).get(queue).copied().unwrap_or(0);
        lock(&self.consumers)
            .get(queue)
            .cloned()
            .unwrap_or(Ok(0))
            .map(|consumers| (ready, consumers))
    }

    fn own_queue(&self) -> Option<String> {
        self.bus.as_ref().map(|(_, queue)| queue.clone())
    }

    async fn publish_claim(&self, message: HostMessage) -> Result<(), PublishError> {
        let Some((bus, _)) = &self.bus else {
            return Err(PublishError::NotConnected);
        };
        lock(&bus.sent).push(("*".to_owned(), message.clone()));
        // Every host, this one too (as the fanout does): a host ignores its own claims.
        let receivers: Vec<Receiver> = lock(&bus.queues).values().cloned().collect();
        for receive in receivers {
            receive(message.clone().into_reply());
        }
        Ok(())
    }

    async fn send_to_host(
        &self,
        queue: Arc<str>,
        message: HostMessage,
    ) -> Result<(), PublishError> {
        let Some((bus, _)) = &self.bus else {
            return Err(PublishError::NotConnected);
        };
        lock(&bus.sent).push((queue.to_string(), message.clone()));
        let receive = lock(&bus.queues).get(&*queue).cloned();
        match receive {
            Some(receive) => {
                receive(message.into_reply());
                Ok(())
            }
            None => Err(PublishError::Unroutable(queue.to_string())),
        }
    }
}
