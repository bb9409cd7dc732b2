//! The host's own open-files limit. Every client connection, broker and store connection,
//! plugin file and log file is a file descriptor; a soft limit of 1,024 (a common default
//! for a login shell) caps a host at about a thousand clients, long before its memory does.
//! The host raises its soft limit towards the hard limit at start, as Go's runtime does for
//! every program, and says so when the hard limit is below what `[limits]` allows: raising
//! the hard limit is the operator's call (`ulimit -Hn`, systemd's `LimitNOFILE=`).

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

/// What raising the limit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
    /// Below what the host wants, because the hard limit is.
    pub short_of: Option<u64>,
}

/// The soft limit to set: `wanted` (or the hard limit, when there is no cap), never above
/// the hard limit, never below the current soft limit.
pub fn target(soft: u64, hard: u64, wanted: Option<u64>) -> u64 {
    let goal = wanted.unwrap_or(hard).min(hard);
    soft.max(goal)
}

/// Raises this process's soft open-files limit as `target` says.
pub fn raise(wanted: Option<u64>) -> rustix::io::Result<Raised> {
    let limit = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let now = target(soft, hard, wanted);
    if now != soft {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(now),
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(Raised {
        before: soft,
        now,
        short_of: wanted.filter(|w| *w > now),
    })
}

/// Raises the limit for `limits` and logs what happened: one INFO line when it changed,
/// one WARN line when the hard limit keeps it below what `[limits]` allows.
pub fn raise_for(limits: &Limits) {
    match raise(wanted(limits)) {
        Ok(raised) => {
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
                     (ulimit -Hn, systemd LimitNOFILE=) or lower max_connections"
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
        // More than the hard limit: short of it, and it says so.
        if hard < u64::MAX {
            let raised = raise(Some(hard + 1)).unwrap();
            assert_eq!(raised.short_of, Some(hard + 1));
            assert_eq!(raised.now, hard);
        }
    }
}
