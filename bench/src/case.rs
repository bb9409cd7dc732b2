//! One case of the benchmark: a fresh host and worker, the two closed-loop phases in
//! interleaved slices, a printed table, a [`CaseReport`]; and the idle-connections case.
//! Whatever happens (errors, Ctrl-C), the processes are stopped and the queue deleted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use lapin::options::QueueDeleteOptions;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::builtin_worker::BuiltinWorker;
use crate::console_watch::Consoles;
use crate::direct_load::{self, DirectLoop, Target};
use crate::host_load;
use crate::idle::{self, IdleReport};
use crate::procs::{self, Process};
use crate::schedule::{self, Phase, Slice};
use crate::stats::{
    self, CpuSeconds, PhaseReport, PhaseTotals, Ratios, SliceSummary, TaskStats, Window,
};
use crate::{check_local_amqp, EnvArgs, Phases, QueueType, WorkerKind};

/// The request type under test; the example `echo` plugin declares it streams.
pub(crate) const REQUEST_TYPE: &str = "echo";
const ECHO_STREAMS: bool = true;
/// Request timeout for both phases (the plugin API's default), written into plugins.toml so
/// the host and the direct phase send the same `expiration`.
const TIMEOUT_MS: u64 = 30_000;
/// RabbitMQ's process name, for reporting the broker's share of the CPU.
const BROKER_COMM: &str = "beam.smp";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The binaries and directories a case needs, checked once.
#[derive(Debug, Clone)]
pub struct Env {
    pub amqp_url: String,
    pub host_bin: PathBuf,
    /// `None` when the example worker is not built (cases needing it then fail).
    pub example_worker_bin: Option<PathBuf>,
    pub plugins_dir: PathBuf,
    pub host_wrapper: Vec<String>,
    pub at_window_start: Option<String>,
    pub at_window_end: Option<String>,
}

impl Env {
    pub fn resolve(args: &EnvArgs) -> anyhow::Result<Self> {
        check_local_amqp(&args.amqp_url)?;
        let plugins_dir = match &args.plugins_dir {
            Some(dir) => dir.clone(),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/plugins"),
        };
        let plugins_dir = plugins_dir.canonicalize().with_context(|| {
            format!(
                "plugins directory {} (run scripts/build-plugins --release)",
                plugins_dir.display()
            )
        })?;
        Ok(Env {
            amqp_url: args.amqp_url.clone(),
            host_bin: binary(&args.host_bin, "taskgate")?,
            example_worker_bin: binary(&args.worker_bin, "taskgate-example-workers").ok(),
            plugins_dir,
            host_wrapper: args
                .host_wrapper
                .as_deref()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            at_window_start: args.at_window_start.clone(),
            at_window_end: args.at_window_end.clone(),
        })
    }
}

/// The shape of one closed-loop case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSpec {
    pub name: String,
    pub connections: u32,
    pub in_flight: u32,
    pub payload_bytes: usize,
    /// Chunks streamed per request (0: request/response).
    pub chunks: u32,
    pub chunk_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rounds: u32,
    pub phases: Phases,
    pub queue_type: QueueType,
    pub worker: WorkerKind,
    pub worker_prefetch: u16,
    pub direct_channels: u32,
    /// Phase direct receives replies through RabbitMQ's Direct Reply-to instead of a
    /// reply queue (the host always uses a reply queue).
    pub direct_reply_to: bool,
    /// Clients holding the console's live stream open in phase consoles.
    pub consoles: u32,
}

impl CaseSpec {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            bail!("--duration must be between 0 and 86400 seconds");
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0 && self.warmup_s <= 86_400.0) {
            bail!("--warmup must be between 0 and 86400 seconds");
        }
        if self.payload_bytes > 64 * 1024 * 1024 {
            bail!("--payload-bytes must be at most 64 MiB");
        }
        if self.chunks > 10_000 {
            bail!("--chunks must be at most 10000 (the example worker's limit)");
        }
        if self.chunk_bytes > 16 * 1024 * 1024 {
            bail!("--chunk-bytes must be at most 16 MiB");
        }
        Ok(())
    }
}

/// Everything one case measured.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub config: CaseSpec,
    /// The real payload size and the machine's CPUs.
    pub payload_bytes: usize,
    pub cpus: usize,
    pub phases: Vec<PhaseReport>,
    pub ratios: Option<Ratios>,
    /// host ÷ direct throughput of each round: their spread shows how noisy the run was.
    pub round_throughput_ratios: Vec<f64>,
    pub slices: Vec<SliceSummary>,
    pub host_peak_rss_kib: Option<u64>,
    pub worker_peak_rss_kib: Option<u64>,
    /// `--phases consoles`: overview events the open consoles received in all (each stream
    /// gets one a second while it is live).
    pub console_events: Option<u64>,
}

/// Everything that must be cleaned up, whatever happens.
pub(crate) struct Run {
    dir: PathBuf,
    queue: String,
    amqp_url: String,
    pub(crate) host: Option<Process>,
    worker: Option<Worker>,
    /// Lines added to `[limits]` of the host's plugins.toml (e.g. `max_connections`).
    pub(crate) extra_limits: String,
}

impl Run {
    pub(crate) fn new(amqp_url: &str) -> Self {
        let run_id = uuid::Uuid::new_v4();
        Run {
            dir: std::env::temp_dir().join(format!("taskgate-bench-{run_id}")),
            queue: format!("bench.{run_id}.echo"),
            amqp_url: amqp_url.to_owned(),
            host: None,
            worker: None,
            extra_limits: String::new(),
        }
    }
}

/// The echo worker under test.
enum Worker {
    Process(Process),
    Builtin(BuiltinWorker),
}

impl Worker {
    /// The worker's own process, if it has one.
    fn pid(&self) -> Option<u32> {
        match self {
            Worker::Process(process) => Some(process.pid()),
            Worker::Builtin(_) => None,
        }
    }

    async fn stop(self) {
        match self {
            Worker::Process(process) => process.stop().await,
            Worker::Builtin(worker) => worker.stop().await,
        }
    }
}

/// Runs one case on a fresh host and worker, prints its table, and cleans up (also on
/// errors and Ctrl-C).
pub async fn run(env: &Env, spec: &CaseSpec) -> anyhow::Result<CaseReport> {
    let mut run = Run::new(&env.amqp_url);
    let result = tokio::select! {
        result = run_case(env, spec, &mut run) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cleanup(run).await;
    result
}

/// The idle-connections case on a fresh host.
pub async fn run_idle(env: &Env, connections: u64) -> anyhow::Result<IdleReport> {
    let mut run = Run::new(&env.amqp_url);
    let result = tokio::select! {
        result = async {
            let addr = start_host(env, &mut run, QueueType::Quorum, false).await?;
            println!("idle: opening {connections} connections to the host at {addr} …");
            let report = idle::measure(addr, pid_of(&run.host)?, connections).await?;
            if let Some(host) = &mut run.host {
                host.check_alive()?;
            }
            report.print();
            Ok(report)
        } => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    cleanup(run).await;
    result
}

/// Writes plugins.toml, starts the host and waits until it is ready; returns its address.
pub(crate) async fn start_host(
    env: &Env,
    run: &mut Run,
    queue_type: QueueType,
    console: bool,
) -> anyhow::Result<SocketAddr> {
    std::fs::create_dir_all(&run.dir).with_context(|| format!("creating {}", run.dir.display()))?;
    let config_path = run.dir.join("plugins.toml");
    std::fs::write(
        &config_path,
        plugins_toml(
            &env.amqp_url,
            &env.plugins_dir,
            &run.queue,
            queue_type,
            console,
            &run.extra_limits,
        ),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let host_args = ["--config".to_owned(), config_path.display().to_string()];
    let (program, args) = match env.host_wrapper.split_first() {
        None => (env.host_bin.clone(), host_args.to_vec()),
        Some((wrapper, wrapper_args)) => {
            let mut args = wrapper_args.to_vec();
            args.push(env.host_bin.display().to_string());
            args.extend(host_args);
            (PathBuf::from(wrapper), args)
        }
    };
    let (host, line) =
        Process::spawn("host", &program, &args, "listening on", STARTUP_TIMEOUT).await?;
    run.host = Some(host);
    let addr = procs::listen_addr(&line)
        .ok_or_else(|| anyhow!("no address in the host's log line: {line}"))?;
    procs::wait_ready(addr, STARTUP_TIMEOUT).await?;
    Ok(addr)
}

pub(crate) async fn start_worker(env: &Env, spec: &CaseSpec, run: &mut Run) -> anyhow::Result<()> {
    let prefetch = spec.worker_prefetch.to_string();
    run.worker = Some(match spec.worker {
        WorkerKind::Example => {
            let bin = env.example_worker_bin.as_ref().ok_or_else(|| {
                anyhow!("taskgate-example-workers not found (build it: cargo build --release -p taskgate-worker)")
            })?;
            let args = [
                "--amqp-url".to_owned(),
                env.amqp_url.clone(),
                "--queue".to_owned(),
                format!("{REQUEST_TYPE}={}", run.queue),
                "--only".to_owned(),
                REQUEST_TYPE.to_owned(),
                "--prefetch".to_owned(),
                prefetch,
            ];
            let (process, _) =
                Process::spawn("worker", bin, &args, "worker ready", STARTUP_TIMEOUT).await?;
            Worker::Process(process)
        }
        WorkerKind::Sdk => {
            let exe = std::env::current_exe().context("locating this binary")?;
            let args = [
                "echo-worker".to_owned(),
                "--amqp-url".to_owned(),
                env.amqp_url.clone(),
                "--queue".to_owned(),
                run.queue.clone(),
                "--prefetch".to_owned(),
                prefetch,
            ];
            let (process, _) =
                Process::spawn("worker", &exe, &args, "worker ready", STARTUP_TIMEOUT).await?;
            Worker::Process(process)
        }
        WorkerKind::Builtin => Worker::Builtin(
            BuiltinWorker::start(&env.amqp_url, &run.queue, spec.worker_prefetch)
                .await
                .context("starting the built-in worker")?,
        ),
    });
    Ok(())
}

async fn run_case(env: &Env, spec: &CaseSpec, run: &mut Run) -> anyhow::Result<CaseReport> {
    let console = spec.phases == Phases::Consoles;
    let addr = start_host(env, run, spec.queue_type, console).await?;
    // After the host: it declares the request queue the worker consumes from.
    start_worker(env, spec, run).await?;

    let payload_json: Arc<str> =
        payload_of_size(spec.payload_bytes, spec.chunks, spec.chunk_bytes).into();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "taskgate-bench [{}]: C={} K={} payload={} B chunks={}{} duration={} s warmup={} s rounds={} worker={:?} prefetch={} direct channels={} cpus={cpus} host={addr}",
        spec.name,
        spec.connections,
        spec.in_flight,
        payload_json.len(),
        spec.chunks,
        if spec.chunks > 0 { format!("×{} B", spec.chunk_bytes) } else { String::new() },
        spec.duration_s,
        spec.warmup_s,
        spec.rounds,
        spec.worker,
        spec.worker_prefetch,
        direct_channels(spec),
    );

    let (phases, slices, console_events) = run_slices(env, spec, run, addr, &payload_json).await?;
    // The phase compared, and the one it is divided by.
    let (over, under) = match spec.phases {
        Phases::Sessions => ("session", "host"),
        Phases::Consoles => ("consoles", "host"),
        _ => ("host", "direct"),
    };
    let round_ratios = stats::round_throughput_ratios(&slices, over, under);
    let host_pid = pid_of(&run.host)?;
    let worker_pid = run.worker.as_ref().and_then(Worker::pid);
    let host_peak_rss_kib = procs::peak_rss_kib(host_pid).ok();
    let worker_peak_rss_kib = worker_pid.and_then(|pid| procs::peak_rss_kib(pid).ok());
    let ratios = match phases.as_slice() {
        [host, direct] if spec.phases == Phases::Both => Some(Ratios::new(host, direct)),
        [host, session] if spec.phases == Phases::Sessions => Some(Ratios::new(session, host)),
        [host, consoles] if spec.phases == Phases::Consoles => Some(Ratios::new(consoles, host)),
        _ => None,
    };

    println!();
    print!("{}", stats::table(&phases));
    if let Some(r) = ratios {
        match r.chunks_host_over_direct {
            Some(chunks) => println!(
                "{over}/{under}: chunks/s {chunks:.2}x, requests/s {:.2}x, p99 {:.2}x",
                r.throughput_host_over_direct, r.p99_host_over_direct
            ),
            None => println!(
                "{over}/{under}: throughput {:.2}x, p99 {:.2}x",
                r.throughput_host_over_direct, r.p99_host_over_direct
            ),
        }
    }
    if round_ratios.len() > 1 {
        let lowest = round_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = round_ratios
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  per-round throughput ratio: {lowest:.2}–{highest:.2} over {} rounds",
            round_ratios.len()
        );
    }
    let kib =
        |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
    let worker_rss = match spec.worker {
        WorkerKind::Builtin => "- (built in)".to_owned(),
        _ => kib(worker_peak_rss_kib),
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
    if let (Some(events), Some(p)) = (
        console_events,
        phases.iter().find(|p| p.phase == "consoles"),
    ) {
        println!(
            "consoles: {} streams open during phase consoles received {events} overview events ({:.2} per stream and measured second)",
            spec.consoles,
            events as f64 / f64::from(spec.consoles.max(1)) / p.seconds.max(f64::MIN_POSITIVE)
        );
    }
    let missing_acks: u64 = phases.iter().map(|p| p.missing_acks).sum();
    if missing_acks > 0 {
        println!(
            "warning: {missing_acks} responses arrived before their ack (protocol §1 violation; finals counted as errors)"
        );
    }
    println!();
    Ok(CaseReport {
        config: spec.clone(),
        payload_bytes: payload_json.len(),
        cpus,
        phases,
        ratios,
        round_throughput_ratios: round_ratios,
        slices,
        host_peak_rss_kib,
        worker_peak_rss_kib,
        console_events,
    })
}

/// Opens the connections of the phases to run, runs the slices of the schedule on them,
/// then closes them; returns each phase's totals, every slice's summary and, with phase
/// consoles, the overview events its consoles received.
async fn run_slices(
    env: &Env,
    cli: &CaseSpec,
    run: &mut Run,
    addr: SocketAddr,
    payload_json: &Arc<str>,
) -> anyhow::Result<(Vec<PhaseReport>, Vec<SliceSummary>, Option<u64>)> {
    let wanted: &[Phase] = match cli.phases {
        Phases::Both => &[Phase::Host, Phase::Direct],
        Phases::Host => &[Phase::Host],
        Phases::Direct => &[Phase::Direct],
        Phases::Sessions => &[Phase::Host, Phase::Session],
        Phases::Consoles => &[Phase::Host, Phase::Console],
    };
    // Connections are set up once, before any clock starts: set-up is not what we measure.
    let mut host_conns = if wanted.contains(&Phase::Host) {
        host_load::connect_all(addr, cli.connections as usize, false).await?
    } else {
        Vec::new()
    };
    let mut session_conns = if wanted.contains(&Phase::Session) {
        host_load::connect_all(addr, cli.connections as usize, true).await?
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
    let mut session_totals = PhaseTotals::new()?;
    let mut console_totals = PhaseTotals::new()?;
    let mut console_events = None;
    let mut summaries = Vec::new();
    let plan = schedule::slices(wanted, cli.rounds, secs(cli.duration_s), secs(cli.warmup_s));
    for slice in plan {
        let window = Window::after(slice.warmup, slice.duration);
        let (stats, seconds) = match slice.phase {
            Phase::Host | Phase::Session | Phase::Console => {
                // Phase consoles is phase host's load on the same connections, with
                // consoles watching: opened before the slice's warm-up, closed after it.
                let (conns, totals) = match slice.phase {
                    Phase::Session => (&mut session_conns, &mut session_totals),
                    Phase::Console => (&mut host_conns, &mut console_totals),
                    _ => (&mut host_conns, &mut host_totals),
                };
                let consoles = if slice.phase == Phase::Console {
                    Some(Consoles::open(addr, cli.consoles).await?)
                } else {
                    None
                };
                let tasks = std::mem::take(conns)
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
                let hooks = (env.at_window_start.as_deref(), env.at_window_end.as_deref());
                let (done, stats, seconds, cpu) =
                    measure(slice.phase.name(), run, window, tasks, hooks).await?;
                *conns = done;
                totals.add(&stats, seconds, &cpu);
                if let Some(consoles) = consoles {
                    let events = consoles.close().await?;
                    console_events = Some(console_events.unwrap_or(0) + events);
                }
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
                let (loops, stats, seconds, cpu) =
                    measure("direct", run, window, tasks, (None, None)).await?;
                side.loops = loops;
                direct_totals.add(&stats, seconds, &cpu);
                (stats, seconds)
            }
        };
        let summary = SliceSummary::new(slice.phase.name(), slice.round, seconds, &stats);
        print_slice(&slice, &summary);
        summaries.push(summary);
    }
    for conn in host_conns.into_iter().chain(session_conns) {
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
            Phase::Session => session_totals.report("session"),
            Phase::Console => console_totals.report("consoles"),
        });
    }
    Ok((reports, summaries, console_events))
}

fn print_slice(slice: &Slice, summary: &SliceSummary) {
    println!(
        "round {} {:<8} {:>6.0} req/s, p99 {:.2} ms",
        slice.round, summary.phase, summary.requests_per_second, summary.p99_ms
    );
}

/// Phase direct's AMQP connection and closed loops, kept across its slices.
struct DirectSide {
    connection: amqprs::connection::Connection,
    loops: Vec<DirectLoop>,
    target: Target,
}

impl DirectSide {
    async fn open(cli: &CaseSpec, run: &Run, payload_json: &Arc<str>) -> anyhow::Result<Self> {
        let connection = direct_load::connect(&run.amqp_url).await?;
        let shares = in_flight_shares(cli.connections, cli.in_flight, direct_channels(cli));
        let mut loops = Vec::with_capacity(shares.len());
        for (i, in_flight) in shares.into_iter().enumerate() {
            let reply_queue = if cli.direct_reply_to {
                direct_load::DIRECT_REPLY_TO.to_owned()
            } else {
                format!("taskgate.bench.reply.{}.{i}", uuid::Uuid::new_v4())
            };
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
        let _ = self.connection.close().await;
    }
}

/// Channels (each with its own reply queue) of phase direct: `--direct-channels`, at most
/// one per request in flight.
fn direct_channels(cli: &CaseSpec) -> u32 {
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
pub(crate) async fn measure<T>(
    phase: &'static str,
    run: &mut Run,
    window: Window,
    tasks: Vec<JoinHandle<anyhow::Result<(T, TaskStats)>>>,
    (at_start, at_end): (Option<&str>, Option<&str>),
) -> anyhow::Result<(Vec<T>, TaskStats, f64, CpuSeconds)> {
    let ticks = procs::clock_ticks_per_second();
    let (host, bench) = (pid_of(&run.host)?, std::process::id());
    let worker = run.worker.as_ref().and_then(Worker::pid);
    let broker = procs::find_pid_by_comm(BROKER_COMM);
    let sample = || -> anyhow::Result<CpuSeconds> {
        Ok(CpuSeconds {
            host: procs::cpu_seconds(host, ticks)?,
            host_context_switches: procs::context_switches(host)? as f64,
            worker: match worker {
                Some(pid) => Some(procs::cpu_seconds(pid, ticks)?),
                None => None,
            },
            bench: procs::cpu_seconds(bench, ticks)?,
            broker: broker.and_then(|pid| procs::cpu_seconds(pid, ticks).ok()),
        })
    };
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.start)).await;
    run_hook(at_start, host).await;
    let before = sample()?;
    let started = Instant::now();
    tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
    let after = sample()?;
    run_hook(at_end, host).await;
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
    if let Some(Worker::Process(worker)) = &mut run.worker {
        worker.check_alive()?;
    }
    if let Some(e) = failure {
        return Err(e.context(format!("phase {phase}")));
    }
    let used = CpuSeconds {
        host: after.host - before.host,
        host_context_switches: after.host_context_switches - before.host_context_switches,
        worker: after.worker.zip(before.worker).map(|(a, b)| a - b),
        bench: after.bench - before.bench,
        broker: after.broker.zip(before.broker).map(|(a, b)| a - b),
    };
    Ok((handed_back, total, seconds, used))
}

/// Runs a `--at-window-*` command with `{pid}` replaced; failures are reported, not fatal.
async fn run_hook(command: Option<&str>, host_pid: u32) {
    let Some(command) = command else { return };
    let command = command.replace("{pid}", &host_pid.to_string());
    match tokio::process::Command::new("sh")
        .args(["-c", &command])
        .stdout(std::process::Stdio::null())
        .status()
        .await
    {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("taskgate-bench: `{command}` exited with {status}"),
        Err(e) => eprintln!("taskgate-bench: cannot run `{command}`: {e}"),
    }
}

pub(crate) async fn cleanup(run: Run) {
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
    let connection = direct_load::connect_lapin(url).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "benchmark done".into()).await;
    Ok(())
}

pub(crate) fn pid_of(process: &Option<Process>) -> anyhow::Result<u32> {
    process
        .as_ref()
        .map(Process::pid)
        .ok_or_else(|| anyhow!("process not started"))
}

pub(crate) fn secs(s: f64) -> Duration {
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

fn plugins_toml(
    amqp_url: &str,
    plugins_dir: &Path,
    queue: &str,
    queue_type: QueueType,
    console: bool,
    extra_limits: &str,
) -> String {
    // TOML basic strings are JSON-compatible for what we put in them.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    // Without arguments the host declares a quorum queue (its default).
    let queue_arguments = match queue_type {
        QueueType::Quorum => "",
        QueueType::Classic => "queue_arguments = { \"x-queue-type\" = \"classic\" }\n",
    };
    // `--phases consoles` runs both of its phases with the console on, so that the only
    // difference between them is the clients watching its live stream. Without `[auth]`
    // the console answers loopback connections only, which is where the benchmark is.
    let console_section = if console {
        "[console]\nenabled = true\n\n"
    } else {
        ""
    };
    // The per-connection rate and in-flight limits are off: the benchmark measures the
    // relay, and its closed loop keeps more requests going than a browser would.
    format!(
        "[host]\nlisten = \"127.0.0.1:0\"\namqp_url = {}\nplugins_dir = {}\n\n\
         [limits]\nrequests_per_second = 0\nmax_in_flight = 0\n{extra_limits}\n{console_section}\
         [plugins.echo]\nenabled = true\nqueue = {}\ntimeout_ms = {TIMEOUT_MS}\n{queue_arguments}",
        quote(amqp_url),
        quote(&plugins_dir.display().to_string()),
        quote(queue),
    )
}

/// A JSON object `{"pad":"aaa…"}` of exactly `bytes` bytes (or the smallest one); with
/// `chunks` > 0 it starts with `"chunks":n,"chunkBytes":b,`, which asks the echo workers
/// to stream.
pub fn payload_of_size(bytes: usize, chunks: u32, chunk_bytes: usize) -> String {
    let steering = if chunks > 0 {
        format!(r#""chunks":{chunks},"chunkBytes":{chunk_bytes},"#)
    } else {
        String::new()
    };
    let empty = format!(r#"{{{steering}"pad":""}}"#).len();
    let pad = "a".repeat(bytes.saturating_sub(empty));
    format!(r#"{{{steering}"pad":"{pad}"}}"#)
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
            let p = payload_of_size(size, 0, 0);
            assert_eq!(p.len(), size.max(10));
            let v: serde_json::Value = serde_json::from_str(&p).unwrap();
            assert!(v["pad"].is_string());
        }
    }

    #[test]
    fn streaming_payloads_ask_for_chunks() {
        let p = payload_of_size(100, 20, 100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(
            (v["chunks"].as_u64(), v["chunkBytes"].as_u64()),
            (Some(20), Some(100))
        );
        // Too small a size gives the smallest such payload.
        let p = payload_of_size(0, 3, 7);
        assert_eq!(p, r#"{"chunks":3,"chunkBytes":7,"pad":""}"#);
    }

    #[test]
    fn plugins_toml_names_the_queue_and_plugins_dir() {
        let text = plugins_toml(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            Path::new("/work/build/plugins"),
            "bench.1.echo",
            QueueType::Quorum,
            false,
            "",
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
        assert!(value["plugins"]["echo"].get("queue_arguments").is_none());
        assert!(value.get("console").is_none());
    }

    #[test]
    fn plugins_toml_turns_the_console_on_for_the_consoles_phases() {
        let text = plugins_toml(
            "amqp://x",
            Path::new("/p"),
            "q",
            QueueType::Quorum,
            true,
            "",
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["console"]["enabled"].as_bool(), Some(true));
        // The rest of the file is unchanged by it.
        assert_eq!(value["plugins"]["echo"]["queue"].as_str(), Some("q"));
        assert_eq!(value["limits"]["max_in_flight"].as_integer(), Some(0));
    }

    #[test]
    fn plugins_toml_takes_extra_limits() {
        let extra = "max_connections = 101074\nmax_pending_connections = 2048\n";
        let text = plugins_toml(
            "amqp://x",
            Path::new("/p"),
            "q",
            QueueType::Quorum,
            false,
            extra,
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["limits"]["max_connections"].as_integer(),
            Some(101_074)
        );
        assert_eq!(
            value["limits"]["max_pending_connections"].as_integer(),
            Some(2048)
        );
        assert_eq!(value["limits"]["max_in_flight"].as_integer(), Some(0));
        assert_eq!(value["plugins"]["echo"]["queue"].as_str(), Some("q"));
    }

    #[test]
    fn plugins_toml_asks_for_a_classic_queue() {
        let text = plugins_toml(
            "amqp://x",
            Path::new("/p"),
            "q",
            QueueType::Classic,
            false,
            "",
        );
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            value["plugins"]["echo"]["queue_arguments"]["x-queue-type"].as_str(),
            Some("classic")
        );
    }
}
