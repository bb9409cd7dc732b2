//! `taskgate-bench`: how much the taskgate host costs on top of RabbitMQ and a worker.
//!
//! One case (`taskgate-bench [options]`) starts a real host (release binary, temporary
//! plugins.toml with a unique queue) and ONE worker, then runs two closed-loop phases with
//! the same shape — C connections × K echo requests in flight, a payload of N bytes,
//! optionally N streamed chunks per request, warm-up excluded:
//!
//! - **host**: Socket.IO clients → host → RabbitMQ → worker → RabbitMQ → host → clients;
//! - **direct**: AMQP clients → RabbitMQ → worker → RabbitMQ → clients (what the host adds is
//!   the difference).
//!
//! The phases run in alternating slices (host, direct, direct, host …; see `schedule`) so
//! that both meet the same background load on this shared machine.
//!
//! `taskgate-bench suite` runs the whole set (100 B, 10 KB, 1 MB, streaming, and 10,000
//! idle connections), each case on a fresh host; `taskgate-bench idle` only the last;
//! `taskgate-bench idle-100k` holds 100,000 of them and runs an echo load beside them (C100K).
//! Everything runs on 127.0.0.1 and stops by itself. See bench/README.md.

mod builtin_worker;
mod c100k;
mod case;
mod console_watch;
mod direct_load;
mod echo_worker;
mod host_load;
mod idle;
mod procs;
mod schedule;
mod sio;
mod stats;
mod suite;
mod task_store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::case::{CaseSpec, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// The project's Rust example worker (`taskgate-example-workers --only echo`), a separate process.
    Example,
    /// This binary's `echo-worker`: the Rust worker SDK answering echo, with chunks padded
    /// to `--chunk-bytes` (a separate process).
    Sdk,
    /// A trivial lapin echo consumer inside this process (fallback; no worker CPU column).
    Builtin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phases {
    Both,
    Host,
    Direct,
    /// Through the host twice: plain connections (phase host) against connections that
    /// asked for a session (phase session), A/B on one host.
    Sessions,
    /// Through the host twice, with its console on: no one watching (phase host) against
    /// `--consoles` clients holding the console's live stream open (phase consoles).
    Consoles,
}

/// The type of the request queue the host declares (`x-queue-type` in plugins.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// The host's default: counts deliveries, so it can dead-letter (README, "When workers fail").
    Quorum,
    Classic,
}

/// Closed-loop echo benchmark: through the taskgate host vs. straight over AMQP.
#[derive(Debug, Parser)]
#[command(
    name = "taskgate-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    case: CaseArgs,
    #[command(flatten)]
    env: EnvArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole benchmark: 100 B, 10 KB and 1 MB echo, streaming, and idle connections,
    /// each on a fresh host; one table per case, a summary, and (with --json) one file.
    Suite(SuiteArgs),
    /// Only the idle-connections case: host memory per connected WebSocket.
    Idle(IdleArgs),
    /// C100K (issue 17): 100,000 idle connections on one host, their handshake rate, memory
    /// and pings, and an echo load's tail with and without them.
    #[command(name = "idle-100k")]
    Idle100k(Idle100kArgs),
    /// The engine candidates of the shared task store (Redis streams, a RabbitMQ stream
    /// queue): appends/s of task chunks and the latency to a live reader.
    TaskStore(TaskStoreCommand),
    /// (internal) Holds idle Socket.IO connections for `idle`; exits when stdin closes.
    #[command(hide = true)]
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u64,
        /// Local addresses the connections are made from, in turn.
        #[arg(long, value_delimiter = ',')]
        sources: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = idle::CONNECT_CONCURRENCY)]
        concurrency: usize,
    },
    /// (internal) The SDK echo worker of `--worker sdk`.
    #[command(hide = true)]
    EchoWorker {
        #[arg(long)]
        amqp_url: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 32)]
        prefetch: u16,
    },
}

/// Where things are (shared by every command).
#[derive(Debug, Clone, Args)]
pub struct EnvArgs {
    /// RabbitMQ URL (used by the host, the worker and phase direct); must be on this machine.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The host binary [default: `taskgate` next to this binary].
    #[arg(long)]
    pub host_bin: Option<PathBuf>,
    /// The example worker binary [default: `taskgate-example-workers` next to this binary].
    #[arg(long)]
    pub worker_bin: Option<PathBuf>,
    /// Directory of the plugins the host loads [default: <repo>/build/plugins].
    #[arg(long)]
    pub plugins_dir: Option<PathBuf>,
    /// Runs the host under this command, e.g. `valgrind --tool=callgrind` (words split on
    /// spaces; for profiling — the CPU column is then the wrapper's).
    #[arg(long)]
    pub host_wrapper: Option<String>,
    /// Runs this shell command when a measured window of phase host opens, `{pid}`
    /// replaced by the host's pid (e.g. `callgrind_control -z {pid}` to count only the
    /// window's instructions).
    #[arg(long)]
    pub at_window_start: Option<String>,
    /// Like `--at-window-start`, when the window closes (e.g. `callgrind_control -d {pid}`).
    #[arg(long)]
    pub at_window_end: Option<String>,
}

/// One closed-loop case.
#[derive(Debug, Clone, Args)]
struct CaseArgs {
    /// Socket.IO connections in phase host (phase direct keeps the same C × K requests in flight).
    #[arg(long, short = 'c', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Requests in flight per connection.
    #[arg(long, short = 'k', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    in_flight: u32,
    /// Size of the JSON payload of each request, in bytes (at least 10: `{"pad":""}`).
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Chunks the worker streams before each result (0: plain request/response).
    #[arg(long, default_value_t = 0)]
    chunks: u32,
    /// Size of each chunk in bytes (`--worker sdk` only; the example worker's are ~12 B).
    #[arg(long, default_value_t = 100)]
    chunk_bytes: usize,
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
    /// Which phases to run (`sessions`: host without vs. with sessions; `consoles`: host
    /// without vs. with `--consoles` open consoles).
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    phases: Phases,
    /// The type of the request queue (a fresh one per run, so either type can be declared).
    #[arg(long, value_enum, default_value_t = QueueType::Quorum)]
    queue_type: QueueType,
    /// Which echo worker answers the requests (the same one in both phases).
    #[arg(long, value_enum, default_value_t = WorkerKind::Example)]
    worker: WorkerKind,
    /// AMQP channels (each with its own reply queue and closed loop) in phase direct; the
    /// C × K requests in flight are spread over them. The default, 1, mirrors the host, which
    /// publishes on one channel and reads one reply queue; `--direct-channels C` gives every
    /// connection its own (slower: RabbitMQ pays per queue and channel).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    direct_channels: u32,
    /// Phase direct gets its replies through RabbitMQ's Direct Reply-to
    /// (`amq.rabbitmq.reply-to`) instead of a reply queue, to compare the two.
    #[arg(long)]
    direct_reply_to: bool,
    /// The worker's `--prefetch` (requests it handles at once).
    #[arg(long, default_value_t = 32)]
    worker_prefetch: u16,
    /// Clients holding the console's live stream open in phase consoles (`--phases consoles`).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    consoles: u32,
}

#[derive(Debug, Clone, Args)]
struct SuiteArgs {
    #[command(flatten)]
    env: EnvArgs,
    /// Write every case's results as one JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Measured seconds per phase and case.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Idle connections of the idle case.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: u64,
    /// A tiny run of every case (a few seconds in all), for smoke tests.
    #[arg(long)]
    quick: bool,
}

#[derive(Debug, Clone, Args)]
struct TaskStoreCommand {
    #[command(flatten)]
    env: EnvArgs,
    #[command(flatten)]
    args: task_store::TaskStoreArgs,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct IdleArgs {
    #[command(flatten)]
    env: EnvArgs,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct Idle100kArgs {
    #[command(flatten)]
    env: EnvArgs,
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 100_000)]
    connections: u64,
    /// Child processes the idle connections are split over.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    client_processes: u32,
    /// Loopback source addresses (127.0.1.1 …) the connections are spread over.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    sources: u32,
    /// Handshakes in progress at once per client process.
    #[arg(long, default_value_t = idle::CONNECT_CONCURRENCY)]
    concurrency: usize,
    /// Connections of the echo load run alone and with the idle connections.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    echo_connections: u32,
    /// Echo requests in flight per connection.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    in_flight: u32,
    /// Measured seconds of each echo slice (two alone, two with the idle connections).
    #[arg(long, default_value_t = 5.0)]
    slice: f64,
    /// Seconds of echo load before the first slice is measured.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds after the last connection opened before the pings are counted (at least the
    /// host's ping interval, 25 s).
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
    /// 2,000 connections, one-second slices, pings not waited for (smoke tests).
    #[arg(long)]
    quick: bool,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::EchoWorker {
            amqp_url,
            queue,
            prefetch,
        }) => echo_worker::serve(amqp_url, queue, prefetch).await,
        Some(Command::IdleClients {
            addr,
            connections,
            sources,
            concurrency,
        }) => {
            idle::clients(idle::ClientArgs {
                addr,
                connections,
                sources,
                concurrency,
            })
            .await
        }
        Some(Command::Suite(args)) => suite_command(args).await,
        Some(Command::Idle(args)) => idle_command(args).await,
        Some(Command::Idle100k(args)) => idle_100k_command(args).await,
        Some(Command::TaskStore(command)) => {
            match task_store::run(&command.env.amqp_url, &command.args).await {
                Ok(reports) => match &command.json {
                    Some(path) => write_json(path, &reports),
                    None => Ok(()),
                },
                Err(e) => Err(e),
            }
        }
        None => case_command(cli.case, cli.env).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn case_command(args: CaseArgs, env: EnvArgs) -> anyhow::Result<()> {
    let env = Env::resolve(&env)?;
    let spec = CaseSpec {
        name: "custom".to_owned(),
        connections: args.connections,
        in_flight: args.in_flight,
        payload_bytes: args.payload_bytes,
        chunks: args.chunks,
        chunk_bytes: args.chunk_bytes,
        duration_s: args.duration,
        warmup_s: args.warmup,
        rounds: args.rounds,
        phases: args.phases,
        queue_type: args.queue_type,
        worker: args.worker,
        worker_prefetch: args.worker_prefetch,
        direct_channels: args.direct_channels,
        direct_reply_to: args.direct_reply_to,
        consoles: args.consoles,
    };
    spec.validate()?;
    let report = case::run(&env, &spec).await?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

async fn suite_command(args: SuiteArgs) -> anyhow::Result<()> {
    let env = Env::resolve(&args.env)?;
    raise_fd_limit(args.idle_connections + 1024);
    let report = suite::run(&env, args.duration, args.idle_connections, args.quick).await?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if !report.complete() {
        bail!("some cases failed (see above)");
    }
    Ok(())
}

async fn idle_command(args: IdleArgs) -> anyhow::Result<()> {
    let env = Env::resolve(&args.env)?;
    raise_fd_limit(args.connections + 1024);
    let report = case::run_idle(&env, args.connections).await?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(())
}

async fn idle_100k_command(args: Idle100kArgs) -> anyhow::Result<()> {
    let env = Env::resolve(&args.env)?;
    let mut spec = c100k::C100kSpec {
        connections: args.connections,
        client_processes: args.client_processes,
        sources: args.sources,
        concurrency: args.concurrency,
        echo_connections: args.echo_connections,
        echo_in_flight: args.in_flight,
        slice_s: args.slice,
        warmup_s: args.warmup,
        hold_s: args.hold,
    };
    if args.quick {
        spec = spec.quick();
    }
    let report = c100k::run(&env, &spec).await?;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if let Some(why) = report.ping_problem.as_ref().filter(|_| spec.hold_s > 0.0) {
        bail!("pings: {why}");
    }
    if report.pings.closed > 0 {
        bail!("{} idle connections ended while held", report.pings.closed);
    }
    Ok(())
}

/// Raises this process's open-files limit (inherited by the host and the idle clients it
/// starts) to at least `wanted`, the hard limit too where this process may; says so when
/// it cannot.
fn raise_fd_limit(wanted: u64) {
    if let Err(why) = idle::raise_open_files(wanted) {
        eprintln!("taskgate-bench: {why}");
    }
}

fn write_json(path: &PathBuf, report: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Refuses a broker URL that is not on this machine: the benchmark only loads 127.0.0.1.
pub fn check_local_amqp(url: &str) -> anyhow::Result<()> {
    let after_scheme = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("--amqp-url {url:?} has no scheme"))?;
    let authority = after_scheme.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    match host {
        "127.0.0.1" | "localhost" | "::1" => Ok(()),
        other => bail!("the benchmark only targets this machine; --amqp-url names {other:?}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_local_brokers_are_accepted() {
        for ok in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://localhost",
            "amqp://u:p@[::1]:5672/v",
        ] {
            assert!(check_local_amqp(ok).is_ok(), "{ok}");
        }
        for bad in [
            "amqp://guest:guest@10.0.0.1:5672/%2f",
            "amqp://rabbit",
            "nonsense",
        ] {
            assert!(check_local_amqp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_parses() {
        Cli::try_parse_from(["taskgate-bench", "-c", "10", "-k", "1", "--chunks", "20"]).unwrap();
        let cli = Cli::try_parse_from(["taskgate-bench", "suite", "--quick"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Suite(SuiteArgs { quick: true, .. }))
        ));
        assert!(Cli::try_parse_from(["taskgate-bench", "-c", "10", "suite"]).is_err());
    }

    #[test]
    fn the_idle_100k_case_parses_with_its_defaults() {
        let cli = Cli::try_parse_from(["taskgate-bench", "idle-100k", "--quick"]).unwrap();
        let Some(Command::Idle100k(args)) = cli.command else {
            panic!("not idle-100k")
        };
        assert!(args.quick);
        assert_eq!(
            (args.connections, args.client_processes, args.sources),
            (100_000, 2, 16)
        );
        assert_eq!(args.echo_connections, 50);
        let cli = Cli::try_parse_from([
            "taskgate-bench",
            "idle-clients",
            "--addr",
            "127.0.0.1:1",
            "--connections",
            "3",
            "--sources",
            "127.0.1.1,127.0.1.2",
        ])
        .unwrap();
        let Some(Command::IdleClients { sources, .. }) = cli.command else {
            panic!("not idle-clients")
        };
        assert_eq!(sources.len(), 2);
    }

    #[test]
    fn the_consoles_phases_default_to_ten_consoles() {
        let cli = Cli::try_parse_from(["taskgate-bench", "--phases", "consoles"]).unwrap();
        assert_eq!((cli.case.phases, cli.case.consoles), (Phases::Consoles, 10));
        let cli =
            Cli::try_parse_from(["taskgate-bench", "--phases", "consoles", "--consoles", "3"])
                .unwrap();
        assert_eq!(cli.case.consoles, 3);
        assert!(Cli::try_parse_from(["taskgate-bench", "--consoles", "0"]).is_err());
    }
}
