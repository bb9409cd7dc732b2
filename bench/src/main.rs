//! `taskgate-bench`: how much the taskgate host costs on top of RabbitMQ and a worker.
//!
//! It starts a real host (release binary, temporary plugins.toml with a unique queue) and ONE
//! example worker, then runs two closed-loop phases with the same shape — C connections × K
//! echo requests in flight, a payload of N bytes, warm-up excluded:
//!
//! - **host**: Socket.IO clients → host → RabbitMQ → worker → RabbitMQ → host → clients;
//! - **direct**: AMQP clients → RabbitMQ → worker → RabbitMQ → clients (what the host adds is
//!   the difference).
//!
//! The phases run in alternating slices (host, direct, direct, host …; see `schedule`) so
//! that both meet the same background load on this shared machine.
//!
//! It reports throughput, latency percentiles, CPU seconds per 1,000 requests of the host,
//! the worker and itself, and the host's peak RSS; then stops everything and deletes its queue.
//! See bench/README.md.

mod builtin_worker;
mod direct_load;
mod host_load;
mod procs;
mod schedule;
mod sio;
mod stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use clap::{Parser, ValueEnum};
use lapin::options::QueueDeleteOptions;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::builtin_worker::BuiltinWorker;
use crate::direct_load::{DirectLoop, Target};
use crate::procs::Process;
use crate::schedule::{Phase, Slice};
use crate::stats::{CpuSeconds, PhaseReport, PhaseTotals, Ratios, SliceSummary, TaskStats, Window};

/// The request type under test; the example `echo` plugin declares it streams.
const REQUEST_TYPE: &str = "echo";
const ECHO_STREAMS: bool = true;
/// Request timeout for both phases (the plugin API's default), written into plugins.toml so
/// the host and the direct phase send the same `expiration`.
const TIMEOUT_MS: u64 = 30_000;
/// RabbitMQ's process name, for reporting the broker's share of the CPU.
const BROKER_COMM: &str = "beam.smp";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WorkerKind {
    /// The project's Rust example worker (`taskgate-example-workers --only echo`), a separate process.
    Example,
    /// A trivial lapin echo consumer inside this process (fallback; no worker CPU column).
    Builtin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phases {
    Both,
    Host,
    Direct,
}

/// Closed-loop echo benchmark: through the taskgate host vs. straight over AMQP.
#[derive(Debug, Parser)]
#[command(name = "taskgate-bench", version, about)]
struct Cli {
    /// Socket.IO connections in phase host (phase direct keeps the same C × K requests in flight).
    #[arg(long, short = 'c', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Requests in flight per connection.
    #[arg(long, short = 'k', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    in_flight: u32,
    /// Size of the JSON payload of each request, in bytes (at least 10: `{"pad":""}`).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring, per phase.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Slices each phase's measured time is cut into; the phases alternate host, direct,
    /// direct, host … so both see the same background load (see bench/README.md).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    phases: Phases,
    /// RabbitMQ URL (used by the host, the worker and phase direct).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The host binary [default: `taskgate` next to this binary].
    #[arg(long)]
    host_bin: Option<PathBuf>,
    /// Which echo worker answers the requests (the same one in both phases).
    #[arg(long, value_enum, default_value_t = WorkerKind::Example)]
    worker: WorkerKind,
    /// The worker binary [default: `taskgate-example-workers` next to this binary].
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Directory of the plugins the host loads [default: <repo>/build/plugins].
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// AMQP channels (each with its own reply queue and closed loop) in phase direct; the
    /// C × K requests in flight are spread over them. The default, 1, mirrors the host, which
    /// publishes on one channel and reads one reply queue; `--direct-channels C` gives every
    /// connection its own (slower: RabbitMQ pays per queue and channel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    direct_channels: u32,
    /// The worker's `--prefetch` (requests it handles at once).
    #[arg(long, default_value_t = 32)]
    worker_prefetch: u16,
}

/// Everything that must be cleaned up, whatever happens.
struct Run {
    dir: PathBuf,
    queue: String,
    amqp_url: String,
    host: Option<Process>,
    worker: Option<Worker>,
}

/// The echo worker under test.
enum Worker {
    Example(Process),
    Builtin(BuiltinWorker),
}

impl Worker {
    /// The worker's own process, if it has one.
    fn pid(&self) -> Option<u32> {
        match self {
            Worker::Example(process) => Some(process.pid()),
            Worker::Builtin(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            Worker::Example(process) => process.stop().await,
            Worker::Builtin(worker) => worker.stop().await,
        }
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    config: JsonConfig,
    phases: &'a [PhaseReport],
    ratios: Option<Ratios>,
    /// host ÷ direct throughput of each round: their spread shows how noisy the run was.
    round_throughput_ratios: Vec<f64>,
    slices: &'a [SliceSummary],
    host_peak_rss_kib: Option<u64>,
    worker_peak_rss_kib: Option<u64>,
}

#[derive(Serialize)]
struct JsonConfig {
    connections: u32,
    in_flight: u32,
    payload_bytes: usize,
    duration_s: f64,
    warmup_s: f64,
    rounds: u32,
    worker: &'static str,
    worker_prefetch: u16,
    direct_channels: u32,
    cpus: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = validate(&cli) {
        eprintln!("taskgate-bench: {e}");
        return ExitCode::from(2);
    }
    let run_id = uuid::Uuid::new_v4();
    let mut run = Run {
        dir: std::env::temp_dir().join(format!("taskgate-bench-{run_id}")),
        queue: format!("bench.{run_id}.echo"),
        amqp_url: cli.amqp_url.clone(),
        host: None,
        worker: None,
    };
    let result = tokio::select! {
        result = bench(&cli, &mut run) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cleanup(run).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(cli: &Cli) -> anyhow::Result<()> {
    if !(cli.duration.is_finite() && cli.duration > 0.0 && cli.duration <= 86_400.0) {
        bail!("--duration must be between 0 and 86400 seconds");
    }
    if !(cli.warmup.is_finite() && cli.warmup >= 0.0 && cli.warmup <= 86_400.0) {
        bail!("--warmup must be between 0 and 86400 seconds");
    }
    if cli.payload_bytes > 64 * 1024 * 1024 {
        bail!("--payload-bytes must be at most 64 MiB");
    }
    Ok(())
}

async fn bench(cli: &Cli, run: &mut Run) -> anyhow::Result<()> {
    let host_bin = binary(&cli.host_bin, "taskgate")?;
    let worker_bin = match cli.worker {
        WorkerKind::Example => Some(binary(&cli.worker_bin, "taskgate-example-workers")?),
        WorkerKind::Builtin => None,
    };
    let plugins_dir = match &cli.plugins_dir {
        Some(dir) => dir.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/plugins"),
    };
    let plugins_dir = plugins_dir.canonicalize().with_context(|| {
        format!(
            "plugins directory {} (run scripts/build-plugins --release)",
            plugins_dir.display()
        )
    })?;

    std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
    let config_path = run.dir.join("plugins.toml");
    std::fs::write(
        &config_path,
        plugins_toml(&cli.amqp_url, &plugins_dir, &run.queue),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;

    let (host, line) = Process::spawn(
        "host",
        &host_bin,
        &["--config".to_owned(), config_path.display().to_string()],
        "listening on",
        STARTUP_TIMEOUT,
    )
    .await?;
    run.host = Some(host);
    let addr = procs::listen_addr(&line)
        .ok_or_else(|| anyhow!("no address in the host's log line: {line}"))?;
    procs::wait_ready(addr, STARTUP_TIMEOUT).await?;

    // After the host: it declares the request queue the worker consumes from.
    run.worker = Some(match &worker_bin {
        Some(worker_bin) => {
            let (process, _) = Process::spawn(
                "worker",
                worker_bin,
                &[
                    "--amqp-url".to_owned(),
                    cli.amqp_url.clone(),
                    "--queue".to_owned(),
                    format!("{REQUEST_TYPE}={}", run.queue),
                    "--only".to_owned(),
                    REQUEST_TYPE.to_owned(),
                    "--prefetch".to_owned(),
                    cli.worker_prefetch.to_string(),
                ],
                "worker ready",
                STARTUP_TIMEOUT,
            )
            .await?;
            Worker::Example(process)
        }
        None => Worker::Builtin(
            BuiltinWorker::start(&cli.amqp_url, &run.queue, cli.worker_prefetch)
                .await
                .context("starting the built-in worker")?,
        ),
    });

    let payload_json: Arc<str> = payload_of_size(cli.payload_bytes).into();
    let config = JsonConfig {
        connections: cli.connections,
        in_flight: cli.in_flight,
        payload_bytes: payload_json.len(),
        duration_s: cli.duration,
        warmup_s: cli.warmup,
        rounds: cli.rounds,
        worker: match cli.worker {
            WorkerKind::Example => "example",
            WorkerKind::Builtin => "builtin",
        },
        worker_prefetch: cli.worker_prefetch,
        direct_channels: direct_channels(cli),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
    };
    println!(
        "taskgate-bench: C={} K={} payload={} B duration={} s warmup={} s rounds={} worker={} prefetch={} direct channels={} cpus={} host={addr}",
        config.connections,
        config.in_flight,
        config.payload_bytes,
        config.duration_s,
        config.warmup_s,
        config.rounds,
        config.worker,
        config.worker_prefetch,
        config.direct_channels,
        config.cpus
    );

    let (phases, slices) = run_slices(cli, run, addr, &payload_json).await?;
    let round_ratios = stats::round_throughput_ratios(&slices);
    let host_pid = pid_of(&run.host)?;
    let worker_pid = run.worker.as_ref().and_then(Worker::pid);
    let host_peak_rss_kib = procs::peak_rss_kib(host_pid).ok();
    let worker_peak_rss_kib = worker_pid.and_then(|pid| procs::peak_rss_kib(pid).ok());
    let ratios = match phases.as_slice() {
        [host, direct] => Some(Ratios::new(host, direct)),
        _ => None,
    };

    println!();
    print!("{}", stats::table(&phases));
    if let Some(r) = ratios {
        println!(
            "host/direct: throughput {:.2}x, p99 {:.2}x",
            r.throughput_host_over_direct, r.p99_host_over_direct
        );
    }
    let lowest = round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = round_ratios
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    if round_ratios.len() > 1 {
        println!(
            "  per-round throughput ratio: {lowest:.2}–{highest:.2} over {} rounds",
            round_ratios.len()
        );
    }
    let kib =
        |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    let worker_rss = match cli.worker {
        WorkerKind::Example => kib(worker_peak_rss_kib),
        WorkerKind::Builtin => "- (built in)".to_owned(),
    };
    println!(
        "peak RSS: host {}, worker {worker_rss}",
        kib(host_peak_rss_kib)
    );
    if phases.iter().any(|p| p.errors > 0 || p.unfinished > 0) {
        println!("warning: some requests failed or never finished (see errors/unfin)");
    }
    for p in phases
        .iter()
        .filter(|p| p.phase == "direct" && p.requests > 0)
    {
        println!(
            "direct: {:.0}% of replies arrived before the broker confirmed their request (the host holds such replies until the confirm)",
            100.0 * p.replies_before_confirm as f64 / p.requests as f64
        );
    }
    let missing_acks: u64 = phases.iter().map(|p| p.missing_acks).sum();
    if missing_acks > 0 {
        println!(
            "warning: {missing_acks} final responses arrived without their ack (protocol §1 violation; counted as errors)"
        );
    }

    if let Some(path) = &cli.json {
        let report = JsonReport {
            config,
            phases: &phases,
            ratios,
            round_throughput_ratios: round_ratios,
            slices: &slices,
            host_peak_rss_kib,
            worker_peak_rss_kib,
        };
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Opens the connections of the phases to run, runs the slices of the schedule on them,
/// then closes them; returns each phase's totals and every slice's summary.
async fn run_slices(
    cli: &Cli,
    run: &mut Run,
    addr: SocketAddr,
    payload_json: &Arc<str>,
) -> anyhow::Result<(Vec<PhaseReport>, Vec<SliceSummary>)> {
    let wanted: &[Phase] = match cli.phases {
        Phases::Both => &[Phase::Host, Phase::Direct],
        Phases::Host => &[Phase::Host],
        Phases::Direct => &[Phase::Direct],
    };
    // Connections are set up once, before any clock starts: set-up is not what we measure.
    let mut host_conns = if wanted.contains(&Phase::Host) {
        host_load::connect_all(addr, cli.connections as usize).await?
    } else {
        Vec::new()
    };
    let mut direct = if wanted.contains(&Phase::Direct) {
        Some(DirectSide::open(cli, run, payload_json).await?)
    } else {
        None
    };
    let request_type: Arc<str> = REQUEST_TYPE.into();
    let mut host_totals = PhaseTotals::new()?;
    let mut direct_totals = PhaseTotals::new()?;
    let mut summaries = Vec::new();
    let plan = schedule::slices(wanted, cli.rounds, secs(cli.duration), secs(cli.warmup));
    for slice in plan {
        let window = Window::after(slice.warmup, slice.duration);
        let (stats, seconds) = match slice.phase {
            Phase::Host => {
                let tasks = std::mem::take(&mut host_conns)
                    .into_iter()
                    .map(|conn| {
                        tokio::spawn(host_load::run_connection(
                            conn,
                            cli.in_flight as usize,
                            Arc::clone(&request_type),
                            Arc::clone(payload_json),
                            window,
                        ))
                    })
                    .collect();
                let (conns, stats, seconds, cpu) = measure("host", run, window, tasks).await?;
                host_conns = conns;
                host_totals.add(&stats, seconds, &cpu);
                (stats, seconds)
            }
            Phase::Direct => {
                let side = direct
                    .as_mut()
                    .ok_or_else(|| anyhow!("phase direct was not set up"))?;
                let tasks = std::mem::take(&mut side.loops)
                    .into_iter()
                    .map(|task| {
                        tokio::spawn(direct_load::run_task(task, side.target.clone(), window))
                    })
                    .collect();
                let (loops, stats, seconds, cpu) = measure("direct", run, window, tasks).await?;
                side.loops = loops;
                direct_totals.add(&stats, seconds, &cpu);
                (stats, seconds)
            }
        };
        let summary = SliceSummary::new(slice.phase.name(), slice.round, seconds, &stats);
        print_slice(&slice, &summary);
        summaries.push(summary);
    }
    for conn in host_conns {
        conn.close().await;
    }
    if let Some(side) = direct {
        side.close().await;
    }
    let mut reports = Vec::new();
    for phase in wanted {
        reports.push(match phase {
            Phase::Host => host_totals.report("host"),
            Phase::Direct => direct_totals.report("direct"),
        });
    }
    Ok((reports, summaries))
}

fn print_slice(slice: &Slice, summary: &SliceSummary) {
    println!(
        "round {} {:<6} {:>6.0} req/s, p99 {:.2} ms",
        slice.round, summary.phase, summary.requests_per_second, summary.p99_ms
    );
}

/// Phase direct's AMQP connection and closed loops, kept across its slices.
struct DirectSide {
    connection: lapin::Connection,
    loops: Vec<DirectLoop>,
    target: Target,
}

impl DirectSide {
    async fn open(cli: &Cli, run: &Run, payload_json: &Arc<str>) -> anyhow::Result<Self> {
        let connection = direct_load::connect(&cli.amqp_url).await?;
        let shares = in_flight_shares(cli.connections, cli.in_flight, direct_channels(cli));
        let mut loops = Vec::with_capacity(shares.len());
        for (i, in_flight) in shares.into_iter().enumerate() {
            let reply_queue = format!("taskgate.bench.reply.{}.{i}", uuid::Uuid::new_v4());
            loops.push(DirectLoop::open(&connection, reply_queue, in_flight).await?);
        }
        let target = Target {
            queue: run.queue.as_str().into(),
            request_type: REQUEST_TYPE.into(),
            payload_json: Arc::clone(payload_json),
            timeout_ms: TIMEOUT_MS,
            streams: ECHO_STREAMS,
        };
        Ok(DirectSide {
            connection,
            loops,
            target,
        })
    }

    async fn close(self) {
        for task in self.loops {
            task.close().await;
        }
        let _ = self.connection.close(200, "benchmark done".into()).await;
    }
}

/// Channels (each with its own reply queue) of phase direct: `--direct-channels`, at most
/// one per request in flight.
fn direct_channels(cli: &Cli) -> u32 {
    cli.direct_channels
        .clamp(1, cli.connections.saturating_mul(cli.in_flight))
}

/// Spreads `connections × in_flight` requests over `channels` closed loops as evenly as
/// possible, so phase direct keeps exactly as many requests in flight as phase host.
fn in_flight_shares(connections: u32, in_flight: u32, channels: u32) -> Vec<usize> {
    let total = connections as usize * in_flight as usize;
    let channels = channels.max(1) as usize;
    (0..channels)
        .map(|i| total / channels + usize::from(i < total % channels))
        .collect()
}

/// Samples CPU times at the window's edges, then collects the tasks' statistics and the
/// connections they hand back; returns those, the statistics, the measured seconds and the
/// CPU used in the window.
async fn measure<T>(
    phase: &'static str,
    run: &mut Run,
    window: Window,
    tasks: Vec<JoinHandle<anyhow::Result<(T, TaskStats)>>>,
) -> anyhow::Result<(Vec<T>, TaskStats, f64, CpuSeconds)> {
    let ticks = procs::clock_ticks_per_second();
    let (host, bench) = (pid_of(&run.host)?, std::process::id());
    let worker = run.worker.as_ref().and_then(Worker::pid);
    let broker = procs::find_pid_by_comm(BROKER_COMM);
    let sample = || -> anyhow::Result<CpuSeconds> {
        Ok(CpuSeconds {
            host: procs::cpu_seconds(host, ticks)?,
            worker: match worker {
                Some(pid) => Some(procs::cpu_seconds(pid, ticks)?),
                None => None,
            },
            bench: procs::cpu_seconds(bench, ticks)?,
            broker: broker.and_then(|pid| procs::cpu_seconds(pid, ticks).ok()),
        })
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.start)).await;
    let before = sample()?;
    let started = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
    let after = sample()?;
    let seconds = started.elapsed().as_secs_f64();

    let mut total = TaskStats::new()?;
    let mut handed_back = Vec::with_capacity(tasks.len());
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok((conn, stats))) => {
                total.merge(&stats);
                handed_back.push(conn);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(anyhow!("load task panicked: {e}"))),
        }
    }
    if let Some(host) = &mut run.host {
        host.check_alive()?;
    }
    if let Some(Worker::Example(worker)) = &mut run.worker {
        worker.check_alive()?;
    }
    if let Some(e) = failure {
        return Err(e.context(format!("phase {phase}")));
    }
    let used = CpuSeconds {
        host: after.host - before.host,
        worker: after.worker.zip(before.worker).map(|(a, b)| a - b),
        bench: after.bench - before.bench,
        broker: after.broker.zip(before.broker).map(|(a, b)| a - b),
    };
    Ok((handed_back, total, seconds, used))
}

async fn cleanup(run: Run) {
    if let Some(worker) = run.worker {
        worker.stop().await;
    }
    if let Some(host) = run.host {
        host.stop().await;
    }
    if let Err(e) = delete_queue(&run.amqp_url, &run.queue).await {
        eprintln!(
            "taskgate-bench: could not delete queue {}: {e:#}",
            run.queue
        );
    }
    let _ = std::fs::remove_dir_all(&run.dir);
}

async fn delete_queue(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = direct_load::connect(url).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "benchmark done".into()).await;
    Ok(())
}

fn pid_of(process: &Option<Process>) -> anyhow::Result<u32> {
    process
        .as_ref()
        .map(Process::pid)
        .ok_or_else(|| anyhow!("process not started"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `path` if given, else `name` next to this binary (cargo builds them into one directory).
fn binary(path: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let candidate = match path {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .ok_or_else(|| anyhow!("this binary has no directory"))?
            .join(name),
    };
    if !candidate.is_file() {
        bail!(
            "{} not found (build it: cargo build --release -p taskgate-host -p taskgate-worker)",
            candidate.display()
        );
    }
    Ok(candidate)
}

fn plugins_toml(amqp_url: &str, plugins_dir: &Path, queue: &str) -> String {
    // TOML basic strings are JSON-compatible for what we put in them.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    // The per-connection rate and in-flight limits are off: the benchmark measures the
    // relay, and its closed loop keeps more requests going than a browser would.
    format!(
        "[host]\nlisten = \"127.0.0.1:0\"\namqp_url = {}\nplugins_dir = {}\n\n\
         [limits]\nrequests_per_second = 0\nmax_in_flight = 0\n\n\
         [plugins.echo]\nenabled = true\nqueue = {}\ntimeout_ms = {TIMEOUT_MS}\n",
        quote(amqp_url),
        quote(&plugins_dir.display().to_string()),
        quote(queue),
    )
}

/// A JSON object `{"pad":"aaa…"}` of exactly `bytes` bytes (or the smallest one, 10 bytes).
fn payload_of_size(bytes: usize) -> String {
    const EMPTY: usize = r#"{"pad":""}"#.len();
    let pad = "a".repeat(bytes.saturating_sub(EMPTY));
    format!(r#"{{"pad":"{pad}"}}"#)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_spread_evenly_over_channels() {
        assert_eq!(in_flight_shares(50, 4, 50), vec![4; 50]);
        assert_eq!(in_flight_shares(50, 4, 1), vec![200]);
        assert_eq!(in_flight_shares(10, 1, 3), vec![4, 3, 3]);
        assert_eq!(in_flight_shares(2, 1, 2).iter().sum::<usize>(), 2);
    }

    #[test]
    fn payloads_have_the_requested_size_and_are_json() {
        for size in [0, 10, 11, 100, 4096] {
            let p = payload_of_size(size);
            assert_eq!(p.len(), size.max(10));
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert!(v["pad"].is_string());
        }
    }

    #[test]
    fn plugins_toml_names_the_queue_and_plugins_dir() {
        let text = plugins_toml(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Path::new("/work/build/plugins"),
            "bench.1.echo",
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["host"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(
            value["host"]["plugins_dir"].as_str(),
            Some("/work/build/plugins")
        );
        assert_eq!(
            value["plugins"]["echo"]["queue"].as_str(),
            Some("bench.1.echo")
        );
        assert_eq!(
            value["plugins"]["echo"]["timeout_ms"].as_integer(),
            Some(30_000)
        );
        assert_eq!(value["limits"]["requests_per_second"].as_integer(), Some(0));
    }
}
