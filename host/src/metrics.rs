//! Prometheus metrics: the names every part of the host records under, the process-wide
//! recorder behind `GET /metrics`, and the handles the request path uses.
//!
//! Everything is recorded through the `metrics` facade (`metrics::counter!` & co.), so a
//! module only needs the name. [`install`] puts a `metrics-exporter-prometheus` recorder
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
use metrics::{Counter, Gauge, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use taskgate_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

/// Counter `{request_type, outcome}`: requests that ended, by how (see [`Outcome`]).
pub const REQUESTS_TOTAL: &str = "taskgate_requests_total";
/// Histogram `{request_type}`: from the `request` event to the final response.
pub const REQUEST_DURATION: &str = "taskgate_request_duration_seconds";
/// Gauge: requests admitted and not finished.
pub const REQUESTS_IN_FLIGHT: &str = "taskgate_requests_in_flight";
/// Gauge: Socket.IO connections.
pub const CONNECTED_SOCKETS: &str = "taskgate_connected_sockets";
/// Counter `{request_type}`: chunks relayed to clients.
pub const CHUNKS_RELAYED: &str = "taskgate_chunks_relayed_total";
/// Counter: broker connections opened again after one was lost.
pub const BROKER_RECONNECTS: &str = "taskgate_broker_reconnects_total";
/// Gauge: 1 while connected to the broker with the reply consumer running, else 0.
pub const BROKER_CONNECTED: &str = "taskgate_broker_connected";
/// Counter `{outcome}`: plugin libraries `loaded`, `reloaded` or `failed` (recorded by
/// `reload`, the initial load included).
pub const PLUGIN_LOADS: &str = "taskgate_plugin_loads_total";
/// Gauge `{plugin, version, hash}`: 1 while that version serves, 0 after (recorded by `reload`).
pub const PLUGIN_INFO: &str = "taskgate_plugin_info";

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

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS_TOTAL,
        "Requests that ended, by request type and outcome (ok, a lowercased error code, or disconnected)"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its final response"
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Requests admitted and not finished");
    describe_gauge!(CONNECTED_SOCKETS, "Socket.IO connections");
    describe_counter!(CHUNKS_RELAYED, "Chunks relayed to clients");
    describe_counter!(
        BROKER_RECONNECTS,
        "Broker connections opened again after one was lost"
    );
    describe_gauge!(
        BROKER_CONNECTED,
        "1 while connected to the broker with the reply consumer running"
    );
    describe_counter!(
        PLUGIN_LOADS,
        "Plugin libraries loaded (ok) or refused (error)"
    );
    describe_gauge!(PLUGIN_INFO, "Plugins serving now, by name and version");
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
}

/// The lowercased protocol error codes, as label values.
const CODE_LABELS: [(ErrorCode, &str); 12] = [
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
    codes: [OnceLock<Counter>; 12],
    duration: Histogram,
    chunks: Counter,
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
            request_type,
            in_flight,
        }
    }

    fn count(&self, outcome: Outcome<'_>) {
        let label = match outcome {
            Outcome::Ok => return self.ok.increment(1),
            Outcome::Disconnected => return self.disconnected.increment(1),
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
        });
    }

    pub fn chunk(&self) {
        self.metrics.chunk();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
            Some(2.0),
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
