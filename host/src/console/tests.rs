//! The console's API on an in-memory host, called in-process.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use futures_util::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::auth::Authenticator;
use crate::config::{AuthMode, AuthSection};
use crate::metrics::REQUESTS_TOTAL;

struct FakeHost {
    failures: failures::RecentFailures,
    draining: AtomicBool,
    rescans: AtomicUsize,
    cancelled: Mutex<Vec<(uuid::Uuid, String)>>,
    /// Tasks this host holds besides the two every fake host has.
    more_tasks: Mutex<Vec<TaskSummary>>,
    /// How many times `status()` was asked: what an overview costs.
    statuses: AtomicUsize,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            failures: failures::RecentFailures::new("host-1", 10),
            draining: AtomicBool::default(),
            rescans: AtomicUsize::default(),
            cancelled: Mutex::default(),
            more_tasks: Mutex::default(),
            statuses: AtomicUsize::default(),
        }
    }
}

impl HostControl for FakeHost {
    fn status(&self) -> HostStatus {
        self.statuses.fetch_add(1, Ordering::Relaxed);
        HostStatus {
            id: "host-1".into(),
            version: "0.0.0".into(),
            listen: "127.0.0.1:1".into(),
            uptime_seconds: 3,
            sockets: 2,
            in_flight: 1,
            broker_connected: true,
            draining: self.draining.load(Ordering::Relaxed),
            shutting_down: false,
            plugins: Vec::new(),
            request_types: vec![RequestTypeInfo {
                name: "text.echo".into(),
                plugin: "text".into(),
                queue: "taskgate.text.echo".into(),
                streams: false,
                in_flight: 1,
            }],
            load_errors: Vec::new(),
            recent_failures: self.failures.list(),
        }
    }
    fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }
    fn rescan(&self) {
        self.rescans.fetch_add(1, Ordering::Relaxed);
    }
    fn tasks(&self) -> Vec<TaskSummary> {
        let task = |id: &str, request_type: &str, state: &str| TaskSummary {
            correlation_id: format!("corr-{id}"),
            client_id: id.into(),
            request_type: request_type.into(),
            owner: "subject alice".into(),
            state: state.into(),
            started_at_ms: 1,
            location: crate::gateway::task_list::Location::Host,
        };
        let mut tasks = vec![
            task("t1", "video.encode", "running"),
            task("t2", "text.echo", "TIMEOUT"),
        ];
        tasks.extend(self.more_tasks.lock().unwrap().iter().cloned());
        tasks
    }
    fn cancel(&self, correlation_id: uuid::Uuid, operator: &str) -> bool {
        self.cancelled
            .lock()
            .unwrap()
            .push((correlation_id, operator.to_owned()));
        true
    }
}

fn admission(authenticator: Authenticator) -> Arc<Admission> {
    let mut admission = Admission::open();
    admission.authenticator = authenticator;
    Arc::new(admission)
}

fn static_tokens(dir: &std::path::Path) -> Authenticator {
    let file = dir.join("tokens.toml");
    std::fs::write(
        &file,
        "[[tokens]]\ntoken = \"admin-token-0123456789\"\nsubject = \"alice\"\nroles = [\"admin\"]\n\
         [[tokens]]\ntoken = \"user-token-0123456789\"\nsubject = \"bob\"\nroles = [\"user\"]\n",
    )
    .unwrap();
    let section = AuthSection {
        mode: AuthMode::Static,
        tokens_file: Some(file),
        ..AuthSection::default()
    };
    Authenticator::from_config_with_env(&section, |_| None).unwrap()
}

async fn call(
    app: &Router,
    method: Method,
    path: &str,
    peer: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    call_with(app, method, path, peer, token, None).await
}

async fn call_with(
    app: &Router,
    method: Method,
    path: &str,
    peer: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = match json {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Body::from(json.to_owned())
        }
        None => Body::empty(),
    };
    let mut request = request.body(body).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn without_authentication_loopback_reads_the_overview_and_others_are_refused_clearly() {
    let host = Arc::new(FakeHost::default());
    let console = Arc::new(Console::new(
        host.clone(),
        admission(Authenticator::none()),
        "admin".into(),
    ));
    let ok =
        |n: u32| format!("{REQUESTS_TOTAL}{{request_type=\"text.echo\",outcome=\"ok\"}} {n}\n");
    console.record(samples::read(&ok(5), 0));
    console.record(samples::read(&ok(15), 5_000));
    let app = console.router();

    let (status, headers, body) = call(
        &app,
        Method::GET,
        "/console/api/overview",
        "127.0.0.1:4000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let overview: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(overview["host"]["id"], "host-1");
    assert_eq!(
        overview["host"]["requestTypes"][0]["queue"],
        "taskgate.text.echo"
    );
    assert_eq!(overview["requestTypes"][0]["name"], "text.echo");
    assert_eq!(overview["requestTypes"][0]["requestsPerSecond"], 2.0);
    assert_eq!(
        headers["content-security-policy"],
        CONTENT_SECURITY_POLICY_VALUE
    );
    assert_eq!(headers["cache-control"], "no-store");

    let (status, headers, body) = call(
        &app,
        Method::GET,
        "/console/api/overview",
        "10.1.2.3:4000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("loopback"), "{body}");
    assert!(
        headers.contains_key("content-security-policy"),
        "refusals carry the policy too"
    );
}

#[tokio::test]
async fn with_authentication_only_the_role_gets_in_and_actions_reach_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(FakeHost::default());
    let app = Arc::new(Console::new(
        host.clone(),
        admission(static_tokens(dir.path())),
        "admin".into(),
    ))
    .router();
    let far = "203.0.113.9:4000";
    let (status, headers, _) = call(&app, Method::GET, "/console/api/overview", far, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, _, body) = call(
        &app,
        Method::POST,
        "/console/api/drain",
        far,
        Some("user-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("`admin`"), "{body}");
    assert!(!host.draining.load(Ordering::Relaxed));

    let admin = Some("admin-token-0123456789");
    let (status, _, _) = call(&app, Method::POST, "/console/api/drain", far, admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(host.draining.load(Ordering::Relaxed));
    let (_, _, body) = call(&app, Method::GET, "/console/api/overview", far, admin).await;
    assert!(body.contains(r#""draining":true"#), "{body}");
    call(&app, Method::POST, "/console/api/undrain", far, admin).await;
    assert!(!host.draining.load(Ordering::Relaxed));
    call(&app, Method::POST, "/console/api/rescan", far, admin).await;
    assert_eq!(host.rescans.load(Ordering::Relaxed), 1);
    let (status, _, _) = call(&app, Method::GET, "/console/api/drain", far, admin).await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "actions are POST only"
    );
}

#[tokio::test]
async fn a_cancel_names_a_correlation_id_and_bad_bodies_get_a_clear_error() {
    let host = Arc::new(FakeHost::default());
    let app = Arc::new(Console::new(
        host.clone(),
        admission(Authenticator::none()),
        "admin".into(),
    ))
    .router();
    let id = uuid::Uuid::new_v4();
    let (status, _, body) = call_with(
        &app,
        Method::POST,
        "/console/api/cancel",
        "127.0.0.1:1",
        None,
        Some(&format!(r#"{{"correlationId":"{id}"}}"#)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""heldHere":true"#), "{body}");
    assert_eq!(
        host.cancelled.lock().unwrap().as_slice(),
        &[(id, "anonymous@127.0.0.1".to_owned())]
    );
    for bad in [r#"{"correlationId":"nope"}"#, "[]", "{"] {
        let (status, _, body) = call_with(
            &app,
            Method::POST,
            "/console/api/cancel",
            "127.0.0.1:1",
            None,
            Some(bad),
        )
        .await;
        assert!(status.is_client_error(), "{bad}: {status}");
        assert!(body.contains("correlationId"), "{body}");
    }
    assert_eq!(host.cancelled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn the_page_is_served_with_the_policy_and_without_inline_script_or_markup_from_strings() {
    let dir = tempfile::tempdir().unwrap();
    let with_auth = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(static_tokens(dir.path())),
        "admin".into(),
    ))
    .router();
    let (status, headers, html) =
        call(&with_auth, Method::GET, "/console", "203.0.113.9:1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(
        headers["content-security-policy"],
        CONTENT_SECURITY_POLICY_VALUE
    );
    assert!(html.contains(r#"<script src="/console/console.js" defer></script>"#));
    assert_eq!(html.matches("<script").count(), 1, "no inline script");
    let (status, headers, js) = call(
        &with_auth,
        Method::GET,
        "/console/console.js",
        "203.0.113.9:1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    // Strings from the host reach the page as text only.
    for markup in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(markup), "console.js uses {markup}");
    }
    let without_auth = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(Authenticator::none()),
        "admin".into(),
    ))
    .router();
    let (status, _, _) = call(
        &without_auth,
        Method::GET,
        "/console",
        "203.0.113.9:1",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "loopback only without authentication"
    );
    let (status, _, _) = call(&without_auth, Method::GET, "/console", "127.0.0.1:1", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_push_channel_sends_the_overview_as_server_sent_events() {
    let console = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(Authenticator::none()),
        "admin".into(),
    ));
    let mut request = Request::builder()
        .uri("/console/api/events")
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo("127.0.0.1:1".parse::<SocketAddr>().unwrap()));
    let response = console.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let chunk = tokio::time::timeout(Duration::from_secs(3), body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&chunk).into_owned();
    assert!(text.starts_with("event: overview\ndata: {"), "{text}");
    assert!(text.contains(r#""id":"host-1""#), "{text}");
}

async fn open_events(app: &Router) -> axum::body::BodyDataStream {
    let mut request = Request::builder()
        .uri("/console/api/events")
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo("127.0.0.1:1".parse::<SocketAddr>().unwrap()));
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().into_data_stream()
}

/// Ten open consoles cost one overview a tick, not ten; none open costs none.
#[tokio::test]
async fn open_streams_share_one_overview_per_tick_and_none_open_builds_none() {
    const STREAMS: usize = 10;
    const TICK: Duration = Duration::from_millis(100);
    let host = Arc::new(FakeHost::default());
    let console = Arc::new(
        Console::new(
            host.clone(),
            admission(Authenticator::none()),
            "admin".into(),
        )
        .with_push_every(TICK),
    );
    let app = console.router();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(open_events(&app).await);
    }
    // Every stream gets the overview, and keeps getting it tick after tick.
    let started = host.statuses.load(Ordering::Relaxed);
    let ticks = 5;
    for _ in 0..ticks {
        for stream in &mut streams {
            let chunk = tokio::time::timeout(Duration::from_secs(3), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&chunk).into_owned();
            assert!(text.starts_with("event: overview\ndata: {"), "{text}");
        }
    }
    let built = host.statuses.load(Ordering::Relaxed) - started;
    println!("{STREAMS} streams, {ticks} events each: status() asked {built} times");
    assert!(
        built <= ticks + 2,
        "one overview a tick for all {STREAMS} streams, not one each: {built} built"
    );
    // Closed: the building stops.
    drop(streams);
    tokio::time::sleep(TICK * 3).await;
    let after_close = host.statuses.load(Ordering::Relaxed);
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(
        host.statuses.load(Ordering::Relaxed),
        after_close,
        "no console open, no overview built"
    );
    // And starts again for the next one.
    let mut again = open_events(&app).await;
    let chunk = tokio::time::timeout(Duration::from_secs(3), again.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains(r#""id":"host-1""#));

    // A GET within a tick (1 s by default) of the last overview takes it; an action makes
    // the next one fresh.
    let host = Arc::new(FakeHost::default());
    let app = Arc::new(Console::new(
        host.clone(),
        admission(Authenticator::none()),
        "admin".into(),
    ))
    .router();
    let get = || {
        call(
            &app,
            Method::GET,
            "/console/api/overview",
            "127.0.0.1:1",
            None,
        )
    };
    let (_, _, first) = get().await;
    let (_, headers, second) = get().await;
    assert_eq!(host.statuses.load(Ordering::Relaxed), 1);
    assert_eq!(first, second);
    assert_eq!(headers["content-type"], "application/json");
    call(
        &app,
        Method::POST,
        "/console/api/drain",
        "127.0.0.1:1",
        None,
    )
    .await;
    let (_, _, drained) = get().await;
    assert!(drained.contains(r#""draining":true"#), "{drained}");
}

fn plugin(name: &str, version: &str, hash: &str) -> ServedPlugin {
    ServedPlugin {
        name: name.into(),
        version: version.into(),
        hash: hash.into(),
        file: format!("/plugins/lib{name}.so").into(),
        request_types: vec![format!("{name}.x")],
    }
}

#[tokio::test]
async fn every_hosts_failures_come_once_newest_first_and_mixed_plugin_versions_are_flagged() {
    let host = Arc::new(FakeHost::default());
    host.failures.record(
        "text.echo",
        "TIMEOUT",
        "<img src=x onerror=alert(1)>",
        "c-here",
        "00-a",
    );
    let console = Arc::new(Console::new(
        host.clone(),
        admission(Authenticator::none()),
        "admin".into(),
    ));
    // Another host's beat: its failure, an older plugin build, a load error.
    let mut peer = host.status();
    peer.id = "host-2".into();
    peer.plugins = vec![
        plugin("text", "1.0", "aaaa"),
        plugin("words", "1.0", "cccc"),
    ];
    peer.load_errors = vec![crate::routes::LoadError {
        file: "/plugins/libtext.so".into(),
        reason: "not a taskgate plugin".into(),
        at_ms: 1,
    }];
    peer.recent_failures = vec![failures::Failure {
        request_type: "text.echo".into(),
        code: "WORKER_ERROR".into(),
        message: "boom".into(),
        correlation_id: "c-there".into(),
        traceparent: "00-b".into(),
        host: "host-2".into(),
        at_ms: 1,
    }];
    console.on_beat(&serde_json::to_vec(&peer).unwrap());
    // This host's own beat (with its failure) must not count it twice.
    console.on_beat(&serde_json::to_vec(&host.status()).unwrap());
    let mut third = host.status();
    third.id = "host-3".into();
    third.plugins = vec![
        plugin("text", "1.1", "bbbb"),
        plugin("words", "1.0", "cccc"),
    ];
    third.recent_failures = Vec::new();
    console.on_beat(&serde_json::to_vec(&third).unwrap());

    let (_, _, body) = call(
        &console.router(),
        Method::GET,
        "/console/api/overview",
        "127.0.0.1:1",
        None,
    )
    .await;
    let overview: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = overview["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["correlationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-here", "c-there"], "{body}");
    assert_eq!(
        overview["failures"][0]["message"], "<img src=x onerror=alert(1)>",
        "kept as text; the page sets it with textContent"
    );
    assert_eq!(overview["failures"][1]["host"], "host-2");
    assert_eq!(overview["mixedPlugins"], serde_json::json!(["text"]));
    let hosts = overview["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(hosts
        .iter()
        .all(|h| h["recentFailures"].as_array().unwrap().is_empty()));
    let second = hosts.iter().find(|h| h["id"] == "host-2").unwrap();
    assert_eq!(second["loadErrors"][0]["reason"], "not a taskgate plugin");
    assert_eq!(overview["host"]["requestTypes"][0]["inFlight"], 1);
    assert_eq!(overview["management"]["reachable"], false);
}

#[tokio::test]
async fn tasks_are_listed_and_filtered() {
    let app = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(Authenticator::none()),
        "admin".into(),
    ))
    .router();
    let local = "127.0.0.1:1";
    let (status, _, body) = call(&app, Method::GET, "/console/api/tasks", local, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(all["sharedStore"], "none", "{body}");
    assert_eq!(all["tasks"][0]["where"], "host");
    let (_, _, body) = call(&app, Method::GET, "/console/api/tasks?q=VIDEO", local, None).await;
    let some: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(some["tasks"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(some["tasks"][0]["clientId"], "t1");
    let (_, _, body) = call(
        &app,
        Method::GET,
        "/console/api/tasks?q=timeout",
        local,
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["tasks"][0]["clientId"],
        "t2"
    );
}

mod stored {
    //! The shared task store's tasks in the console, on the in-memory store.

    use std::time::Duration;

    use crate::resume::{Owner, SessionId};
    use crate::tasks::{
        Attachment, Entry, MemoryTaskStore, NewTask, OwnerKey, StoreLimits, TaskState, TaskStore,
    };

    use super::super::tasks::{SharedStore, StoreCancel, StoredTasks};
    use super::*;

    const LOCAL: &str = "127.0.0.1:1";

    fn memory_store() -> Arc<dyn TaskStore> {
        Arc::new(MemoryTaskStore::new(StoreLimits {
            task_bytes: 1 << 20,
            result_ttl: Duration::from_secs(60),
            max_tasks: 100,
        }))
    }

    /// A task started at `at_ms` (as listed; the store's deadline runs from its own clock).
    async fn started(
        store: &Arc<dyn TaskStore>,
        owner: &Owner,
        id: &str,
        at_ms: u64,
    ) -> uuid::Uuid {
        started_for(
            store,
            owner,
            id,
            at_ms,
            Duration::from_secs(100 * 365 * 24 * 3600),
        )
        .await
    }

    async fn started_for(
        store: &Arc<dyn TaskStore>,
        owner: &Owner,
        id: &str,
        at_ms: u64,
        timeout: Duration,
    ) -> uuid::Uuid {
        let task = NewTask {
            owner: OwnerKey::of(owner),
            client_id: id.into(),
            correlation_id: uuid::Uuid::new_v4(),
            request_type: "video.encode".into(),
            started_at_ms: at_ms,
            timeout,
        };
        store.create(&task).await.unwrap();
        task.correlation_id
    }

    fn console_with(host: Arc<FakeHost>, stored: Arc<dyn StoredTasks>) -> Router {
        Arc::new(
            Console::new(host, admission(Authenticator::none()), "admin".into())
                .with_stored_tasks(stored),
        )
        .router()
    }

    async fn listing(app: &Router, path: &str) -> Value {
        let (status, _, body) = call(app, Method::GET, path, LOCAL, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn cancel(app: &Router, id: uuid::Uuid) -> Value {
        let (status, _, body) = call_with(
            app,
            Method::POST,
            "/console/api/cancel",
            LOCAL,
            None,
            Some(&format!(r#"{{"correlationId":"{id}"}}"#)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    #[tokio::test]
    async fn the_stores_tasks_are_listed_with_the_hosts_once_each_saying_where_they_live() {
        let store = memory_store();
        let alice = Owner::Subject("alice".into());
        let session = SessionId::new();
        let running = started(&store, &alice, "encode-1", 30).await;
        let ended = started(&store, &Owner::Session(session), "encode-2", 20).await;
        store
            .finish(
                ended,
                &crate::tasks::replies::failed(&crate::error::RequestError::Timeout(5).to_body()),
            )
            .await
            .unwrap();
        // A task the host lists itself as well is shown once, as the host has it.
        let both = started(&store, &alice, "encode-3", 10).await;
        let host = Arc::new(FakeHost::default());
        host.more_tasks.lock().unwrap().push(TaskSummary {
            correlation_id: both.to_string(),
            client_id: "encode-3".into(),
            request_type: "video.encode".into(),
            owner: "subject alice".into(),
            state: "parked".into(),
            started_at_ms: 10,
            location: crate::gateway::task_list::Location::Host,
        });
        let app = console_with(host, Arc::new(SharedStore(store.clone())));

        let all = listing(&app, "/console/api/tasks").await;
        assert_eq!(all["sharedStore"], "read", "{all}");
        assert!(all.get("storeError").is_none());
        let rows = all["tasks"].as_array().unwrap();
        let ids: Vec<&str> = rows
            .iter()
            .map(|t| t["clientId"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["encode-1", "encode-2", "encode-3", "t1", "t2"],
            "newest first: {all}"
        );
        assert_eq!(rows[0]["where"], "store");
        assert_eq!(rows[0]["correlationId"], running.to_string());
        assert_eq!(rows[0]["state"], "running");
        assert_eq!(
            rows[1]["state"], "TIMEOUT",
            "a failed task says its error code"
        );
        assert_eq!(rows[2]["where"], "host");
        assert_eq!(rows[2]["state"], "parked");
        for row in &rows[..2] {
            let owner = row["owner"].as_str().unwrap();
            assert!(owner.starts_with("owner ") && owner.len() == 14, "{owner}");
            assert!(!owner.contains("alice") && !owner.contains(&session.to_string()));
        }
        assert_ne!(rows[0]["owner"], rows[1]["owner"], "owners are told apart");

        let stored = listing(&app, "/console/api/tasks?q=STORE").await;
        assert_eq!(stored["tasks"].as_array().unwrap().len(), 2, "{stored}");
        let timed_out = listing(&app, "/console/api/tasks?q=timeout").await;
        let ids: Vec<&str> = timed_out["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["clientId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["encode-2", "t2"]);
    }

    #[tokio::test]
    async fn a_cancel_ends_a_stored_task_cancelled_for_its_attached_client_and_tells_workers() {
        let store = memory_store();
        let id = started(&store, &Owner::Subject("alice".into()), "encode-1", 1).await;
        // The client, attached on whichever host.
        let mut attached = Attachment::open(store.clone(), id, -1)
            .await
            .unwrap()
            .unwrap();
        let host = Arc::new(FakeHost::default());
        let app = console_with(host.clone(), Arc::new(SharedStore(store.clone())));

        let answer = cancel(&app, id).await;
        assert_eq!(answer["foundInStore"], true, "{answer}");
        assert_eq!(answer["cancelledInStore"], true, "{answer}");
        assert!(answer.get("storeError").is_none());
        let Some(Entry::End(outcome)) =
            tokio::time::timeout(Duration::from_secs(5), attached.next())
                .await
                .unwrap()
                .unwrap()
        else {
            panic!("the attached client gets the outcome");
        };
        assert_eq!(outcome.state, TaskState::Cancelled);
        assert!(outcome.response.get().contains("CANCELLED"));
        let record = store.record(id).await.unwrap().unwrap();
        assert!(record.cancel_requested);
        assert_eq!(
            host.cancelled.lock().unwrap().as_slice(),
            &[(id, "anonymous@127.0.0.1".to_owned())],
            "workers are told (the host's cancel)"
        );
        let listed = listing(&app, "/console/api/tasks?q=encode-1").await;
        assert_eq!(listed["tasks"][0]["state"], "CANCELLED", "{listed}");

        let again = cancel(&app, id).await;
        assert_eq!(
            (&again["foundInStore"], &again["cancelledInStore"]),
            (&Value::Bool(true), &Value::Bool(false))
        );
        let unknown = cancel(&app, uuid::Uuid::new_v4()).await;
        assert_eq!(unknown["foundInStore"], false, "{unknown}");
        assert_eq!(unknown["heldHere"], true, "the fake host holds everything");
    }

    /// A store that fails, or never answers.
    struct Broken {
        hangs: bool,
    }

    #[async_trait::async_trait]
    impl StoredTasks for Broken {
        async fn recent(&self, _: usize) -> Result<Vec<TaskSummary>, String> {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            Err("the task store is unreachable: connection refused".into())
        }
        async fn cancel(&self, _: uuid::Uuid, _: &str) -> Result<StoreCancel, String> {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            Err("the task store is unreachable: connection refused".into())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_cannot_be_read_leaves_the_hosts_tasks_listed_and_says_so() {
        for hangs in [false, true] {
            let host = Arc::new(FakeHost::default());
            let app = console_with(host.clone(), Arc::new(Broken { hangs }));
            let started = tokio::time::Instant::now();
            let all = listing(&app, "/console/api/tasks").await;
            assert!(
                started.elapsed() <= super::super::tasks::STORE_WAIT + Duration::from_millis(10)
            );
            assert_eq!(all["tasks"].as_array().unwrap().len(), 2, "{all}");
            assert_eq!(all["sharedStore"], "unreadable");
            let error = all["storeError"].as_str().unwrap();
            assert!(
                error.contains(if hangs {
                    "did not answer within 2 s"
                } else {
                    "unreachable"
                }),
                "{error}"
            );

            let id = uuid::Uuid::new_v4();
            let answer = cancel(&app, id).await;
            assert!(answer["storeError"].is_string(), "{answer}");
            assert!(answer.get("foundInStore").is_none());
            assert_eq!(
                host.cancelled.lock().unwrap().len(),
                1,
                "workers are told all the same"
            );
        }
    }

    #[tokio::test]
    async fn a_running_task_past_its_deadline_is_listed_overdue() {
        // Its host is gone (a live host writes TIMEOUT at the deadline): the console says
        // so rather than `running` until someone attaches.
        let store = memory_store();
        let alice = Owner::Subject("alice".into());
        let overdue = started_for(&store, &alice, "stuck", 1_000, Duration::ZERO).await;
        let fine = started(&store, &alice, "fine", 2_000).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let app = console_with(Arc::new(FakeHost::default()), Arc::new(SharedStore(store)));

        let all = listing(&app, "/console/api/tasks?q=store").await;
        let state_of = |id: uuid::Uuid| {
            all["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["correlationId"] == id.to_string())
                .map(|t| t["state"].clone())
                .unwrap()
        };
        assert_eq!(state_of(overdue), "overdue", "{all}");
        assert_eq!(state_of(fine), "running", "{all}");
    }
}

#[derive(Default)]
struct FakeShelf {
    letters: Mutex<Vec<crate::dead_letters::DeadLetter>>,
}

#[async_trait::async_trait]
impl dead_letters::DeadLetterShelf for FakeShelf {
    async fn list(&self) -> Result<Vec<crate::dead_letters::DeadLetter>, String> {
        Ok(self.letters.lock().unwrap().clone())
    }
    async fn requeue(&self, id: &str) -> Result<String, String> {
        let mut letters = self.letters.lock().unwrap();
        let at = letters
            .iter()
            .position(|d| d.id == id)
            .ok_or_else(|| format!("no dead letter with id `{id}`"))?;
        Ok(letters.remove(at).queue.unwrap_or_default())
    }
    async fn purge(&self) -> Result<u32, String> {
        let mut letters = self.letters.lock().unwrap();
        let n = letters.len() as u32;
        letters.clear();
        Ok(n)
    }
}

#[tokio::test]
async fn dead_letters_are_listed_requeued_and_purged_by_the_role_only() {
    let dir = tempfile::tempdir().unwrap();
    let shelf = Arc::new(FakeShelf::default());
    let letter = |id: &str| crate::dead_letters::DeadLetter {
        id: id.into(),
        request_type: Some("text.echo".into()),
        queue: Some("q.echo".into()),
        reason: Some("delivery_limit".into()),
        deliveries: Some(3),
        died_at: Some(1_700_000_000),
        headers: serde_json::Map::new(),
        body: "x".repeat(1000).into_bytes(),
    };
    shelf
        .letters
        .lock()
        .unwrap()
        .extend([letter("d1"), letter("d2"), letter("d3")]);
    let app = Arc::new(
        Console::new(
            Arc::new(FakeHost::default()),
            admission(static_tokens(dir.path())),
            "admin".into(),
        )
        .with_dead_letters(shelf.clone()),
    )
    .router();
    let far = "203.0.113.9:4000";
    let admin = Some("admin-token-0123456789");
    let (status, _, _) = call(
        &app,
        Method::POST,
        "/console/api/dead-letters/purge",
        far,
        Some("user-token-0123456789"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(shelf.letters.lock().unwrap().len(), 3);
    let (status, _, body) = call(&app, Method::GET, "/console/api/dead-letters", far, admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listing: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listing["total"], 3);
    assert_eq!(listing["deadLetters"][0]["id"], "d1");
    assert_eq!(listing["deadLetters"][0]["bytes"], 1000);
    assert_eq!(
        listing["deadLetters"][0]["payload"].as_str().unwrap().len(),
        200
    );
    let (status, _, body) = call_with(
        &app,
        Method::POST,
        "/console/api/dead-letters/requeue",
        far,
        admin,
        Some(r#"{"id":"d2"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""queue":"q.echo""#), "{body}");
    let (status, _, body) = call_with(
        &app,
        Method::POST,
        "/console/api/dead-letters/requeue",
        far,
        admin,
        Some(r#"{"id":"d2"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("no dead letter"), "{body}");
    let (_, _, body) = call(
        &app,
        Method::POST,
        "/console/api/dead-letters/purge",
        far,
        admin,
    )
    .await;
    assert!(body.contains(r#""purged":2"#), "{body}");
    // A console without a shelf says so.
    let bare = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(Authenticator::none()),
        "admin".into(),
    ))
    .router();
    let (status, _, body) = call(
        &bare,
        Method::GET,
        "/console/api/dead-letters",
        "127.0.0.1:1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("dead-letter"), "{body}");
}

/// The management API's unacknowledged counts join the passive declares' looks; a console
/// whose management API does not answer says so.
#[tokio::test]
async fn unacknowledged_counts_come_from_the_management_api_when_it_answers() {
    use cluster::Look;
    let app = axum::Router::new().route(
        "/api/queues/{vhost}",
        get(|| async {
            r#"[{"name":"taskgate.text.echo","messages_ready":5,"messages_unacknowledged":9,"consumers":1}]"#
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let management =
        Management::from_urls(Some(&format!("http://{address}")), "amqp://localhost").unwrap();
    let console = Arc::new(
        Console::new(
            Arc::new(FakeHost::default()),
            admission(Authenticator::none()),
            "admin".into(),
        )
        .with_management(management),
    );
    let look: Look = Ok((5, 1));
    console.on_queue("taskgate.text.echo", look);
    let task = console.spawn_management().unwrap();
    let overview = async || -> Value {
        let (_, _, body) = call(
            &console.clone().router(),
            Method::GET,
            "/console/api/overview",
            "127.0.0.1:1",
            None,
        )
        .await;
        serde_json::from_str(&body).unwrap()
    };
    let mut seen = Value::Null;
    for _ in 0..50 {
        seen = overview().await;
        if seen["management"]["reachable"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen["queues"][0]["unacked"], 9, "{seen}");
    assert_eq!(seen["management"]["url"], format!("http://{address}"));
    server.abort();
    task.abort();

    let unset = Arc::new(Console::new(
        Arc::new(FakeHost::default()),
        admission(Authenticator::none()),
        "admin".into(),
    ));
    unset.on_queue("taskgate.text.echo", Ok((5, 1)));
    let (_, _, body) = call(
        &unset.router(),
        Method::GET,
        "/console/api/overview",
        "127.0.0.1:1",
        None,
    )
    .await;
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["queues"][0]["unacked"], Value::Null);
    assert_eq!(seen["management"]["reachable"], false);
    assert_eq!(seen["management"]["error"], "not configured");
}

/// A host whose own watch of the queues (`serving`) has looked at them.
struct WatchingHost {
    inner: FakeHost,
    looks: Vec<(String, cluster::Look)>,
}

impl HostControl for WatchingHost {
    fn status(&self) -> HostStatus {
        self.inner.status()
    }
    fn set_draining(&self, draining: bool) {
        self.inner.set_draining(draining);
    }
    fn rescan(&self) {}
    fn cancel(&self, correlation_id: uuid::Uuid, operator: &str) -> bool {
        self.inner.cancel(correlation_id, operator)
    }
    fn queue_looks(&self) -> Option<Vec<(String, cluster::Look)>> {
        Some(self.looks.clone())
    }
}

/// The console reads the looks the host takes anyway instead of declaring the queues again:
/// one source of truth for the page, `/readyz` and the refusals of types without workers.
#[tokio::test]
async fn the_console_takes_the_hosts_own_looks_at_the_queues_and_declares_nothing() {
    let host = Arc::new(WatchingHost {
        inner: FakeHost::default(),
        looks: vec![
            ("taskgate.text.echo".to_owned(), Ok((7, 2))),
            ("taskgate.gone".to_owned(), Err("no such queue".to_owned())),
        ],
    });
    let console = Arc::new(Console::new(
        host,
        admission(Authenticator::none()),
        "admin".into(),
    ));
    assert!(
        ClusterObserver::queues(console.as_ref()).is_empty(),
        "nothing for the cluster link to declare"
    );
    let (_, _, body) = call(
        &console.router(),
        Method::GET,
        "/console/api/overview",
        "127.0.0.1:1",
        None,
    )
    .await;
    let overview: Value = serde_json::from_str(&body).unwrap();
    let queues = overview["queues"].as_array().unwrap();
    let echo = queues
        .iter()
        .find(|q| q["queue"] == "taskgate.text.echo")
        .unwrap();
    assert_eq!(echo["ready"], 7, "{body}");
    assert_eq!(echo["consumers"], 2);
    let gone = queues
        .iter()
        .find(|q| q["queue"] == "taskgate.gone")
        .unwrap();
    assert_eq!(gone["error"], "no such queue");
    assert_eq!(gone["alarm"], true);
}
