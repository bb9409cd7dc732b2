//! The graceful shutdown sequence, up to closing the client connections: refuse new
//! requests, give the requests in flight the grace period, end the rest `UNAVAILABLE`,
//! wait until cancellations reached the broker and slow clients' backlogs drained, then
//! close every socket of both transports. The server stops the broker and the background
//! tasks afterwards.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::broker::Broker;
use crate::clients::HostSink;
use crate::gateway::Gateway;

/// After the last response, how long sockets stay open so it leaves the send buffers:
/// closing a socket drops what its transport has not written yet.
const LINGER: Duration = Duration::from_millis(200);
/// How long shutdown waits for the backlogs of slow clients to drain.
const BACKLOG_DRAIN: Duration = Duration::from_secs(2);
/// How long connections may take to close once the sockets are closed.
pub const CLOSE_CONNECTIONS: Duration = Duration::from_secs(5);

/// What shutdown acts on.
pub struct Shutdown<B: Broker> {
    pub gateway: Arc<Gateway<B, HostSink>>,
    pub sink: Arc<HostSink>,
    /// How long requests in flight may take to finish (`shutdown_grace`).
    pub grace: Duration,
    /// How long a publish may wait for its confirm: requests still being published
    /// settle within it.
    pub publish_timeout: Duration,
}

impl<B: Broker> Shutdown<B> {
    /// Runs the sequence; returns once the sockets are closed (WebSocket connections
    /// waited for up to [`CLOSE_CONNECTIONS`]).
    pub async fn close_clients(&self) {
        self.drain().await;
        // WebSocket connections never end by themselves: close them so serving ends.
        self.sink.websocket.close_all();
        self.sink.socketio.close().await;
        wait_until(|| self.sink.websocket.is_empty(), CLOSE_CONNECTIONS).await;
    }

    async fn drain(&self) {
        let gateway = &self.gateway;
        gateway.stop_admitting();
        info!(
            in_flight = gateway.in_flight(),
            grace_ms = self.grace.as_millis() as u64,
            "shutting down: new requests are refused; waiting for the requests in flight"
        );
        let finished = wait_until(|| gateway.in_flight() == 0, self.grace).await;
        if !finished {
            let failed = gateway.fail_all(crate::error::UnavailableCause::ShuttingDown);
            warn!(
                failed,
                "shutdown grace period over: requests still in flight ended UNAVAILABLE"
            );
        }
        // Requests still being published get their ack and error once the broker answers;
        // cancellations must reach the broker before it is closed.
        let settle = self.publish_timeout + Duration::from_secs(1);
        if !wait_until(|| gateway.is_settled(), settle).await {
            warn!(
                in_flight = gateway.in_flight(),
                "requests still unsettled at shutdown"
            );
        }
        wait_until(|| self.sink.socketio.backlogged() == 0, BACKLOG_DRAIN).await;
        tokio::time::sleep(LINGER).await;
        info!("closing client connections");
    }
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
