//! Request deadlines, kept in one sorted set per gateway and watched by one task.
//!
//! The first version spawned a timer task per request and aborted it when the request
//! finished: a task allocation, two scheduler round trips and a timer-wheel entry per
//! request (docs/performance.md). Here a request costs one insert and one remove in a
//! `BTreeSet` under a short, uncontended lock; the watching task sleeps until the earliest deadline and is woken only when a
//! new deadline becomes the earliest (rare: one request type's deadlines mostly arrive in
//! order).

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Deadlines {
    set: Mutex<BTreeSet<(Instant, Uuid)>>,
    /// Signalled when the earliest deadline moved earlier, or to make the watcher look
    /// again (shutdown).
    changed: Notify,
}

impl Deadlines {
    fn set(&self) -> MutexGuard<'_, BTreeSet<(Instant, Uuid)>> {
        // Nothing panics while holding the lock; recover the data if something did.
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches `id` until `at`.
    pub fn insert(&self, at: Instant, id: Uuid) {
        let earliest = {
            let mut set = self.set();
            let earliest = set.first().is_none_or(|(first, _)| at < *first);
            set.insert((at, id));
            earliest
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Stops watching `id` (its request ended before its deadline).
    pub fn remove(&self, at: Instant, id: Uuid) {
        self.set().remove(&(at, id));
    }

    pub fn len(&self) -> usize {
        self.set().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes a pending [`Deadlines::next_expired`] return (possibly empty).
    pub fn wake(&self) {
        self.changed.notify_one();
    }

    /// Waits until a deadline has passed and takes every passed one out, earliest first;
    /// returns early (possibly empty) after [`Deadlines::wake`].
    pub async fn next_expired(&self) -> Vec<Uuid> {
        loop {
            let now = Instant::now();
            let (expired, next) = {
                let mut set = self.set();
                let mut expired = Vec::new();
                while let Some(&(at, id)) = set.first() {
                    if at > now {
                        break;
                    }
                    set.pop_first();
                    expired.push(id);
                }
                (expired, set.first().map(|(at, _)| *at))
            };
            if !expired.is_empty() {
                return expired;
            }
            // A notification sent since the lock was released is stored as a permit, so
            // an insert in between cannot be missed.
            match next {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.changed.notified() => return Vec::new(),
                },
                None => {
                    self.changed.notified().await;
                    return Vec::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn ids(n: u128) -> Vec<Uuid> {
        (1..=n).map(Uuid::from_u128).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_expire_in_order_and_removed_ones_never() {
        let d = Deadlines::default();
        let start = Instant::now();
        let [a, b, c] = ids(3).try_into().unwrap();
        d.insert(start + Duration::from_millis(300), c);
        d.insert(start + Duration::from_millis(100), a);
        d.insert(start + Duration::from_millis(200), b);
        d.remove(start + Duration::from_millis(200), b);
        assert_eq!(d.len(), 2);
        // The wake-up of the inserts may come first; deadlines come in order regardless.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            seen.extend(d.next_expired().await);
        }
        assert_eq!(seen, vec![a, c]);
        assert!(Instant::now() >= start + Duration::from_millis(300));
        assert!(d.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_wakes_a_waiting_watcher() {
        let d = Arc::new(Deadlines::default());
        let start = Instant::now();
        let [late, early] = ids(2).try_into().unwrap();
        d.insert(start + Duration::from_secs(60), late);
        let _ = d.next_expired().await; // consume the insert's wake-up
        let watcher = {
            let d = d.clone();
            tokio::spawn(async move {
                loop {
                    let expired = d.next_expired().await;
                    if !expired.is_empty() {
                        return (expired, Instant::now());
                    }
                }
            })
        };
        tokio::task::yield_now().await;
        d.insert(start + Duration::from_secs(1), early);
        let (expired, at) = watcher.await.unwrap();
        assert_eq!(expired, vec![early]);
        assert!(at < start + Duration::from_secs(60));
    }

    #[tokio::test]
    async fn wake_returns_an_empty_batch() {
        let d = Deadlines::default();
        d.wake();
        assert!(d.next_expired().await.is_empty());
    }
}
