//! Starting the host: load plugins, connect the broker, serve HTTP + Socket.IO until
//! shutdown. The binary only parses flags and binds; tests call [`run`] on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::json;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;
use tracing::{info, warn};
use uuid::Uuid;

use crate::broker::amqp::AmqpBroker;
use crate::config::{redact_url, Settings};
use crate::gateway::{Gateway, GatewayOptions};
use crate::plugins;
use crate::socketio::{self, BacklogLimits, SocketIoSink};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds the listening socket, with a clear error for a port in use or a bad address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

type HostGateway = Gateway<AmqpBroker, SocketIoSink>;

#[derive(Clone)]
struct AppState {
    broker: AmqpBroker,
    gateway: Arc<HostGateway>,
}

/// Runs the host on `listener` until `shutdown` resolves.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let files = plugins::scan(&settings.plugins_dir);
    let resolved = plugins::resolve(&files, &settings);
    let host_id = Uuid::new_v4();
    let broker = AmqpBroker::new(settings.amqp_url.clone(), host_id, resolved.queues);

    let (layer, io) = SocketIo::builder()
        .max_buffer_size(settings.socket_buffer)
        .max_payload(settings.max_message_bytes)
        .build_layer();
    let sink = Arc::new(SocketIoSink::new(io.clone(), BacklogLimits::default()));
    let gateway = Arc::new(Gateway::new(
        Arc::new(broker.clone()),
        sink,
        resolved.routes,
        GatewayOptions::default(),
    ));
    socketio::attach(&io, gateway.clone());

    let stop = CancellationToken::new();
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
        .with_state(AppState {
            broker: broker.clone(),
            gateway: gateway.clone(),
        });
    if let Some(dir) = &settings.static_dir {
        info!(dir = %dir.display(), "serving static files at /");
        app = app.fallback_service(ServeDir::new(dir));
    }
    let app = app.layer(layer);

    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    info!(
        %addr,
        host_id = %host_id,
        amqp = %redact_url(&settings.amqp_url),
        request_types = gateway.routes().len(),
        "listening on {addr}"
    );
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let close_io = io.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            info!("shutting down");
            // WebSocket connections never end by themselves: close them so serve returns.
            close_io.close().await;
        })
        .await;
    stop.cancel();
    if let Err(e) = broker_task.await {
        warn!(error = %e, "broker task ended abnormally");
    }
    info!("stopped");
    served.map_err(ServeError::Serve)
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let broker = state.broker.is_connected();
    let request_types = state.gateway.routes().len();
    let body = json!({
        "ready": broker,
        "broker": if broker { "connected" } else { "disconnected" },
        "requestTypes": request_types,
        "inFlight": state.gateway.in_flight(),
    });
    let status = if broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
