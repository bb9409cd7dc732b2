//! The order in which the phases run: interleaved slices, not one long phase after another.
//!
//! Why: this machine is shared (builds, other tests, RabbitMQ's own housekeeping), and the
//! background load changes within seconds. Run back to back, a build starting during the
//! second phase alone moved the host/direct ratio of single runs between 0.6 and 1.4. Cutting
//! each phase's measured time into `rounds` slices in the order host, direct, direct, host,
//! host, direct … (ABBA) exposes both phases to the same background, and cancels a steady
//! drift. Each phase's first slice gets the full warm-up; later slices, whose connections
//! and broker state are already warm, only a short ramp-up of the closed loop.

use std::time::Duration;

/// Ramp-up before the measured part of a phase's later slices (capped by `--warmup`).
pub const REWARM: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Host,
    Direct,
    /// Through the host, on connections that asked for a session (`--phases sessions`).
    Session,
    /// Through the host while clients watch its console (`--phases consoles`).
    Console,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Host => "host",
            Phase::Direct => "direct",
            Phase::Session => "session",
            Phase::Console => "consoles",
        }
    }
}

/// One stretch of load of one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slice {
    pub phase: Phase,
    /// Counted from 0; a round holds one slice of each phase run.
    pub round: u32,
    pub warmup: Duration,
    pub duration: Duration,
}

/// The slices of a run: `phases` (in the ABBA order described above), each phase measured
/// for `duration` in total, split evenly over `rounds`.
pub fn slices(phases: &[Phase], rounds: u32, duration: Duration, warmup: Duration) -> Vec<Slice> {
    let rounds = rounds.max(1);
    let per_slice = duration / rounds;
    let rewarm = warmup.min(REWARM);
    let mut out = Vec::with_capacity(phases.len() * rounds as usize);
    for round in 0..rounds {
        let in_order: Vec<Phase> = if round % 2 == 0 {
            phases.to_vec()
        } else {
            phases.iter().rev().copied().collect()
        };
        for phase in in_order {
            out.push(Slice {
                phase,
                round,
                warmup: if round == 0 { warmup } else { rewarm },
                duration: per_slice,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn phases_alternate_abba_and_split_the_duration() {
        let plan = slices(&[Phase::Host, Phase::Direct], 4, 10 * S, 2 * S);
        let order: Vec<_> = plan.iter().map(|s| (s.round, s.phase)).collect();
        use Phase::{Direct as D, Host as H};
        assert_eq!(
            order,
            vec![
                (0, H),
                (0, D),
                (1, D),
                (1, H),
                (2, H),
                (2, D),
                (3, D),
                (3, H)
            ]
        );
        for phase in [H, D] {
            let measured: Duration = plan
                .iter()
                .filter(|s| s.phase == phase)
                .map(|s| s.duration)
                .sum();
            assert_eq!(measured, 10 * S);
        }
    }

    #[test]
    fn only_the_first_slice_of_a_phase_gets_the_full_warmup() {
        let plan = slices(&[Phase::Host, Phase::Direct], 2, 4 * S, 3 * S);
        let warmups: Vec<_> = plan.iter().map(|s| s.warmup).collect();
        assert_eq!(warmups, vec![3 * S, 3 * S, REWARM, REWARM]);
        // A warm-up shorter than REWARM is never lengthened.
        let plan = slices(&[Phase::Host], 3, 3 * S, Duration::ZERO);
        assert!(plan.iter().all(|s| s.warmup.is_zero()));
    }

    #[test]
    fn one_round_is_the_plain_sequence() {
        let plan = slices(&[Phase::Host, Phase::Direct], 1, 10 * S, 2 * S);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].phase, plan[0].duration), (Phase::Host, 10 * S));
        assert_eq!((plan[1].phase, plan[1].duration), (Phase::Direct, 10 * S));
        // Zero rounds is treated as one.
        assert_eq!(slices(&[Phase::Direct], 0, S, S).len(), 1);
    }
}
