//! What the host's two Socket.IO transports share, so that a client meets the same server
//! whichever one serves it: the endpoint's path, the engine.io timings they announce and
//! keep, and the WebSocket read buffer. The transports themselves — the host's own
//! [`websocket`](crate::websocket) and socketioxide in [`socketio`](crate::socketio) —
//! take these from here and know nothing of each other.

use std::time::Duration;

/// The path of the Socket.IO endpoint (socket.io-client's default). socketioxide is given
/// it explicitly, the WebSocket transport takes over requests on it, and the origin check
/// guards it.
pub const SOCKET_IO_PATH: &str = "/socket.io";

/// How often the host pings (engine.io `pingInterval`, engine.io's default).
pub const PING_INTERVAL: Duration = Duration::from_secs(25);
/// How long a pong may take before the connection counts as dead (`pingTimeout`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a client has, after the engine.io handshake, to pass the Socket.IO one.
/// It also bounds how long a refused client's transport lingers when the client does
/// not close it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// tungstenite's read buffer, for both transports: every WebSocket keeps one for its whole
/// life. socketioxide's default is 4 KiB; 2 KiB saves 2 KiB per idle connection, at the
/// price of more `read` calls for messages above 2 KiB (tungstenite reads at most this much
/// per call). A smaller buffer saved little more and multiplied the reads of larger
/// requests: see docs/performance.md.
pub const READ_BUFFER_BYTES: usize = 2048;
