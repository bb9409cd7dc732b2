//! Idle connections: how much host memory one connected, idle Socket.IO WebSocket costs,
//! and the client processes that hold them (for `idle` and `idle-100k`).
//!
//! The clients live in child processes (`taskgate-bench idle-clients`, this same binary),
//! so their memory and file descriptors are not the host's nor this process's, and so that
//! 100,000 of them can be spread over several processes (each with its own runtime and
//! open-files limit). A child raises its open-files limit, says `ready`, and then follows
//! the commands on its stdin, one a line:
//!
//! - `open`: opens its connections (`--concurrency` handshakes at a time, each from the
//!   next of `--sources` in turn, bound before connecting so that ephemeral ports last),
//!   answers every engine.io ping from then on, and says `connected N` (or `failed …`);
//! - `pings`: says `pings <received> <answered> <connections pinged> <closed>`, the
//!   engine.io pings its connections received and answered so far, how many connections
//!   received at least one, and how many ended (the host closed them, or they broke);
//! - end of input: closes everything and exits.
//!
//! `idle` reads the host's resident memory (`VmRSS`) before and after: the difference
//! divided by the connections is the cost of one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::future::try_join_all;
use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::procs;
use crate::sio::{self, Incoming};

/// Handshakes in progress at once in one child (the host closes connections past its
/// `max_pending_connections`, 1,024 by default, that have not sent their request head).
pub const CONNECT_CONCURRENCY: usize = 256;
/// How long the children may take to open all connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a child may take to start and raise its limits.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to answer `pings`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between the last connection and the memory reading, so the host's tasks for
/// each connection have run and settled.
pub const SETTLE: Duration = Duration::from_secs(3);
/// Descriptors a child needs beyond its connections.
const CHILD_HEADROOM: u64 = 64;

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub connections: u64,
    pub host_rss_before_kib: u64,
    pub host_rss_after_kib: u64,
    pub host_peak_rss_kib: u64,
    /// (after − before) ÷ connections.
    pub host_kib_per_connection: f64,
    pub connect_seconds: f64,
}

impl IdleReport {
    pub fn print(&self) {
        println!(
            "idle: {} connections in {:.1} s; host RSS {:.1} → {:.1} MiB (peak {:.1} MiB): {:.1} KiB per connection",
            self.connections,
            self.connect_seconds,
            self.host_rss_before_kib as f64 / 1024.0,
            self.host_rss_after_kib as f64 / 1024.0,
            self.host_peak_rss_kib as f64 / 1024.0,
            self.host_kib_per_connection
        );
    }
}

/// Measures the host `host_pid` listening on `addr` with `connections` idle connections
/// held by one child process.
pub async fn measure(
    addr: SocketAddr,
    host_pid: u32,
    connections: u64,
) -> anyhow::Result<IdleReport> {
    let before = procs::rss_kib(host_pid)?;
    let mut fleet = Fleet::start(addr, &split(connections, 1), &[], CONNECT_CONCURRENCY).await?;
    let started = Instant::now();
    let connected = fleet.open().await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = match connected {
        Ok(n) => n,
        Err(e) => {
            fleet.close().await;
            return Err(e);
        }
    };
    tokio::time::sleep(SETTLE).await;
    let after = procs::rss_kib(host_pid)?;
    let peak = procs::peak_rss_kib(host_pid)?;
    fleet.close().await;
    Ok(IdleReport {
        connections: connected,
        host_rss_before_kib: before,
        host_rss_after_kib: after,
        host_peak_rss_kib: peak,
        host_kib_per_connection: after.saturating_sub(before) as f64 / connected.max(1) as f64,
        connect_seconds,
    })
}

/// `count` loopback source addresses, 127.0.1.1, 127.0.1.2, … (the whole of 127.0.0.0/8
/// reaches the loopback interface; each address has its own ephemeral ports).
pub fn loopback_sources(count: u32) -> Vec<IpAddr> {
    (0..count)
        .map(|i| {
            let n = 256 + 1 + i;
            IpAddr::V4(Ipv4Addr::new(127, (n >> 16) as u8, (n >> 8) as u8, n as u8))
        })
        .collect()
}

/// `total` split into `parts` shares as even as possible (larger ones first).
pub fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// What the clients saw of the host's engine.io heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PingCounts {
    pub received: u64,
    pub answered: u64,
    /// Connections that received at least one ping.
    pub connections_pinged: u64,
    /// Connections that ended while held (closed by the host or broken).
    pub closed: u64,
}

impl PingCounts {
    fn line(&self) -> String {
        format!(
            "pings {} {} {} {}",
            self.received, self.answered, self.connections_pinged, self.closed
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut numbers = line.strip_prefix("pings ")?.split(' ').map(str::parse);
        let mut next = || numbers.next()?.ok();
        Some(PingCounts {
            received: next()?,
            answered: next()?,
            connections_pinged: next()?,
            closed: next()?,
        })
    }

    fn add(&mut self, other: &PingCounts) {
        self.received += other.received;
        self.answered += other.answered;
        self.connections_pinged += other.connections_pinged;
        self.closed += other.closed;
    }

    /// Why these counts are not "every one of `connections` was pinged, and every ping was
    /// answered, and none was lost", if they are not.
    pub fn shortfall(&self, connections: u64) -> Option<String> {
        let mut why = Vec::new();
        if self.closed > 0 {
            why.push(format!("{} connections ended while held", self.closed));
        }
        if self.connections_pinged < connections {
            why.push(format!(
                "{} of {connections} connections received no ping",
                connections - self.connections_pinged.min(connections)
            ));
        }
        if self.answered < self.received {
            why.push(format!(
                "{} of {} pings were not answered",
                self.received - self.answered,
                self.received
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// One child process holding connections.
struct ClientProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ClientProcess {
    async fn command(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .with_context(|| format!("telling the idle clients to {command}"))
    }

    /// The next line that starts with one of `prefixes`.
    async fn answer(&mut self, prefixes: &[&str]) -> anyhow::Result<String> {
        while let Some(line) = self.lines.next_line().await? {
            if prefixes.iter().any(|p| line.starts_with(p)) {
                return Ok(line);
            }
        }
        bail!("the idle clients exited")
    }
}

/// The child processes that hold the idle connections.
pub struct Fleet {
    clients: Vec<ClientProcess>,
}

impl Fleet {
    /// Starts one child per entry of `shares` (its number of connections), each connecting
    /// from `sources` in turn (the default address when empty), and waits until all are
    /// ready.
    pub async fn start(
        addr: SocketAddr,
        shares: &[u64],
        sources: &[IpAddr],
        concurrency: usize,
    ) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let sources = sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut fleet = Fleet {
            clients: Vec::new(),
        };
        for &connections in shares {
            let mut command = Command::new(&exe);
            command.args([
                "idle-clients",
                "--addr",
                &addr.to_string(),
                "--connections",
                &connections.to_string(),
                "--concurrency",
                &concurrency.to_string(),
            ]);
            if !sources.is_empty() {
                command.args(["--sources", &sources]);
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting the idle clients")?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take();
            let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
                bail!("idle clients: no stdin or stdout pipe");
            };
            fleet.clients.push(ClientProcess {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        let ready = try_join_all(
            fleet
                .clients
                .iter_mut()
                .map(|client| client.answer(&["ready"])),
        );
        match tokio::time::timeout(READY_TIMEOUT, ready).await {
            Ok(Ok(_)) => Ok(fleet),
            Ok(Err(e)) => {
                fleet.close().await;
                Err(e.context("starting the idle clients"))
            }
            Err(_) => {
                fleet.close().await;
                bail!("the idle clients were not ready within {READY_TIMEOUT:?}")
            }
        }
    }

    /// The children's process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.clients
            .iter()
            .filter_map(|client| client.child.id())
            .collect()
    }

    /// Opens every child's connections at once; returns how many are connected.
    pub async fn open(&mut self) -> anyhow::Result<u64> {
        for client in &mut self.clients {
            client.command("open").await?;
        }
        let answers = try_join_all(
            self.clients
                .iter_mut()
                .map(|client| client.answer(&["connected ", "failed"])),
        );
        let answers = tokio::time::timeout(CONNECT_TIMEOUT, answers)
            .await
            .map_err(|_| {
                anyhow!("the idle clients did not connect within {CONNECT_TIMEOUT:?}")
            })??;
        let mut connected = 0;
        for line in answers {
            match line.strip_prefix("connected ") {
                Some(n) => connected += n.trim().parse::<u64>()?,
                None => bail!("idle clients: {line}"),
            }
        }
        Ok(connected)
    }

    /// The ping counts of all children, so far.
    pub async fn pings(&mut self) -> anyhow::Result<PingCounts> {
        for client in &mut self.clients {
            client.command("pings").await?;
        }
        let answers = try_join_all(
            self.clients
                .iter_mut()
                .map(|client| client.answer(&["pings "])),
        );
        let answers = tokio::time::timeout(ANSWER_TIMEOUT, answers)
            .await
            .map_err(|_| anyhow!("the idle clients did not report within {ANSWER_TIMEOUT:?}"))??;
        let mut total = PingCounts::default();
        for line in answers {
            let counts =
                PingCounts::parse(&line).ok_or_else(|| anyhow!("idle clients said {line:?}"))?;
            total.add(&counts);
        }
        Ok(total)
    }

    /// Closes the children's input (they close their connections and exit) and waits.
    pub async fn close(self) {
        let mut children = Vec::new();
        for client in self.clients {
            // Closing stdin tells the child to close its connections and exit.
            drop(client.stdin);
            children.push(client.child);
        }
        for mut child in children {
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Raises this process's open-files limit to at least `wanted`: the soft limit up to the
/// hard one, and the hard one too where the process may (root, `CAP_SYS_RESOURCE`; never
/// past the kernel's `fs.nr_open`). Returns the limit now, or why it is short.
pub fn raise_open_files(wanted: u64) -> Result<u64, String> {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-files limit: {e}"))?;
    if soft >= wanted {
        return Ok(soft);
    }
    let mut hard = hard;
    if hard < wanted && rlimit::setrlimit(Resource::NOFILE, soft, wanted).is_ok() {
        hard = wanted;
    }
    let now = wanted.min(hard);
    rlimit::setrlimit(Resource::NOFILE, now, hard)
        .map_err(|e| format!("cannot raise the open-files limit to {now}: {e}"))?;
    if now < wanted {
        return Err(format!(
            "the open-files limit is {now}, below the {wanted} wanted, and the hard limit cannot be raised here (ulimit -Hn; root can)"
        ));
    }
    Ok(now)
}

/// What one child process is told on its command line.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    pub addr: SocketAddr,
    pub connections: u64,
    pub sources: Vec<IpAddr>,
    pub concurrency: usize,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    answered: AtomicU64,
    pinged: AtomicU64,
    closed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> PingCounts {
        PingCounts {
            received: self.received.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            connections_pinged: self.pinged.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
        }
    }
}

/// The child process (`taskgate-bench idle-clients`): see the module's documentation.
pub async fn clients(args: ClientArgs) -> anyhow::Result<()> {
    if let Err(why) = raise_open_files(args.connections + CHILD_HEADROOM) {
        eprintln!("taskgate-bench idle-clients: {why}");
    }
    println!("ready");
    let counters = Arc::new(Counters::default());
    let mut holders = Vec::new();
    let mut commands = BufReader::new(tokio::io::stdin()).lines();
    // Until the parent closes our stdin (or dies).
    while let Ok(Some(command)) = commands.next_line().await {
        match command.trim() {
            "open" => {
                let (opened, failures) = open(&args, &counters, &mut holders).await;
                match failures {
                    None => println!("connected {opened}"),
                    Some((failed, first)) => println!(
                        "failed: {failed} of {} connections, after {opened} connected; the first: {first}",
                        args.connections
                    ),
                }
            }
            "pings" => println!("{}", counters.snapshot().line()),
            other => eprintln!("taskgate-bench idle-clients: unknown command {other:?}"),
        }
    }
    for holder in holders {
        holder.abort();
    }
    Ok(())
}

/// Opens `args.connections` connections, each held (pings answered) as soon as it is
/// open; returns how many opened and, if any failed, how many and the first error.
async fn open(
    args: &ClientArgs,
    counters: &Arc<Counters>,
    holders: &mut Vec<tokio::task::JoinHandle<()>>,
) -> (u64, Option<(u64, String)>) {
    let addr = args.addr;
    let sources = &args.sources;
    let mut attempts = stream::iter(0..args.connections)
        .map(|i| {
            let source = (!sources.is_empty()).then(|| sources[i as usize % sources.len()]);
            sio::connect_from(addr, source, false, Some(sio::idle_client_config()))
        })
        .buffer_unordered(args.concurrency.max(1));
    let (mut opened, mut failed, mut first) = (0, 0, None);
    while let Some(attempt) = attempts.next().await {
        match attempt {
            Ok(ws) => {
                opened += 1;
                holders.push(tokio::spawn(hold(ws, Arc::clone(counters))));
            }
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (opened, first.map(|first| (failed, first)))
}

/// Answers pings until the connection ends, counting them.
async fn hold(mut ws: sio::SioStream, counters: Arc<Counters>) {
    let mut pinged = false;
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) => {
                if let Ok(Incoming::Ping) = sio::decode(text.as_str()) {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    if !pinged {
                        pinged = true;
                        counters.pinged.fetch_add(1, Ordering::Relaxed);
                    }
                    if ws.send(Message::text(sio::PONG)).await.is_err() {
                        break;
                    }
                    counters.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    counters.closed.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses_outside_127_0_0() {
        let sources = loopback_sources(300);
        assert_eq!(sources[0].to_string(), "127.0.1.1");
        assert_eq!(sources[15].to_string(), "127.0.1.16");
        assert_eq!(sources[299].to_string(), "127.0.2.44");
        let mut unique = sources.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 300);
        assert!(sources.iter().all(|ip| ip.is_loopback()));
    }

    #[test]
    fn connections_are_split_evenly_over_processes() {
        assert_eq!(split(100_000, 2), vec![50_000, 50_000]);
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(5, 0), vec![5]);
    }

    #[test]
    fn ping_counts_travel_as_a_line_and_add_up() {
        let counts = PingCounts {
            received: 7,
            answered: 6,
            connections_pinged: 5,
            closed: 1,
        };
        assert_eq!(PingCounts::parse(&counts.line()), Some(counts));
        assert_eq!(PingCounts::parse("pings 1 2"), None);
        assert_eq!(PingCounts::parse("pings a b c d"), None);
        assert_eq!(PingCounts::parse("connected 5"), None);
        let mut total = counts;
        total.add(&counts);
        assert_eq!(total.received, 14);
        assert_eq!(total.closed, 2);
    }

    #[test]
    fn every_connection_pinged_and_every_ping_answered_is_no_shortfall() {
        let good = PingCounts {
            received: 100,
            answered: 100,
            connections_pinged: 100,
            closed: 0,
        };
        assert_eq!(good.shortfall(100), None);
        let why = PingCounts {
            answered: 98,
            connections_pinged: 99,
            closed: 1,
            ..good
        }
        .shortfall(100)
        .unwrap();
        assert!(why.contains("1 connections ended"), "{why}");
        assert!(
            why.contains("1 of 100 connections received no ping"),
            "{why}"
        );
        assert!(why.contains("2 of 100 pings were not answered"), "{why}");
    }
}
