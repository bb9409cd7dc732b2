//! `taskgate-worker`: the Rust worker SDK for taskgate.
//!
//! A worker is a set of handlers, one per queue. A handler gets the payload (as
//! `serde_json::Value` or any `Deserialize` type) and a [`Context`], may stream chunks, and
//! returns a result (any `Serialize` type) or a [`TaskError`]:
//!
//! ```no_run
//! use serde::Deserialize;
//! use serde_json::json;
//! use taskgate_worker::{Context, TaskError, Worker};
//!
//! #[derive(Deserialize)]
//! struct Countdown { from: u32 }
//!
//! async fn countdown(req: Countdown, ctx: Context) -> Result<serde_json::Value, TaskError> {
//!     for remaining in (0..req.from).rev() {
//!         ctx.chunk(json!({ "remaining": remaining })).await?; // fails once cancelled
//!     }
//!     Ok(json!({ "done": true }))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), taskgate_worker::WorkerError> {
//!     Worker::builder()
//!         .amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f")
//!         .handle("taskgate.demo.countdown", countdown)
//!         .build()
//!         .run(tokio::signal::ctrl_c())
//!         .await
//! }
//! ```
//!
//! # What the SDK does for you (protocol v1 §2, docs/protocol.md)
//! - **Replies** go to the request's `reply_to` through the default exchange with its
//!   `correlation_id`, `content_type: application/json` and `type` `chunk` / `result` /
//!   `error`; chunks carry `x-seq` 0, 1, 2 …. All replies go through one channel, in
//!   order, with publisher confirms.
//! - **Ack after the final reply**: the request is acked only once its final reply and
//!   every chunk are confirmed, so a worker that dies mid-request leaves the request to be
//!   redelivered ([`Context::redelivered`] tells the next worker). A request whose replies
//!   did not all reach the broker goes back to the queue (`basic.nack` with requeue); a
//!   failed publish also ends the broker session (the worker reconnects).
//! - **Errors**: a [`TaskError`] becomes an `error` reply with its code (default
//!   `WORKER_ERROR`), message and details. A payload that is not JSON, or does not fit
//!   the handler's payload type, is answered `INVALID_PAYLOAD` with
//!   `details.problems[].pointer` without calling the handler. A panicking handler is
//!   answered `WORKER_ERROR` (the panic message is logged, not sent) and the worker goes
//!   on. In every one of these cases the request is acked: it is never requeued forever.
//! - **Deadlines**: a request whose `x-deadline-ms` has passed is acked and dropped
//!   without running (the host has already answered `TIMEOUT`); [`Context::remaining`]
//!   tells a handler how long it has. A request without `reply_to` or `correlation_id`
//!   is logged, acked and dropped.
//! - **Cancellation** (§2.4): the worker consumes the `taskgate.cancel` fanout exchange
//!   through an exclusive queue of its own, `taskgate.cancel.<uuid>`. A cancellation
//!   fires [`Context::cancelled`] / [`Context::is_cancelled`], makes [`Context::chunk`]
//!   fail with `CANCELLED`, and gives the handler the cancel grace period (default 1 s)
//!   to return by itself (to clean up); then it is dropped. The reply is then `CANCELLED`
//!   (unless the handler returned a result anyway). A cancellation that arrives before its
//!   request is remembered for a while, and the request is answered `CANCELLED` without
//!   running.
//! - **Tracing**: every log line of a request — the SDK's and the handler's own
//!   `tracing` events — is inside the span `request{correlation_id, request_type,
//!   traceparent}`; `traceparent` is the W3C trace context the host forwards in the AMQP
//!   header of that name (protocol §3.10), also readable as [`Context::traceparent`] to pass
//!   on to what the handler calls.
//! - **Concurrency**: each queue is consumed with a prefetch (default 16) and every
//!   delivery runs as its own task, so up to `prefetch` requests per queue run at once.
//!   Handlers run on the caller's tokio runtime: CPU-heavy work belongs in
//!   `tokio::task::spawn_blocking` (or a multi-thread runtime).
//! - **Queues**: an existing queue is used as it is (the host declares the queues of its
//!   request types, with their arguments, e.g. quorum). A missing one is waited for, as
//!   the host may be starting too: one INFO line (`waiting for queue … to be declared by
//!   the host`), then a look every second for up to 5 s; a queue still missing then is
//!   declared durable, with the arguments given to [`WorkerBuilder::handle_with_arguments`]
//!   (none with [`WorkerBuilder::handle`]). lapin itself logs each look at a missing queue
//!   at ERROR (target `lapin::channel`: the broker closes the channel); the example
//!   workers' default log filter leaves that target out. A queue that exists with other arguments than the ones
//!   given is used as it is, with a warning. A queue the worker may not use (permissions,
//!   exclusive to another connection) stops [`Worker::run`] with [`WorkerError::Queue`].
//! - **Connection**: a bad URL, or credentials / a virtual host the broker refuses, stop
//!   [`Worker::run`] with an error at once. An unreachable broker is retried with
//!   exponential backoff (0.1 s to 5 s, each attempt logged), at start and whenever the
//!   connection is lost. lapin sets `TCP_NODELAY` on its socket (async-rs's tokio
//!   connector does; replies are small and latency-bound).
//! - **Shutdown**: when the future given to [`Worker::run`] resolves, the worker stops
//!   consuming (`basic.cancel`), lets the requests in progress finish for up to the
//!   shutdown grace period (default 30 s; they can still be cancelled meanwhile), drops
//!   the rest (RabbitMQ redelivers them) and closes the connection.
//!
//! Handlers can be unit-tested without RabbitMQ with [`testing::TestRequest`].
//!
//! # Layout
//! Each module depends only on the ones listed before it (no import circles):
//! - `error`: [`TaskError`] (a request's failure, for the client) and [`WorkerError`]
//!   (why a worker stopped).
//! - `retry`: retries with backoff (protocol §3.12): the policy of header `x-retry`, which
//!   failures are retried, the delays, the wait queues' names.
//! - `transport`: the plain types between the runner and a broker: a delivery, a reply,
//!   where replies are published, how a delivery is settled.
//! - [`context`]: what a handler sees: request metadata, chunks, cancellation.
//! - [`handler`]: the [`Handler`] trait, erased into one byte-level shape.
//! - `runner`: one request from delivery to ack, independent of AMQP (unit-tested
//!   through an in-memory transport).
//! - `settings`: what a worker is built with (routes, broker URL, prefetch, grace
//!   periods) and the defaults.
//! - `rabbitmq`: the only module that knows lapin: connection, queues, consumers,
//!   cancellation queue, replies, reconnection, shutdown.
//! - `worker`: [`Worker`] and [`WorkerBuilder`], the public face.
//! - [`testing`]: runs a handler on an in-memory transport.
//! - [`amqp`]: the paths the worker's names had when one module held them and the lapin
//!   code; kept so that code written against them compiles.

pub mod context;
mod error;
pub mod handler;
mod rabbitmq;
mod retry;
mod runner;
mod settings;
pub mod testing;
mod transport;
mod worker;

/// The worker's names under their first paths (`taskgate_worker::amqp::DEFAULT_PREFETCH`
/// …), from when this module also held the lapin code (now private). New code can use the
/// crate root.
pub mod amqp {
    pub use crate::error::WorkerError;
    pub use crate::settings::{
        DEFAULT_AMQP_URL, DEFAULT_CANCEL_GRACE, DEFAULT_PREFETCH, DEFAULT_SHUTDOWN_GRACE,
    };
    pub use crate::worker::{Worker, WorkerBuilder};
}

pub use context::Context;
pub use error::{TaskError, WorkerError};
pub use handler::Handler;
pub use settings::DEFAULT_AMQP_URL;
pub use taskgate_protocol::Identity;
pub use worker::{Worker, WorkerBuilder};
