//! What a phase measures: a time window (warm-up excluded), per-task latency histograms
//! merged at the end, and the report of one phase (throughput, latency percentiles, CPU and
//! memory of the processes under test), printed as a table or written as JSON.
//!
//! Each load task owns its histogram and counters, so recording a request takes no lock and
//! no cross-core traffic; they are merged once when the phase ends.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms hold (longer ones are clamped to it): one minute, in µs.
const MAX_LATENCY_US: u64 = 60_000_000;

/// The measured part of a phase: requests completing in `[start, end)` count.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window opening after `warmup` from now and lasting `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// Whether a completion at `now` is measured.
    pub fn measures(&self, now: Instant) -> bool {
        self.start <= now && now < self.end
    }

    /// Whether new requests may still be started (the closed loop stops at the end).
    pub fn open_for_new(&self, now: Instant) -> bool {
        now < self.end
    }
}

/// What one load task saw.
#[derive(Debug)]
pub struct TaskStats {
    pub latency_us: Histogram<u64>,
    /// Requests that completed with a result inside the window.
    pub ok: u64,
    /// Requests that completed with an error (refused ack or error response) inside the window.
    pub errors: u64,
    /// Requests still in flight when the task gave up waiting after the window.
    pub unfinished: u64,
    /// Requests completed before the window (warm-up).
    pub warmup: u64,
    /// Final responses that arrived without their `{"ok":true}` ack first (protocol §1
    /// violations), whenever they happened; they also count as errors inside the window.
    pub missing_acks: u64,
    /// Phase direct: replies (inside the window) that arrived before the broker confirmed
    /// their request — ones the host would have had to hold back.
    pub replies_before_confirm: u64,
    /// Streamed chunks received inside the window.
    pub chunks: u64,
}

impl TaskStats {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(TaskStats {
            // Three significant digits, 1 µs to one minute: a few tens of KiB per task.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            ok: 0,
            errors: 0,
            unfinished: 0,
            warmup: 0,
            missing_acks: 0,
            replies_before_confirm: 0,
            chunks: 0,
        })
    }

    /// Counts a chunk received at `now`.
    pub fn record_chunk(&mut self, window: &Window, now: Instant) {
        if window.measures(now) {
            self.chunks += 1;
        }
    }

    /// Records a request started at `started` that completed at `now`.
    pub fn record(&mut self, window: &Window, started: Instant, now: Instant, ok: bool) {
        if now < window.start {
            self.warmup += 1;
            return;
        }
        if now >= window.end {
            return;
        }
        let us = now.saturating_duration_since(started).as_micros();
        let us = u64::try_from(us)
            .unwrap_or(MAX_LATENCY_US)
            .clamp(1, MAX_LATENCY_US);
        self.latency_us.saturating_record(us);
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }

    pub fn merge(&mut self, other: &TaskStats) {
        // Same bounds on both sides, so adding cannot fail; saturate if it ever did.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.errors += other.errors;
        self.unfinished += other.unfinished;
        self.warmup += other.warmup;
        self.missing_acks += other.missing_acks;
        self.replies_before_confirm += other.replies_before_confirm;
        self.chunks += other.chunks;
    }
}

/// CPU seconds one process used during the window.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    /// Seconds of CPU per 1,000 completed requests.
    pub seconds_per_1k_requests: f64,
}

impl CpuUse {
    pub fn new(seconds: f64, requests: u64) -> Self {
        CpuUse {
            seconds,
            seconds_per_1k_requests: if requests == 0 {
                0.0
            } else {
                seconds * 1000.0 / requests as f64
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// The result of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub phase: &'static str,
    pub seconds: f64,
    /// Completed requests (results + errors) inside the window.
    pub requests: u64,
    pub errors: u64,
    pub unfinished: u64,
    /// Final responses without a prior ack (phase host only; must be 0).
    pub missing_acks: u64,
    /// Phase direct only: replies that beat their request's publisher confirm.
    pub replies_before_confirm: u64,
    pub requests_per_second: f64,
    /// Streamed chunks received inside the window (0 without streaming).
    pub chunks: u64,
    pub chunks_per_second: f64,
    pub latency: Latency,
    pub host_cpu: CpuUse,
    /// Context switches of all the host's threads per completed request (each one a
    /// thread sleeping or preempted: a measure of cross-thread hand-overs that does not
    /// depend on the machine's speed).
    pub host_context_switches_per_request: f64,
    /// The worker process; `None` with `--worker builtin` (its CPU is in `bench_cpu`).
    pub worker_cpu: Option<CpuUse>,
    /// This benchmark process (the load generator), for judging whether it was the bottleneck.
    pub bench_cpu: CpuUse,
    /// RabbitMQ (`beam.smp`), when this user may read its `/proc` entry.
    pub broker_cpu: Option<CpuUse>,
}

/// CPU seconds used during a phase's window, per process.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSeconds {
    pub host: f64,
    /// Context switches of the host's threads (a count, not seconds).
    pub host_context_switches: f64,
    pub worker: Option<f64>,
    pub bench: f64,
    pub broker: Option<f64>,
}

impl PhaseReport {
    pub fn new(phase: &'static str, seconds: f64, stats: &TaskStats, cpu: CpuSeconds) -> Self {
        let requests = stats.ok + stats.errors;
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        PhaseReport {
            phase,
            seconds,
            requests,
            errors: stats.errors,
            unfinished: stats.unfinished,
            missing_acks: stats.missing_acks,
            replies_before_confirm: stats.replies_before_confirm,
            requests_per_second: per_second(requests),
            chunks: stats.chunks,
            chunks_per_second: per_second(stats.chunks),
            latency: Latency::from_histogram(&stats.latency_us),
            host_cpu: CpuUse::new(cpu.host, requests),
            host_context_switches_per_request: if requests == 0 {
                0.0
            } else {
                cpu.host_context_switches / requests as f64
            },
            worker_cpu: cpu.worker.map(|s| CpuUse::new(s, requests)),
            bench_cpu: CpuUse::new(cpu.bench, requests),
            broker_cpu: cpu.broker.map(|s| CpuUse::new(s, requests)),
        }
    }
}

impl CpuSeconds {
    /// Adds another window's CPU; a process unmeasured in either stays unmeasured.
    fn add(&mut self, other: &CpuSeconds) {
        let sum = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
        self.host += other.host;
        self.host_context_switches += other.host_context_switches;
        self.worker = sum(self.worker, other.worker);
        self.bench += other.bench;
        self.broker = sum(self.broker, other.broker);
    }
}

/// One phase's slices added up: requests, measured seconds and CPU.
#[derive(Debug)]
pub struct PhaseTotals {
    pub stats: TaskStats,
    pub seconds: f64,
    cpu: Option<CpuSeconds>,
}

impl PhaseTotals {
    pub fn new() -> Result<Self, hdrhistogram::CreationError> {
        Ok(PhaseTotals {
            stats: TaskStats::new()?,
            seconds: 0.0,
            cpu: None,
        })
    }

    pub fn add(&mut self, stats: &TaskStats, seconds: f64, cpu: &CpuSeconds) {
        self.stats.merge(stats);
        self.seconds += seconds;
        match &mut self.cpu {
            Some(total) => total.add(cpu),
            None => self.cpu = Some(*cpu),
        }
    }

    pub fn report(&self, phase: &'static str) -> PhaseReport {
        PhaseReport::new(
            phase,
            self.seconds,
            &self.stats,
            self.cpu.unwrap_or_default(),
        )
    }
}

/// One slice of a phase, for judging how much the numbers moved during the run.
#[derive(Debug, Clone, Serialize)]
pub struct SliceSummary {
    pub phase: &'static str,
    pub round: u32,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p99_ms: f64,
}

impl SliceSummary {
    pub fn new(phase: &'static str, round: u32, seconds: f64, stats: &TaskStats) -> Self {
        let requests = stats.ok + stats.errors;
        SliceSummary {
            phase,
            round,
            seconds,
            requests_per_second: if seconds > 0.0 {
                requests as f64 / seconds
            } else {
                0.0
            },
            p99_ms: Latency::from_histogram(&stats.latency_us).p99_ms,
        }
    }
}

/// `over` ÷ `under` throughput (host ÷ direct, or session ÷ host) of each round that ran
/// both phases, in round order.
pub fn round_throughput_ratios(slices: &[SliceSummary], over: &str, under: &str) -> Vec<f64> {
    let rounds = slices.iter().map(|s| s.round).max().map_or(0, |r| r + 1);
    (0..rounds)
        .filter_map(|round| {
            let rps = |phase: &str| {
                slices
                    .iter()
                    .find(|s| s.round == round && s.phase == phase)
                    .map(|s| s.requests_per_second)
            };
            match (rps(over), rps(under)) {
                (Some(h), Some(d)) if d > 0.0 => Some(h / d),
                _ => None,
            }
        })
        .collect()
}

/// host ÷ direct, for throughput and tail latency.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ratios {
    pub throughput_host_over_direct: f64,
    pub p99_host_over_direct: f64,
    /// Streaming only: chunks/s through the host ÷ chunks/s direct.
    pub chunks_host_over_direct: Option<f64>,
}

impl Ratios {
    pub fn new(host: &PhaseReport, direct: &PhaseReport) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Ratios {
            throughput_host_over_direct: ratio(
                host.requests_per_second,
                direct.requests_per_second,
            ),
            p99_host_over_direct: ratio(host.latency.p99_ms, direct.latency.p99_ms),
            chunks_host_over_direct: (direct.chunks > 0)
                .then(|| ratio(host.chunks_per_second, direct.chunks_per_second)),
        }
    }
}

/// A CPU column's cell: `-` when that process was not measured.
fn per_1k(cpu: Option<CpuUse>) -> String {
    cpu.map_or("-".to_owned(), |c| {
        format!("{:.3}", c.seconds_per_1k_requests)
    })
}

/// The phases side by side as a plain-text table.
pub fn table(phases: &[PhaseReport]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<8} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>10} {:>10} {:>10}\n",
        "phase",
        "req/s",
        "chunks/s",
        "errors",
        "unfin",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "host s/1k",
        "host cs/r",
        "wrkr s/1k",
        "bench s/1k",
        "rmq s/1k"
    );
    out.push_str(&header);
    for p in phases {
        out.push_str(&format!(
            "{:<8} {:>9.0} {:>9.0} {:>7} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.3} {:>8.2} {:>10} {:>10.3} {:>10}\n",
            p.phase,
            p.requests_per_second,
            p.chunks_per_second,
            p.errors,
            p.unfinished,
            p.latency.p50_ms,
            p.latency.p90_ms,
            p.latency.p99_ms,
            p.latency.max_ms,
            p.host_cpu.seconds_per_1k_requests,
            p.host_context_switches_per_request,
            per_1k(p.worker_cpu),
            p.bench_cpu.seconds_per_1k_requests,
            per_1k(p.broker_cpu),
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_completions_inside_the_window_count() {
        let now = Instant::now();
        let window = Window {
            start: now + Duration::from_secs(1),
            end: now + Duration::from_secs(2),
        };
        let mut stats = TaskStats::new().unwrap();
        stats.record(&window, now, now + Duration::from_millis(500), true);
        stats.record(
            &window,
            now + Duration::from_millis(900),
            now + Duration::from_millis(1100),
            true,
        );
        stats.record(&window, now, now + Duration::from_millis(1500), false);
        stats.record(&window, now, now + Duration::from_secs(3), true);
        assert_eq!((stats.warmup, stats.ok, stats.errors), (1, 1, 1));
        assert!(!window.measures(now + Duration::from_millis(999)));
        assert!(window.measures(now + Duration::from_secs(1)));
        assert!(!window.measures(now + Duration::from_secs(2)));
        assert_eq!(stats.latency_us.len(), 2);
        // 200 ms, within hdrhistogram's 3 significant digits.
        assert!((stats.latency_us.min() as i64 - 200_000).abs() < 200);
    }

    #[test]
    fn reports_rates_percentiles_and_cpu_per_thousand() {
        let mut stats = TaskStats::new().unwrap();
        for us in 1..=1000u64 {
            stats.latency_us.record(us * 10).unwrap();
        }
        stats.ok = 990;
        stats.errors = 10;
        let report = PhaseReport::new(
            "host",
            2.0,
            &stats,
            CpuSeconds {
                host: 1.0,
                host_context_switches: 3000.0,
                worker: Some(0.5),
                bench: 0.0,
                broker: None,
            },
        );
        assert_eq!(report.requests, 1000);
        assert_eq!(report.requests_per_second, 500.0);
        assert!((report.latency.p50_ms - 5.0).abs() < 0.01);
        assert!((report.latency.p99_ms - 9.9).abs() < 0.01);
        assert!((report.latency.max_ms - 10.0).abs() < 0.01);
        assert_eq!(report.host_cpu.seconds_per_1k_requests, 1.0);
        assert_eq!(report.worker_cpu.unwrap().seconds_per_1k_requests, 0.5);
        assert_eq!(report.host_context_switches_per_request, 3.0);
        let text = table(&[report.clone(), report]);
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn totals_add_slices_and_cpu() {
        let mut totals = PhaseTotals::new().unwrap();
        let mut stats = TaskStats::new().unwrap();
        stats.ok = 300;
        stats.latency_us.record(1000).unwrap();
        let cpu = CpuSeconds {
            host: 0.3,
            host_context_switches: 0.0,
            worker: Some(0.6),
            bench: 0.1,
            broker: None,
        };
        totals.add(&stats, 1.5, &cpu);
        totals.add(&stats, 1.5, &cpu);
        let report = totals.report("host");
        assert_eq!(report.requests, 600);
        assert!((report.requests_per_second - 200.0).abs() < 1e-9);
        assert!((report.host_cpu.seconds_per_1k_requests - 1.0).abs() < 1e-9);
        assert!((report.worker_cpu.unwrap().seconds_per_1k_requests - 2.0).abs() < 1e-9);
        assert!(report.broker_cpu.is_none());
    }

    #[test]
    fn round_ratios_pair_the_phases_of_each_round() {
        let slice = |phase, round, rps| SliceSummary {
            phase,
            round,
            seconds: 1.0,
            requests_per_second: rps,
            p99_ms: 1.0,
        };
        let slices = [
            slice("host", 0, 50.0),
            slice("direct", 0, 100.0),
            slice("direct", 1, 100.0),
            slice("host", 1, 80.0),
            slice("host", 2, 10.0),
        ];
        assert_eq!(
            round_throughput_ratios(&slices, "host", "direct"),
            vec![0.5, 0.8]
        );
        assert_eq!(
            round_throughput_ratios(&slices, "direct", "host"),
            vec![2.0, 1.25]
        );
        assert!(round_throughput_ratios(&[], "host", "direct").is_empty());
    }

    #[test]
    fn ratios_divide_host_by_direct() {
        let mut stats = TaskStats::new().unwrap();
        stats.ok = 100;
        stats.latency_us.record(4000).unwrap();
        let host = PhaseReport::new("host", 1.0, &stats, CpuSeconds::default());
        stats.ok = 200;
        stats.latency_us.reset();
        stats.latency_us.record(2000).unwrap();
        let direct = PhaseReport::new("direct", 1.0, &stats, CpuSeconds::default());
        let r = Ratios::new(&host, &direct);
        assert!((r.throughput_host_over_direct - 0.5).abs() < 1e-9);
        assert!((r.p99_host_over_direct - 2.0).abs() < 0.01);
        assert_eq!(r.chunks_host_over_direct, None);
    }
}
