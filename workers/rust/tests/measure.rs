//! Throughput and CPU cost of the example worker's `echo`, straight over AMQP (no host):
//! a closed loop keeping `TASKGATE_MEASURE_IN_FLIGHT` (default 200) requests in flight for
//! `TASKGATE_MEASURE_SECONDS` (default 5) after a 1 s warm-up; `TASKGATE_MEASURE_CHUNKS`
//! (default 0) asks echo for that many chunks per request, `TASKGATE_MEASURE_PREFETCH`
//! (default 32) sets the worker's prefetch. Ignored by default; run it
//! against a release build:
//!
//! ```sh
//! cargo test --release -p taskgate-worker --test measure -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::BasicPublishOptions;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use uuid::Uuid;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --release"]
async fn echo_throughput() {
    let in_flight = env_or("TASKGATE_MEASURE_IN_FLIGHT", 200) as usize;
    let seconds = env_or("TASKGATE_MEASURE_SECONDS", 5);
    let prefetch = env_or("TASKGATE_MEASURE_PREFETCH", 32);
    let chunks = env_or("TASKGATE_MEASURE_CHUNKS", 0);
    let mut host = Host::connect().await;
    let queue = unique("measure");
    host.declare_queue(&queue, &[]).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskgate-example-workers"))
        .args(["--only", "echo", "--queue", &format!("echo={queue}")])
        .args(["--prefetch", &prefetch.to_string()])
        .env("TASKGATE_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let stderr = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[worker] {line}");
        }
    });
    host.wait_for_consumer(&queue).await;

    let body = format!(r#"{{"chunks":{chunks},"pad":"{}"}}"#, "a".repeat(88)).into_bytes();
    let publish = |host: &Host, id: String| {
        let properties = request(&id, &host.reply_queue, "echo", 30_000);
        let channel = host.channel.clone();
        let queue = queue.clone();
        let body = body.clone();
        async move {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap();
        }
    };
    let mut sent: HashMap<String, Instant> = HashMap::new();
    for _ in 0..in_flight {
        let id = Uuid::new_v4().to_string();
        sent.insert(id.clone(), Instant::now());
        publish(&host, id).await;
    }
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(seconds);
    let mut done = 0u64;
    let mut chunks_seen = 0u64;
    let mut latencies = Vec::new();
    let mut cpu_start = None;
    while Instant::now() < end {
        let reply = tokio::time::timeout(WAIT, host.replies.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if kind(&reply) == "chunk" {
            if cpu_start.is_some() {
                chunks_seen += 1;
            }
            continue;
        }
        assert_eq!(kind(&reply), "result");
        let started = sent.remove(&correlation(&reply)).unwrap();
        if Instant::now() >= warmup_end {
            let cpu = *cpu_start.get_or_insert_with(|| (cpu_seconds(pid), Instant::now()));
            let _ = cpu;
            done += 1;
            latencies.push(started.elapsed());
        }
        let id = Uuid::new_v4().to_string();
        sent.insert(id.clone(), Instant::now());
        publish(&host, id).await;
    }
    let (cpu_at_start, measured_from) = cpu_start.unwrap();
    let elapsed = measured_from.elapsed().as_secs_f64();
    let worker_cpu = cpu_seconds(pid) - cpu_at_start;
    latencies.sort();
    let p =
        |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "echo straight over AMQP: {in_flight} in flight, prefetch {prefetch}, {chunks} chunks each: {:.0} req/s ({:.0} chunks/s), p50 {:.1} ms, p99 {:.1} ms, worker CPU {:.3} s per 1k requests ({:.0}% of a core)",
        done as f64 / elapsed,
        chunks_seen as f64 / elapsed,
        p(0.5),
        p(0.99),
        worker_cpu / (done as f64 / 1000.0),
        100.0 * worker_cpu / elapsed,
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    host.delete_queue(&queue).await;
}
