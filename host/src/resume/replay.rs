//! The chunks a request of a resumable connection has relayed, kept so that a client back from
//! a blip gets the ones a cut connection may have swallowed (protocol §4.2). Bounded in bytes:
//! the oldest go first, and the buffer remembers that they went, so a client asking for them
//! learns of the gap (`first_seq`) instead of missing it silently. Bounded in all, too: every
//! replay of the host counts against one [`KeptBytes`] (`[resume] max_kept_bytes`), and over it
//! a replay drops its own oldest chunks, the same way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::value::RawValue;

/// What one chunk costs beyond its bytes (its slot and box), counted so that many tiny chunks
/// cannot grow the buffer far past its limit.
const CHUNK_OVERHEAD: usize = 32;

/// The bytes all the replays of a host hold together, against `[resume] max_kept_bytes`
/// (the gauge `taskgate_resume_kept_bytes`, read at each scrape). Past the limit each replay that
/// grows drops its own oldest chunks down to its latest one, so the total stays within the
/// limit plus one chunk per request; a new detached task is refused unless a whole request's
/// worth (`[resume] request_bytes`) still fits.
#[derive(Debug)]
pub struct KeptBytes {
    used: AtomicUsize,
    limit: usize,
}

impl KeptBytes {
    pub fn new(limit: usize) -> Self {
        KeptBytes {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `bytes` more fit under the limit (a new task is refused unless a whole
    /// request's replay does).
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Replay {
    chunks: VecDeque<(u64, Box<RawValue>)>,
    bytes: usize,
    limit: usize,
    /// The host's budget, when this replay counts against one.
    budget: Option<Arc<KeptBytes>>,
    /// The `seq` the next chunk will have.
    next_seq: u64,
}

impl Replay {
    /// A replay bounded by `limit` bytes alone.
    pub fn new(limit: usize) -> Self {
        Replay {
            chunks: VecDeque::new(),
            bytes: 0,
            limit,
            budget: None,
            next_seq: 0,
        }
    }

    /// A replay bounded by `limit` bytes and by the host's `budget`.
    pub fn shared(limit: usize, budget: Arc<KeptBytes>) -> Self {
        Replay {
            chunks: VecDeque::new(),
            bytes: 0,
            limit,
            budget: Some(budget),
            next_seq: 0,
        }
    }

    /// Keeps chunk `seq` (relayed, or waiting for the client), taking it over: the gateway
    /// hands the very bytes it just sent, so keeping a chunk costs no copy. Drops the oldest
    /// past the limit, or (keeping this latest one) while the host's budget is full. A chunk
    /// larger than the whole limit is not kept at all.
    pub fn push(&mut self, seq: u64, data: Box<RawValue>) {
        self.next_seq = seq + 1;
        let cost = data.get().len() + CHUNK_OVERHEAD;
        if cost > self.limit {
            self.chunks.clear();
            self.release(self.bytes);
            return;
        }
        self.bytes += cost;
        if let Some(budget) = &self.budget {
            budget.add(cost);
        }
        self.chunks.push_back((seq, data));
        while self.bytes > self.limit || (self.chunks.len() > 1 && self.over_budget()) {
            match self.chunks.pop_front() {
                Some((_, old)) => self.release(old.get().len() + CHUNK_OVERHEAD),
                None => break,
            }
        }
    }

    fn over_budget(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.used() > b.limit)
    }

    /// Forgets `bytes` of this replay's chunks, here and in the host's budget.
    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        if let Some(budget) = &self.budget {
            budget.sub(bytes);
        }
    }

    /// The chunks after `after_seq` that are still here, and the `seq` of the first one sent
    /// (or, when none is, of the next to come). `first_seq > after_seq + 1` means a gap.
    pub fn after(&self, after_seq: i64) -> (u64, impl Iterator<Item = (u64, &RawValue)>) {
        let wanted = u64::try_from(after_seq.saturating_add(1)).unwrap_or(0);
        let kept = self.chunks.iter().filter(move |(seq, _)| *seq >= wanted);
        let first = self
            .chunks
            .iter()
            .map(|(seq, _)| *seq)
            .find(|seq| *seq >= wanted)
            .unwrap_or(self.next_seq.max(wanted));
        (first, kept.map(|(seq, data)| (*seq, &**data)))
    }

    /// The latest chunk still here (a task's progress).
    pub fn last(&self) -> Option<(u64, &RawValue)> {
        self.chunks.back().map(|(seq, data)| (*seq, &**data))
    }

    /// The `seq` the next chunk will have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn seqs(replay: &Replay, after: i64) -> (u64, Vec<u64>) {
        let (first, chunks) = replay.after(after);
        (first, chunks.map(|(seq, _)| seq).collect())
    }

    #[test]
    fn replays_what_follows_the_clients_last_chunk() {
        let mut replay = Replay::new(1 << 20);
        for seq in 0..5 {
            replay.push(seq, raw(&seq.to_string()));
        }
        assert_eq!(seqs(&replay, -1), (0, vec![0, 1, 2, 3, 4]));
        assert_eq!(seqs(&replay, 2), (3, vec![3, 4]));
        assert_eq!(seqs(&replay, 4), (5, vec![]), "all seen: the next is 5");
        let (_, mut chunks) = replay.after(3);
        assert_eq!(chunks.next().map(|(_, d)| d.get()), Some("4"));
    }

    #[test]
    fn a_kept_chunk_is_the_one_handed_over_not_a_copy() {
        let mut replay = Replay::new(1 << 20);
        let chunk = raw("\"progress\"");
        let bytes = chunk.get().as_ptr();
        replay.push(0, chunk);
        let kept = replay.last().map(|(_, data)| data.get().as_ptr());
        assert_eq!(kept, Some(bytes), "the same allocation, moved in");
    }

    #[test]
    fn the_oldest_go_first_and_the_gap_is_told() {
        let chunk = "x".repeat(100);
        let mut replay = Replay::new(3 * (102 + CHUNK_OVERHEAD));
        for seq in 0..10 {
            replay.push(seq, raw(&format!("\"{chunk}\"")));
        }
        assert_eq!(
            seqs(&replay, -1),
            (7, vec![7, 8, 9]),
            "first_seq 7 > 0: a gap"
        );
        assert_eq!(seqs(&replay, 7), (8, vec![8, 9]), "no gap after 7");
        assert!(replay.bytes() <= 3 * (102 + CHUNK_OVERHEAD));
    }

    #[test]
    fn a_chunk_larger_than_the_limit_is_not_kept() {
        let mut replay = Replay::new(64);
        replay.push(0, raw("1"));
        replay.push(1, raw(&format!("\"{}\"", "y".repeat(100))));
        assert_eq!(
            seqs(&replay, -1),
            (2, vec![]),
            "both gone: the next to come is 2"
        );
        assert_eq!(replay.bytes(), 0);
        replay.push(2, raw("3"));
        assert_eq!(seqs(&replay, 0), (2, vec![2]), "after 0: 1 is missing");
    }

    fn budget(limit: usize) -> Arc<KeptBytes> {
        Arc::new(KeptBytes::new(limit))
    }

    #[test]
    fn every_replay_counts_against_the_hosts_budget_and_gives_it_back_when_dropped() {
        let kept = budget(1 << 20);
        let mut a = Replay::shared(1 << 20, kept.clone());
        let mut b = Replay::shared(1 << 20, kept.clone());
        a.push(0, raw("1"));
        b.push(0, raw("22"));
        b.push(1, raw("33"));
        assert_eq!(kept.used(), a.bytes() + b.bytes());
        assert_eq!(kept.used(), 1 + 2 + 2 + 3 * CHUNK_OVERHEAD);
        drop(b);
        assert_eq!(kept.used(), a.bytes());
        drop(a);
        assert_eq!(kept.used(), 0);
        assert!(kept.has_room_for(1 << 19));
    }

    #[test]
    fn over_the_budget_a_replay_drops_its_own_oldest_but_keeps_its_latest_and_tells_the_gap() {
        let cost = 102 + CHUNK_OVERHEAD;
        let kept = budget(4 * cost);
        let chunk = format!("\"{}\"", "x".repeat(100));
        let mut old = Replay::shared(1 << 20, kept.clone());
        for seq in 0..3 {
            old.push(seq, raw(&chunk));
        }
        let mut new = Replay::shared(1 << 20, kept.clone());
        for seq in 0..5 {
            new.push(seq, raw(&chunk));
        }
        assert!(
            kept.used() <= 4 * cost,
            "within the budget: {}",
            kept.used()
        );
        assert_eq!(kept.used(), old.bytes() + new.bytes());
        assert_eq!(
            seqs(&old, -1),
            (0, vec![0, 1, 2]),
            "the other replay is left alone"
        );
        assert_eq!(seqs(&new, -1), (4, vec![4]), "first_seq 4: the gap is told");
        assert!(!kept.has_room_for(1));
        // Even a full budget keeps each replay's latest chunk: a task's progress.
        new.push(5, raw(&chunk));
        assert_eq!(seqs(&new, -1), (5, vec![5]));
        drop(old);
        assert!(kept.has_room_for(3 * cost));
    }

    #[test]
    fn a_chunk_too_large_for_its_request_gives_back_what_its_replay_held() {
        let kept = budget(1 << 20);
        let mut replay = Replay::shared(64, kept.clone());
        replay.push(0, raw("1"));
        replay.push(1, raw(&format!("\"{}\"", "y".repeat(100))));
        assert_eq!(kept.used(), 0);
    }
}
