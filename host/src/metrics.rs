//! Prometheus metrics: every metric's name and HELP text (one table, [`METRICS`]), the
//! process-wide recorder behind `GET /metrics`, and the handles the request path uses.
//!
//! Everything is recorded through the `metrics` facade (`metrics::counter!` & co.), so a
//! module only needs the name: one of the constants declared here, never a literal (a test
//! reads the host's sources to keep it so, and another renders every metric with its HELP). [`install`] puts a `metrics-exporter-prometheus` recorder
//! in place once per process (no HTTP listener of its own: the axum router serves
//! [`render`]). Several hosts started in one process (tests) share that one registry;
//! tests therefore compare values before and after, or use request types of their own.
//!
//! The request path does not look metrics up by name: [`GatewayMetrics`] keeps, per
//! request type, handles whose labels are already bound, so counting a chunk or an outcome
//! is an atomic add.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Counter, Gauge, Histogram, KeyName, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use taskgate_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

/// Declares every metric the host records, once: a constant per name (documented from the
/// table) and [`METRICS`], from which [`install`] describes them all. A name recorded
/// anywhere else in the host is a test failure (see the tests below).
macro_rules! metrics_table {
    (@unit) => { None };
    (@unit $unit:ident) => { Some(metrics::Unit::$unit) };
    ($(
        $(#[$doc:meta])*
        $constant:ident: $kind:ident $(in $unit:ident)? $name:literal {$($label:ident),*}
            $help:literal;
    )*) => {
        $(
            #[doc = concat!(
                "`", $name, "` (", stringify!($kind), $(", `", stringify!($label), "`",)*
                "): ", $help, "."
            )]
            $(#[$doc])*
            pub const $constant: &str = $name;
        )*

        /// Every metric the host records.
        pub const METRICS: &[Metric] = &[$(
            Metric {
                name: $constant,
                kind: Kind::$kind,
                unit: metrics_table!(@unit $($unit)?),
                labels: &[$(stringify!($label)),*],
                help: $help,
            },
        )*];

        /// The constants' own names, for the test that call sites use them.
        #[cfg(test)]
        const CONSTANTS: &[&str] = &[$(stringify!($constant)),*];
    };
}

metrics_table! {
    /// See [`Outcome`].
    REQUESTS_TOTAL: Counter "taskgate_requests_total" {request_type, outcome}
        "Requests that ended, by request type and outcome (ok, a lowercased error code, disconnected, or handed_off)";
    REQUEST_DURATION: Histogram in Seconds "taskgate_request_duration_seconds" {request_type}
        "Time from a request's arrival to its final response";
    REQUESTS_IN_FLIGHT: Gauge "taskgate_requests_in_flight" {}
        "Requests admitted and not finished";
    CONNECTED_SOCKETS: Gauge "taskgate_connected_sockets" {}
        "Socket.IO connections";
    CHUNKS_RELAYED: Counter "taskgate_chunks_relayed_total" {request_type}
        "Chunks relayed to clients";
    /// Recorded by `gateway::relay` from the workers' retry notices (protocol §3.12).
    RETRIES: Counter "taskgate_retries_total" {request_type}
        "Attempts that failed retryably and were scheduled again by their worker (retry notices)";
    /// Recorded by `broker::amqp::dead_letters`, by the host that handled the dead letter.
    DEAD_LETTERS: Counter "taskgate_dead_letters_total" {request_type}
        "Requests delivered to workers too often without an answer: dead-lettered, and their clients given a final error";
    /// Recorded by `host_names` (`host`), `origins` (`origin`) and at the handshake (`full`,
    /// `draining`, or [`crate::auth::Refusal::label`]).
    CONNECTIONS_REFUSED: Counter "taskgate_connections_refused_total" {reason}
        "Connections refused, by reason (host, origin, pending, full, draining, or why the token was refused)";
    /// Recorded by `sink::record_slow_client_drop`, for both transports.
    SLOW_CLIENTS_DROPPED: Counter "taskgate_slow_clients_dropped_total" {}
        "Clients disconnected because they did not keep up with their responses";
    BROKER_RECONNECTS: Counter "taskgate_broker_reconnects_total" {}
        "Broker connections opened again after one was lost";
    BROKER_CONNECTED: Gauge "taskgate_broker_connected" {}
        "1 while connected to the broker with the reply consumer running";
    /// Recorded by `server::keep_task_reply` (a shared task store only).
    TASK_REPLIES: Counter "taskgate_task_replies_total" {outcome}
        "Replies from the shared task-reply queue: stored, dropped (a duplicate, or for an ended or unknown task), or retry (the task store was unreachable)";
    /// Set at each scrape by `Gateway::record_resume_gauges`.
    RESUME_PARKED: Gauge "taskgate_resume_parked_requests" {}
        "Requests of sessions waiting for their client to come back (detached tasks whose page is gone included)";
    /// Set at each scrape by `Gateway::record_resume_gauges`.
    RESUME_KEPT_OUTCOMES: Gauge "taskgate_resume_kept_outcomes" {}
        "Outcomes kept for a client to attach: of requests that ended while parked, and of detached tasks (for [resume] result_ttl)";
    /// Set at each scrape by `Gateway::record_resume_gauges`.
    RESUME_KEPT_BYTES: Gauge "taskgate_resume_kept_bytes" {}
        "Bytes of chunks kept for replay by all requests together, against [resume] max_kept_bytes";
    /// Recorded by `Gateway::park`.
    RESUME_PARKED_REFUSED: Counter "taskgate_resume_parked_refused_total" {}
        "Requests of sessions cancelled when their connection dropped because their owner had [resume] max_parked_per_owner parked already";
    /// Recorded by `tasks::record_started`: where a detached task starts, in either store.
    TASKS_STARTED: Counter "taskgate_tasks_started_total" {}
        "Detached tasks started through this host, whichever store keeps them";
    /// Recorded by `tasks::record_ended`: this host wrote the outcome (a worker's reply, a
    /// timeout or a cancel), in either store.
    TASKS_ENDED: Counter "taskgate_tasks_ended_total" {state}
        "Detached tasks whose outcome this host wrote, by state: succeeded, failed, cancelled";
    /// Set at each scrape by `Gateway::record_resume_gauges`. A shared store is not scanned:
    /// its tasks show in the counters above (and in Redis itself).
    TASKS_HELD: Gauge "taskgate_tasks" {state}
        "Detached tasks held in this host's memory (no shared store), by state: running, succeeded, failed, cancelled";
    /// Set at each scrape by `Gateway::record_resume_gauges`.
    TASK_BYTES: Gauge "taskgate_task_bytes" {}
        "Bytes of chunks and outcomes held in this host's memory for detached tasks (no shared store)";
    /// Recorded by `reload`, the initial load included.
    PLUGIN_LOADS: Counter "taskgate_plugin_loads_total" {outcome}
        "Plugin libraries loaded, reloaded or refused (failed), the initial load included";
    /// Recorded by `reload`: 1 while that version serves, 0 after.
    PLUGIN_INFO: Gauge "taskgate_plugin_info" {plugin, version, hash}
        "Plugin versions: 1 while that version serves, then 0";
    /// Recorded by `reload`.
    CONFIG_RELOADS: Counter "taskgate_config_reloads_total" {outcome}
        "Re-reads of plugins.toml, applied or failed";
    /// Recorded by `plugins`: libraries are never unloaded.
    PLUGIN_LIBRARIES_MAPPED: Gauge "taskgate_plugin_libraries_mapped" {}
        "Plugin library versions mapped into the process, which keeps them until it exits";
    /// Set by `serving::watch` at each look (every 2 s) at the type's queue.
    REQUEST_TYPE_CONSUMERS: Gauge "taskgate_request_type_consumers" {request_type}
        "Consumers (workers) of the request type's queue at the last look; 0 for a while makes the type unserved (see /readyz noConsumers)";
    /// Recorded by `plugins`.
    PLUGIN_MAPPED_BYTES: Gauge "taskgate_plugin_mapped_bytes" {}
        "File sizes of the plugin library versions mapped into the process (an upper bound of their memory)";
}

/// What a metric is, which decides how it is described and recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric the host records: the name it is recorded under, its labels, and the HELP
/// text `/metrics` shows for it.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<metrics::Unit>,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Upper bounds of the latency buckets, in seconds: from a fast in-memory echo (a few
/// milliseconds) to long streams near the longest usual timeouts.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The `request_type` label of refusals that happened before the request type was known
/// (malformed envelope, unknown type): client input must not create label values.
pub const UNKNOWN_TYPE: &str = "_unknown";

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The recorder's settings (buckets), shared by [`install`] and tests that build a
/// recorder of their own.
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION.to_owned()),
            &DURATION_BUCKETS,
        )
        // Only an empty bucket list is refused; ours is a non-empty constant.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Installs the Prometheus recorder as the process's global recorder, once; later calls
/// (more hosts in one process) return the same handle. If something else installed a
/// global recorder first, `/metrics` renders only what is recorded to this one (nothing)
/// and a warning says why.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                warn!(
                    "another metrics recorder is installed in this process; /metrics stays empty"
                );
            }
            describe();
            handle
        })
        .clone()
}

/// The text exposition of every metric (the body of `GET /metrics`).
pub fn render(handle: &PrometheusHandle) -> String {
    handle.render()
}

/// Folds histogram samples into buckets periodically, so memory stays bounded between
/// scrapes. Runs until the returned task is aborted.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

/// Gives every metric of [`METRICS`] its HELP text, on the recorder in effect (the global
/// one, or a test's local one).
fn describe() {
    for metric in METRICS {
        let (name, help) = (
            KeyName::from_const_str(metric.name),
            SharedString::const_str(metric.help),
        );
        metrics::with_recorder(|recorder| match metric.kind {
            Kind::Counter => recorder.describe_counter(name, metric.unit, help),
            Kind::Gauge => recorder.describe_gauge(name, metric.unit, help),
            Kind::Histogram => recorder.describe_histogram(name, metric.unit, help),
        });
    }
}

/// How a request ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A final `result`.
    Ok,
    /// A refusal or a final `error` with this code (protocol codes, or a worker's own).
    Error(&'a str),
    /// The client went away before the end (or its ack could not be sent).
    Disconnected,
    /// Handed to the host its client came back through (protocol §4.4), which counts its
    /// outcome.
    HandedOff,
}

/// The lowercased protocol error codes, as label values.
const CODE_LABELS: [(ErrorCode, &str); ErrorCode::ALL.len()] = [
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::UnknownRequestType, "unknown_request_type"),
    (ErrorCode::InvalidPayload, "invalid_payload"),
    (ErrorCode::PayloadTooLarge, "payload_too_large"),
    (ErrorCode::DuplicateId, "duplicate_id"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::Timeout, "timeout"),
    (ErrorCode::Cancelled, "cancelled"),
    (ErrorCode::WorkerError, "worker_error"),
    (ErrorCode::Internal, "internal"),
    (ErrorCode::TaskNotFound, "task_not_found"),
];

/// Distinct worker-defined codes given a label of their own; later ones count as `other`.
const MAX_CUSTOM_CODES: usize = 64;
const MAX_CUSTOM_CODE_LEN: usize = 48;
const OTHER_CODE: &str = "other";

/// Worker-defined codes seen so far, lowercased, leaked once each (bounded by
/// [`MAX_CUSTOM_CODES`]) so that label values stay `&'static`.
static CUSTOM_CODES: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();

/// The `outcome` label of an error code. Protocol codes map to fixed strings; a worker's
/// own codes (`NOT_FOUND` …) are lowercased too, as long as they look like codes and there
/// are not too many of them — a worker must not be able to create series without bound.
/// The consumers of `request_type`'s queue at the last look (`serving::watch`).
pub fn record_consumers(request_type: &str, consumers: u32) {
    metrics::gauge!(REQUEST_TYPE_CONSUMERS, "request_type" => request_type.to_owned())
        .set(f64::from(consumers));
}

pub fn code_label(code: &str) -> &'static str {
    if let Some((_, label)) = CODE_LABELS.iter().find(|(c, _)| c.as_str() == code) {
        return label;
    }
    let plausible = !code.is_empty()
        && code.len() <= MAX_CUSTOM_CODE_LEN
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if !plausible {
        return OTHER_CODE;
    }
    let mut codes = CUSTOM_CODES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(label) = codes.get(code) {
        return label;
    }
    if codes.len() >= MAX_CUSTOM_CODES {
        return OTHER_CODE;
    }
    let label: &'static str = Box::leak(code.to_ascii_lowercase().into_boxed_str());
    codes.insert(code.to_owned(), label);
    label
}

/// The handles of one request type, labels bound.
pub struct TypeMetrics {
    request_type: SharedString,
    ok: Counter,
    disconnected: Counter,
    /// One counter per protocol error code, made on first use.
    codes: [OnceLock<Counter>; ErrorCode::ALL.len()],
    duration: Histogram,
    chunks: Counter,
    retries: Counter,
    in_flight: Gauge,
}

impl TypeMetrics {
    fn new(request_type: &str, in_flight: Gauge) -> Self {
        let request_type = SharedString::from(request_type.to_owned());
        TypeMetrics {
            ok: metrics::counter!(REQUESTS_TOTAL, "request_type" => request_type.clone(), "outcome" => "ok"),
            disconnected: metrics::counter!(REQUESTS_TOTAL, "request_type" => request_type.clone(), "outcome" => "disconnected"),
            codes: Default::default(),
            duration: metrics::histogram!(REQUEST_DURATION, "request_type" => request_type.clone()),
            chunks: metrics::counter!(CHUNKS_RELAYED, "request_type" => request_type.clone()),
            retries: metrics::counter!(RETRIES, "request_type" => request_type.clone()),
            request_type,
            in_flight,
        }
    }

    fn count(&self, outcome: Outcome<'_>) {
        let label = match outcome {
            Outcome::Ok => return self.ok.increment(1),
            Outcome::Disconnected => return self.disconnected.increment(1),
            // Rare (a blip to another host): the counter is made when needed.
            Outcome::HandedOff => return self.outcome_counter("handed_off").increment(1),
            Outcome::Error(code) => code_label(code),
        };
        match CODE_LABELS.iter().position(|(_, l)| *l == label) {
            Some(i) => self.codes[i]
                .get_or_init(|| self.outcome_counter(label))
                .increment(1),
            None => self.outcome_counter(label).increment(1),
        }
    }

    fn outcome_counter(&self, label: &'static str) -> Counter {
        metrics::counter!(REQUESTS_TOTAL, "request_type" => self.request_type.clone(), "outcome" => label)
    }

    /// One more chunk relayed.
    pub fn chunk(&self) {
        self.chunks.increment(1);
    }

    /// One more attempt scheduled again by its worker.
    pub fn retry(&self) {
        self.retries.increment(1);
    }
}

/// The gateway's metrics: per-request-type handles (made on first use) and the gauges.
pub struct GatewayMetrics {
    types: DashMap<Box<str>, Arc<TypeMetrics>>,
    unknown: Arc<TypeMetrics>,
    in_flight: Gauge,
    sockets: Gauge,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayMetrics {
    /// Handles on the recorder in effect now (the global one, or a test's local one).
    pub fn new() -> Self {
        let in_flight = metrics::gauge!(REQUESTS_IN_FLIGHT);
        GatewayMetrics {
            types: DashMap::new(),
            unknown: Arc::new(TypeMetrics::new(UNKNOWN_TYPE, in_flight.clone())),
            in_flight,
            sockets: metrics::gauge!(CONNECTED_SOCKETS),
        }
    }

    /// The handles of `request_type` (a type from the routing table: the set is bounded).
    pub fn for_type(&self, request_type: &str) -> Arc<TypeMetrics> {
        if let Some(found) = self.types.get(request_type) {
            return found.clone();
        }
        self.types
            .entry(request_type.into())
            .or_insert_with(|| Arc::new(TypeMetrics::new(request_type, self.in_flight.clone())))
            .clone()
    }

    /// A request refused before it was admitted. `request_type` is `None` when the type
    /// was not (yet) known to be served.
    pub fn refused(&self, request_type: Option<&Arc<TypeMetrics>>, code: &str) {
        request_type
            .unwrap_or(&self.unknown)
            .count(Outcome::Error(code));
    }

    pub fn socket_connected(&self) {
        self.sockets.increment(1.0);
    }

    pub fn socket_disconnected(&self) {
        self.sockets.decrement(1.0);
    }
}

/// One admitted request's metrics, from admission to its end. It counts the request in
/// flight while it lives; dropping it — whenever the request leaves the gateway's
/// in-flight map, by whatever path — records the outcome and the duration, so neither
/// can be forgotten or counted twice.
pub struct RequestMetrics {
    metrics: Arc<TypeMetrics>,
    started: Instant,
    outcome: Option<Outcome<'static>>,
}

impl RequestMetrics {
    pub fn start(metrics: Arc<TypeMetrics>, started: Instant) -> Self {
        metrics.in_flight.increment(1.0);
        RequestMetrics {
            metrics,
            started,
            outcome: None,
        }
    }

    /// The request's final response (or refusal) is this. Without one, the request counts
    /// as `disconnected`.
    pub fn finish(&mut self, outcome: Outcome<'_>) {
        self.outcome = Some(match outcome {
            Outcome::Ok => Outcome::Ok,
            Outcome::Error(code) => Outcome::Error(code_label(code)),
            Outcome::Disconnected => Outcome::Disconnected,
            Outcome::HandedOff => Outcome::HandedOff,
        });
    }

    pub fn chunk(&self) {
        self.metrics.chunk();
    }

    pub fn retry(&self) {
        self.metrics.retry();
    }
}

impl Drop for RequestMetrics {
    fn drop(&mut self) {
        let metrics = &self.metrics;
        metrics.in_flight.decrement(1.0);
        metrics.count(self.outcome.unwrap_or(Outcome::Disconnected));
        metrics
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics")
            .field("request_type", &self.metrics.request_type)
            .field("outcome", &self.outcome)
            .finish()
    }
}

/// Reads metric values out of a rendered exposition, for tests (here and in integration
/// tests): the value of the series `name{labels}` whose labels include all of `labels`,
/// summed over the series that match.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in exposition.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let matches = labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        });
        if matches {
            if let Ok(value) = value.parse::<f64>() {
                *total.get_or_insert(0.0) += value;
            }
        }
    }
    total
}

/// The `taskgate_*` metric families of a rendered exposition that have no `# HELP` line,
/// for tests (here and in integration tests). A histogram's `_bucket`, `_sum` and `_count`
/// series belong to their family.
pub fn undescribed(exposition: &str) -> Vec<String> {
    let described: Vec<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let mut missing: Vec<String> = Vec::new();
    for line in exposition.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next().unwrap_or_default(),
            None if line.starts_with('#') => continue,
            None => line.split(['{', ' ']).next().unwrap_or_default(),
        };
        if !name.starts_with("taskgate_") {
            continue;
        }
        let family_described = described.iter().any(|family| {
            name.strip_prefix(family)
                .is_some_and(|suffix| ["", "_bucket", "_sum", "_count"].contains(&suffix))
        });
        if !family_described && !missing.iter().any(|m| m == name) {
            missing.push(name.to_owned());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn every_metric_renders_with_its_help_text() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            for metric in METRICS {
                let labels: Vec<metrics::Label> = metric
                    .labels
                    .iter()
                    .map(|label| metrics::Label::new(*label, "x"))
                    .collect();
                match metric.kind {
                    Kind::Counter => metrics::counter!(metric.name, labels).increment(1),
                    Kind::Gauge => metrics::gauge!(metric.name, labels).set(1.0),
                    Kind::Histogram => metrics::histogram!(metric.name, labels).record(1.0),
                }
            }
        });
        let text = render(&handle);
        assert_eq!(undescribed(&text), Vec::<String>::new(), "{text}");
        for metric in METRICS {
            let kind = format!("{:?}", metric.kind).to_lowercase();
            assert!(
                text.contains(&format!("# HELP {} {}\n", metric.name, metric.help)),
                "{}: {text}",
                metric.name
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", metric.name)),
                "{}: {text}",
                metric.name
            );
        }
        assert!(
            undescribed("# TYPE taskgate_new counter\ntaskgate_new 1\n") == ["taskgate_new"],
            "a metric without HELP is found"
        );
    }

    #[test]
    fn metric_names_are_unique_and_prometheus_style() {
        for (i, metric) in METRICS.iter().enumerate() {
            assert!(
                METRICS[..i].iter().all(|m| m.name != metric.name),
                "{} is declared twice",
                metric.name
            );
            assert!(metric.name.starts_with("taskgate_"), "{}", metric.name);
            assert_eq!(
                metric.name.ends_with("_total"),
                metric.kind == Kind::Counter,
                "{}: counters, and only counters, end in _total",
                metric.name
            );
        }
    }

    /// Every `counter!`/`gauge!`/`histogram!` in the host names its metric by a constant of
    /// [`METRICS`], and no metric name is written out anywhere else: a metric recorded
    /// under a name of its own would have no HELP text.
    #[test]
    fn the_host_records_metrics_only_under_the_names_declared_here() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut problems = Vec::new();
        for file in rust_files(&src) {
            if file.ends_with("metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let shown = file.strip_prefix(&src).unwrap().display();
            for metric in METRICS {
                if text.contains(&format!("\"{}", metric.name)) {
                    problems.push(format!(
                        "{shown}: writes \"{}\" instead of using metrics::{}",
                        metric.name,
                        CONSTANTS[METRICS.iter().position(|m| m.name == metric.name).unwrap()]
                    ));
                }
            }
            for call in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in text.match_indices(call) {
                    let argument = text[at + call.len()..]
                        .split([',', ')'])
                        .next()
                        .unwrap_or_default()
                        .trim();
                    let constant = argument.rsplit("::").next().unwrap_or_default();
                    if !CONSTANTS.contains(&constant) {
                        problems.push(format!(
                            "{shown}: {call}{argument} is not one of the names in metrics.rs"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(readme).unwrap();
        let missing: Vec<&str> = METRICS
            .iter()
            .map(|m| m.name)
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md's metrics table misses {missing:?}"
        );
    }

    #[test]
    fn protocol_codes_become_lowercase_labels() {
        assert_eq!(code_label("TIMEOUT"), "timeout");
        assert_eq!(code_label("UNKNOWN_REQUEST_TYPE"), "unknown_request_type");
        for code in ErrorCode::ALL {
            assert_eq!(code_label(code.as_str()), code.as_str().to_lowercase());
        }
    }

    #[test]
    fn worker_codes_are_labels_while_plausible_and_few() {
        assert_eq!(code_label("NOT_FOUND"), "not_found");
        assert!(std::ptr::eq(
            code_label("NOT_FOUND"),
            code_label("NOT_FOUND")
        ));
        assert_eq!(code_label("no spaces please"), OTHER_CODE);
        assert_eq!(code_label(""), OTHER_CODE);
        assert_eq!(code_label(&"X".repeat(100)), OTHER_CODE);
        for i in 0..MAX_CUSTOM_CODES + 10 {
            code_label(&format!("FLOOD_{i}"));
        }
        assert_eq!(code_label("ONE_TOO_MANY"), OTHER_CODE);
        assert_eq!(
            code_label("NOT_FOUND"),
            "not_found",
            "codes seen earlier keep theirs"
        );
    }

    #[test]
    fn a_request_counts_in_flight_while_it_lives_and_its_outcome_once_when_dropped() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let _local = metrics::set_default_local_recorder(&recorder);
        let gateway = GatewayMetrics::new();
        let echo = gateway.for_type("echo");
        let mut first = RequestMetrics::start(echo.clone(), Instant::now());
        let second = RequestMetrics::start(echo.clone(), Instant::now());
        first.chunk();
        first.chunk();
        let text = render(&handle);
        assert_eq!(sample(&text, REQUESTS_IN_FLIGHT, &[]), Some(2.0), "{text}");
        first.finish(Outcome::Error("TIMEOUT"));
        drop(first);
        drop(second);
        let mut third = RequestMetrics::start(echo.clone(), Instant::now());
        third.finish(Outcome::HandedOff);
        drop(third);
        gateway.refused(None, "BAD_REQUEST");
        gateway.refused(Some(&echo), "INVALID_PAYLOAD");

        let text = render(&handle);
        let count = |outcome: &str, request_type: &str| {
            sample(
                &text,
                REQUESTS_TOTAL,
                &[("request_type", request_type), ("outcome", outcome)],
            )
        };
        assert_eq!(sample(&text, REQUESTS_IN_FLIGHT, &[]), Some(0.0), "{text}");
        assert_eq!(count("timeout", "echo"), Some(1.0), "{text}");
        assert_eq!(count("disconnected", "echo"), Some(1.0), "{text}");
        assert_eq!(count("handed_off", "echo"), Some(1.0), "{text}");
        assert_eq!(count("invalid_payload", "echo"), Some(1.0), "{text}");
        assert_eq!(count("bad_request", UNKNOWN_TYPE), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, CHUNKS_RELAYED, &[("request_type", "echo")]),
            Some(2.0)
        );
        assert_eq!(
            sample(
                &text,
                &format!("{REQUEST_DURATION}_count"),
                &[("request_type", "echo")]
            ),
            Some(3.0),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{REQUEST_DURATION}_bucket{{request_type=\"echo\",le=\"0.001\"}}"
            )),
            "the configured buckets are used: {text}"
        );
    }

    #[test]
    fn sample_sums_matching_series_only() {
        let text =
            "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\",b=\"3\"} 4\nxy{a=\"1\"} 100\ny 5\n";
        assert_eq!(sample(text, "x", &[("a", "1")]), Some(7.0));
        assert_eq!(sample(text, "x", &[("b", "3")]), Some(4.0));
        assert_eq!(sample(text, "y", &[]), Some(5.0));
        assert_eq!(sample(text, "x", &[("a", "2")]), None);
    }
}
