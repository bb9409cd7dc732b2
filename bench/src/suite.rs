//! `taskgate-bench suite`: every case the performance targets talk about, one after the
//! other, each on a fresh host and worker (so one case's peak memory or queue backlog
//! does not leak into the next), then a summary of the ratios.
//!
//! | case | load | worker |
//! | --- | --- | --- |
//! | `echo-100B` | C=50 × K=4, 100-byte payloads | example |
//! | `echo-10KB` | C=50 × K=4, 10,000-byte payloads | example |
//! | `echo-1MB` | C=4 × K=2, 1,000,000-byte payloads | example |
//! | `stream-20x100B` | C=50 × K=4, 20 chunks of 100 bytes per request | sdk |
//! | `idle` | 10,000 connected, idle WebSockets | – |
//!
//! `--quick` shrinks every case to a second or so and 200 idle connections (smoke test).

use serde::Serialize;

use crate::case::{self, CaseReport, CaseSpec, Env};
use crate::idle::IdleReport;
use crate::{Phases, QueueType, WorkerKind};

#[derive(Debug, Serialize)]
pub struct SuiteReport {
    pub cases: Vec<CaseReport>,
    pub idle: Option<IdleReport>,
    /// Cases that failed, with why.
    pub failures: Vec<(String, String)>,
}

impl SuiteReport {
    pub fn complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The cases of the suite, in the order they run.
pub fn cases(duration_s: f64, quick: bool) -> Vec<CaseSpec> {
    let case = |name: &str, c: u32, k: u32, payload: usize, chunks: u32, worker| CaseSpec {
        name: name.to_owned(),
        connections: if quick { c.min(4) } else { c },
        in_flight: if quick { k.min(2) } else { k },
        payload_bytes: payload,
        chunks,
        chunk_bytes: 100,
        duration_s: if quick { 1.0 } else { duration_s },
        warmup_s: if quick { 0.5 } else { 2.0 },
        rounds: if quick { 2 } else { 4 },
        phases: Phases::Both,
        queue_type: QueueType::Quorum,
        worker,
        worker_prefetch: 32,
        direct_channels: 1,
        direct_reply_to: false,
        consoles: 0,
    };
    vec![
        case("echo-100B", 50, 4, 100, 0, WorkerKind::Example),
        case("echo-10KB", 50, 4, 10_000, 0, WorkerKind::Example),
        case("echo-1MB", 4, 2, 1_000_000, 0, WorkerKind::Example),
        case("stream-20x100B", 50, 4, 100, 20, WorkerKind::Sdk),
    ]
}

pub async fn run(
    env: &Env,
    duration_s: f64,
    idle_connections: u64,
    quick: bool,
) -> anyhow::Result<SuiteReport> {
    let mut report = SuiteReport {
        cases: Vec::new(),
        idle: None,
        failures: Vec::new(),
    };
    for spec in cases(duration_s, quick) {
        spec.validate()?;
        match case::run(env, &spec).await {
            Ok(case) => report.cases.push(case),
            Err(e) => {
                eprintln!("taskgate-bench: case {} failed: {e:#}", spec.name);
                report.failures.push((spec.name.clone(), format!("{e:#}")));
            }
        }
    }
    let idle_connections = if quick {
        idle_connections.min(200)
    } else {
        idle_connections
    };
    match case::run_idle(env, idle_connections).await {
        Ok(idle) => report.idle = Some(idle),
        Err(e) => {
            eprintln!("taskgate-bench: the idle case failed: {e:#}");
            report.failures.push(("idle".to_owned(), format!("{e:#}")));
        }
    }
    print!("{}", summary(&report));
    Ok(report)
}

/// One line per case: the numbers the targets are about.
pub fn summary(report: &SuiteReport) -> String {
    let mut out = String::from("\nsummary (host ÷ direct from the same run)\n");
    out.push_str(&format!(
        "{:<15} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}\n",
        "case", "host req/s", "chunks/s", "thr x", "p99 x", "chunks x", "host s/1k", "host peak"
    ));
    for case in &report.cases {
        let host = case.phases.iter().find(|p| p.phase == "host");
        let ratio = |f: fn(&crate::stats::Ratios) -> Option<f64>| {
            case.ratios
                .as_ref()
                .and_then(f)
                .map_or("-".to_owned(), |r| format!("{r:.2}"))
        };
        out.push_str(&format!(
            "{:<15} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}\n",
            case.config.name,
            host.map_or("-".to_owned(), |h| format!("{:.0}", h.requests_per_second)),
            host.map_or("-".to_owned(), |h| format!("{:.0}", h.chunks_per_second)),
            ratio(|r| Some(r.throughput_host_over_direct)),
            ratio(|r| Some(r.p99_host_over_direct)),
            ratio(|r| r.chunks_host_over_direct),
            host.map_or("-".to_owned(), |h| format!(
                "{:.3}",
                h.host_cpu.seconds_per_1k_requests
            )),
            case.host_peak_rss_kib
                .map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        ));
    }
    if let Some(idle) = &report.idle {
        out.push_str(&format!(
            "idle            {} connections: {:.1} KiB of host memory each\n",
            idle.connections, idle.host_kib_per_connection
        ));
    }
    for (name, why) in &report.failures {
        out.push_str(&format!("FAILED {name}: {why}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_covers_every_payload_size_and_streaming() {
        let cases = cases(8.0, false);
        let sizes: Vec<usize> = cases.iter().map(|c| c.payload_bytes).collect();
        assert_eq!(sizes, vec![100, 10_000, 1_000_000, 100]);
        assert!(cases
            .iter()
            .any(|c| c.chunks == 20 && c.worker == WorkerKind::Sdk));
        assert!(cases.iter().all(|c| c.validate().is_ok()));
        let quick = super::cases(8.0, true);
        assert!(quick
            .iter()
            .all(|c| c.duration_s <= 1.0 && c.connections <= 4));
    }
}
