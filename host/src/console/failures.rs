//! The console's recent failures: the last N requests that ended with an error, kept in a
//! bounded ring. The gateway records one where a request ends with an error (and nowhere
//! else), so a request that succeeds costs nothing here. Each host's ring travels in its
//! heartbeat, so any host's console shows every host's failures.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use taskgate_protocol::ErrorCode;

/// The default of `[console] recent_failures`.
pub const DEFAULT_KEPT: usize = 100;
/// The most `[console] recent_failures` may be: the ring travels in every heartbeat.
pub const MAX_KEPT: usize = 500;
/// A longer error message is cut (at a character boundary): the whole of it is in the logs.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// One request that ended with an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub request_type: String,
    pub code: String,
    pub message: String,
    pub correlation_id: String,
    pub traceparent: String,
    /// The id of the host that ended it.
    pub host: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// The last failures of this host, newest last.
#[derive(Debug)]
pub struct RecentFailures {
    host: String,
    kept: usize,
    ring: Mutex<VecDeque<Failure>>,
}

impl RecentFailures {
    /// Keeps the last `kept` failures (at most [`MAX_KEPT`]) of host `host`.
    pub fn new(host: impl Into<String>, kept: usize) -> Self {
        let kept = kept.min(MAX_KEPT);
        RecentFailures {
            host: host.into(),
            kept,
            ring: Mutex::new(VecDeque::with_capacity(kept)),
        }
    }

    /// A request ended with `code`. A `CANCELLED` one is not a failure: a client that
    /// cancels often (type-ahead search) would push the real ones out.
    pub fn record(
        &self,
        request_type: &str,
        code: &str,
        message: &str,
        correlation_id: &str,
        traceparent: &str,
    ) {
        if self.kept == 0 || code == ErrorCode::Cancelled.as_str() {
            return;
        }
        let failure = Failure {
            request_type: request_type.to_owned(),
            code: code.to_owned(),
            message: cut(message),
            correlation_id: correlation_id.to_owned(),
            traceparent: traceparent.to_owned(),
            host: self.host.clone(),
            at_ms: super::now_ms(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == self.kept {
            ring.pop_front();
        }
        ring.push_back(failure);
    }

    /// The failures kept, newest first.
    pub fn list(&self) -> Vec<Failure> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }
}

fn cut(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_owned(),
    }
}

/// Every host's failures in one list, newest first, at most `kept`.
pub fn merge(lists: impl IntoIterator<Item = Vec<Failure>>, kept: usize) -> Vec<Failure> {
    let mut all: Vec<Failure> = lists.into_iter().flatten().collect();
    all.sort_by_key(|f| std::cmp::Reverse(f.at_ms));
    all.truncate(kept);
    all
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_failures_newest_first_and_not_cancellations() {
        let ring = RecentFailures::new("host-a", 3);
        for i in 0..5 {
            ring.record(
                "text.echo",
                "TIMEOUT",
                &format!("m{i}"),
                &format!("c{i}"),
                "00-t",
            );
        }
        ring.record("text.echo", "CANCELLED", "cancelled", "c9", "00-t");
        let list = ring.list();
        assert_eq!(
            list.iter().map(|f| f.message.as_str()).collect::<Vec<_>>(),
            ["m4", "m3", "m2"]
        );
        assert_eq!(list[0].host, "host-a");
        assert_eq!(list[0].correlation_id, "c4");
        assert!(RecentFailures::new("h", MAX_KEPT + 10).kept == MAX_KEPT);
        let off = RecentFailures::new("h", 0);
        off.record("t", "TIMEOUT", "m", "c", "t");
        assert!(off.list().is_empty());
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let ring = RecentFailures::new("h", 1);
        let long = "é".repeat(MAX_MESSAGE_CHARS + 5);
        ring.record("t", "WORKER_ERROR", &long, "c", "t");
        let kept = &ring.list()[0].message;
        assert_eq!(kept.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(kept.ends_with('…'));
    }

    #[test]
    fn the_hosts_lists_merge_newest_first_and_bounded() {
        let at = |host: &str, at_ms| Failure {
            request_type: "t".into(),
            code: "TIMEOUT".into(),
            message: String::new(),
            correlation_id: String::new(),
            traceparent: String::new(),
            host: host.into(),
            at_ms,
        };
        let merged = merge(
            [vec![at("a", 5), at("a", 1)], vec![at("b", 4), at("b", 2)]],
            3,
        );
        assert_eq!(
            merged
                .iter()
                .map(|f| (f.host.as_str(), f.at_ms))
                .collect::<Vec<_>>(),
            [("a", 5), ("b", 4), ("b", 2)]
        );
    }
}
