//! Starting the host: load plugins, connect the broker, serve HTTP + Socket.IO
//! (`/healthz`, `/readyz`, `/metrics`, Socket.IO, static files) until shutdown, then shut
//! down gracefully. The binary only parses flags and binds; tests call [`run`] on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::broker::amqp::{consume_task_replies, AmqpBroker, QueueDecl};
use crate::broker::amqp_url::redact_url;
use crate::broker::Broker;
use crate::clients::HostSink;
use crate::config::{AuthMode, Settings};
use crate::console::failures::RecentFailures;
use crate::console::{Console, HostControl, HostStatus, RequestTypeInfo};
use crate::dead_letters::DeadLetterNames;
use crate::gateway::{Gateway, GatewayOptions};
use crate::host_names::{self, AllowedHosts};
use crate::http;
use crate::limits::ConnectionCounter;
use crate::metrics;
use crate::operations::{self, OperationsToken};
use crate::origins::{self, AllowedOrigins};
use crate::plugins::PrivateCopyLoader;
use crate::reload::{self, Reloader};
use crate::request_head;
use crate::resume::{self, Sessions};
use crate::routes::RoutingTable;
use crate::serving;
use crate::shutdown::{Shutdown, CLOSE_CONNECTIONS};
use crate::sink::DropReporter;
use crate::socketio;
use crate::tasks::{StoreChoice, StoreLimits, TaskStore};
use crate::transport::SlowClientPolicy;
use crate::watcher::{self, ReloadTarget};
use crate::websocket::{self, Endpoint, Hub, WsSettings};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot create a private directory for plugin copies under {dir}: {source}")]
    RuntimeDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Binds the listening socket (with a long accept queue: `listen`), with a clear error for
/// a port in use or a bad address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    crate::listen::bind(addr).map_err(|source| ServeError::Bind { addr, source })
}

type HostGateway = Gateway<AmqpBroker, HostSink>;

#[derive(Clone)]
struct AppState {
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
    admission: Arc<Admission>,
    metrics: PrometheusHandle,
    host_id: Uuid,
}

/// Runs the host on `listener` until `shutdown` resolves, then shuts down gracefully:
/// new requests are refused `UNAVAILABLE` (and `/readyz` says 503) while the requests in
/// flight get `settings.shutdown_grace` to finish; the rest are ended `UNAVAILABLE`
/// (workers are told to stop them), sockets are closed, and the broker connection is
/// closed cleanly, taking the host's exclusive reply queue with it.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_task_store(&settings).await?;
    let host = Host::build(settings, store)?;
    let app = host.router();
    host.serve(listener, app, shutdown).await
}

/// Everything the host runs with, built from the settings before it serves.
struct Host {
    settings: Settings,
    host_id: Uuid,
    /// The Prometheus recorder behind `/metrics`, and the task that keeps its gauges.
    metrics: PrometheusHandle,
    upkeep: JoinHandle<()>,
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
    sink: Arc<HostSink>,
    /// What the WebSocket transport serves connections with.
    endpoint: Arc<Endpoint<AmqpBroker, HostSink>>,
    /// socketioxide, for every Socket.IO request the WebSocket transport does not take.
    socketio: socketio::Layer,
    origins: Arc<AllowedOrigins>,
    hosts: Arc<AllowedHosts>,
    /// The bearer token `/readyz` and `/metrics` require, if any.
    operations: OperationsToken,
    /// Hot reload's state after the initial plugin load.
    reloader: Reloader<PrivateCopyLoader>,
    queues: Vec<QueueDecl>,
    /// The task store the hosts of a cluster share (`[resume] store`), if any.
    store: Option<Arc<dyn TaskStore>>,
    admission: Arc<Admission>,
    /// Fires a rescan of the plugins (file changes, the console).
    rescan: Arc<tokio::sync::Notify>,
    /// The operator console, when `[console] enabled`, and its tasks (the sampler of its
    /// numbers, the reader of the management API).
    console: Option<(Arc<Console>, Vec<JoinHandle<()>>)>,
    /// The address the host listens on, known once it serves.
    listening: Arc<OnceLock<SocketAddr>>,
}

/// The shared task store `[resume] store` names, connected; `None` for the embedded one
/// (detached tasks then stay in the gateway). An unreachable store stops the start: the
/// host would otherwise take tasks it cannot keep.
async fn open_task_store(settings: &Settings) -> Result<Option<Arc<dyn TaskStore>>, ServeError> {
    if !settings.resume.enabled() || settings.resume.store == StoreChoice::Memory {
        return Ok(None);
    }
    let store = settings
        .resume
        .store
        .open(StoreLimits::from(&settings.resume))
        .await
        .map_err(|e| ServeError::Config(format!("[resume] store: {e}")))?;
    info!(
        store = %settings.resume.store.describe(),
        task_reply_queue = %settings.resume.store.task_reply_queue().unwrap_or_default(),
        "detached tasks live in the shared task store; their replies come through the task-reply queue"
    );
    Ok(Some(store))
}

impl Host {
    /// Loads the plugins and wires the gateway to the broker and both transports. Nothing
    /// connects or listens yet.
    fn build(settings: Settings, store: Option<Arc<dyn TaskStore>>) -> Result<Host, ServeError> {
        // First: everything after (the initial plugin load too) records into it.
        let metrics = metrics::install();
        let authenticator = Authenticator::from_config(&settings.auth)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let origins = Arc::new(
            AllowedOrigins::new(&settings.allowed_origins)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        );
        let hosts = Arc::new(
            AllowedHosts::new(&settings.allowed_hosts)
                .map_err(|e| ServeError::Config(e.to_string()))?,
        );
        let operations = OperationsToken::from_config(
            settings.operations_token_env.as_ref(),
            settings.operations_token_file.as_ref(),
            &|name| std::env::var(name).ok(),
        )
        .map_err(ServeError::Config)?;
        if operations.is_set() {
            info!("/readyz and /metrics require the operations token ([host] operations_token_*)");
        }
        let loader = PrivateCopyLoader::in_temp_dir(settings.max_plugin_libraries)
            .map_err(|source| ServeError::RuntimeDir {
                dir: std::env::temp_dir(),
                source,
            })?
            .with_inspector(settings.plugin_inspector.clone());
        let upkeep = metrics::spawn_upkeep(metrics.clone());
        let mut reloader = Reloader::new(settings.clone(), loader);
        let initial = reloader.rescan();
        reload::log_and_record(&initial.events);
        // The transports' message limit, from the types served at start.
        let mut settings = settings;
        settings.fit_message_limit(initial.routes.iter().map(|s| s.max_payload_bytes).max());
        reloader.set_message_limit(settings.max_message_bytes);
        let host_id = Uuid::new_v4();
        // Hosts hand requests to each other only when they share the cluster secret: a
        // host whose tokens are its own has nobody to hand them to (§4.5).
        let (sessions, cluster) = resume_sessions(&settings)?;
        let broker = AmqpBroker::with_dead_letters(
            settings.amqp_url.clone(),
            host_id,
            initial.queues.clone(),
            DeadLetterNames::new(&settings.dead_letter_queue),
        );

        // The transports report the clients they drop to the gateway, which owns them
        // through its sink: they get a weak handle on it as it is made.
        let mut transports = None;
        // The console's recent failures, recorded by the gateway where requests fail.
        let recent_failures = settings.console.enabled.then(|| {
            Arc::new(RecentFailures::new(
                host_id.to_string(),
                settings.console.recent_failures,
            ))
        });
        let gateway = Arc::new_cyclic(|gateway: &Weak<HostGateway>| {
            let (layer, socketio) = socketio::build(&settings, DropReporter::new(gateway.clone()));
            let hub = Arc::new(Hub::new(
                SlowClientPolicy::from(&settings.limits),
                DropReporter::new(gateway.clone()),
            ));
            let sink = Arc::new(HostSink {
                socketio,
                websocket: hub,
            });
            transports = Some((layer, sink.clone()));
            let gateway = Gateway::new(
                Arc::new(broker.clone()),
                sink,
                initial.routes,
                GatewayOptions::default(),
            )
            .with_limits(&settings.limits)
            .with_resume(settings.resume.clone())
            .with_handoff(cluster);
            let gateway = match &recent_failures {
                Some(failures) => gateway.with_recent_failures(failures.clone()),
                None => gateway,
            };
            match &store {
                Some(store) => {
                    let queue = settings.resume.store.task_reply_queue().unwrap_or_default();
                    gateway.with_task_store(store.clone(), &queue)
                }
                None => gateway,
            }
        });
        let Some((socketio_layer, sink)) = transports else {
            unreachable!("Arc::new_cyclic runs its closure before it returns")
        };
        report_lost_sessions(&broker, &gateway);
        log_security(&settings, &authenticator, &origins, &hosts);
        // One admission for both transports: the connection limit counts them together.
        let admission = Arc::new(Admission {
            authenticator,
            connections: ConnectionCounter::new(settings.limits.max_connections),
            limits: settings.limits.clone(),
            sessions,
            draining: Default::default(),
        });
        socketio::attach(&sink.socketio, gateway.clone(), admission.clone());
        let endpoint = Arc::new(Endpoint {
            gateway: gateway.clone(),
            hub: sink.websocket.clone(),
            admission: admission.clone(),
            settings: WsSettings::from(&settings),
        });
        let rescan = Arc::new(tokio::sync::Notify::new());
        let listening = Arc::new(OnceLock::new());
        let console = settings.console.enabled.then(|| {
            if admission.authenticator.mode() == AuthMode::None {
                warn!("the operator console is on without authentication ([auth] mode = \"none\"): it answers loopback connections only");
            } else {
                info!(role = %settings.console.role, "the operator console is on at /console for identities with the role");
            }
            let control = Arc::new(ConsoleHost {
                host_id,
                started: std::time::Instant::now(),
                listening: listening.clone(),
                broker: broker.clone(),
                gateway: gateway.clone(),
                admission: admission.clone(),
                rescan: rescan.clone(),
                recent_failures: recent_failures.clone(),
            });
            let mut console = Console::new(
                control,
                admission.clone(),
                settings.console.role.clone(),
            )
            .with_failures_kept(settings.console.recent_failures)
            .with_dead_letters(Arc::new(crate::console::dead_letters::AmqpShelf {
                url: settings.amqp_url.clone(),
                names: DeadLetterNames::new(&settings.dead_letter_queue),
            }));
            if let Some(store) = &store {
                console = console.with_stored_tasks(Arc::new(
                    crate::console::tasks::SharedStore(store.clone()),
                ));
            }
            match settings.console.management(&settings.amqp_url) {
                Some(Ok(management)) => console = console.with_management(management),
                Some(Err(reason)) => warn!(%reason, "console: RabbitMQ's management API will not be read; queues show no unacknowledged counts"),
                None => info!("console: [console] management_url is empty; queues show no unacknowledged counts"),
            }
            let console = Arc::new(console);
            let handle = metrics.clone();
            let mut tasks = vec![console.spawn_sampler(move || metrics::render(&handle))];
            tasks.extend(console.spawn_management());
            (console, tasks)
        });
        Ok(Host {
            settings,
            host_id,
            metrics,
            upkeep,
            broker,
            gateway,
            sink,
            endpoint,
            socketio: socketio_layer,
            origins,
            hosts,
            operations,
            reloader,
            queues: initial.queues,
            store,
            admission,
            rescan,
            console,
            listening,
        })
    }

    /// `/healthz`, `/readyz`, `/metrics`, Socket.IO on both transports, static files.
    fn router(&self) -> Router {
        // What shows the host's insides needs the operations token, when one is set.
        let operations = Router::new()
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .route_layer(axum::middleware::from_fn_with_state(
                self.operations.clone(),
                operations::guard,
            ));
        let mut app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .merge(operations)
            .with_state(AppState {
                broker: self.broker.clone(),
                gateway: self.gateway.clone(),
                admission: self.admission.clone(),
                metrics: self.metrics.clone(),
                host_id: self.host_id,
            });
        if let Some((console, _)) = &self.console {
            app = app.merge(console.clone().router());
        }
        if let Some(dir) = &self.settings.static_dir {
            info!(dir = %dir.display(), "serving static files at /");
            app = app.fallback_service(ServeDir::new(dir));
        }
        // Outermost last: CORS headers, then the origin check, then copying the request head
        // out of hyper's read buffer (so a Socket.IO connection does not keep the buffer
        // alive; see request_head), then Socket.IO.
        app.layer(self.socketio.clone())
            // WebSocket-only clients are served by the host's own transport; the rest goes on
            // to socketioxide's layer.
            .layer(axum::middleware::from_fn_with_state(
                self.endpoint.clone(),
                websocket::upgrade::divert::<AmqpBroker, HostSink>,
            ))
            .layer(axum::middleware::map_request(request_head::detach_layer))
            .layer(axum::middleware::from_fn_with_state(
                self.origins.clone(),
                origins::guard,
            ))
            .layer(origins::cors(self.origins.clone()))
            // Outermost: a request for a name this host does not answer to (DNS rebinding) is
            // refused before any route, CORS or Socket.IO sees it.
            .layer(axum::middleware::from_fn_with_state(
                self.hosts.clone(),
                host_names::guard,
            ))
    }

    /// Starts the broker session and hot reload, serves `app` until `signal`, shuts down
    /// (see [`Shutdown`]), then stops the broker and the background tasks.
    async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let stop = CancellationToken::new();
        let reload_task = start_hot_reload(
            &self.settings,
            self.reloader,
            HotReloadTarget {
                broker: self.broker.clone(),
                gateway: self.gateway.clone(),
            },
            self.queues,
            self.rescan.clone(),
            stop.clone(),
        );
        let broker_task = {
            let broker = self.broker.clone();
            let gateway = self.gateway.clone();
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                broker
                    .run(move |reply| gateway.on_reply(reply), stopped)
                    .await
            })
        };

        let task_replies =
            self.store.clone().map(|store| {
                let url = self.settings.amqp_url.clone();
                let name = format!("taskgate-host {} task replies", self.host_id);
                let broker = self.broker.clone();
                let max_reply_bytes = self.settings.limits.max_reply_bytes;
                let queue = self
                    .settings
                    .resume
                    .store
                    .task_reply_queue()
                    .unwrap_or_default();
                let stopped = stop.clone().cancelled_owned();
                tokio::spawn(async move {
                    let keep = move |reply| {
                        let (store, broker) = (store.clone(), broker.clone());
                        async move {
                            keep_task_reply(store.as_ref(), &broker, reply, max_reply_bytes).await
                        }
                    };
                    consume_task_replies(&url, &name, &queue, keep, stopped).await
                })
            });

        // Which types have workers: a look at each request queue every 2 s (`serving`).
        let serving_watch = {
            let gateway = self.gateway.clone();
            let types = move || {
                gateway
                    .routes()
                    .iter()
                    .map(|spec| (spec.name.clone(), spec.queue.clone()))
                    .collect()
            };
            tokio::spawn(serving::watch(
                self.gateway.serving().clone(),
                Arc::new(self.broker.clone()),
                types,
                stop.clone(),
            ))
        };
        let cluster_link = self.console.as_ref().map(|(console, _)| {
            tokio::spawn(crate::broker::amqp::cluster::run(
                self.settings.amqp_url.clone(),
                self.host_id,
                console.clone(),
                stop.clone(),
            ))
        });
        let addr = listener.local_addr().map_err(ServeError::Serve)?;
        // Set once, here: the only writer.
        let _ = self.listening.set(addr);
        info!(
            %addr,
            host_id = %self.host_id,
            amqp = %redact_url(&self.settings.amqp_url),
            request_types = self.gateway.routes().len(),
            chunk_linger_us = self.settings.chunk_linger.as_micros() as u64,
            "listening on {addr}"
        );
        let shutdown = Shutdown {
            gateway: self.gateway.clone(),
            sink: self.sink.clone(),
            grace: self.settings.shutdown_grace,
            publish_timeout: GatewayOptions::default().publish_timeout,
        };
        let pending = http::Pending::from(&self.settings.limits);
        serve_http(listener, app, pending, async move {
            signal.await;
            shutdown.close_clients().await;
        })
        .await;
        stop.cancel();
        if let Err(e) = broker_task.await {
            warn!(error = %e, "broker task ended abnormally");
        }
        if let Some(task) = task_replies {
            if let Err(e) = task.await {
                warn!(error = %e, "task-reply consumer ended abnormally");
            }
        }
        if let Err(e) = serving_watch.await {
            warn!(error = %e, "the watch of the queues' consumers ended abnormally");
        }
        if let Err(e) = reload_task.await {
            warn!(error = %e, "hot reload task ended abnormally");
        }
        self.upkeep.abort();
        if let Some((_, tasks)) = &self.console {
            tasks.iter().for_each(JoinHandle::abort);
        }
        if let Some(link) = cluster_link {
            if let Err(e) = link.await {
                warn!(error = %e, "the console's cluster link ended abnormally");
            }
        }
        info!("stopped");
        Ok(())
    }
}

/// Serves HTTP connections until `close_clients` (which waits for the shutdown signal)
/// has closed the sockets; HTTP connections still open [`CLOSE_CONNECTIONS`] later are
/// left behind.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    pending: http::Pending,
    close_clients: impl Future<Output = ()> + Send + 'static,
) {
    let sockets_closed = CancellationToken::new();
    let closed = sockets_closed.clone();
    let serve = http::serve(listener, app, pending, async move {
        close_clients.await;
        closed.cancel();
    });
    tokio::select! {
        () = serve => {}
        () = async {
            sockets_closed.cancelled().await;
            tokio::time::sleep(CLOSE_CONNECTIONS).await;
        } => {
            warn!("HTTP connections still open {CLOSE_CONNECTIONS:?} after the sockets were closed; stopping anyway");
        }
    }
}

/// A lost broker session ends the requests in flight `UNAVAILABLE` at once: their replies
/// went with the session's reply queue.
fn report_lost_sessions(broker: &AmqpBroker, gateway: &Arc<HostGateway>) {
    // Weak: the broker (owned by the gateway) must not keep the gateway alive.
    let gateway = Arc::downgrade(gateway);
    broker.on_session_lost(move || {
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let failed = gateway.fail_all(crate::error::UnavailableCause::BrokerLost);
        if failed > 0 {
            warn!(
                failed,
                "requests in flight ended UNAVAILABLE: their replies were lost with the broker connection"
            );
        }
    });
}

/// Sessions (protocol §4) as `[resume]` says, with a line in the log on how far they reach;
/// true when their tokens are signed with the cluster secret (every host accepts them).
fn resume_sessions(settings: &Settings) -> Result<(Option<Sessions>, bool), ServeError> {
    if !settings.resume.enabled() {
        info!("sessions are off ([resume] window = \"0s\"): requests end with their connection");
        return Ok((None, false));
    }
    let (keys, shared) = resume::keys(&settings.resume_section, &|name| std::env::var(name).ok())
        .map_err(ServeError::Config)?;
    info!(
        window_ms = settings.resume.window.as_millis() as u64,
        request_bytes = settings.resume.request_bytes,
        "sessions: a dropped client's requests wait for it {}",
        if shared {
            "(tokens signed with the cluster secret: any host of the cluster accepts them, and hosts hand requests to each other)"
        } else {
            "(no [resume] secret: tokens are accepted by this host only)"
        }
    );
    Ok((Some(Sessions::new(keys, &settings.resume)), shared))
}

/// Says at start how the host is protected; loudly when it is not.
fn log_security(
    settings: &Settings,
    authenticator: &Authenticator,
    origins: &AllowedOrigins,
    hosts: &AllowedHosts,
) {
    if authenticator.mode() == AuthMode::None {
        warn!("!!! AUTHENTICATION IS OFF ([auth] mode = \"none\"): anyone who can reach this host may connect and call every request type that requires no role. For development only: set [auth] mode = \"static\" or \"jwt\" in production. !!!");
    } else {
        info!(
            mode = authenticator.mode().as_str(),
            "clients must authenticate"
        );
    }
    if origins.allows_any() {
        warn!("Socket.IO accepts browser connections from any origin ([host] allowed_origins = [\"*\"])");
    }
    if hosts.allows_any() {
        warn!("the host answers to any Host name ([host] allowed_hosts = [\"*\"]): web pages can reach it through DNS rebinding unless a proxy in front checks Host");
    }
    let limits = &settings.limits;
    info!(
        origins = %origins.describe(),
        host_names = %hosts.describe(),
        max_payload_bytes = limits.max_payload_bytes,
        max_message_bytes = settings.max_message_bytes,
        max_in_flight = limits.max_in_flight,
        requests_per_second = limits.requests_per_second,
        request_burst = limits.request_burst,
        max_connections = limits.max_connections,
        client_backlog_bytes = limits.client_backlog_bytes,
        client_stall_ms = limits.client_stall.as_millis() as u64,
        max_reply_bytes = limits.max_reply_bytes,
        "limits (0 = off)"
    );
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.gateway.record_resume_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state.metrics),
    )
}

/// Ready = connected to the broker with the reply consumer running, the plugins loaded
/// (the initial load is done before the listener serves; hot reload swaps atomically),
/// and not shutting down.
///
/// A type without workers does not make the host unready: it is listed in `noConsumers`
/// (with a `warnings` line each) instead. A load balancer that took the host out would take
/// every other type with it, restarting hosts starts no workers, and scripts that start the
/// workers once `/readyz` answers 200 (`scripts/run`, the README) would wait forever.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let broker = state.broker.status();
    let admitting = state.gateway.is_admitting();
    // A drained host is taken out of a load balancer's rotation like one shutting down.
    let draining = state.admission.draining.load(Ordering::Relaxed);
    let ready = broker.connected && broker.consuming && admitting && !draining;
    let routes = state.gateway.routes();
    let no_consumers = state.gateway.serving().unserved(routes.iter().map(|spec| {
        (
            spec.name.as_str(),
            spec.queue.as_str(),
            spec.when_no_workers,
        )
    }));
    let warnings: Vec<String> = no_consumers
        .iter()
        .map(|u| {
            format!(
                "no worker consumes queue `{}` of request type `{}` (when_no_workers = \"{}\")",
                u.queue,
                u.request_type,
                u.when_no_workers.as_str()
            )
        })
        .collect();
    let body = json!({
        "ready": ready,
        "broker": if broker.connected { "connected" } else { "disconnected" },
        "replyConsumer": if broker.consuming { "running" } else { "stopped" },
        "replyQueue": broker.reply_queue,
        "requestTypes": routes.len(),
        "inFlight": state.gateway.in_flight(),
        "shuttingDown": !admitting,
        "draining": draining,
        "hostId": state.host_id,
        // The plugin versions serving now (hot reload changes them): name, version,
        // hash (of the library file), file, requestTypes.
        "plugins": routes.plugins(),
        // Types whose queue has had no consumer for a while (`serving`).
        "noConsumers": no_consumers,
        "warnings": warnings,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// What the console sees of and does to this host.
struct ConsoleHost {
    host_id: Uuid,
    started: std::time::Instant,
    listening: Arc<OnceLock<SocketAddr>>,
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
    admission: Arc<Admission>,
    rescan: Arc<tokio::sync::Notify>,
    recent_failures: Option<Arc<RecentFailures>>,
}

impl HostControl for ConsoleHost {
    fn status(&self) -> HostStatus {
        let routes = self.gateway.routes();
        let in_flight = self.gateway.in_flight_by_type();
        let mut request_types: Vec<RequestTypeInfo> = routes
            .iter()
            .map(|spec| RequestTypeInfo {
                name: spec.name.clone(),
                plugin: spec.plugin.clone(),
                queue: spec.queue.clone(),
                streams: spec.streams,
                in_flight: in_flight.get(&spec.name).copied().unwrap_or(0),
            })
            .collect();
        request_types.sort_by(|a, b| a.name.cmp(&b.name));
        HostStatus {
            id: self.host_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listen: self
                .listening
                .get()
                .map(ToString::to_string)
                .unwrap_or_default(),
            uptime_seconds: self.started.elapsed().as_secs(),
            sockets: self.gateway.connections(),
            in_flight: self.gateway.in_flight(),
            broker_connected: self.broker.status().connected,
            draining: self.admission.draining.load(Ordering::Relaxed),
            shutting_down: !self.gateway.is_admitting(),
            plugins: routes.plugins().to_vec(),
            request_types,
            load_errors: routes.load_errors().to_vec(),
            recent_failures: self
                .recent_failures
                .as_ref()
                .map(|f| f.list())
                .unwrap_or_default(),
        }
    }

    fn set_draining(&self, draining: bool) {
        self.admission.draining.store(draining, Ordering::Relaxed);
    }

    fn rescan(&self) {
        self.rescan.notify_one();
    }

    fn cancel(&self, correlation_id: Uuid, operator: &str) -> bool {
        self.gateway.cancel_by_operator(correlation_id, operator)
    }

    fn queue_looks(&self) -> Option<Vec<(String, crate::console::cluster::Look)>> {
        Some(self.gateway.serving().looks())
    }

    fn tasks(&self) -> Vec<crate::gateway::task_list::TaskSummary> {
        self.gateway.detached_tasks()
    }
}

/// Hot reload acts on the broker (queues of new types) and the gateway (the table).
struct HotReloadTarget {
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
}

impl ReloadTarget for HotReloadTarget {
    async fn declare_queues(&self, queues: Vec<QueueDecl>) {
        self.broker.declare_queues(queues).await;
    }

    fn swap_routes(&self, routes: RoutingTable) {
        self.gateway.set_routes(routes);
    }
}

/// Watches the plugins directory and plugins.toml and rescans on every change. Without
/// change notification (an error, e.g. the inotify limit) rescans happen on SIGHUP only.
fn start_hot_reload(
    settings: &Settings,
    reloader: Reloader<PrivateCopyLoader>,
    target: HotReloadTarget,
    queues: Vec<QueueDecl>,
    trigger: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let watch = match watcher::watch(
        &settings.plugins_dir,
        settings.config_path.as_deref(),
        trigger.clone(),
    ) {
        Ok(watch) => {
            info!(plugins_dir = %settings.plugins_dir.display(), config = ?settings.config_path, "hot reload: watching the plugins directory and plugins.toml");
            Some(watch)
        }
        Err(reason) => {
            warn!(%reason, "hot reload: not watching for changes; send SIGHUP to rescan");
            None
        }
    };
    tokio::spawn(async move {
        // The watches live as long as the loop.
        let _watch = watch;
        watcher::run(reloader, Arc::new(target), trigger, queues, stop).await;
    })
}

/// One message of the shared task-reply queue into the store; true once it is there (or
/// was dropped for good), false to try again. A reply the host ended its task for (too
/// large) tells workers to stop.
async fn keep_task_reply(
    store: &dyn TaskStore,
    broker: &AmqpBroker,
    reply: crate::broker::IncomingReply,
    max_reply_bytes: usize,
) -> bool {
    let correlation_id = reply.correlation_id.clone();
    let kept = crate::tasks::replies::keep(store, reply, max_reply_bytes).await;
    let outcome = match &kept {
        Ok(crate::tasks::replies::Kept::Dropped(_)) => "dropped",
        Ok(_) => "stored",
        Err(_) => "retry",
    };
    ::metrics::counter!(metrics::TASK_REPLIES, "outcome" => outcome).increment(1);
    match kept {
        Ok(crate::tasks::replies::Kept::Ended { cancel: true }) => {
            if let Some(id) = correlation_id.and_then(|c| Uuid::parse_str(&c).ok()) {
                if let Err(error) = broker.publish_cancel(id).await {
                    debug!(correlation_id = %id, %error, "cancellation not published");
                }
            }
            true
        }
        Ok(crate::tasks::replies::Kept::Dropped(why)) => {
            debug!(?correlation_id, why, "a task reply dropped");
            true
        }
        Ok(_) => true,
        Err(error) => {
            warn!(?correlation_id, %error, "a task reply could not be stored; trying again");
            false
        }
    }
}
