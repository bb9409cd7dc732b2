//! Starting, watching and stopping the processes under test (the host and one example
//! worker), and reading their CPU time and peak memory from `/proc`.
//!
//! Both are real release binaries started as child processes, so the numbers include
//! everything a deployment pays for (logging, plugin loading, the runtime) and nothing of
//! the benchmark client, which runs in this process.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::oneshot;

/// How many of a child's last stderr lines are kept, to explain a failure.
const KEPT_LINES: usize = 20;

/// A child process whose stderr is drained (so it never blocks on a full pipe) and whose
/// last lines are kept for error messages.
pub struct Process {
    name: &'static str,
    child: Child,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts `program args…` and waits until a stderr line contains `marker`; returns the
    /// process and that line.
    pub async fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        marker: &'static str,
        timeout: Duration,
    ) -> anyhow::Result<(Self, String)> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{name} exited immediately"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("{name}: no stderr pipe"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (found_tx, found_rx) = oneshot::channel();
        tokio::spawn(drain(stderr, marker, found_tx, Arc::clone(&tail)));
        let mut process = Process {
            name,
            child,
            pid,
            tail,
        };
        let line = tokio::select! {
            found = found_rx => found.ok(),
            _ = tokio::time::sleep(timeout) => None,
            status = process.child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                bail!("{name} exited ({status}) before it was ready:\n{}", process.tail_text());
            }
        };
        match line {
            Some(line) => Ok((process, line)),
            None => bail!(
                "{name} did not log `{marker}` within {timeout:?}:\n{}",
                process.tail_text()
            ),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The last lines the process wrote to stderr.
    pub fn tail_text(&self) -> String {
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}) during the benchmark:\n{}",
                self.name,
                self.tail_text()
            ),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }

    /// SIGTERM (through `kill`, to stay free of `unsafe`), then SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

async fn drain(
    stderr: ChildStderr,
    marker: &'static str,
    found: oneshot::Sender<String>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut found = Some(found);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.contains(marker) {
            if let Some(tx) = found.take() {
                let _ = tx.send(line.clone());
            }
        }
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == KEPT_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// The address in a host log line `… listening on 127.0.0.1:PORT …`.
pub fn listen_addr(line: &str) -> Option<SocketAddr> {
    let (_, after) = line.split_once("listening on ")?;
    let token = after.split_whitespace().next()?;
    token
        .trim_matches(|c: char| c == '"' || c == ',')
        .parse()
        .ok()
}

/// Polls `GET /readyz` until it answers 200.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match http_status(addr, "/readyz").await {
            Ok(200) => return Ok(()),
            Ok(_) | Err(_) if started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(status) => bail!("GET /readyz still answers {status} after {timeout:?}"),
            Err(e) => bail!("GET /readyz failed after {timeout:?}: {e}"),
        }
    }
}

/// A one-shot HTTP/1.1 GET; returns the status code.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 64];
    let n = tcp.read(&mut head).await?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))
}

/// CPU time a process has used so far (user + system).
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let ticks = parse_stat_cpu_ticks(&text)
        .ok_or_else(|| anyhow!("unexpected format of {}", path.display()))?;
    Ok(ticks as f64 / ticks_per_second)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    // after_comm starts at field 3 (state); utime is field 14 → index 11.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The first process whose command name (`/proc/<pid>/comm`) is `comm`, e.g. RabbitMQ's
/// `beam.smp`; only read, to report how much CPU the broker used.
pub fn find_pid_by_comm(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
}

/// The open-files limit of process `pid` (soft, hard), from `/proc/<pid>/limits`.
pub fn open_files_limit(pid: u32) -> Option<(u64, u64)> {
    parse_open_files_limit(&std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

pub fn parse_open_files_limit(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line["Max open files".len()..].split_whitespace().map(|w| {
        if w == "unlimited" {
            Ok(u64::MAX)
        } else {
            w.parse()
        }
    });
    Some((numbers.next()?.ok()?, numbers.next()?.ok()?))
}

/// Peak resident set size (`VmHWM`) in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, "VmHWM:").ok_or_else(|| anyhow!("no VmHWM in {path}"))
}

/// Current resident set size (`VmRSS`) in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS in {path}"))
}

/// Context switches (voluntary + involuntary) of all threads of a process so far: each
/// is a thread going to sleep or being preempted, so per request it shows how much
/// waking and handing over between threads a design does.
pub fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(entry) = entry else { continue };
        // A thread may end between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        total += parse_status_count(&text, "voluntary_ctxt_switches:").unwrap_or(0);
        total += parse_status_count(&text, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Ok(total)
}

fn parse_status_count(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().parse().ok())
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
/// The machine's load average over 1, 5 and 15 minutes (`/proc/loadavg`).
pub fn load_average() -> Option<[f64; 3]> {
    parse_load_average(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

pub fn parse_load_average(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    Some([it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?])
}

pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_open_files_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95000                95000                processes \n\
                    Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(text), Some((20_000, 20_000)));
        let unlimited =
            "Max open files            1024                 unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Some((1024, u64::MAX)));
        assert_eq!(parse_open_files_limit("Max processes 1 1\n"), None);
    }

    #[test]
    fn reads_the_load_average() {
        assert_eq!(
            parse_load_average("2.34 0.86 0.32 3/412 1234\n"),
            Some([2.34, 0.86, 0.32])
        );
        assert_eq!(parse_load_average("2.34 x"), None);
    }

    #[test]
    fn finds_the_listen_address_in_a_log_line() {
        let line = "2026-11-26T22:00:00Z  INFO taskgate_host::server: listening on 127.0.0.1:40123 addr=127.0.0.1:40123 host_id=x";
        assert_eq!(listen_addr(line), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(listen_addr("nothing here"), None);
    }

    #[test]
    fn reads_cpu_ticks_after_an_awkward_command_name() {
        let stat =
            "1234 (tas k) (gate)) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 31 0 0 20 0 5 0 999 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(281));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_kib_values_from_status() {
        let status =
            "Name:\ttaskgate\nVmPeak:\t  200000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(12345));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        let status = "voluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(
            parse_status_count(status, "voluntary_ctxt_switches:"),
            Some(120)
        );
        assert_eq!(
            parse_status_count(status, "nonvoluntary_ctxt_switches:"),
            Some(3)
        );
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid, clock_ticks_per_second()).unwrap() >= 0.0);
        assert!(peak_rss_kib(pid).unwrap() > 0);
        assert!(rss_kib(pid).unwrap() > 0);
        assert!(context_switches(pid).is_ok());
    }
}
