//! The host's own open-files limit. Every client connection, broker and store connection,
//! plugin file and log file is a file descriptor; a soft limit of 1,024 (a common default
//! for a login shell) caps a host at about a thousand clients, long before its memory does.
//! The host raises its soft limit towards the hard limit at start, as Go's runtime does for
//! every program. When `[limits]` allows more connections than the hard limit, a host that
//! may (root, or `CAP_SYS_RESOURCE`) raises the hard limit too, up to the kernel's ceiling
//! `fs.nr_open`: the operator asked for those connections in plugins.toml. Otherwise it says
//! so: raising the hard limit is then the operator's call (`ulimit -Hn`, systemd's
//! `LimitNOFILE=`).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::limits::Limits;

/// Descriptors beyond the client connections: the listener, RabbitMQ and Redis, plugin
/// files, the file watcher, log files, the blocking pool's files.
pub const HEADROOM: u64 = 1024;

/// What the host needs for `limits`: its connections, those still in their handshake, and
/// the headroom. `None` when `max_connections` is 0 (no cap): then as many as allowed.
pub fn wanted(limits: &Limits) -> Option<u64> {
    if limits.max_connections == 0 {
        return None;
    }
    let connections = limits
        .max_connections
        .saturating_add(limits.max_pending_connections);
    Some(
        u64::try_from(connections)
            .unwrap_or(u64::MAX)
            .saturating_add(HEADROOM),
    )
}

/// The kernel's ceiling for any process's open-files limit.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// What raising the limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
    /// The hard limit before, when the host raised it.
    pub hard_before: Option<u64>,
    /// The hard limit now.
    pub hard: u64,
    /// Below what the host wants, because the hard limit is.
    pub short_of: Option<u64>,
}

/// The soft limit to set: `wanted` (or the hard limit, when there is no cap), never above
/// the hard limit, never below the current soft limit.
pub fn target(soft: u64, hard: u64, wanted: Option<u64>) -> u64 {
    let goal = wanted.unwrap_or(hard).min(hard);
    soft.max(goal)
}

/// The hard limit to ask for when `wanted` is above `hard`: `wanted`, but not above the
/// kernel's ceiling `nr_open` (a larger request fails). `None`: nothing to ask for.
pub fn hard_target(hard: u64, wanted: Option<u64>, nr_open: Option<u64>) -> Option<u64> {
    let goal = wanted?.min(nr_open.unwrap_or(u64::MAX));
    (goal > hard).then_some(goal)
}

fn nr_open() -> Option<u64> {
    std::fs::read_to_string(NR_OPEN).ok()?.trim().parse().ok()
}

/// Raises this process's soft open-files limit as `target` says, after raising its hard
/// limit as `hard_target` says where the process may (it keeps the old one where not).
pub fn raise(wanted: Option<u64>) -> rustix::io::Result<Raised> {
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let soft = limit.current.unwrap_or(u64::MAX);
    let mut hard = limit.maximum.unwrap_or(u64::MAX);
    let mut maximum = limit.maximum;
    let mut hard_before = None;
    if let Some(goal) = hard_target(hard, wanted, nr_open()) {
        // Fails with EPERM without CAP_SYS_RESOURCE: then the old hard limit stays.
        let raised = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(soft.min(goal)),
                maximum: Some(goal),
            },
        );
        if raised.is_ok() {
            hard_before = Some(hard);
            hard = goal;
            maximum = Some(goal);
        }
    }
    let now = target(soft, hard, wanted);
    if now != soft {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(now),
                maximum,
            },
        )?;
    }
    Ok(Raised {
        before: soft,
        now,
        hard_before,
        hard,
        short_of: wanted.filter(|w| *w > now),
    })
}

/// Raises the limit for `limits` and logs what happened: one INFO line when it changed,
/// one WARN line when the hard limit keeps it below what `[limits]` allows.
pub fn raise_for(limits: &Limits) {
    match raise(wanted(limits)) {
        Ok(raised) => {
            if let Some(before) = raised.hard_before {
                tracing::info!(
                    before,
                    now = raised.hard,
                    max_connections = limits.max_connections,
                    "raised the hard open-files limit to fit [limits] max_connections"
                );
            }
            if raised.now != raised.before {
                tracing::info!(
                    before = raised.before,
                    now = raised.now,
                    "raised the open-files limit"
                );
            }
            if let Some(wanted) = raised.short_of {
                tracing::warn!(
                    limit = raised.now,
                    wanted,
                    max_connections = limits.max_connections,
                    "the open-files limit is below what [limits] max_connections allows: \
                     connections past it will be refused by the kernel; raise the hard limit \
                     (ulimit -Hn, systemd LimitNOFILE=; the host raises it itself when it runs \
                     with CAP_SYS_RESOURCE, up to fs.nr_open) or lower max_connections"
                );
            }
        }
        Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_what_is_wanted_within_the_hard_limit() {
        assert_eq!(target(1024, 1_048_576, Some(12_048)), 12_048);
        assert_eq!(target(1024, 4096, Some(12_048)), 4096);
        // Never lowered.
        assert_eq!(target(65_536, 1_048_576, Some(12_048)), 65_536);
        // No cap on connections: all the hard limit gives.
        assert_eq!(target(1024, 524_288, None), 524_288);
        assert_eq!(target(1024, u64::MAX, None), u64::MAX);
    }

    #[test]
    fn the_host_wants_its_connections_the_pending_ones_and_headroom() {
        let limits = Limits {
            max_connections: 100_000,
            max_pending_connections: 1024,
            ..Limits::default()
        };
        assert_eq!(wanted(&limits), Some(100_000 + 1024 + HEADROOM));
        let uncapped = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(wanted(&uncapped), None);
    }

    #[test]
    fn raising_sets_the_soft_limit_of_this_process() {
        let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
        let wanted = hard.min(4096);
        let raised = raise(Some(wanted)).unwrap();
        assert!(raised.now >= wanted);
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        assert_eq!(soft, raised.now);
        // More than the hard limit: a process that may raises its hard limit (root here,
        // usually); one that may not stays at the hard limit and says it is short.
        if hard < u64::MAX {
            let raised = raise(Some(hard + 1)).unwrap();
            let limit = getrlimit(Resource::Nofile);
            if raised.hard_before.is_some() {
                assert_eq!((raised.hard, raised.now), (hard + 1, hard + 1));
                assert_eq!(raised.short_of, None);
                assert_eq!(limit.maximum, Some(hard + 1));
            } else {
                assert_eq!(raised.short_of, Some(hard + 1));
                assert_eq!(raised.now, hard);
                assert_eq!(limit.maximum, Some(hard));
            }
            assert_eq!(limit.current, Some(raised.now));
        }
    }

    #[test]
    fn the_hard_limit_is_raised_only_as_far_as_wanted_and_the_kernel_allows() {
        assert_eq!(
            hard_target(20_000, Some(102_048), Some(1_048_576)),
            Some(102_048)
        );
        assert_eq!(
            hard_target(20_000, Some(2_000_000), Some(1_048_576)),
            Some(1_048_576)
        );
        // Enough already, or nothing wanted (no cap on connections: the soft limit goes to the
        // hard one, the hard one stays).
        assert_eq!(hard_target(200_000, Some(102_048), Some(1_048_576)), None);
        assert_eq!(hard_target(20_000, None, Some(1_048_576)), None);
        // The ceiling unknown: ask for what is wanted.
        assert_eq!(hard_target(20_000, Some(30_000), None), Some(30_000));
        // The ceiling below the hard limit already: nothing to ask for.
        assert_eq!(hard_target(20_000, Some(30_000), Some(10_000)), None);
    }
}
