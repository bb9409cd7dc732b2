//! How many threads run the host's async runtime (`--worker-threads auto|N`), and why.
//!
//! Everything the host does per request — reading and writing sockets, the AMQP client's
//! reader and writer tasks, the gateway — runs on this runtime, so its thread count is how
//! many cores one host can use. `auto` (the default) counts the cores this process may use —
//! `std::thread::available_parallelism`: its affinity mask (`taskset`, `docker
//! --cpuset-cpus`) and its cgroup's CPU quota (`docker --cpus`, Kubernetes limits) — and
//! runs one thread per core from [`MIN_CORES_FOR_THREADS`] cores up. Below that it runs
//! tokio's current-thread runtime, which hands nothing between threads: measured on 2 cores
//! (shared, as on any box that small, with the broker, a worker or the kernel's network
//! work), a second thread bought no throughput and cost 19–55% more CPU per request in
//! threads waking each other. docs/performance.md, "Every core (issue 17)".

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

/// The most threads the host runs, whatever the machine or the flag says.
pub const MAX_THREADS: usize = 1024;
/// From this many available cores `auto` runs one thread per core; below, one thread.
pub const MIN_CORES_FOR_THREADS: usize = 3;

/// What `--worker-threads` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WorkerThreads {
    /// One thread per core this process may use.
    #[default]
    Auto,
    /// Exactly this many (1 = the current-thread runtime).
    Fixed(NonZeroUsize),
}

impl fmt::Display for WorkerThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerThreads::Auto => f.write_str("auto"),
            WorkerThreads::Fixed(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not `auto` or a number of threads from 1 to {MAX_THREADS}")]
pub struct BadWorkerThreads(String);

impl FromStr for WorkerThreads {
    type Err = BadWorkerThreads;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(WorkerThreads::Auto);
        }
        text.parse::<usize>()
            .ok()
            .filter(|n| *n <= MAX_THREADS)
            .and_then(NonZeroUsize::new)
            .map(WorkerThreads::Fixed)
            .ok_or_else(|| BadWorkerThreads(text.chars().take(40).collect()))
    }
}

/// Why the runtime has the threads it has (for the start-up log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `--worker-threads N` / `TASKGATE_WORKER_THREADS=N`.
    Configured,
    /// `auto`, and this many cores are available to the process: one thread per core.
    PerCore(usize),
    /// `auto`, and only this many cores (fewer than [`MIN_CORES_FOR_THREADS`]): one thread.
    FewCores(usize),
    /// `auto`, but the number of cores could not be read.
    CoresUnknown,
}

/// The runtime the host builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub threads: usize,
    pub reason: Reason,
}

impl Plan {
    /// One thread: tokio's current-thread runtime.
    pub fn current_thread(&self) -> bool {
        self.threads == 1
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let runtime = if self.current_thread() {
            "1 thread (current-thread runtime)".to_owned()
        } else {
            format!("{} threads (multi-thread runtime)", self.threads)
        };
        match self.reason {
            Reason::Configured => write!(f, "{runtime}: set by --worker-threads"),
            Reason::PerCore(cores) => write!(
                f,
                "{runtime}: one per core available to this process ({cores}; --worker-threads auto)"
            ),
            Reason::FewCores(cores) => write!(
                f,
                "{runtime}: {cores} core(s) available to this process, below {MIN_CORES_FOR_THREADS} one thread costs the least per request (--worker-threads auto)"
            ),
            Reason::CoresUnknown => write!(
                f,
                "{runtime}: the cores available could not be read (--worker-threads auto); set --worker-threads"
            ),
        }
    }
}

/// `auto`'s rule: one runtime thread per core, at most [`MAX_THREADS`]; one thread below
/// [`MIN_CORES_FOR_THREADS`] cores.
pub fn threads_for_cores(cores: NonZeroUsize) -> usize {
    if cores.get() < MIN_CORES_FOR_THREADS {
        1
    } else {
        cores.get().min(MAX_THREADS)
    }
}

/// The runtime for `setting` on a machine where `cores` are available (`None`: unknown).
pub fn plan(setting: WorkerThreads, cores: Option<NonZeroUsize>) -> Plan {
    match (setting, cores) {
        (WorkerThreads::Fixed(n), _) => Plan {
            threads: n.get().min(MAX_THREADS),
            reason: Reason::Configured,
        },
        (WorkerThreads::Auto, Some(cores)) => Plan {
            threads: threads_for_cores(cores),
            reason: if cores.get() < MIN_CORES_FOR_THREADS {
                Reason::FewCores(cores.get())
            } else {
                Reason::PerCore(cores.get())
            },
        },
        (WorkerThreads::Auto, None) => Plan {
            threads: 1,
            reason: Reason::CoresUnknown,
        },
    }
}

/// The cores this process may use (affinity mask and cgroup quota), if they can be read.
pub fn available_cores() -> Option<NonZeroUsize> {
    std::thread::available_parallelism().ok()
}

/// Builds the runtime `plan` describes.
pub fn build(plan: &Plan) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if plan.current_thread() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(plan.threads);
        builder
    };
    builder.enable_all().build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn n(v: usize) -> NonZeroUsize {
        NonZeroUsize::new(v).unwrap()
    }

    #[test]
    fn auto_runs_one_thread_per_core_from_three_cores() {
        assert_eq!(threads_for_cores(n(1)), 1);
        assert_eq!(threads_for_cores(n(2)), 1);
        assert_eq!(threads_for_cores(n(3)), 3);
        assert_eq!(threads_for_cores(n(16)), 16);
        assert_eq!(threads_for_cores(n(5000)), MAX_THREADS);
    }

    #[test]
    fn one_or_two_cores_get_the_current_thread_runtime() {
        for cores in [1, 2] {
            let plan = plan(WorkerThreads::Auto, Some(n(cores)));
            assert_eq!(plan.threads, 1);
            assert!(plan.current_thread());
            assert_eq!(plan.reason, Reason::FewCores(cores));
        }
        let plan = plan(WorkerThreads::Auto, Some(n(4)));
        assert_eq!((plan.threads, plan.reason), (4, Reason::PerCore(4)));
    }

    #[test]
    fn a_number_wins_over_the_cores() {
        let plan = plan(WorkerThreads::Fixed(n(1)), Some(n(16)));
        assert_eq!((plan.threads, plan.reason), (1, Reason::Configured));
        let plan = super::plan(WorkerThreads::Fixed(n(4)), Some(n(2)));
        assert_eq!((plan.threads, plan.reason), (4, Reason::Configured));
        assert!(!plan.current_thread());
    }

    #[test]
    fn unknown_cores_fall_back_to_one_thread_and_say_so() {
        let plan = plan(WorkerThreads::Auto, None);
        assert_eq!((plan.threads, plan.reason), (1, Reason::CoresUnknown));
        assert!(plan.to_string().contains("could not be read"), "{plan}");
    }

    #[test]
    fn the_log_line_says_how_many_threads_and_why() {
        let line = plan(WorkerThreads::Auto, Some(n(16))).to_string();
        assert_eq!(
            line,
            "16 threads (multi-thread runtime): one per core available to this process (16; --worker-threads auto)"
        );
        let line = plan(WorkerThreads::Fixed(n(1)), Some(n(16))).to_string();
        assert_eq!(
            line,
            "1 thread (current-thread runtime): set by --worker-threads"
        );
        let line = plan(WorkerThreads::Auto, Some(n(2))).to_string();
        assert_eq!(
            line,
            "1 thread (current-thread runtime): 2 core(s) available to this process, below 3 one thread costs the least per request (--worker-threads auto)"
        );
    }

    #[test]
    fn the_setting_parses_auto_and_numbers_only() {
        assert_eq!("auto".parse(), Ok(WorkerThreads::Auto));
        assert_eq!(" AUTO ".parse(), Ok(WorkerThreads::Auto));
        assert_eq!("1".parse(), Ok(WorkerThreads::Fixed(n(1))));
        assert_eq!("1024".parse(), Ok(WorkerThreads::Fixed(n(1024))));
        for bad in ["0", "1025", "-1", "two", "", "1.5"] {
            let err = bad.parse::<WorkerThreads>().unwrap_err();
            assert!(err.to_string().contains("auto"), "{bad}: {err}");
        }
        assert_eq!(WorkerThreads::default(), WorkerThreads::Auto);
        assert_eq!(WorkerThreads::Fixed(n(3)).to_string(), "3");
    }

    #[test]
    fn this_machine_has_cores_and_the_plan_builds() {
        let cores = available_cores();
        assert!(cores.is_some());
        let plan = plan(WorkerThreads::Auto, cores);
        let runtime = build(&plan).unwrap();
        assert_eq!(runtime.block_on(async { 1 + 1 }), 2);
        let runtime = build(&super::plan(WorkerThreads::Fixed(n(2)), cores)).unwrap();
        assert_eq!(runtime.metrics().num_workers(), 2);
    }
}
