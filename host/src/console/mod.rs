//! The operator console's API (issue 15): `/console/api/…`, served by the host when
//! `[console] enabled = true`.
//!
//! - `GET /console/api/overview`: this host (id, version, address, uptime, sockets, requests
//!   in flight, broker, draining, plugins) and its request types (requests/s, p50/p99,
//!   errors by code, 15 minutes of 5-second points) as JSON.
//! - `GET /console/api/events`: the same, pushed about once a second as server-sent events
//!   (`event: overview`). Read with `fetch` (an `EventSource` cannot send the token).
//! - `POST /console/api/drain`, `/undrain`, `/rescan`: actions, each logged with who did it.
//!
//! Access (see [`access`]): the host's `[auth]` as a Bearer token with `[console] role`, or
//! loopback only without authentication. CORS stays closed: the host's CORS policy does not
//! allow the `Authorization` header, so no other origin's page can call the API with a token.
//! Every response carries a strict Content-Security-Policy and is never cached.
//!
//! The numbers come from what the host records anyway: its metrics, read every 5 seconds
//! ([`samples`]), and the gauges it keeps; an open console adds no work per request.

pub mod access;
pub mod cluster;
pub mod dead_letters;
pub mod failures;
pub mod management;
pub mod push;
pub mod samples;
pub mod tasks;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{debug, info};
use uuid::Uuid;

use crate::admission::Admission;
use crate::broker::amqp::cluster::ClusterObserver;
use crate::gateway::task_list::TaskSummary;
use crate::routes::{LoadError, ServedPlugin};
use access::Operator;
use failures::Failure;
use management::{Management, ManagementState, QueueCounts};
use samples::{History, TypeStats};

/// The Content-Security-Policy of every console response: nothing but the host's own
/// scripts, styles and API; no frames, no plugins, no inline script.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often the push channel sends.
pub const PUSH_EVERY: Duration = Duration::from_secs(1);

/// What the console needs of the host it runs in: a trait so that its tests run on a
/// small in-memory host.
pub trait HostControl: Send + Sync + 'static {
    /// This host now.
    fn status(&self) -> HostStatus;
    /// Refuse (`true`) or admit again (`false`) new connections; requests go on.
    fn set_draining(&self, draining: bool);
    /// Rescan the plugins directory and plugins.toml, as SIGHUP does.
    fn rescan(&self);
    /// Cancel a request: ended `CANCELLED` if this host holds it, workers told either way.
    /// Whether this host held it.
    fn cancel(&self, correlation_id: Uuid, operator: &str) -> bool;
    /// The request queues as the host's own watch last looked at them (`serving`, every
    /// 2 s: ready messages and consumers, or why not), by name; `None`: the console looks at
    /// them itself (passive declares on its own connection).
    fn queue_looks(&self) -> Option<Vec<(String, cluster::Look)>> {
        None
    }
    /// This host's detached tasks, newest first (the shared store's: [`tasks::StoredTasks`]).
    fn tasks(&self) -> Vec<TaskSummary> {
        Vec::new()
    }
}

/// One host as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub id: String,
    pub version: String,
    pub listen: String,
    pub uptime_seconds: u64,
    pub sockets: usize,
    pub in_flight: usize,
    pub broker_connected: bool,
    pub draining: bool,
    pub shutting_down: bool,
    pub plugins: Vec<ServedPlugin>,
    pub request_types: Vec<RequestTypeInfo>,
    /// Plugin files (or plugins.toml) refused and still refused. (`default`: the beats of
    /// hosts from before the field read as none.)
    #[serde(default)]
    pub load_errors: Vec<LoadError>,
    /// This host's last requests that ended with an error, newest first.
    #[serde(default)]
    pub recent_failures: Vec<Failure>,
}

/// A request type this host serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestTypeInfo {
    pub name: String,
    pub plugin: String,
    pub queue: String,
    pub streams: bool,
    /// Its requests in flight on this host.
    #[serde(default)]
    pub in_flight: usize,
}

/// The body of `overview` and of each pushed event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub host: HostStatus,
    /// Every host heard of on `taskgate.hosts` (this one included once its beat is back).
    pub hosts: Vec<cluster::Peer>,
    /// The request queues at the last look.
    pub queues: Vec<cluster::QueueState>,
    pub request_types: Vec<TypeStats>,
    pub sample_every_ms: u64,
    /// Every live host's last failures, newest first.
    pub failures: Vec<Failure>,
    /// Plugins that run at more than one version (or build) on the live hosts: a rolling
    /// reload under way, or one that stopped half way.
    pub mixed_plugins: Vec<String>,
    /// Whether the queues' unacknowledged counts could be read.
    pub management: ManagementState,
}

/// The console's state, shared by its handlers.
pub struct Console {
    control: Arc<dyn HostControl>,
    admission: Arc<Admission>,
    role: String,
    history: Arc<Mutex<History>>,
    peers: Mutex<cluster::Peers>,
    queues: Mutex<cluster::Queues>,
    /// How many failures the overview shows (`[console] recent_failures`).
    failures_kept: usize,
    management: Option<Management>,
    /// The last look at the management API.
    unacked: Mutex<(ManagementState, BTreeMap<String, QueueCounts>)>,
    dead_letters: Option<Arc<dyn dead_letters::DeadLetterShelf>>,
    /// The task store the hosts of a cluster share, when there is one.
    stored_tasks: Option<Arc<dyn tasks::StoredTasks>>,
    /// What this host's beats said of its failures so far: each carries only the new ones.
    failure_beats: Mutex<cluster::FailureBeats>,
    /// The overview every open event stream shares, built once a tick.
    push: Arc<push::Pusher>,
}

impl Console {
    pub fn new(control: Arc<dyn HostControl>, admission: Arc<Admission>, role: String) -> Self {
        Console {
            control,
            admission,
            role,
            history: Arc::default(),
            peers: Mutex::default(),
            queues: Mutex::default(),
            failures_kept: failures::DEFAULT_KEPT,
            management: None,
            dead_letters: None,
            stored_tasks: None,
            failure_beats: Mutex::default(),
            push: Arc::new(push::Pusher::new(PUSH_EVERY)),
            unacked: Mutex::new((
                ManagementState {
                    url: None,
                    reachable: false,
                    error: Some("not configured".to_owned()),
                },
                BTreeMap::new(),
            )),
        }
    }

    /// Lists, requeues and purges the dead letters of `shelf`.
    pub fn with_dead_letters(mut self, shelf: Arc<dyn dead_letters::DeadLetterShelf>) -> Self {
        self.dead_letters = Some(shelf);
        self
    }

    /// Lists and cancels the tasks of the shared task store `store` too.
    pub fn with_stored_tasks(mut self, store: Arc<dyn tasks::StoredTasks>) -> Self {
        self.stored_tasks = Some(store);
        self
    }

    /// Pushes (and reuses) overviews every `every` instead of [`PUSH_EVERY`] (tests).
    #[cfg(test)]
    pub fn with_push_every(mut self, every: Duration) -> Self {
        self.push = Arc::new(push::Pusher::new(every));
        self
    }

    /// Shows at most `kept` failures of all hosts.
    pub fn with_failures_kept(mut self, kept: usize) -> Self {
        self.failures_kept = kept;
        lock(&self.peers).set_failures_kept(kept);
        self
    }

    /// Reads unacknowledged counts from RabbitMQ's management API (see `spawn_management`).
    pub fn with_management(mut self, management: Management) -> Self {
        *lock(&self.unacked) = (
            ManagementState {
                url: Some(management.base.clone()),
                reachable: false,
                error: Some("not asked yet".to_owned()),
            },
            BTreeMap::new(),
        );
        self.management = Some(management);
        self
    }

    /// Asks the management API for the queues every [`cluster::QUEUES_EVERY`] until the
    /// returned task is aborted; `None` without one.
    pub fn spawn_management(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let management = self.management.clone()?;
        let console = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(cluster::QUEUES_EVERY);
            let mut said = None;
            loop {
                tick.tick().await;
                let look = management.queues().await;
                let Some(console) = console.upgrade() else {
                    return;
                };
                let error = look.as_ref().err().cloned();
                if error != said {
                    match &error {
                        Some(e) => {
                            info!(url = %management.base, error = %e, "console: RabbitMQ's management API cannot be read; queues show no unacknowledged counts")
                        }
                        None => {
                            info!(url = %management.base, "console: reading unacknowledged counts from RabbitMQ's management API")
                        }
                    }
                    said = error.clone();
                }
                lock(&console.queues).observe_counts(look.as_ref().ok());
                let mut unacked = lock(&console.unacked);
                unacked.0 = ManagementState {
                    url: Some(management.base.clone()),
                    reachable: error.is_none(),
                    error,
                };
                if let Ok(queues) = look {
                    unacked.1 = queues;
                }
            }
        }))
    }

    /// Adds a reading of the metrics (the sampler's; tests add their own).
    pub fn record(&self, reading: samples::Reading) {
        lock(&self.history).push(reading);
    }

    /// Reads `render()` (the metrics exposition) every [`samples::SAMPLE_EVERY`] until the
    /// returned task is aborted.
    pub fn spawn_sampler(
        self: &Arc<Self>,
        render: impl Fn() -> String + Send + 'static,
    ) -> JoinHandle<()> {
        let console = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(samples::SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(console) = console.upgrade() else {
                    return;
                };
                console.record(samples::read(&render(), now_ms()));
            }
        })
    }

    fn overview(&self) -> Overview {
        let request_types = lock(&self.history).stats();
        let mut host = self.control.status();
        let mut hosts = lock(&self.peers).list(now_ms());
        // Each host's failures come once, in the list; this host's from itself (its own
        // beat may be two seconds old).
        let mut failure_lists = vec![std::mem::take(&mut host.recent_failures)];
        for peer in &mut hosts {
            let theirs = std::mem::take(&mut peer.status.recent_failures);
            if peer.status.id != host.id && !peer.gone {
                failure_lists.push(theirs);
            }
        }
        let mixed_plugins = mixed_plugins(
            std::iter::once(&host).chain(hosts.iter().filter(|p| !p.gone).map(|p| &p.status)),
        );
        let mut queues = lock(&self.queues).list();
        let (management, unacked) = {
            let unacked = lock(&self.unacked);
            (unacked.0.clone(), unacked.1.clone())
        };
        for queue in &mut queues {
            queue.unacked = unacked.get(&queue.queue).map(|c| c.unacked);
        }
        Overview {
            host,
            hosts,
            queues,
            request_types,
            sample_every_ms: samples::SAMPLE_EVERY.as_millis() as u64,
            failures: failures::merge(failure_lists, self.failures_kept),
            mixed_plugins,
            management,
        }
    }

    /// The overview as JSON.
    fn overview_json(&self) -> Arc<str> {
        match serde_json::to_string(&self.overview()) {
            Ok(json) => json.into(),
            // Not expected (string keys only); the page shows the error.
            Err(e) => {
                serde_json::json!({ "error": format!("the overview could not be written: {e}") })
                    .to_string()
                    .into()
            }
        }
    }

    /// `/console` (the page) and `/console/api/…`, guarded; merged into the host's router.
    pub fn router(self: Arc<Self>) -> Router {
        let page = Router::new()
            .route(
                "/console",
                get(|| async { page_file("text/html; charset=utf-8", PAGE_HTML) }),
            )
            .route(
                "/console/",
                get(|| async { axum::response::Redirect::permanent("/console") }),
            )
            .route(
                "/console/console.js",
                get(|| async { page_file("text/javascript; charset=utf-8", PAGE_JS) }),
            )
            .route(
                "/console/console.css",
                get(|| async { page_file("text/css; charset=utf-8", PAGE_CSS) }),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                page_guard,
            ));
        Router::new()
            .route("/console/api/overview", get(overview))
            .route("/console/api/events", get(events))
            .route("/console/api/drain", post(drain))
            .route("/console/api/undrain", post(undrain))
            .route("/console/api/rescan", post(rescan))
            .route("/console/api/cancel", post(tasks::cancel))
            .route("/console/api/tasks", get(tasks::list))
            .route("/console/api/dead-letters", get(dead_letters::list))
            .route(
                "/console/api/dead-letters/requeue",
                post(dead_letters::requeue),
            )
            .route("/console/api/dead-letters/purge", post(dead_letters::purge))
            .route_layer(axum::middleware::from_fn_with_state(self.clone(), guard))
            .merge(page)
            .layer(axum::middleware::map_response(secure_headers))
            .with_state(self)
    }
}

/// The plugins whose (version, build) differ between `hosts`, by name.
fn mixed_plugins<'a>(hosts: impl Iterator<Item = &'a HostStatus>) -> Vec<String> {
    let mut builds: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for host in hosts {
        for plugin in &host.plugins {
            builds
                .entry(plugin.name.as_str())
                .or_default()
                .insert((plugin.version.as_str(), plugin.hash.as_str()));
        }
    }
    builds
        .into_iter()
        .filter(|(_, builds)| builds.len() > 1)
        .map(|(name, _)| name.to_owned())
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker link publishes this host's beat and brings the others' and the queues'.
impl ClusterObserver for Console {
    fn beat(&self) -> Vec<u8> {
        let beat = lock(&self.failure_beats).beat(self.control.status(), std::time::Instant::now());
        serde_json::to_vec(&beat).unwrap_or_default()
    }

    fn on_beat(&self, body: &[u8]) {
        if !lock(&self.peers).observe(body, now_ms()) {
            debug!("console: a heartbeat that is not one was ignored");
        }
    }

    /// The queues to declare: none when the host's own looks are there to read (one source
    /// of truth with `/readyz` and the refusals of types without workers); they are taken
    /// into the history here, at the link's pace ([`cluster::QUEUES_EVERY`]).
    fn queues(&self) -> Vec<String> {
        if let Some(looks) = self.control.queue_looks() {
            let names: Vec<String> = looks.iter().map(|(queue, _)| queue.clone()).collect();
            let mut queues = lock(&self.queues);
            for (queue, look) in looks {
                queues.observe(&queue, look);
            }
            queues.keep_only(&names);
            return Vec::new();
        }
        let mut queues: Vec<String> = self
            .control
            .status()
            .request_types
            .into_iter()
            .map(|t| t.queue)
            .collect();
        queues.sort();
        queues.dedup();
        lock(&self.queues).keep_only(&queues);
        queues
    }

    fn on_queue(&self, queue: &str, look: cluster::Look) {
        lock(&self.queues).observe(queue, look);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Lets in whom [`access::check`] admits, with the operator's name for the handlers.
async fn guard(State(console): State<Arc<Console>>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    match access::check(
        &console.admission.authenticator,
        &console.role,
        peer,
        authorization,
    ) {
        Ok(operator) => {
            request.extensions_mut().insert(operator);
            next.run(request).await
        }
        Err(refused) => {
            info!(peer = ?peer, reason = %refused, path = %request.uri().path(), "console request refused");
            refused.into_response()
        }
    }
}

/// The page, built into the binary: no framework and no build step (a few tables, small
/// SVG charts and buttons do not need one), so it is always the version the host serves.
const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/console.js");
const PAGE_CSS: &str = include_str!("page/console.css");

fn page_file(content_type: &'static str, body: &'static str) -> Response {
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page_guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match access::may_load_page(&console.admission.authenticator, peer) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The last overview while it is under a tick old (an open console's task builds one every
/// tick), else a new one.
async fn overview(State(console): State<Arc<Console>>) -> Response {
    let json = console.push.fresh().unwrap_or_else(|| {
        let json = console.overview_json();
        console.push.keep(json.clone());
        json
    });
    (
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json.to_string(),
    )
        .into_response()
}

/// Every open stream gets the same overview, built once a tick for all ([`push`]).
async fn events(
    State(console): State<Arc<Console>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let weak = Arc::downgrade(&console);
    let overviews = console
        .push
        .subscribe(move || weak.upgrade().map(|c| c.overview_json()));
    // The stream holds the console: its task builds from a weak handle, and ends (with every
    // stream) only once no stream and no router holds it.
    let stream = futures_util::stream::unfold(
        (overviews, console),
        |(mut overviews, console)| async move {
            loop {
                overviews.changed().await.ok()?;
                let json = overviews
                    .borrow_and_update()
                    .as_ref()
                    .map(|b| b.json.clone());
                if let Some(json) = json {
                    let event = Event::default().event("overview").data(&*json);
                    return Some((Ok(event), (overviews, console)));
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Serialize)]
struct Done {
    done: &'static str,
}

async fn drain(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
) -> Json<Done> {
    info!(operator = %operator.0, "console: draining this host (new connections are refused; requests finish)");
    console.control.set_draining(true);
    console.push.forget();
    Json(Done { done: "drain" })
}

async fn undrain(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
) -> Json<Done> {
    info!(operator = %operator.0, "console: this host admits new connections again");
    console.control.set_draining(false);
    console.push.forget();
    Json(Done { done: "undrain" })
}

async fn rescan(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
) -> Json<Done> {
    info!(operator = %operator.0, "console: rescanning the plugins directory and plugins.toml");
    console.control.rescan();
    console.push.forget();
    Json(Done { done: "rescan" })
}

#[cfg(test)]
mod tests;
