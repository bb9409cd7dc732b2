//! Which request types have workers (issue 19, "no silent timeouts"): without a consumer on
//! its queue a request would wait in the queue for its whole timeout and end `TIMEOUT`, and
//! nobody would be told why. The host looks at every request queue's consumers every
//! [`LOOK_EVERY`] (a passive declare, `Broker::consumers`: one round trip, no management
//! plugin), and a type is *unserved* once [`UNSERVED_AFTER_LOOKS`] looks in a row saw none.
//!
//! What an unserved type does to a request is the operator's choice, per type
//! (`when_no_workers` in plugins.toml, [`WhenNoWorkers`]): `fail` (the default) refuses it
//! `UNAVAILABLE` with `details: { reason: "noConsumers", requestType, queue }` within a round
//! trip; `queue` publishes it anyway, for workers that start later (scale-to-zero workers).
//!
//! Why not refuse on the first look with no consumer: a look is up to [`LOOK_EVERY`] old, and a
//! fresh queue has no consumer until its worker comes. So a type must have had none for
//! several looks, and a request is refused only on a look that started after it arrived: it
//! looks once more itself (one look per queue at a time; requests that waited for a look
//! take its answer), so a worker that has just started is seen, never refused. A look that
//! fails (broker away, queue missing) never refuses: the publish then says what is wrong.
//!
//! One WARN line per type when it becomes unserved, one INFO line when it is served again;
//! the gauge `taskgate_request_type_consumers` per type; `/readyz` lists the unserved types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use crate::console::cluster::Look;
use crate::error::{RequestError, UnavailableCause};

/// How often every request queue is looked at.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);
/// Looks in a row without a consumer before a type counts as unserved (4–6 s with
/// [`LOOK_EVERY`]): a worker restarting or reconnecting is not an outage.
pub const UNSERVED_AFTER_LOOKS: u32 = 3;

/// What a request to a type without workers does (`when_no_workers` in plugins.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNoWorkers {
    /// Refused `UNAVAILABLE` at once, naming the type and its queue.
    #[default]
    Fail,
    /// Published anyway: it waits in the queue for a worker, up to its timeout.
    Queue,
}

impl WhenNoWorkers {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenNoWorkers::Fail => "fail",
            WhenNoWorkers::Queue => "queue",
        }
    }
}

/// How a type's being served changed with a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No consumer for [`UNSERVED_AFTER_LOOKS`] looks in a row.
    Unserved,
    /// A consumer again after it was unserved.
    ServedAgain,
}

/// What the looks at one queue have told.
#[derive(Debug, Default)]
struct QueueWatch {
    /// Looks in a row that saw no consumer.
    zero_looks: u32,
    /// The last look: when it started, and its consumers (`None`: it failed).
    last: Option<(Instant, Option<u32>)>,
    /// The last look whole: ready messages and consumers, or why it failed (the console's).
    latest: Option<Look>,
    /// Held by the request that looks again, so that a burst of requests to an unserved
    /// type costs one look, not one each.
    looking: Arc<tokio::sync::Mutex<()>>,
}

impl QueueWatch {
    fn unserved(&self) -> bool {
        self.zero_looks >= UNSERVED_AFTER_LOOKS
    }
}

/// The consumers of every request queue the host serves, as last looked at.
#[derive(Debug, Default)]
pub struct Serving {
    queues: Mutex<HashMap<String, QueueWatch>>,
    /// Whether any queue is unserved, kept with `queues`: every request asks, and while every
    /// type has workers (the usual case) it answers without the lock and the map lookup.
    any_unserved: AtomicBool,
}

/// A request type's queue as `/readyz` shows an unserved one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unserved {
    pub request_type: String,
    pub queue: String,
    pub when_no_workers: WhenNoWorkers,
}

impl Serving {
    /// Takes a look at `queue` that just ended that told only its consumers (ready messages
    /// count as 0), or why it could not be looked at.
    pub fn observe(&self, queue: &str, look: Result<u32, String>) -> Option<Change> {
        self.observe_from(queue, look.map(|consumers| (0, consumers)), Instant::now())
    }

    /// Takes a look at `queue` that started at `started`.
    fn observe_from(&self, queue: &str, look: Look, started: Instant) -> Option<Change> {
        let mut queues = lock(&self.queues);
        let watch = queues.entry(queue.to_owned()).or_default();
        let was_unserved = watch.unserved();
        match look {
            Ok((_, 0)) => watch.zero_looks = watch.zero_looks.saturating_add(1),
            Ok(_) => watch.zero_looks = 0,
            // Nothing is known: the count of empty looks stands.
            Err(_) => {}
        }
        watch.last = Some((started, look.as_ref().ok().map(|(_, consumers)| *consumers)));
        watch.latest = Some(look);
        let now_unserved = watch.unserved();
        self.any_unserved
            .store(queues.values().any(QueueWatch::unserved), Ordering::Relaxed);
        match (was_unserved, now_unserved) {
            (false, true) => Some(Change::Unserved),
            (true, false) => Some(Change::ServedAgain),
            _ => None,
        }
    }

    /// No consumer on `queue` for [`UNSERVED_AFTER_LOOKS`] looks in a row.
    pub fn is_unserved(&self, queue: &str) -> bool {
        if !self.any_unserved.load(Ordering::Relaxed) {
            return false;
        }
        lock(&self.queues)
            .get(queue)
            .is_some_and(QueueWatch::unserved)
    }

    /// The consumers of `queue` at the last look that worked... or `None`.
    pub fn consumers(&self, queue: &str) -> Option<u32> {
        lock(&self.queues)
            .get(queue)
            .and_then(|w| w.last.and_then(|(_, consumers)| consumers))
    }

    /// Every watched queue's last look (ready messages and consumers, or why it failed), by
    /// name: what the console shows, so that it need not declare the queues again.
    pub fn looks(&self) -> Vec<(String, Look)> {
        let mut looks: Vec<(String, Look)> = lock(&self.queues)
            .iter()
            .filter_map(|(queue, watch)| Some((queue.clone(), watch.latest.clone()?)))
            .collect();
        looks.sort_by(|a, b| a.0.cmp(&b.0));
        looks
    }

    /// Forgets the queues no type is served on any more (hot reload).
    pub fn keep_only(&self, queues: &[&str]) {
        let mut watched = lock(&self.queues);
        watched.retain(|queue, _| queues.contains(&queue.as_str()));
        self.any_unserved.store(
            watched.values().any(QueueWatch::unserved),
            Ordering::Relaxed,
        );
    }

    /// The request's gate, before its publish: `Err` (`UNAVAILABLE`, `noConsumers`) only for
    /// a type that fails without workers, is unserved, and had no consumer at a look that
    /// started after the request arrived (taken now unless another request's is under way).
    pub async fn check<B: Broker>(
        &self,
        broker: &B,
        request_type: &str,
        queue: &str,
        when: WhenNoWorkers,
    ) -> Result<(), RequestError> {
        if when == WhenNoWorkers::Queue || !self.is_unserved(queue) {
            return Ok(());
        }
        let arrived = Instant::now();
        let looking = match lock(&self.queues).get(queue) {
            Some(watch) => watch.looking.clone(),
            None => return Ok(()),
        };
        let _one_look_at_a_time = looking.lock().await;
        let looked_since = |serving: &Self| {
            lock(&serving.queues)
                .get(queue)
                .and_then(|w| w.last)
                .is_some_and(|(started, _)| started > arrived)
        };
        if !looked_since(self) {
            let started = Instant::now();
            let look = broker.look(queue).await;
            debug!(
                queue,
                ?look,
                "an unserved type's queue, looked at again for a request"
            );
            log_change(
                self.observe_from(queue, look, started),
                queue,
                &[request_type],
            );
        }
        let refuse = lock(&self.queues)
            .get(queue)
            .is_some_and(|w| w.unserved() && matches!(w.last, Some((_, Some(0)))));
        if refuse {
            Err(RequestError::Unavailable(UnavailableCause::NoConsumers {
                request_type: request_type.to_owned(),
                queue: queue.to_owned(),
            }))
        } else {
            Ok(())
        }
    }

    /// The types (with their queues) that are unserved now, by name.
    pub fn unserved<'a>(
        &self,
        types: impl IntoIterator<Item = (&'a str, &'a str, WhenNoWorkers)>,
    ) -> Vec<Unserved> {
        let mut unserved: Vec<Unserved> = types
            .into_iter()
            .filter(|(_, queue, _)| self.is_unserved(queue))
            .map(|(request_type, queue, when)| Unserved {
                request_type: request_type.to_owned(),
                queue: queue.to_owned(),
                when_no_workers: when,
            })
            .collect();
        unserved.sort_by(|a, b| a.request_type.cmp(&b.request_type));
        unserved
    }
}

/// One line per change: WARN when a type becomes unserved, INFO when it is served again.
pub fn log_change(change: Option<Change>, queue: &str, request_types: &[&str]) {
    let types = request_types.join(", ");
    match change {
        Some(Change::Unserved) => warn!(
            queue,
            request_types = %types,
            "no worker consumes queue `{queue}`: requests of {types} are refused UNAVAILABLE (noConsumers), or wait in the queue where when_no_workers = \"queue\"; start a worker for it"
        ),
        Some(Change::ServedAgain) => {
            info!(queue, request_types = %types, "queue `{queue}` has a worker again: {types} served")
        }
        None => {}
    }
}

/// Looks at every request queue `types` names (type, queue) every [`LOOK_EVERY`] until
/// `stop`, logs the changes and sets the consumers gauge of each type.
pub async fn watch<B: Broker>(
    serving: Arc<Serving>,
    broker: Arc<B>,
    types: impl Fn() -> Vec<(String, String)> + Send + 'static,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let types = types();
        let mut by_queue: HashMap<&str, Vec<&str>> = HashMap::new();
        for (request_type, queue) in &types {
            by_queue.entry(queue).or_default().push(request_type);
        }
        serving.keep_only(&by_queue.keys().copied().collect::<Vec<_>>());
        for (queue, request_types) in &by_queue {
            let started = Instant::now();
            let look = broker.look(queue).await;
            if let Ok((_, consumers)) = look {
                for request_type in request_types {
                    crate::metrics::record_consumers(request_type, consumers);
                }
            }
            log_change(
                serving.observe_from(queue, look, started),
                queue,
                request_types,
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::broker::memory::MemoryBroker;

    fn looks(serving: &Serving, queue: &str, looks: &[Result<u32, String>]) -> Vec<Option<Change>> {
        looks
            .iter()
            .map(|l| serving.observe(queue, l.clone()))
            .collect()
    }

    #[test]
    fn a_type_is_unserved_after_several_empty_looks_in_a_row_and_served_after_one_with_a_consumer()
    {
        let serving = Serving::default();
        let changes = looks(&serving, "q", &[Ok(0), Ok(0), Ok(1), Ok(0), Ok(0)]);
        assert_eq!(changes, [None; 5], "never three empty looks in a row");
        assert!(!serving.is_unserved("q"));
        assert_eq!(serving.observe("q", Ok(0)), Some(Change::Unserved));
        assert_eq!(serving.observe("q", Ok(0)), None, "said once");
        assert!(serving.is_unserved("q"));
        assert_eq!(
            serving.observe("q", Err("gone".into())),
            None,
            "a failed look tells nothing"
        );
        assert!(serving.is_unserved("q"));
        assert_eq!(serving.observe("q", Ok(2)), Some(Change::ServedAgain));
        assert_eq!(serving.consumers("q"), Some(2));
        assert!(!serving.is_unserved("other"), "never looked at: served");
    }

    #[tokio::test]
    async fn a_request_to_an_unserved_type_looks_again_before_it_is_refused() {
        let serving = Serving::default();
        let broker = MemoryBroker::new();
        looks(&serving, "q", &[Ok(0), Ok(0), Ok(0)]);
        let fail = WhenNoWorkers::Fail;
        let refused = serving.check(&broker, "t", "q", fail).await.unwrap_err();
        assert!(matches!(
            refused,
            RequestError::Unavailable(UnavailableCause::NoConsumers { request_type, queue })
                if request_type == "t" && queue == "q"
        ));
        assert!(
            serving
                .check(&broker, "t", "q", WhenNoWorkers::Queue)
                .await
                .is_ok(),
            "`queue` never refuses"
        );
        // A worker starts right after the timer's last look: the request's own look sees it.
        broker.set_consumers("q", 1);
        assert!(serving.check(&broker, "t", "q", fail).await.is_ok());
        assert!(!serving.is_unserved("q"));
    }

    #[tokio::test]
    async fn a_failed_look_never_refuses() {
        let serving = Serving::default();
        let broker = MemoryBroker::new();
        looks(&serving, "q", &[Ok(0), Ok(0), Ok(0)]);
        broker.fail_looks("q", "not connected to the broker");
        assert!(serving.is_unserved("q"));
        assert!(serving
            .check(&broker, "t", "q", WhenNoWorkers::Fail)
            .await
            .is_ok());
    }

    /// The watch keeps each queue's whole last look (ready messages too): the console reads
    /// it instead of declaring the queues again.
    #[tokio::test]
    async fn the_watch_keeps_each_queues_last_look_for_the_console() {
        let serving = Arc::new(Serving::default());
        let broker = Arc::new(MemoryBroker::new());
        broker.set_consumers("q.a", 2);
        broker.set_ready("q.a", 9);
        broker.fail_looks("q.b", "no such queue");
        let stop = CancellationToken::new();
        let types = || {
            vec![
                ("a".to_owned(), "q.a".to_owned()),
                ("b".to_owned(), "q.b".to_owned()),
            ]
        };
        let watch = tokio::spawn(watch(serving.clone(), broker.clone(), types, stop.clone()));
        let mut looks = Vec::new();
        for _ in 0..100 {
            looks = serving.looks();
            if looks.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        watch.await.unwrap();
        assert_eq!(
            looks,
            [
                ("q.a".to_owned(), Ok((9, 2))),
                ("q.b".to_owned(), Err("no such queue".to_owned()))
            ]
        );
    }

    #[test]
    fn readyz_lists_the_unserved_types_by_name() {
        let serving = Serving::default();
        looks(&serving, "q1", &[Ok(0), Ok(0), Ok(0)]);
        looks(&serving, "q2", &[Ok(1)]);
        let listed = serving.unserved([
            ("b.two", "q1", WhenNoWorkers::Queue),
            ("c", "q2", WhenNoWorkers::Fail),
            ("a.one", "q1", WhenNoWorkers::Fail),
        ]);
        let names: Vec<&str> = listed.iter().map(|u| u.request_type.as_str()).collect();
        assert_eq!(names, ["a.one", "b.two"]);
        assert_eq!(
            serde_json::to_value(&listed[1]).unwrap(),
            serde_json::json!({"requestType": "b.two", "queue": "q1", "whenNoWorkers": "queue"})
        );
    }
}
