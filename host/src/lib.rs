//! The taskgate host: one process that owns the Socket.IO connections to browsers and the
//! RabbitMQ connection, routes each request by its type to that type's queue, and relays
//! chunks, results and errors back to the socket that asked.
//!
//! # Layout
//! - [`gateway`]: the core — admission (its checks that need no state apart from the
//!   reservation), the in-flight maps, reply relay, cancel, timeouts (watched in
//!   [`deadlines`]).
//!   It knows neither socketioxide nor the AMQP client: it talks to a [`broker::Broker`] and a
//!   [`sink::ClientSink`].
//! - [`broker`]: the broker trait; `broker::amqp` (amqprs: the session loop, callbacks,
//!   publisher, topology, message encoding) and `broker::memory` (tests).
//! - [`sink`]: the client-side trait and response types, and [`sink::ClientDropped`], how
//!   a transport reports a client it dropped to the gateway. Two transports implement it:
//!   [`websocket`] (the host's own, for WebSocket-only clients) and [`socketio`]
//!   (socketioxide: long-polling and upgrades, the only module that knows socketioxide);
//!   [`clients`] routes between them; [`transport`] holds what both share (path, timings).
//! - [`routes`]: the routing table of enabled request types and payload validation.
//! - [`plugins`]: loading plugin files (each version from a private copy) and applying
//!   plugins.toml.
//! - [`reload`] and [`watcher`]: hot reload — rescan on every change of the plugins
//!   directory or plugins.toml, swap in a new routing table.
//! - [`schemas`]: `taskgate schemas`, the request types' JSON Schemas for client codegen.
//! - [`config`] and [`cli`]: plugins.toml, flags, environment variables; [`runtime`] how
//!   many threads run the host (`--worker-threads auto|N`).
//! - [`server`]: build the host, its router, serve until the shutdown signal; [`http`] the
//!   accept loop (timeouts and a limit before a connection's first request); [`shutdown`]
//!   the graceful sequence; [`request_head`] keeps idle WebSockets small.
//! - [`serving`]: which request types have workers (a look at each queue's consumers every
//!   2 s); a request to a type without any is refused at once, or waits (`when_no_workers`).
//! - [`error`]: why a request fails, mapped to protocol error codes.
//! - [`dead_letters`]: poison messages — which queues count deliveries, what a dead letter's
//!   client is told, what `taskgate dead-letters` shows (the AMQP side: `broker::amqp`).
//! - [`admission`], [`auth`], [`session`], [`limits`], [`origins`], [`host_names`]: who may
//!   connect and call what, how much one connection may ask of the host, and which names it
//!   answers to.
//! - [`resume`]: sessions, whose requests outlive their connection (protocol §4).
//! - [`log_lines`]: one event, one line in the text log, whatever a client sent.
//! - [`metrics`]: the Prometheus recorder behind `/metrics`, and every metric name with its
//!   HELP text in one table.
//! - [`trace`]: the W3C trace context of a request (accepted from the client or started).

pub mod admission;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clients;
pub mod config;
pub mod console;
pub mod dead_letters;
pub mod deadlines;
pub mod error;
pub mod gateway;
pub mod host_names;
pub mod http;
pub mod limits;
pub mod listen;
pub mod log_lines;
pub mod metrics;
pub mod open_files;
pub mod operations;
pub mod origins;
pub mod plugins;
pub mod reload;
pub mod request_head;
pub mod resume;
pub mod routes;
pub mod runtime;
pub mod scaffold;
pub mod schemas;
pub mod server;
pub mod serving;
pub mod session;
pub mod shutdown;
pub mod sink;
pub mod socketio;
pub mod status;
pub mod tasks;
pub mod trace;
pub mod transport;
pub mod watcher;
pub mod websocket;
