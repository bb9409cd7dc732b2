//! What a host knows of the cluster: the other hosts' heartbeats (protocol §2.6, on the
//! `taskgate.hosts` fanout exchange) and the request queues' depths and consumers. The
//! broker side (`broker::amqp::cluster`) feeds both; this module only keeps and judges.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::HostStatus;

/// How often a host publishes its heartbeat.
pub const BEAT_EVERY: Duration = Duration::from_secs(2);
/// A host not heard of for this many beats is shown as gone.
pub const MISSED_BEATS: u32 = 3;
/// A gone host is forgotten after this long.
pub const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);
/// How often the queues are looked at.
pub const QUEUES_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat larger than this is ignored (a host with very many plugins still fits).
pub const MAX_BEAT_BYTES: usize = 1024 * 1024;

/// A host as the others last heard of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    #[serde(flatten)]
    pub status: HostStatus,
    /// Milliseconds since the Unix epoch of the last beat received.
    pub last_seen_ms: u64,
    /// No beat for [`MISSED_BEATS`] intervals.
    pub gone: bool,
}

/// The hosts heard of, by id.
#[derive(Debug, Default)]
pub struct Peers {
    hosts: BTreeMap<String, (HostStatus, u64)>,
}

impl Peers {
    /// Takes a heartbeat's body; a malformed or oversized one is ignored (`false`).
    pub fn observe(&mut self, body: &[u8], now_ms: u64) -> bool {
        if body.len() > MAX_BEAT_BYTES {
            return false;
        }
        match serde_json::from_slice::<HostStatus>(body) {
            Ok(status) => {
                self.hosts.insert(status.id.clone(), (status, now_ms));
                true
            }
            Err(_) => false,
        }
    }

    /// Every host heard of within [`FORGET_AFTER`], by id.
    pub fn list(&mut self, now_ms: u64) -> Vec<Peer> {
        let forget = FORGET_AFTER.as_millis() as u64;
        self.hosts
            .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < forget);
        let gone_after = (BEAT_EVERY * MISSED_BEATS).as_millis() as u64;
        self.hosts
            .values()
            .map(|(status, seen)| Peer {
                status: status.clone(),
                last_seen_ms: *seen,
                gone: now_ms.saturating_sub(*seen) > gone_after,
            })
            .collect()
    }
}

/// A request queue's state at the last look (a passive declare).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueState {
    pub queue: String,
    /// Messages ready for a consumer.
    pub ready: u32,
    /// Delivered to a worker and not yet acknowledged: from RabbitMQ's management API,
    /// `None` when it cannot be read (a passive declare does not tell).
    pub unacked: Option<u64>,
    pub consumers: u32,
    /// The ready messages grew at each of the last [`GROWING_LOOKS`] looks.
    pub growing: bool,
    /// No consumers, or a growing backlog: shown in red.
    pub alarm: bool,
    /// Why it could not be looked at (e.g. it does not exist), if so.
    pub error: Option<String>,
}

/// One look at a queue: `(ready, consumers)`, or why it could not be looked at.
pub type Look = Result<(u32, u32), String>;

/// Looks of a queue kept to tell a growing backlog.
pub const GROWING_LOOKS: usize = 3;

/// The last looks at every request queue.
#[derive(Debug, Default)]
pub struct Queues {
    looks: BTreeMap<String, Vec<Look>>,
}

impl Queues {
    /// A look at `queue`: `(ready, consumers)` or why it failed.
    pub fn observe(&mut self, queue: &str, look: Look) {
        let looks = self.looks.entry(queue.to_owned()).or_default();
        looks.push(look);
        if looks.len() > GROWING_LOOKS + 1 {
            let _oldest = looks.remove(0);
        }
    }

    /// Only these queues are kept (the types served now).
    pub fn keep_only(&mut self, queues: &[String]) {
        self.looks.retain(|q, _| queues.contains(q));
    }

    pub fn list(&self) -> Vec<QueueState> {
        self.looks
            .iter()
            .filter_map(|(queue, looks)| {
                let last = looks.last()?;
                Some(match last {
                    Ok((ready, consumers)) => {
                        let readies: Vec<u32> = looks
                            .iter()
                            .filter_map(|l| l.as_ref().ok().map(|(r, _)| *r))
                            .collect();
                        let growing = readies.len() > GROWING_LOOKS
                            && readies.windows(2).all(|w| w[1] > w[0]);
                        QueueState {
                            queue: queue.clone(),
                            ready: *ready,
                            unacked: None,
                            consumers: *consumers,
                            growing,
                            alarm: *consumers == 0 || growing,
                            error: None,
                        }
                    }
                    Err(reason) => QueueState {
                        queue: queue.clone(),
                        ready: 0,
                        unacked: None,
                        consumers: 0,
                        growing: false,
                        alarm: true,
                        error: Some(reason.clone()),
                    },
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn beat(id: &str) -> Vec<u8> {
        serde_json::to_vec(&HostStatus {
            id: id.into(),
            version: "0.1.0".into(),
            listen: "127.0.0.1:8080".into(),
            uptime_seconds: 1,
            sockets: 0,
            in_flight: 0,
            broker_connected: true,
            draining: false,
            shutting_down: false,
            plugins: Vec::new(),
            request_types: Vec::new(),
            load_errors: Vec::new(),
            recent_failures: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn a_host_missing_three_beats_is_gone_and_later_forgotten() {
        let mut peers = Peers::default();
        assert!(peers.observe(&beat("a"), 0));
        assert!(peers.observe(&beat("b"), 0));
        assert!(!peers.observe(b"{not json", 0));
        assert!(!peers.observe(&vec![b' '; MAX_BEAT_BYTES + 1], 0));
        assert!(peers.observe(&beat("a"), 6_000));
        let list = peers.list(6_500);
        assert_eq!(list.len(), 2);
        assert!(!list[0].gone, "a beat 0.5 s ago");
        assert!(list[1].gone, "b missed three beats");
        assert_eq!(peers.list(FORGET_AFTER.as_millis() as u64 + 1).len(), 1);
    }

    #[test]
    fn a_queue_without_consumers_or_with_a_growing_backlog_is_an_alarm() {
        let mut queues = Queues::default();
        queues.observe("q.idle", Ok((0, 2)));
        queues.observe("q.none", Ok((0, 0)));
        for ready in [1, 5, 9, 20] {
            queues.observe("q.behind", Ok((ready, 1)));
        }
        for ready in [1, 5, 3, 20] {
            queues.observe("q.busy", Ok((ready, 1)));
        }
        queues.observe("q.missing", Err("NOT_FOUND".into()));
        let list = queues.list();
        let by = |name: &str| list.iter().find(|q| q.queue == name).unwrap().clone();
        assert!(!by("q.idle").alarm);
        assert!(by("q.none").alarm);
        assert!(by("q.behind").growing && by("q.behind").alarm);
        assert!(
            !by("q.busy").alarm,
            "a backlog that also shrank is not growing"
        );
        assert!(by("q.missing").alarm);
        queues.keep_only(&["q.idle".to_owned()]);
        assert_eq!(queues.list().len(), 1);
    }
}
