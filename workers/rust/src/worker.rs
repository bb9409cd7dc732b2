//! The public face of a worker: [`WorkerBuilder`] collects handlers and settings,
//! [`Worker::run`] serves them until shut down. The broker side (lapin) is
//! [`crate::rabbitmq`]; this module knows nothing of AMQP.

use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::WorkerError;
use crate::handler::{erase, ErasedHandler, Handler};
use crate::settings::{Route, Settings};

/// Configures a [`Worker`]; from [`Worker::builder`].
pub struct WorkerBuilder {
    settings: Settings,
}

impl WorkerBuilder {
    /// The broker, e.g. `amqp://user:password@host:5672/%2f`. Default [`DEFAULT_AMQP_URL`](crate::amqp::DEFAULT_AMQP_URL).
    pub fn amqp_url(mut self, url: impl Into<String>) -> Self {
        self.settings.amqp_url = url.into();
        self
    }

    /// Requests of each queue handled at once (the consumer's prefetch; at least 1).
    /// Default [`DEFAULT_PREFETCH`](crate::amqp::DEFAULT_PREFETCH).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.settings.prefetch = prefetch.max(1);
        self
    }

    /// How long shutdown waits for requests in progress; the unfinished ones are then
    /// dropped and redelivered to another worker. Default [`DEFAULT_SHUTDOWN_GRACE`](crate::amqp::DEFAULT_SHUTDOWN_GRACE).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// How long a cancelled handler may take to return by itself (to clean up) before
    /// it is dropped. Default [`DEFAULT_CANCEL_GRACE`](crate::amqp::DEFAULT_CANCEL_GRACE).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.settings.cancel_grace = grace;
        self
    }

    /// Serves `queue` with `handler`. The queue is used as it is if it exists (the host
    /// declares the queues of enabled request types, with their arguments); otherwise it
    /// is declared durable without arguments.
    pub fn handle<P, H>(self, queue: impl Into<String>, handler: H) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        H: Handler<P>,
    {
        self.route(queue.into(), None, erase(handler))
    }

    /// Like [`WorkerBuilder::handle`], for a queue with arguments, e.g.
    /// `json!({ "x-queue-type": "quorum" })` (a JSON object of strings, integers, floats
    /// and booleans; they must match the host's). A missing queue is declared with them;
    /// an existing queue with other arguments is used as it is, with a warning.
    pub fn handle_with_arguments<P, H>(
        self,
        queue: impl Into<String>,
        arguments: Value,
        handler: H,
    ) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        H: Handler<P>,
    {
        self.route(queue.into(), Some(arguments), erase(handler))
    }

    fn route(mut self, queue: String, arguments: Option<Value>, handler: ErasedHandler) -> Self {
        self.settings.routes.push(Route {
            queue,
            arguments,
            handler,
        });
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            settings: self.settings,
        }
    }
}

/// A worker: consumes its queues until shut down.
pub struct Worker {
    settings: Settings,
}

impl Worker {
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            settings: Settings::default(),
        }
    }

    /// Serves until `shutdown` resolves: then stops consuming, lets the requests in
    /// progress finish (up to the shutdown grace period) and closes the connection.
    /// Connects with backoff while the broker is unreachable, and reconnects whenever
    /// the connection is lost. Logs `worker ready` once it consumes.
    ///
    /// Returns an error at once for a bad URL or configuration, when the broker refuses
    /// the credentials or virtual host, or when a queue cannot be used.
    pub async fn run<S: Future + Send>(self, shutdown: S) -> Result<(), WorkerError> {
        crate::rabbitmq::run(self.settings, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let ok = |_: Value, _: crate::Context| async move { Ok(Value::Null) };
        let run = |builder: WorkerBuilder| async move {
            builder
                .build()
                .run(std::future::pending::<()>())
                .await
                .unwrap_err()
                .to_string()
        };
        assert!(run(Worker::builder().amqp_url("http://x").handle("q", ok))
            .await
            .starts_with("invalid AMQP URL"));
        assert!(run(Worker::builder()).await.contains("no handlers"));
        assert!(run(Worker::builder().handle("q", ok).handle("q", ok))
            .await
            .contains("two handlers"));
        assert!(
            run(Worker::builder().handle_with_arguments("q", json!(["x"]), ok))
                .await
                .contains("JSON object")
        );
        assert!(run(Worker::builder().handle("", ok))
            .await
            .contains("1 to 255"));
    }
}
