//! Starting the host: load plugins, connect the broker, serve HTTP + Socket.IO
//! (`/healthz`, `/readyz`, `/metrics`, Socket.IO, static files) until shutdown, then shut
//! down gracefully. The binary only parses flags and binds; tests call [`run`] on port 0.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tracing::{info, warn};
use uuid::Uuid;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::broker::amqp::{AmqpBroker, QueueDecl};
use crate::broker::amqp_url::redact_url;
use crate::clients::{ClientId, HostSink};
use crate::config::{AuthMode, Settings};
use crate::gateway::{Gateway, GatewayOptions};
use crate::host_names::{self, AllowedHosts};
use crate::limits::ConnectionCounter;
use crate::metrics;
use crate::origins::{self, AllowedOrigins};
use crate::plugins::PrivateCopyLoader;
use crate::reload::{self, Reloader};
use crate::request_head;
use crate::routes::RoutingTable;
use crate::socketio;
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

/// Binds the listening socket, with a clear error for a port in use or a bad address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

type HostGateway = Gateway<AmqpBroker, HostSink>;

#[derive(Clone)]
struct AppState {
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
    metrics: PrometheusHandle,
    host_id: Uuid,
}

/// After the last response, how long sockets stay open so it leaves the send buffers:
/// closing a socket drops what its transport has not written yet.
const LINGER: Duration = Duration::from_millis(200);
/// How long shutdown waits for the backlogs of slow clients to drain.
const BACKLOG_DRAIN: Duration = Duration::from_secs(2);
/// How long connections may take to close once the sockets are closed.
const CLOSE_CONNECTIONS: Duration = Duration::from_secs(5);

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
    // First: everything after (the initial plugin load too) records into it.
    let metrics_handle = metrics::install();
    let authenticator = Authenticator::from_config(&settings.auth)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    let allowed_origins = Arc::new(
        AllowedOrigins::new(&settings.allowed_origins)
            .map_err(|e| ServeError::Config(e.to_string()))?,
    );
    let allowed_hosts = Arc::new(
        AllowedHosts::new(&settings.allowed_hosts)
            .map_err(|e| ServeError::Config(e.to_string()))?,
    );
    let loader =
        PrivateCopyLoader::in_temp_dir(settings.max_plugin_libraries).map_err(|source| {
            ServeError::RuntimeDir {
                dir: std::env::temp_dir(),
                source,
            }
        })?;
    let upkeep = metrics::spawn_upkeep(metrics_handle.clone());
    let mut reloader = Reloader::new(settings.clone(), loader);
    let initial = reloader.rescan();
    reload::log_and_record(&initial.events);
    let host_id = Uuid::new_v4();
    let broker = AmqpBroker::new(settings.amqp_url.clone(), host_id, initial.queues.clone());

    let ws_settings = WsSettings::from(&settings);
    let (layer, socketio) = socketio::build(&settings);
    let hub = Arc::new(Hub::new(SlowClientPolicy::from(&settings.limits)));
    let sink = Arc::new(HostSink {
        socketio,
        websocket: hub.clone(),
    });
    let options = GatewayOptions::default();
    let publish_timeout = options.publish_timeout;
    let gateway = Arc::new(
        Gateway::new(
            Arc::new(broker.clone()),
            sink.clone(),
            initial.routes,
            options,
        )
        .with_limits(&settings.limits),
    );
    {
        let gateway = Arc::downgrade(&gateway);
        sink.socketio.on_drop(move |sid| {
            if let Some(gateway) = gateway.upgrade() {
                gateway.disconnected(ClientId::SocketIo(sid));
            }
        });
    }
    {
        let gateway = Arc::downgrade(&gateway);
        hub.on_drop(move |id| {
            if let Some(gateway) = gateway.upgrade() {
                gateway.disconnected(ClientId::WebSocket(id));
            }
        });
    }
    log_security(&settings, &authenticator, &allowed_origins, &allowed_hosts);
    // One admission for both transports: the connection limit counts them together.
    let admission = Arc::new(Admission {
        authenticator,
        connections: ConnectionCounter::new(settings.limits.max_connections),
        limits: settings.limits.clone(),
    });
    socketio::attach(&sink.socketio, gateway.clone(), admission.clone());
    let endpoint = Arc::new(Endpoint {
        gateway: gateway.clone(),
        hub: hub.clone(),
        admission,
        settings: ws_settings,
    });
    {
        // Weak: the broker (owned by the gateway) must not keep the gateway alive.
        let gateway = Arc::downgrade(&gateway);
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

    let stop = CancellationToken::new();
    let reload_task = start_hot_reload(
        &settings,
        reloader,
        HotReloadTarget {
            broker: broker.clone(),
            gateway: gateway.clone(),
        },
        initial.queues,
        stop.clone(),
    );
    let broker_task = {
        let broker = broker.clone();
        let gateway = gateway.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            broker
                .run(move |reply| gateway.on_reply(reply), stopped)
                .await
        })
    };

    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            broker: broker.clone(),
            gateway: gateway.clone(),
            metrics: metrics_handle,
            host_id,
        });
    if let Some(dir) = &settings.static_dir {
        info!(dir = %dir.display(), "serving static files at /");
        app = app.fallback_service(ServeDir::new(dir));
    }
    // Outermost last: CORS headers, then the origin check, then copying the request head
    // out of hyper's read buffer (so a Socket.IO connection does not keep the buffer
    // alive; see request_head), then Socket.IO.
    let app = app
        .layer(layer)
        // WebSocket-only clients are served by the host's own transport; the rest goes on
        // to socketioxide's layer.
        .layer(axum::middleware::from_fn_with_state(
            endpoint,
            websocket::upgrade::divert::<AmqpBroker, HostSink>,
        ))
        .layer(axum::middleware::map_request(request_head::detach_layer))
        .layer(axum::middleware::from_fn_with_state(
            allowed_origins.clone(),
            origins::guard,
        ))
        .layer(origins::cors(allowed_origins))
        // Outermost: a request for a name this host does not answer to (DNS rebinding) is
        // refused before any route, CORS or Socket.IO sees it.
        .layer(axum::middleware::from_fn_with_state(
            allowed_hosts.clone(),
            host_names::guard,
        ));

    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    info!(
        %addr,
        host_id = %host_id,
        amqp = %redact_url(&settings.amqp_url),
        request_types = gateway.routes().len(),
        chunk_linger_us = settings.chunk_linger.as_micros() as u64,
        "listening on {addr}"
    );
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let sockets_closed = CancellationToken::new();
    let drain = {
        let gateway = gateway.clone();
        let sink = sink.clone();
        let grace = settings.shutdown_grace;
        let sockets_closed = sockets_closed.clone();
        async move {
            shutdown.await;
            drain(&gateway, &sink, grace, publish_timeout).await;
            // WebSocket connections never end by themselves: close them so serve returns.
            sink.websocket.close_all();
            sink.socketio.close().await;
            wait_until(|| sink.websocket.is_empty(), CLOSE_CONNECTIONS).await;
            sockets_closed.cancel();
        }
    };
    let serve = axum::serve(listener, app)
        .with_graceful_shutdown(drain)
        .into_future();
    let served = tokio::select! {
        served = serve => served,
        _ = async {
            sockets_closed.cancelled().await;
            tokio::time::sleep(CLOSE_CONNECTIONS).await;
        } => {
            warn!("HTTP connections still open {CLOSE_CONNECTIONS:?} after the sockets were closed; stopping anyway");
            Ok(())
        }
    };
    stop.cancel();
    if let Err(e) = broker_task.await {
        warn!(error = %e, "broker task ended abnormally");
    }
    if let Err(e) = reload_task.await {
        warn!(error = %e, "hot reload task ended abnormally");
    }
    upkeep.abort();
    info!("stopped");
    served.map_err(ServeError::Serve)
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
        "limits (0 = off)"
    );
}

/// The shutdown sequence up to closing the sockets (see [`run`]).
async fn drain(gateway: &HostGateway, sink: &HostSink, grace: Duration, publish: Duration) {
    gateway.stop_admitting();
    info!(
        in_flight = gateway.in_flight(),
        grace_ms = grace.as_millis() as u64,
        "shutting down: new requests are refused; waiting for the requests in flight"
    );
    let finished = wait_until(|| gateway.in_flight() == 0, grace).await;
    if !finished {
        let failed = gateway.fail_all(crate::error::UnavailableCause::ShuttingDown);
        warn!(
            failed,
            "shutdown grace period over: requests still in flight ended UNAVAILABLE"
        );
    }
    // Requests still being published get their ack and error once the broker answers;
    // cancellations must reach the broker before it is closed.
    if !wait_until(|| gateway.is_settled(), publish + Duration::from_secs(1)).await {
        warn!(
            in_flight = gateway.in_flight(),
            "requests still unsettled at shutdown"
        );
    }
    wait_until(|| sink.socketio.backlogged() == 0, BACKLOG_DRAIN).await;
    tokio::time::sleep(LINGER).await;
    info!("closing client connections");
}

/// Polls `done` until it is true (returns true) or `limit` passes (returns false).
async fn wait_until(done: impl Fn() -> bool, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
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
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let broker = state.broker.status();
    let admitting = state.gateway.is_admitting();
    let ready = broker.connected && broker.consuming && admitting;
    let routes = state.gateway.routes();
    let body = json!({
        "ready": ready,
        "broker": if broker.connected { "connected" } else { "disconnected" },
        "replyConsumer": if broker.consuming { "running" } else { "stopped" },
        "replyQueue": broker.reply_queue,
        "requestTypes": routes.len(),
        "inFlight": state.gateway.in_flight(),
        "shuttingDown": !admitting,
        "hostId": state.host_id,
        // The plugin versions serving now (hot reload changes them): name, version,
        // hash (of the library file), file, requestTypes.
        "plugins": routes.plugins(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
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
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let trigger = Arc::new(tokio::sync::Notify::new());
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
