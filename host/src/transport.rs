//! What the host's two Socket.IO transports share, so that a client meets the same server
//! whichever one serves it: the endpoint's path, the engine.io timings they announce and
//! keep, the WebSocket read buffer, and when a client counts as too slow. The transports themselves — the host's own
//! [`websocket`](crate::websocket) and socketioxide in [`socketio`](crate::socketio) —
//! take these from here and know nothing of each other.

use std::time::Duration;

use crate::limits::Limits;

/// The path of the Socket.IO endpoint (socket.io-client's default). socketioxide is given
/// it explicitly, the WebSocket transport takes over requests on it, and the origin check
/// guards it.
pub const SOCKET_IO_PATH: &str = "/socket.io";

/// How often the host pings (engine.io `pingInterval`, engine.io's default).
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// How long a pong may take before the connection counts as dead (`pingTimeout`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// tungstenite's read buffer, for both transports: every WebSocket keeps one for its whole
/// life. socketioxide's default is 4 KiB; 2 KiB saves 2 KiB per idle connection, at the
/// price of more `read` calls for messages above 2 KiB (tungstenite reads at most this much
/// per call). A smaller buffer saved little more and multiplied the reads of larger
/// requests: see docs/performance.md. On the host's own transport, `websocket::reads`
/// lets a large message arrive in reads of up to 64 KiB all the same.
pub const READ_BUFFER_BYTES: usize = 2048;

/// tungstenite's read buffer on the host's own WebSocket transport. Half of
/// [`READ_BUFFER_BYTES`]: there `websocket::reads` takes any message larger than the
/// buffer in reads of up to 64 KiB, so a 1 KiB buffer costs no more `read` system calls
/// than 2 KiB did (a 10 KB request: two either way), and it saves 1 KiB on every idle
/// connection (C100K, docs/performance.md: 6.5 → 5.4 KiB per connection).
pub const WEBSOCKET_READ_BUFFER_BYTES: usize = 1024;

/// How far a client may fall behind reading its acks and responses before the host drops
/// it and cancels its requests (`[limits] client_backlog_bytes` and `client_stall_ms`) —
/// one policy for both transports.
///
/// Where the transports must differ, socketioxide is why. The host's own WebSocket
/// transport queues every frame in the connection's outbox and its task is woken when
/// there is something to write. socketioxide has a channel of its own per socket
/// (`socket_buffer` packets) and says only that it is full (`emit` fails): it tells no one
/// when room frees up. So over socketioxide a response is queued only once that channel is
/// full, and the queue (its backlog) is drained by polling every millisecond while it is
/// not empty. Both count the same bytes against [`backlog_bytes`](Self::backlog_bytes) and
/// drop a client that lets its queue make no progress for [`stall`](Self::stall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowClientPolicy {
    /// Bytes of acks and responses that may wait for one connection.
    pub backlog_bytes: usize,
    /// How long what waits may make no progress at all.
    pub stall: Duration,
}

impl SlowClientPolicy {
    /// Whether `adding` more bytes may wait behind `waiting`. One frame always fits into
    /// an empty queue, whatever its size: the limit is on what a client leaves unread, not
    /// on a single response.
    pub fn fits(&self, waiting: usize, adding: usize) -> bool {
        waiting == 0 || waiting.saturating_add(adding) <= self.backlog_bytes
    }
}

impl From<&Limits> for SlowClientPolicy {
    fn from(limits: &Limits) -> Self {
        SlowClientPolicy {
            backlog_bytes: limits.client_backlog_bytes.max(1),
            stall: limits.client_stall,
        }
    }
}

impl Default for SlowClientPolicy {
    fn default() -> Self {
        SlowClientPolicy::from(&Limits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_client_policy_comes_from_the_limits() {
        let limits = Limits {
            client_backlog_bytes: 1234,
            client_stall: Duration::from_millis(567),
            ..Limits::default()
        };
        let policy = SlowClientPolicy::from(&limits);
        assert_eq!(policy.backlog_bytes, 1234);
        assert_eq!(policy.stall, Duration::from_millis(567));
    }

    #[test]
    fn one_frame_always_fits_then_the_backlog_is_bounded() {
        let policy = SlowClientPolicy {
            backlog_bytes: 10,
            stall: Duration::from_secs(1),
        };
        assert!(policy.fits(0, 100));
        assert!(policy.fits(6, 4));
        assert!(!policy.fits(6, 5));
        assert!(!policy.fits(100, 1));
    }
}
