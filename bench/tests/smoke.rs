//! A smoke test of the benchmark itself, not a measurement: a second of streaming load
//! through the real (debug) host and straight over AMQP, then 50 idle connections. It
//! needs RabbitMQ on 127.0.0.1:5672 and the debug binaries and plugins that
//! `scripts/test` builds first (`cargo build --workspace --bins`, `scripts/build-plugins`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskgate-bench"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The host binary next to this package's binary (same profile), or a clear failure.
fn host_bin() -> PathBuf {
    let host = bench().with_file_name("taskgate");
    assert!(
        host.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins)",
        host.display()
    );
    host
}

fn json_of(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_short_streaming_run_reports_both_phases_and_their_ratios() {
    let out =
        std::env::temp_dir().join(format!("taskgate-bench-smoke-{}.json", std::process::id()));
    let status = Command::new(bench())
        .args(["-c", "2", "-k", "2", "--chunks", "3", "--chunk-bytes", "50"])
        .args([
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--rounds",
            "2",
            "--worker",
            "sdk",
        ])
        .arg("--host-bin")
        .arg(host_bin())
        .arg("--plugins-dir")
        .arg(repo().join("build/plugins"))
        .arg("--json")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run taskgate-bench: {e}"));
    assert!(status.success(), "taskgate-bench failed: {status}");
    let report = json_of(&out);
    let _ = std::fs::remove_file(&out);
    let phases = report["phases"].as_array().cloned().unwrap_or_default();
    assert_eq!(phases.len(), 2, "{report}");
    for phase in &phases {
        assert!(phase["requests"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(phase["errors"], 0, "{phase}");
        assert_eq!(phase["missing_acks"], 0, "{phase}");
        // Three chunks per request: never fewer chunks than requests.
        assert!(
            phase["chunks"].as_u64() >= phase["requests"].as_u64(),
            "{phase}"
        );
    }
    assert!(
        report["ratios"]["chunks_host_over_direct"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(report["host_peak_rss_kib"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn the_idle_case_counts_host_memory_per_connection() {
    let out = std::env::temp_dir().join(format!("taskgate-bench-idle-{}.json", std::process::id()));
    let status = Command::new(bench())
        .args(["idle", "--connections", "50"])
        .arg("--host-bin")
        .arg(host_bin())
        .arg("--plugins-dir")
        .arg(repo().join("build/plugins"))
        .arg("--json")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run taskgate-bench idle: {e}"));
    assert!(status.success(), "taskgate-bench idle failed: {status}");
    let report = json_of(&out);
    let _ = std::fs::remove_file(&out);
    assert_eq!(report["connections"], 50, "{report}");
    assert!(report["host_rss_after_kib"].as_u64() >= report["host_rss_before_kib"].as_u64());
}

#[test]
fn consoles_stay_live_while_the_host_carries_the_same_load() {
    let out = std::env::temp_dir().join(format!(
        "taskgate-bench-consoles-{}.json",
        std::process::id()
    ));
    let status = Command::new(bench())
        .args([
            "-c",
            "2",
            "-k",
            "2",
            "--phases",
            "consoles",
            "--consoles",
            "3",
        ])
        .args(["--duration", "2", "--warmup", "0.5", "--rounds", "1"])
        .arg("--host-bin")
        .arg(host_bin())
        .arg("--plugins-dir")
        .arg(repo().join("build/plugins"))
        .arg("--json")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run taskgate-bench: {e}"));
    assert!(status.success(), "taskgate-bench failed: {status}");
    let report = json_of(&out);
    let _ = std::fs::remove_file(&out);
    let phases: Vec<_> = report["phases"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap_or("").to_owned(),
                p["requests"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(phases.len(), 2, "{report}");
    assert_eq!(
        (phases[0].0.as_str(), phases[1].0.as_str()),
        ("host", "consoles")
    );
    assert!(phases.iter().all(|(_, requests)| *requests > 0), "{report}");
    // The console pushes an overview a second: 2.5 s open gives each of the 3 streams
    // at least two, so this fails if the streams were accepted but never fed.
    assert!(
        report["console_events"].as_u64().unwrap_or(0) >= 6,
        "{report}"
    );
}

#[test]
fn the_c100k_case_opens_holds_and_compares_the_echo_load_in_its_quick_form() {
    let out = std::env::temp_dir().join(format!(
        "taskgate-bench-idle-100k-{}.json",
        std::process::id()
    ));
    let status = Command::new(bench())
        .args(["idle-100k", "--quick"])
        .arg("--host-bin")
        .arg(host_bin())
        .arg("--plugins-dir")
        .arg(repo().join("build/plugins"))
        .arg("--json")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run taskgate-bench idle-100k: {e}"));
    assert!(
        status.success(),
        "taskgate-bench idle-100k failed: {status}"
    );
    let report = json_of(&out);
    let _ = std::fs::remove_file(&out);
    // Every connection of the quick run opened, over the loopback source addresses, and
    // none ended while held.
    assert_eq!(report["connections"], 2000, "{report}");
    assert!(report["handshakes_per_second"].as_f64().unwrap_or(0.0) > 0.0);
    assert_eq!(report["pings"]["closed"], 0, "{report}");
    assert!(report["host_rss_after_kib"].as_u64() > report["host_rss_before_kib"].as_u64());
    // The echo load ran alone and with the idle connections, without errors.
    let echo = report["echo"].as_array().cloned().unwrap_or_default();
    let phases: Vec<&str> = echo.iter().filter_map(|p| p["phase"].as_str()).collect();
    assert_eq!(phases, ["alone", "idle"], "{report}");
    for phase in &echo {
        assert!(phase["requests"].as_u64().unwrap_or(0) > 0, "{phase}");
        assert_eq!(phase["errors"], 0, "{phase}");
    }
    assert!(
        report["echo_ratios"]["p99_host_over_direct"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
}
