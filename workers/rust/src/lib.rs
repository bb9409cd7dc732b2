//! `taskgate-worker`: the Rust worker SDK for taskgate.
//!
//! A worker is a set of handlers, one per queue. A handler gets the payload and a
//! [`Context`], and returns the result — or a [`TaskError`], or sends chunks first:
//!
//! ```no_run
//! use taskgate_worker::{Context, TaskError, Worker};
//! use serde_json::{json, Value};
//!
//! async fn countdown(payload: Value, ctx: Context) -> Result<Value, TaskError> {
//!     let from = payload["from"].as_u64().unwrap_or(3);
//!     for remaining in (0..from).rev() {
//!         ctx.chunk(json!({ "remaining": remaining })).await?;
//!     }
//!     Ok(json!({ "done": true }))
//! }
//!
//! # async fn run() -> Result<(), taskgate_worker::WorkerError> {
//! Worker::builder()
//!     .amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .handle("taskgate.demo.countdown", countdown)
//!     .build()
//!     .run(tokio::signal::ctrl_c())
//!     .await
//! # }
//! ```
//!
//! The SDK implements the worker half of protocol v1 §2 (docs/protocol.md): replies go to
//! the request's `reply_to` with its `correlation_id`, all on one channel (so they stay in
//! order), with publisher confirms; the request is acked only after its final reply is
//! confirmed, so a worker that dies mid-request leaves it to be redelivered. Requests whose
//! deadline passed are not started. A cancellation (§2.4) fires [`Context::cancelled`]; a
//! handler that does not stop by itself is dropped at its next await, and the SDK replies
//! `CANCELLED`. A panicking handler becomes `WORKER_ERROR` without taking the worker down.
//!
//! # Layout
//! - [`handler`]: the handler trait and [`TaskError`].
//! - [`context`]: what a handler sees: request metadata, chunks, cancellation.
//! - [`runner`]: one request from delivery to ack, independent of AMQP (unit-tested
//!   through an in-memory transport).
//! - [`amqp`]: the lapin transport: connection, consumers, cancellation queue, reconnects.

pub mod amqp;
pub mod context;
pub mod handler;
pub mod runner;

pub use amqp::{Worker, WorkerBuilder, WorkerError};
pub use context::Context;
pub use handler::{Handler, TaskError};
