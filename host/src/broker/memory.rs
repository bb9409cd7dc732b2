//! An in-memory [`Broker`] for unit tests: it records what was published and can be told
//! to fail or to hold confirms, so tests can drive every branch of the gateway without
//! RabbitMQ. Replies are injected by calling the gateway directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

use super::{Broker, OutgoingRequest, PublishError};

#[derive(Default)]
pub struct MemoryBroker {
    published: Mutex<Vec<OutgoingRequest>>,
    cancels: Mutex<Vec<Uuid>>,
    fail_with: Mutex<Option<PublishError>>,
    hold_confirms: Mutex<bool>,
    release: Notify,
    confirm_timeouts: AtomicUsize,
}

impl MemoryBroker {
    pub fn new() -> Self {
        Self::default()
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
}
