//! What a host knows of the cluster: the other hosts' heartbeats (protocol §2.6, on the
//! `taskgate.hosts` fanout exchange) and the request queues' depths and consumers. The
//! broker side (`broker::amqp::cluster`) feeds both; this module only keeps and judges.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::failures::{self, Failure};
use super::management::QueueCounts;
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
/// How often a beat carries all of the host's recent failures (the others carry the new
/// ones only): a console that has just started, or missed a beat, is whole again by then.
pub const FULL_FAILURES_EVERY: Duration = Duration::from_secs(30);

/// A heartbeat as it travels (protocol §2.6): the host's status, with its failures either
/// whole (`recentFailures`, and no `newFailures`: every [`FULL_FAILURES_EVERY`], and every
/// beat of a host from before `newFailures`) or only those recorded since its previous beat
/// (`newFailures`; `recentFailures` is then empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Beat {
    #[serde(flatten)]
    pub status: HostStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_failures: Option<Vec<Failure>>,
}

/// What the beats sent so far said of this host's failures.
#[derive(Debug, Default)]
pub struct FailureBeats {
    /// When the last whole list went out.
    last_whole: Option<Instant>,
    /// The newest failure of the last beat: those before it in the list (newest first) are
    /// new. Two failures alike in every field (same millisecond) may be taken for one and
    /// the second sent only with the next whole list.
    newest_sent: Option<Failure>,
}

impl FailureBeats {
    /// The beat of `status` (its failures newest first, as `RecentFailures::list` gives).
    pub fn beat(&mut self, mut status: HostStatus, now: Instant) -> Beat {
        let whole = self
            .last_whole
            .is_none_or(|at| now.saturating_duration_since(at) >= FULL_FAILURES_EVERY);
        let newest = status.recent_failures.first().cloned();
        let new_failures = if whole {
            self.last_whole = Some(now);
            None
        } else {
            let all = std::mem::take(&mut status.recent_failures);
            let new = match &self.newest_sent {
                // Not in the ring any more: every failure in it is new.
                Some(sent) => match all.iter().position(|f| f == sent) {
                    Some(at) => all.into_iter().take(at).collect(),
                    None => all,
                },
                None => all,
            };
            Some(new)
        };
        if newest.is_some() {
            self.newest_sent = newest;
        }
        Beat {
            status,
            new_failures,
        }
    }
}

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

/// The hosts heard of, by id, each with its recent failures (newest first, at most
/// `failures_kept`: no more of one host can be shown).
#[derive(Debug)]
pub struct Peers {
    hosts: BTreeMap<String, (HostStatus, u64)>,
    failures_kept: usize,
}

impl Default for Peers {
    fn default() -> Self {
        Peers {
            hosts: BTreeMap::new(),
            failures_kept: failures::DEFAULT_KEPT,
        }
    }
}

impl Peers {
    /// Keeps at most `kept` failures of each host.
    pub fn set_failures_kept(&mut self, kept: usize) {
        self.failures_kept = kept;
    }

    /// Takes a heartbeat's body; a malformed or oversized one is ignored (`false`). A whole
    /// list of failures replaces the host's; new failures join it.
    pub fn observe(&mut self, body: &[u8], now_ms: u64) -> bool {
        if body.len() > MAX_BEAT_BYTES {
            return false;
        }
        let Ok(Beat {
            mut status,
            new_failures,
        }) = serde_json::from_slice::<Beat>(body)
        else {
            return false;
        };
        status.recent_failures = match new_failures {
            None => std::mem::take(&mut status.recent_failures),
            Some(new) => {
                let known = self
                    .hosts
                    .get_mut(&status.id)
                    .map(|(known, _)| std::mem::take(&mut known.recent_failures))
                    .unwrap_or_default();
                [new, known].concat()
            }
        };
        status.recent_failures = failures::merge([status.recent_failures], self.failures_kept);
        self.hosts.insert(status.id.clone(), (status, now_ms));
        true
    }

    /// Every host heard of within [`FORGET_AFTER`], by id.
    pub fn list(&mut self, now_ms: u64) -> Vec<Peer> {
        let forget = FORGET_AFTER.as_millis() as u64;
        self.hosts
            .retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < forget);
        let gone_after = (BEAT_EVERY * MISSED_BEATS).as_millis() as u64;
        self.hosts
            .values_mut()
            .map(|(status, seen)| {
                let gone = now_ms.saturating_sub(*seen) > gone_after;
                if gone {
                    // Not shown any more; a host that comes back sends them again.
                    status.recent_failures = Vec::new();
                }
                Peer {
                    status: status.clone(),
                    last_seen_ms: *seen,
                    gone,
                }
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
    /// The workers cannot keep up: at each of the management API's last [`GROWING_LOOKS`]
    /// looks every worker held a message (unacknowledged ≥ consumers > 0), while the ready
    /// messages were never zero and never shrank over the last [`GROWING_LOOKS`] looks.
    /// Always `false` without the management API (a passive declare does not tell).
    pub saturated: bool,
    /// No consumers, a growing backlog, or saturated workers: shown in red.
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
    /// Per queue, whether every worker held a message at each of the management API's last
    /// [`GROWING_LOOKS`] looks, oldest first.
    all_busy: BTreeMap<String, Vec<bool>>,
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

    /// A look at the management API: every queue's counts, or `None` when it could not be
    /// read (what it told of busy workers is forgotten: stale counts raise no alarm).
    pub fn observe_counts(&mut self, counts: Option<&BTreeMap<String, QueueCounts>>) {
        let Some(counts) = counts else {
            self.all_busy.clear();
            return;
        };
        for queue in self.looks.keys() {
            let busy = counts
                .get(queue)
                .is_some_and(|c| c.consumers > 0 && c.unacked >= c.consumers);
            let looks = self.all_busy.entry(queue.clone()).or_default();
            looks.push(busy);
            if looks.len() > GROWING_LOOKS {
                let _oldest = looks.remove(0);
            }
        }
    }

    /// Only these queues are kept (the types served now).
    pub fn keep_only(&mut self, queues: &[String]) {
        self.looks.retain(|q, _| queues.contains(q));
        self.all_busy.retain(|q, _| queues.contains(q));
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
                        let enough = readies.len() > GROWING_LOOKS;
                        let growing = enough && readies.windows(2).all(|w| w[1] > w[0]);
                        let standing = enough
                            && readies.iter().all(|r| *r > 0)
                            && readies.windows(2).all(|w| w[1] >= w[0]);
                        let all_busy = self.all_busy.get(queue).is_some_and(|busy| {
                            busy.len() >= GROWING_LOOKS && busy.iter().all(|b| *b)
                        });
                        let saturated = standing && all_busy;
                        QueueState {
                            queue: queue.clone(),
                            ready: *ready,
                            unacked: None,
                            consumers: *consumers,
                            growing,
                            saturated,
                            alarm: *consumers == 0 || growing || saturated,
                            error: None,
                        }
                    }
                    Err(reason) => QueueState {
                        queue: queue.clone(),
                        ready: 0,
                        unacked: None,
                        consumers: 0,
                        growing: false,
                        saturated: false,
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
    use crate::console::failures::Failure;
    use std::time::Instant;

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

    fn failure(host: &str, n: u64) -> Failure {
        Failure {
            request_type: "text.wordcount".into(),
            code: "WORKER_ERROR".into(),
            // As long as a message is kept: what the issue's ~50 KB a beat assumed.
            message: "x".repeat(crate::console::failures::MAX_MESSAGE_CHARS),
            correlation_id: uuid::Uuid::new_v4().to_string(),
            traceparent: format!("00-{:032x}-{:016x}-01", n, n),
            host: host.into(),
            at_ms: 1_764_950_000_000 + n,
        }
    }

    fn status(id: &str, failures: Vec<Failure>) -> HostStatus {
        let mut status: HostStatus = serde_json::from_slice(&beat(id)).unwrap();
        status.recent_failures = failures;
        status
    }

    fn kept(peers: &mut Peers, id: &str, now_ms: u64) -> Vec<u64> {
        peers
            .list(now_ms)
            .into_iter()
            .find(|p| p.status.id == id)
            .map(|p| {
                p.status
                    .recent_failures
                    .iter()
                    .map(|f| f.at_ms % 1000)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A beat carries only the failures since the previous one, and all of them every
    /// [`FULL_FAILURES_EVERY`]; the receiver keeps each host's list whole.
    #[test]
    fn beats_carry_new_failures_and_now_and_then_all_and_receivers_keep_the_whole_list() {
        let t0 = Instant::now();
        let mut sender = FailureBeats::default();
        let mut peers = Peers::default();
        peers.set_failures_kept(4);
        let ring = |ns: &[u64]| {
            ns.iter()
                .rev()
                .map(|n| failure("a", *n))
                .collect::<Vec<_>>()
        };
        let a = ring(&[1, 2, 3]);
        // The first beat is whole.
        let first = sender.beat(status("a", a.clone()), t0);
        assert!(first.new_failures.is_none());
        assert_eq!(first.status.recent_failures.len(), 3);
        assert!(peers.observe(&serde_json::to_vec(&first).unwrap(), 0));
        assert_eq!(kept(&mut peers, "a", 0), [3, 2, 1]);
        // Two more failures: only they travel.
        let mut a2 = ring(&[4, 5]);
        a2.extend(a.clone());
        let second = sender.beat(status("a", a2.clone()), t0 + BEAT_EVERY);
        assert_eq!(second.status.recent_failures, []);
        let new: Vec<u64> = second
            .new_failures
            .as_ref()
            .unwrap()
            .iter()
            .map(|f| f.at_ms % 1000)
            .collect();
        assert_eq!(new, [5, 4]);
        assert!(peers.observe(&serde_json::to_vec(&second).unwrap(), 2_000));
        assert_eq!(
            kept(&mut peers, "a", 2_000),
            [5, 4, 3, 2],
            "bounded, newest first"
        );
        // Nothing new: an empty list, not the old ones again.
        let quiet = sender.beat(status("a", a2.clone()), t0 + BEAT_EVERY * 2);
        assert_eq!(quiet.new_failures, Some(Vec::new()));
        assert!(peers.observe(&serde_json::to_vec(&quiet).unwrap(), 4_000));
        assert_eq!(kept(&mut peers, "a", 4_000), [5, 4, 3, 2]);
        // A console that starts late fills in at the next whole beat.
        let mut late = Peers::default();
        assert!(late.observe(&serde_json::to_vec(&quiet).unwrap(), 4_000));
        assert_eq!(kept(&mut late, "a", 4_000), Vec::<u64>::new());
        let whole = sender.beat(status("a", a2.clone()), t0 + FULL_FAILURES_EVERY);
        assert!(whole.new_failures.is_none());
        assert!(late.observe(&serde_json::to_vec(&whole).unwrap(), 6_000));
        assert_eq!(kept(&mut late, "a", 6_000), [5, 4, 3, 2, 1]);
        // More failures than the ring keeps between two beats: all of the ring is new.
        let flood = ring(&[10, 11, 12]);
        let after = sender.beat(status("a", flood), t0 + FULL_FAILURES_EVERY + BEAT_EVERY);
        assert_eq!(after.new_failures.unwrap().len(), 3);
        // A host gone: its failures are forgotten with it.
        let gone_at = 6_000 + (BEAT_EVERY * (MISSED_BEATS + 1)).as_millis() as u64;
        assert_eq!(kept(&mut late, "a", gone_at), Vec::<u64>::new());
        assert!(late.list(gone_at)[0].gone);
    }

    /// A beat of a host from before `newFailures` (its whole list in `recentFailures`) reads
    /// as it did: it replaces what was kept.
    #[test]
    fn a_beat_of_an_older_host_replaces_its_list() {
        let mut peers = Peers::default();
        let old = |ns: &[u64]| {
            let failures = ns.iter().rev().map(|n| failure("old", *n)).collect();
            serde_json::to_vec(&status("old", failures)).unwrap()
        };
        assert!(peers.observe(&old(&[1, 2]), 0));
        assert!(peers.observe(&old(&[2, 3]), 2_000));
        assert_eq!(kept(&mut peers, "old", 2_000), [3, 2]);
    }

    /// Bytes a host publishes for its failures with 100 kept and 1 or 10 new a second,
    /// before (the whole list in every beat) and after (new ones, the whole list every 30 s).
    #[test]
    fn beat_bytes_with_a_hundred_failures_kept_and_a_steady_failure_rate() {
        for per_second in [1, 10] {
            let t0 = Instant::now();
            let per_beat = per_second * BEAT_EVERY.as_secs();
            let beats = (FULL_FAILURES_EVERY.as_secs() / BEAT_EVERY.as_secs()) * 4;
            let mut ring: Vec<Failure> = (0..100).rev().map(|n| failure("a", n)).collect();
            let mut next = 100;
            let mut sender = FailureBeats::default();
            let (mut before, mut after) = (0usize, 0usize);
            let mut receiver = Peers::default();
            for i in 0..beats {
                for _ in 0..per_beat {
                    ring.insert(0, failure("a", next));
                    ring.truncate(100);
                    next += 1;
                }
                before += serde_json::to_vec(&status("a", ring.clone()))
                    .unwrap()
                    .len();
                let now = t0 + BEAT_EVERY * i as u32;
                let beat =
                    serde_json::to_vec(&sender.beat(status("a", ring.clone()), now)).unwrap();
                after += beat.len();
                assert!(receiver.observe(&beat, i * 2_000));
            }
            let kept = receiver.list(beats * 2_000)[0]
                .status
                .recent_failures
                .clone();
            assert_eq!(kept, ring, "the receiver's list is the sender's ring");
            let seconds = (beats * BEAT_EVERY.as_secs()) as usize;
            println!(
                "beat bytes, 100 failures kept, {per_second} new/s: before {} B/beat ({} B/s), after {} B/beat on average ({} B/s)",
                before / beats as usize,
                before / seconds,
                after / beats as usize,
                after / seconds
            );
            assert!(after * 3 < before, "before {before} B, after {after} B");
        }
    }

    /// The management API's counts: `(queue, unacked, consumers)`.
    fn counts(list: &[(&str, u64, u64)]) -> BTreeMap<String, QueueCounts> {
        list.iter()
            .map(|(queue, unacked, consumers)| {
                let counts = QueueCounts {
                    ready: 0,
                    unacked: *unacked,
                    consumers: *consumers,
                };
                ((*queue).to_owned(), counts)
            })
            .collect()
    }

    #[test]
    fn a_standing_backlog_while_every_worker_is_busy_is_an_alarm() {
        let mut queues = Queues::default();
        let readies: [(&str, [u32; 4]); 5] = [
            ("q.saturated", [5, 5, 6, 6]),
            ("q.draining", [9, 7, 5, 3]),
            ("q.spare", [5, 5, 5, 5]),
            ("q.empty", [0, 0, 0, 0]),
            ("q.blip", [5, 0, 5, 5]),
        ];
        // Every worker of each holds a message, but one of q.spare's two idles.
        let busy = counts(&[
            ("q.saturated", 2, 2),
            ("q.draining", 3, 3),
            ("q.spare", 1, 2),
            ("q.empty", 4, 4),
            ("q.blip", 2, 2),
        ]);
        for look in 0..4 {
            for (queue, ready) in &readies {
                queues.observe(queue, Ok((ready[look], 2)));
            }
            queues.observe_counts(Some(&busy));
        }
        let list = queues.list();
        let by = |list: &[QueueState], name: &str| {
            list.iter().find(|q| q.queue == name).unwrap().clone()
        };
        let saturated = by(&list, "q.saturated");
        assert!(saturated.saturated && saturated.alarm && !saturated.growing);
        for calm in ["q.draining", "q.spare", "q.empty", "q.blip"] {
            let q = by(&list, calm);
            assert!(!q.saturated && !q.alarm, "{q:?}");
        }
        // One look where a worker was free is enough to lift it for the next three.
        queues.observe("q.saturated", Ok((7, 2)));
        queues.observe_counts(Some(&counts(&[("q.saturated", 1, 2)])));
        assert!(!by(&queues.list(), "q.saturated").alarm);
        for _ in 0..GROWING_LOOKS {
            queues.observe("q.saturated", Ok((7, 2)));
            queues.observe_counts(Some(&busy));
        }
        assert!(by(&queues.list(), "q.saturated").alarm);
        // The management API away: no alarm from counts it can no longer give.
        queues.observe_counts(None);
        assert!(!by(&queues.list(), "q.saturated").alarm);
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
