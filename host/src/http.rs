//! Serving HTTP/1.1 connections: the accept loop in place of `axum::serve`, so that hyper
//! has a timer and its header-read timeout applies, and so that a connection is bounded
//! before it becomes a client.
//!
//! - Every accepted socket gets TCP_NODELAY (without it, throughput dropped ≈ 25%).
//! - Until its first request head has arrived, a connection is *pending*: at most
//!   `[limits] max_pending_connections` are (more are closed at once), and a head — the
//!   first, or the next on an idle keep-alive connection — must arrive within
//!   `[limits] handshake_timeout_ms`, or the connection is closed. A socket that sends
//!   nothing, or trickles its head, costs the host at most that long.
//! - WebSocket upgrades are served (`with_upgrades`); an upgraded connection leaves hyper,
//!   and the Socket.IO handshake after it has the same timeout (the transports' own).
//! - On shutdown the loop stops accepting, every connection finishes the request it is
//!   serving and closes, and [`serve`] returns once all have.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::server::conn::http1;
use hyper::service::{service_fn, Service as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::limits::{ConnectionCounter, ConnectionSlot, Limits};

/// What bounds a connection before its first request.
#[derive(Debug, Clone)]
pub struct Pending {
    connections: ConnectionCounter,
    timeout: Duration,
}

impl From<&Limits> for Pending {
    fn from(limits: &Limits) -> Self {
        Pending {
            connections: ConnectionCounter::new(limits.max_pending_connections),
            timeout: limits.handshake_timeout,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets every connection finish
/// the request it serves and waits until all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    pending: Pending,
    shutdown: impl Future<Output = ()>,
) {
    // Each connection's task holds a receiver: `closed` resolves once all are gone.
    let (all_closed, connection) = watch::channel(());
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = pending.connections.try_acquire() else {
            debug!("connection closed at once: too many connections have not sent a request yet");
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "pending")
                .increment(1);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            warn!(error = %e, "cannot set TCP_NODELAY");
        }
        tokio::spawn(serve_connection(
            tcp,
            peer,
            app.clone(),
            slot,
            pending.timeout,
            stop.clone(),
            connection.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    drop(connection);
    all_closed.closed().await;
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: ConnectionSlot,
    timeout: Duration,
    stop: CancellationToken,
    _open: watch::Receiver<()>,
) {
    // The first request head has arrived when the service is called: from then on the
    // connection is no longer pending.
    let slot = Mutex::new(Some(slot));
    let app = TowerToHyperService::new(app);
    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Who is on the other end, for rules that depend on it (the console's loopback rule).
        request.extensions_mut().insert(ConnectInfo(peer));
        app.call(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let finished = tokio::select! {
        served = conn.as_mut() => Some(served),
        () = stop.cancelled() => None,
    };
    let served = match finished {
        Some(served) => served,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        debug!(error = %e, "HTTP connection ended");
    }
}

/// Errors of one connection (reset before it was accepted) are ignored; others (out of
/// file descriptors) are logged, and accepting pauses for a second instead of spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
