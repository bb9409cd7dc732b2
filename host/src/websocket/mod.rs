//! The host's own transport for clients that open their connection over WebSocket
//! (`transports: ["websocket", …]`, the taskgate client's default): engine.io v4 and
//! Socket.IO v5 (protocol §1) spoken directly over a tungstenite stream, one task per
//! connection. socketioxide still serves HTTP long-polling and polling sessions that
//! upgrade to WebSocket.
//!
//! Why not socketioxide for these too: every socketioxide connection keeps three tasks
//! (reader, writer, heartbeat) and a 32-slot packet channel, and every event goes
//! through a spawned handler task and the writer task's channel. Here one task reads,
//! writes and pings, and responses are encoded straight into the frames the task
//! writes — see docs/performance.md for what that bought.
//!
//! - [`packet`]: the engine.io / Socket.IO frames, parsed and written.
//! - [`hub`]: the connections, their outboxes, and the [`ClientSink`](crate::sink::ClientSink) side.
//! - [`connection`]: the task of one connection.
//! - [`upgrade`]: the HTTP side — which requests are ours, the WebSocket handshake.
//! - [`reads`]: reads that grow while a large message arrives (few system calls per MB).
//! - [`writes`]: large frames written without tungstenite's copy into its write buffer.

pub mod connection;
pub mod hub;
pub mod packet;
pub mod reads;
pub mod upgrade;
pub mod writes;

#[cfg(test)]
#[path = "connection_tests.rs"]
mod connection_tests;

pub use connection::{Endpoint, WsSettings};
pub use hub::{Hub, WsAck, WsConnId};
