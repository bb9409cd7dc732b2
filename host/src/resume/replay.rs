//! The chunks a request of a resumable connection has relayed, kept so that a client back from
//! a blip gets the ones a cut connection may have swallowed (protocol §4.2). Bounded in bytes:
//! the oldest go first, and the buffer remembers that they went, so a client asking for them
//! learns of the gap (`first_seq`) instead of missing it silently.

use std::collections::VecDeque;

use serde_json::value::RawValue;

/// What one chunk costs beyond its bytes (its slot and box), counted so that many tiny chunks
/// cannot grow the buffer far past its limit.
const CHUNK_OVERHEAD: usize = 32;

#[derive(Debug)]
pub struct Replay {
    chunks: VecDeque<(u64, Box<RawValue>)>,
    bytes: usize,
    limit: usize,
    /// The `seq` the next chunk will have.
    next_seq: u64,
}

impl Replay {
    pub fn new(limit: usize) -> Self {
        Replay {
            chunks: VecDeque::new(),
            bytes: 0,
            limit,
            next_seq: 0,
        }
    }

    /// Keeps a copy of chunk `seq` (relayed, or waiting for the client); drops the oldest past
    /// the limit. A chunk larger than the whole limit is not kept at all.
    pub fn push(&mut self, seq: u64, data: &RawValue) {
        self.next_seq = seq + 1;
        let cost = data.get().len() + CHUNK_OVERHEAD;
        if cost > self.limit {
            self.chunks.clear();
            self.bytes = 0;
            return;
        }
        self.bytes += cost;
        self.chunks.push_back((seq, data.to_owned()));
        while self.bytes > self.limit {
            match self.chunks.pop_front() {
                Some((_, old)) => self.bytes -= old.get().len() + CHUNK_OVERHEAD,
                None => break,
            }
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
            replay.push(seq, &raw(&seq.to_string()));
        }
        assert_eq!(seqs(&replay, -1), (0, vec![0, 1, 2, 3, 4]));
        assert_eq!(seqs(&replay, 2), (3, vec![3, 4]));
        assert_eq!(seqs(&replay, 4), (5, vec![]), "all seen: the next is 5");
        let (_, mut chunks) = replay.after(3);
        assert_eq!(chunks.next().map(|(_, d)| d.get()), Some("4"));
    }

    #[test]
    fn the_oldest_go_first_and_the_gap_is_told() {
        let chunk = "x".repeat(100);
        let mut replay = Replay::new(3 * (102 + CHUNK_OVERHEAD));
        for seq in 0..10 {
            replay.push(seq, &raw(&format!("\"{chunk}\"")));
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
        replay.push(0, &raw("1"));
        replay.push(1, &raw(&format!("\"{}\"", "y".repeat(100))));
        assert_eq!(
            seqs(&replay, -1),
            (2, vec![]),
            "both gone: the next to come is 2"
        );
        assert_eq!(replay.bytes(), 0);
        replay.push(2, &raw("3"));
        assert_eq!(seqs(&replay, 0), (2, vec![2]), "after 0: 1 is missing");
    }
}
