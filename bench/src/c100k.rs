//! `taskgate-bench idle-100k`: C100K (issue 17). One host holds 100,000 idle Socket.IO
//! WebSockets while 50 other connections carry an echo load; how fast they open, what
//! each costs the host, whether the host's pings all get answered, and what they do to
//! the echo load's tail.
//!
//! On a fresh host (plugins.toml raises `[limits] max_connections` to fit) and worker:
//!
//! 1. the echo load (C × K 100-byte requests, `host_load`) runs a slice alone (**alone**);
//! 2. `--client-processes` children (`idle::Fleet`) open the idle connections at once, each
//!    from the loopback source addresses 127.0.1.1 … in turn (so ephemeral ports do not run
//!    out: each address has its own ~28,000), `--concurrency` handshakes at a time each:
//!    handshakes per second = connections ÷ the wall time of this opening; the host's
//!    `VmRSS` before and three seconds after gives its memory per connection;
//! 3. two slices of the same echo load with them connected (**idle**);
//! 4. the connections are held until `--hold` seconds after the last one opened (one full
//!    engine.io ping interval, 25 s, and some): every connection must have received a ping
//!    and answered every one, and none may have ended;
//! 5. the idle connections close, and a last slice runs alone again (so the A/B order is
//!    alone, idle, idle, alone, and a steady drift of the machine's load cancels).
//!
//! The kernel's settings that bound this (listen backlog, ports, conntrack, open files) are
//! read and reported, and whatever falls short of the run is said before it starts; the
//! benchmark changes none of them. The listen queue's overflows during the opening are
//! read from /proc/net/netstat (machine-wide: other traffic counts too).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;

use crate::case::{self, CaseSpec, Env, Run};
use crate::host_load::{self, HostConnection};
use crate::idle::{self, Fleet, PingCounts};
use crate::procs;
use crate::schedule::REWARM;
use crate::stats::{PhaseReport, PhaseTotals, Ratios, SliceSummary, Window};
use crate::{Phases, QueueType, WorkerKind};

/// The engine.io ping interval the host uses (`transport::PING_INTERVAL`).
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// Connections of `--quick`.
pub const QUICK_CONNECTIONS: u64 = 2_000;
/// Descriptors and connections the host gets beyond the idle and echo connections.
const HOST_HEADROOM: u64 = 1_024;
/// Descriptors the host uses besides client connections (listener, broker, runtime,
/// plugins, logs), with room to spare: measured at ≈ 30.
const HOST_FILES: u64 = 100;
/// Descriptors a client process needs besides its connections.
const CLIENT_FILES: u64 = 64;

/// The targets of issue 17.
pub const TARGET_HANDSHAKES_PER_SECOND: f64 = 10_000.0;
pub const TARGET_KIB_PER_CONNECTION: f64 = 6.0;
pub const TARGET_P99_RATIO: f64 = 1.2;

/// The shape of one run.
#[derive(Debug, Clone, Serialize)]
pub struct C100kSpec {
    pub connections: u64,
    pub client_processes: u32,
    /// Loopback source addresses the connections are spread over.
    pub sources: u32,
    /// Handshakes in progress at once per client process.
    pub concurrency: usize,
    pub echo_connections: u32,
    pub echo_in_flight: u32,
    /// Measured seconds of each echo slice.
    pub slice_s: f64,
    pub warmup_s: f64,
    /// Seconds after the last connection opened before the pings are counted; 0: counted
    /// without waiting, and not required (`--quick`).
    pub hold_s: f64,
}

impl C100kSpec {
    /// `--quick`: a couple of thousand connections, one-second slices, no wait for pings.
    pub fn quick(self) -> Self {
        C100kSpec {
            connections: self.connections.min(QUICK_CONNECTIONS),
            slice_s: 1.0,
            warmup_s: 0.5,
            hold_s: 0.0,
            ..self
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        let ok = |s: f64, max: f64| s.is_finite() && (0.0..=max).contains(&s);
        if !(ok(self.slice_s, 3_600.0) && self.slice_s > 0.0) {
            bail!("--slice must be between 0 and 3600 seconds");
        }
        if !ok(self.warmup_s, 3_600.0) || !ok(self.hold_s, 3_600.0) {
            bail!("--warmup and --hold must be between 0 and 3600 seconds");
        }
        if self.hold_s > 0.0 && self.hold_s < PING_INTERVAL.as_secs_f64() {
            bail!(
                "--hold must be at least the ping interval ({} s) so every connection is pinged, or 0 not to count",
                PING_INTERVAL.as_secs()
            );
        }
        Ok(())
    }

    /// Handshakes in progress at once over all client processes.
    fn concurrent_handshakes(&self) -> u64 {
        u64::from(self.client_processes) * self.concurrency as u64
    }

    /// The `[limits]` lines of the host's plugins.toml: room for every connection, and for
    /// every handshake in progress.
    pub fn host_limits(&self) -> String {
        let connections = self.connections + u64::from(self.echo_connections) + HOST_HEADROOM;
        let pending = (2 * self.concurrent_handshakes()).max(1024);
        format!("max_connections = {connections}\nmax_pending_connections = {pending}\n")
    }

    fn echo_case(&self) -> CaseSpec {
        CaseSpec {
            name: "idle-100k-echo".to_owned(),
            connections: self.echo_connections,
            in_flight: self.echo_in_flight,
            payload_bytes: 100,
            chunks: 0,
            chunk_bytes: 100,
            duration_s: self.slice_s,
            warmup_s: self.warmup_s,
            rounds: 2,
            phases: Phases::Host,
            queue_type: QueueType::Quorum,
            worker: WorkerKind::Example,
            worker_prefetch: 32,
            direct_channels: 1,
            direct_reply_to: false,
            consoles: 0,
        }
    }
}

/// The kernel's settings that bound how many connections one box holds and opens.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Kernel {
    /// `net.core.somaxconn`: the ceiling of any listen backlog.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`: half-open connections per listener.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`: ephemeral ports per source address.
    pub ip_local_port_range: Option<(u64, u64)>,
    /// `net.netfilter.nf_conntrack_max` (absent without connection tracking).
    pub nf_conntrack_max: Option<u64>,
    /// `fs.file-max`: open files machine-wide.
    pub file_max: Option<u64>,
    /// `fs.nr_open`: the ceiling of one process's open-files limit.
    pub nr_open: Option<u64>,
}

impl Kernel {
    pub fn read() -> Self {
        let number =
            |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut it = text.split_whitespace().map(str::parse::<u64>);
                Some((it.next()?.ok()?, it.next()?.ok()?))
            });
        Kernel {
            somaxconn: number("/proc/sys/net/core/somaxconn"),
            tcp_max_syn_backlog: number("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            ip_local_port_range: range,
            nf_conntrack_max: number("/proc/sys/net/netfilter/nf_conntrack_max"),
            file_max: number("/proc/sys/fs/file-max"),
            nr_open: number("/proc/sys/fs/nr_open"),
        }
    }

    /// What falls short of `spec` (both ends of every connection are on this machine).
    pub fn shortfalls(&self, spec: &C100kSpec) -> Vec<String> {
        let mut out = Vec::new();
        let n = spec.connections + u64::from(spec.echo_connections);
        if let Some((low, high)) = self.ip_local_port_range {
            let ports = (high.saturating_sub(low) + 1) * u64::from(spec.sources.max(1));
            if ports < n {
                out.push(format!(
                    "{} source addresses × ports {low}–{high} give {ports} client ports, fewer than {n} connections (--sources, net.ipv4.ip_local_port_range)",
                    spec.sources
                ));
            }
        }
        if let Some(max) = self.nf_conntrack_max {
            if max < n {
                out.push(format!(
                    "net.netfilter.nf_conntrack_max is {max}, below {n} connections: new ones are dropped once the table is full"
                ));
            }
        }
        if let Some(max) = self.file_max {
            // Two descriptors per connection: the client's and the host's.
            if max < 2 * n + 10_000 {
                out.push(format!(
                    "fs.file-max is {max}, below the {} descriptors of both ends",
                    2 * n
                ));
            }
        }
        if let Some(max) = self.nr_open {
            if max < n + HOST_HEADROOM {
                out.push(format!(
                    "fs.nr_open is {max}: no process may hold {n} connections"
                ));
            }
        }
        out
    }
}

/// The listen-queue counters of /proc/net/netstat (machine-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ListenCounters {
    /// Connections completed while the accept queue was full.
    pub overflows: u64,
    /// SYNs and completions dropped at a listener, overflows included.
    pub drops: u64,
}

impl ListenCounters {
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// From the text of /proc/net/netstat: a `TcpExt:` line of names, then one of values.
    pub fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let names: Vec<&str> = lines.next()?.split_whitespace().collect();
        let values: Vec<&str> = lines.next()?.split_whitespace().collect();
        let value = |name: &str| -> Option<u64> {
            let i = names.iter().position(|n| *n == name)?;
            values.get(i)?.parse().ok()
        };
        Some(ListenCounters {
            overflows: value("ListenOverflows")?,
            drops: value("ListenDrops")?,
        })
    }

    fn since(self, before: ListenCounters) -> ListenCounters {
        ListenCounters {
            overflows: self.overflows.saturating_sub(before.overflows),
            drops: self.drops.saturating_sub(before.drops),
        }
    }
}

/// Which targets of issue 17 the run met.
#[derive(Debug, Clone, Serialize)]
pub struct Targets {
    pub handshakes_per_second: bool,
    pub kib_per_connection: bool,
    /// `None` when the pings were not waited for (`--quick`).
    pub pings: Option<bool>,
    pub p99_ratio: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct C100kReport {
    pub spec: C100kSpec,
    pub cpus: usize,
    pub kernel: Kernel,
    pub shortfalls: Vec<String>,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and when it ended.
    pub load_average_start: Option<[f64; 3]>,
    pub load_average_end: Option<[f64; 3]>,
    /// The host's log line about its open-files limit, if it wrote one.
    pub host_open_files_log: Option<String>,
    pub connections: u64,
    pub open_seconds: f64,
    pub handshakes_per_second: f64,
    /// CPU the host used while the connections opened, per handshake.
    pub host_cpu_us_per_handshake: f64,
    /// CPU the client processes used while the connections opened, per handshake.
    pub clients_cpu_us_per_handshake: f64,
    pub listen_queue: Option<ListenCounters>,
    pub host_rss_before_kib: u64,
    pub host_rss_after_kib: u64,
    pub host_peak_rss_kib: u64,
    pub host_kib_per_connection: f64,
    /// How long after the last connection opened the pings were counted.
    pub held_seconds: f64,
    /// The host's CPU while only the idle connections were there (no echo load), in
    /// percent of one core; `None` when that window was too short to say.
    pub host_idle_cpu_percent: Option<f64>,
    pub pings: PingCounts,
    /// Why the pings fall short, or that they were not waited for; `None`: all good.
    pub ping_problem: Option<String>,
    /// Echo phases `alone` and `idle`.
    pub echo: Vec<PhaseReport>,
    /// idle ÷ alone.
    pub echo_ratios: Ratios,
    pub slices: Vec<SliceSummary>,
    pub targets: Targets,
}

/// Runs the case on a fresh host and worker; cleans up whatever happens.
pub async fn run(env: &Env, spec: &C100kSpec) -> anyhow::Result<C100kReport> {
    spec.validate()?;
    let processes = client_processes(spec, rlimit::getrlimit(rlimit::Resource::NOFILE).ok());
    if processes != spec.client_processes {
        println!(
            "idle-100k: {processes} client processes, so that each fits the hard open-files limit"
        );
    }
    let spec = &C100kSpec {
        client_processes: processes,
        ..spec.clone()
    };
    let mut run = Run::new(&env.amqp_url);
    run.extra_limits = spec.host_limits();
    let result = tokio::select! {
        result = run_case(env, spec, &mut run) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    case::cleanup(run).await;
    let report = result?;
    print(&report);
    Ok(report)
}

/// The echo load's slices and their totals.
struct Echo {
    conns: Vec<HostConnection>,
    spec: CaseSpec,
    payload: Arc<str>,
    alone: PhaseTotals,
    idle: PhaseTotals,
    slices: Vec<SliceSummary>,
}

impl Echo {
    /// One slice of the echo load; `with_idle` says which phase it counts for.
    async fn slice(
        &mut self,
        run: &mut Run,
        with_idle: bool,
        round: u32,
        warmup: Duration,
    ) -> anyhow::Result<()> {
        let window = Window::after(warmup, case::secs(self.spec.duration_s));
        let request_type: Arc<str> = case::REQUEST_TYPE.into();
        let tasks = std::mem::take(&mut self.conns)
            .into_iter()
            .map(|conn| {
                tokio::spawn(host_load::run_connection(
                    conn,
                    self.spec.in_flight as usize,
                    Arc::clone(&request_type),
                    Arc::clone(&self.payload),
                    window,
                ))
            })
            .collect();
        let phase = if with_idle { "idle" } else { "alone" };
        let (conns, stats, seconds, cpu) =
            case::measure(phase, run, window, tasks, (None, None)).await?;
        self.conns = conns;
        let totals = if with_idle {
            &mut self.idle
        } else {
            &mut self.alone
        };
        totals.add(&stats, seconds, &cpu);
        let summary = SliceSummary::new(phase, round, seconds, &stats);
        println!(
            "echo {phase:<5} round {round}: {:.0} req/s, p99 {:.2} ms",
            summary.requests_per_second, summary.p99_ms
        );
        self.slices.push(summary);
        Ok(())
    }
}

async fn run_case(env: &Env, spec: &C100kSpec, run: &mut Run) -> anyhow::Result<C100kReport> {
    let kernel = Kernel::read();
    let shortfalls = kernel.shortfalls(spec);
    for why in &shortfalls {
        eprintln!("taskgate-bench idle-100k: warning: {why}");
    }
    let load_average_start = procs::load_average();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let addr = case::start_host(env, run, QueueType::Quorum, false).await?;
    let host_pid = case::pid_of(&run.host)?;
    let host_open_files_log = run.host.as_ref().and_then(|host| {
        host.tail_text()
            .lines()
            .find(|line| line.contains("open-files"))
            .map(str::to_owned)
    });
    if let Some(line) = &host_open_files_log {
        println!("host: {line}");
    }
    // Past its open-files limit the host can accept no more (the clients would wait for
    // handshakes that never come): say so now, with what to do.
    let needed = spec.connections + u64::from(spec.echo_connections) + HOST_FILES;
    if let Some((soft, hard)) = procs::open_files_limit(host_pid) {
        if soft < needed {
            bail!(
                "the host may open {soft} files (hard limit {hard}), fewer than the {needed} that {} connections need: \
                 raise the hard limit (ulimit -Hn, systemd LimitNOFILE=; the host raises it itself where it may, \
                 with CAP_SYS_RESOURCE) or run with --connections {}",
                spec.connections,
                soft.saturating_sub(u64::from(spec.echo_connections) + HOST_FILES)
            );
        }
    }
    let echo_spec = spec.echo_case();
    case::start_worker(env, &echo_spec, run).await?;
    println!(
        "taskgate-bench [idle-100k]: {} idle connections from {} processes over {} source addresses ({} handshakes at a time each); echo C={} K={} 100 B, slices of {} s; cpus={cpus} host={addr}; load average {}",
        spec.connections,
        spec.client_processes,
        spec.sources,
        spec.concurrency,
        spec.echo_connections,
        spec.echo_in_flight,
        spec.slice_s,
        load_text(load_average_start),
    );
    let mut echo = Echo {
        conns: host_load::connect_all(addr, spec.echo_connections as usize, false).await?,
        payload: case::payload_of_size(100, 0, 0).into(),
        spec: echo_spec,
        alone: PhaseTotals::new()?,
        idle: PhaseTotals::new()?,
        slices: Vec::new(),
    };
    let rewarm = case::secs(spec.warmup_s).min(REWARM);
    echo.slice(run, false, 0, case::secs(spec.warmup_s)).await?;

    let sources = idle::loopback_sources(spec.sources);
    let mut fleet = Fleet::start(
        addr,
        &idle::split(spec.connections, spec.client_processes),
        &sources,
        spec.concurrency,
    )
    .await?;
    let outcome = hold_idle(spec, run, &mut echo, &mut fleet, addr, host_pid, rewarm).await;
    fleet.close().await;
    let held = outcome?;
    // The host lets go of the closed connections; then the last slice alone.
    tokio::time::sleep(idle::SETTLE).await;
    echo.slice(run, false, 1, rewarm).await?;
    for conn in std::mem::take(&mut echo.conns) {
        conn.close().await;
    }
    if let Some(host) = &mut run.host {
        host.check_alive()?;
    }

    let alone = echo.alone.report("alone");
    let idle_phase = echo.idle.report("idle");
    let echo_ratios = Ratios::new(&idle_phase, &alone);
    let targets = Targets {
        handshakes_per_second: held.handshakes_per_second >= TARGET_HANDSHAKES_PER_SECOND,
        kib_per_connection: held.host_kib_per_connection <= TARGET_KIB_PER_CONNECTION,
        pings: (spec.hold_s > 0.0).then_some(held.ping_problem.is_none()),
        p99_ratio: echo_ratios.p99_host_over_direct <= TARGET_P99_RATIO,
    };
    Ok(C100kReport {
        spec: spec.clone(),
        cpus,
        kernel,
        shortfalls,
        load_average_start,
        load_average_end: procs::load_average(),
        host_open_files_log,
        connections: held.connections,
        open_seconds: held.open_seconds,
        handshakes_per_second: held.handshakes_per_second,
        host_cpu_us_per_handshake: held.host_cpu_us_per_handshake,
        clients_cpu_us_per_handshake: held.clients_cpu_us_per_handshake,
        listen_queue: held.listen_queue,
        host_rss_before_kib: held.rss_before,
        host_rss_after_kib: held.rss_after,
        host_peak_rss_kib: held.peak,
        host_kib_per_connection: held.host_kib_per_connection,
        held_seconds: held.held_seconds,
        host_idle_cpu_percent: held.host_idle_cpu_percent,
        pings: held.pings,
        ping_problem: held.ping_problem,
        echo: vec![alone, idle_phase],
        echo_ratios,
        slices: echo.slices,
        targets,
    })
}

/// What the idle connections' part of the run measured.
struct Held {
    connections: u64,
    open_seconds: f64,
    handshakes_per_second: f64,
    host_cpu_us_per_handshake: f64,
    clients_cpu_us_per_handshake: f64,
    listen_queue: Option<ListenCounters>,
    rss_before: u64,
    rss_after: u64,
    peak: u64,
    host_kib_per_connection: f64,
    held_seconds: f64,
    host_idle_cpu_percent: Option<f64>,
    pings: PingCounts,
    ping_problem: Option<String>,
}

/// Opens the idle connections, measures, runs the echo slices with them, holds them
/// through a ping interval and counts the pings.
async fn hold_idle(
    spec: &C100kSpec,
    run: &mut Run,
    echo: &mut Echo,
    fleet: &mut Fleet,
    addr: SocketAddr,
    host_pid: u32,
    rewarm: Duration,
) -> anyhow::Result<Held> {
    let ticks = procs::clock_ticks_per_second();
    let clients_cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|pid| procs::cpu_seconds(*pid, ticks).ok())
            .sum()
    };
    let pids = fleet.pids();
    let rss_before = procs::rss_kib(host_pid)?;
    let host_cpu_before = procs::cpu_seconds(host_pid, ticks)?;
    let clients_cpu_before = clients_cpu(&pids);
    let listen_before = ListenCounters::read();
    println!(
        "idle-100k: opening {} connections to {addr} …",
        spec.connections
    );
    let started = Instant::now();
    let connections = fleet.open().await?;
    let open_seconds = started.elapsed().as_secs_f64();
    let last_opened = Instant::now();
    let host_cpu = procs::cpu_seconds(host_pid, ticks)? - host_cpu_before;
    let clients_cpu_used = clients_cpu(&pids) - clients_cpu_before;
    let listen_queue = ListenCounters::read()
        .zip(listen_before)
        .map(|(after, before)| after.since(before));
    let per_handshake = |cpu: f64| cpu * 1e6 / connections.max(1) as f64;
    let handshakes_per_second = connections as f64 / open_seconds.max(f64::MIN_POSITIVE);
    println!(
        "idle-100k: {connections} connected in {open_seconds:.2} s: {handshakes_per_second:.0} handshakes/s; CPU per handshake: host {:.0} µs, clients {:.0} µs; listen queue overflows {}",
        per_handshake(host_cpu),
        per_handshake(clients_cpu_used),
        listen_queue.map_or("?".to_owned(), |l| l.overflows.to_string()),
    );
    tokio::time::sleep(idle::SETTLE).await;
    let rss_after = procs::rss_kib(host_pid)?;
    let peak = procs::peak_rss_kib(host_pid)?;
    let host_kib_per_connection =
        rss_after.saturating_sub(rss_before) as f64 / connections.max(1) as f64;
    println!(
        "idle-100k: host RSS {:.1} → {:.1} MiB: {host_kib_per_connection:.2} KiB per connection",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );

    echo.slice(run, true, 0, rewarm).await?;
    echo.slice(run, true, 1, rewarm).await?;

    // The rest of the ping interval, with nothing but the idle connections.
    let idle_from = Instant::now();
    let idle_cpu_before = procs::cpu_seconds(host_pid, ticks)?;
    let hold_until = last_opened + case::secs(spec.hold_s);
    tokio::time::sleep_until(tokio::time::Instant::from_std(hold_until)).await;
    let idle_seconds = idle_from.elapsed().as_secs_f64();
    let host_idle_cpu_percent = (idle_seconds >= 2.0).then(|| {
        let used = procs::cpu_seconds(host_pid, ticks).unwrap_or(idle_cpu_before) - idle_cpu_before;
        100.0 * used / idle_seconds
    });
    let pings = fleet.pings().await?;
    let held_seconds = last_opened.elapsed().as_secs_f64();
    let ping_problem = if spec.hold_s > 0.0 {
        pings.shortfall(connections)
    } else if pings.closed > 0 {
        Some(format!("{} connections ended while held", pings.closed))
    } else {
        Some(format!(
            "not waited for: held {held_seconds:.0} s, less than the ping interval ({} s)",
            PING_INTERVAL.as_secs()
        ))
    };
    println!(
        "idle-100k: after {held_seconds:.0} s: {} pings received, {} answered, {} of {connections} connections pinged, {} ended{}",
        pings.received,
        pings.answered,
        pings.connections_pinged,
        pings.closed,
        host_idle_cpu_percent.map_or(String::new(), |p| format!(
            "; host CPU with only the idle connections: {p:.1}% of a core"
        )),
    );
    if let Some(host) = &mut run.host {
        host.check_alive()?;
    }
    Ok(Held {
        connections,
        open_seconds,
        handshakes_per_second,
        host_cpu_us_per_handshake: per_handshake(host_cpu),
        clients_cpu_us_per_handshake: per_handshake(clients_cpu_used),
        listen_queue,
        rss_before,
        rss_after,
        peak,
        host_kib_per_connection,
        held_seconds,
        host_idle_cpu_percent,
        pings,
        ping_problem,
    })
}

/// `--client-processes`, or more when one process may not open its share (`limit`: the
/// soft and hard open-files limits the children inherit; each raises its soft limit to
/// the hard one).
fn client_processes(spec: &C100kSpec, limit: Option<(u64, u64)>) -> u32 {
    let Some((_, hard)) = limit else {
        return spec.client_processes;
    };
    let per_process = hard.saturating_sub(CLIENT_FILES).max(1);
    let needed = spec.connections.div_ceil(per_process);
    spec.client_processes
        .max(u32::try_from(needed).unwrap_or(u32::MAX))
}

fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or("?".to_owned(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
}

/// The numbers against the targets.
fn print(report: &C100kReport) {
    let mark = |met: bool| if met { "met" } else { "NOT met" };
    println!();
    print!("{}", crate::stats::table(&report.echo));
    println!(
        "idle-100k: {} connections, load average {} → {}",
        report.connections,
        load_text(report.load_average_start),
        load_text(report.load_average_end)
    );
    println!(
        "  handshakes/s      {:>10.0}   target ≥ {:.0}: {}",
        report.handshakes_per_second,
        TARGET_HANDSHAKES_PER_SECOND,
        mark(report.targets.handshakes_per_second)
    );
    println!(
        "  KiB / connection  {:>10.2}   target ≤ {:.1}: {}",
        report.host_kib_per_connection,
        TARGET_KIB_PER_CONNECTION,
        mark(report.targets.kib_per_connection)
    );
    println!(
        "  pings             {:>10}   every connection pinged, all answered, none ended: {}",
        report.pings.received,
        match (report.targets.pings, &report.ping_problem) {
            (Some(true), _) => "met".to_owned(),
            (_, Some(why)) => why.clone(),
            (_, None) => "?".to_owned(),
        }
    );
    println!(
        "  echo p99 idle ÷ alone {:>6.2}   target ≤ {:.1}: {} (throughput {:.2}x)",
        report.echo_ratios.p99_host_over_direct,
        TARGET_P99_RATIO,
        mark(report.targets.p99_ratio),
        report.echo_ratios.throughput_host_over_direct
    );
    println!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> C100kSpec {
        C100kSpec {
            connections: 100_000,
            client_processes: 2,
            sources: 16,
            concurrency: 256,
            echo_connections: 50,
            echo_in_flight: 4,
            slice_s: 5.0,
            warmup_s: 2.0,
            hold_s: 30.0,
        }
    }

    #[test]
    fn the_host_gets_room_for_every_connection_and_handshake() {
        let limits: toml::Value = toml::from_str(&spec().host_limits()).unwrap();
        assert_eq!(
            limits["max_connections"].as_integer(),
            Some(100_000 + 50 + 1_024)
        );
        assert_eq!(limits["max_pending_connections"].as_integer(), Some(1024));
        let many = C100kSpec {
            client_processes: 8,
            ..spec()
        };
        let limits: toml::Value = toml::from_str(&many.host_limits()).unwrap();
        assert_eq!(limits["max_pending_connections"].as_integer(), Some(4096));
    }

    #[test]
    fn more_client_processes_when_one_may_not_hold_its_share() {
        assert_eq!(client_processes(&spec(), Some((1024, 1_048_576))), 2);
        assert_eq!(client_processes(&spec(), None), 2);
        // 100,000 under a hard limit of 20,000: 20,000 − 64 each, six processes.
        assert_eq!(client_processes(&spec(), Some((1024, 20_000))), 6);
    }

    #[test]
    fn quick_is_small_and_does_not_wait_for_pings() {
        let quick = spec().quick();
        assert_eq!(quick.connections, QUICK_CONNECTIONS);
        assert_eq!(quick.hold_s, 0.0);
        assert!(quick.slice_s <= 1.0);
        assert!(quick.validate().is_ok());
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn a_hold_shorter_than_the_ping_interval_is_refused() {
        let short = C100kSpec {
            hold_s: 10.0,
            ..spec()
        };
        assert!(short.validate().is_err());
        for bad in [f64::NAN, -1.0, 0.0] {
            let s = C100kSpec {
                slice_s: bad,
                ..spec()
            };
            assert!(s.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_settings_short_of_the_run_are_named() {
        let roomy = Kernel {
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(2048),
            ip_local_port_range: Some((32_768, 60_999)),
            nf_conntrack_max: Some(262_144),
            file_max: Some(2_466_246),
            nr_open: Some(1_048_576),
        };
        assert!(roomy.shortfalls(&spec()).is_empty());
        let one_source = C100kSpec {
            sources: 1,
            ..spec()
        };
        let why = roomy.shortfalls(&one_source);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("28232 client ports"), "{why:?}");
        let tight = Kernel {
            nf_conntrack_max: Some(65_536),
            file_max: Some(100_000),
            nr_open: Some(65_536),
            ..roomy
        };
        let why = tight.shortfalls(&spec()).join("\n");
        assert!(why.contains("nf_conntrack_max"), "{why}");
        assert!(why.contains("fs.file-max"), "{why}");
        assert!(why.contains("fs.nr_open"), "{why}");
    }

    #[test]
    fn listen_queue_counters_are_read_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 12 15 99\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let counters = ListenCounters::parse(text).unwrap();
        assert_eq!(
            counters,
            ListenCounters {
                overflows: 12,
                drops: 15
            }
        );
        let later = ListenCounters {
            overflows: 20,
            drops: 30,
        };
        assert_eq!(later.since(counters).overflows, 8);
        assert_eq!(ListenCounters::parse("IpExt: a\nIpExt: 1\n"), None);
    }
}
