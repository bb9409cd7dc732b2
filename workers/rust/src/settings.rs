//! What a worker was built with: its routes (queue → handler), the broker URL, the
//! prefetch and the grace periods, and their defaults. [`crate::Worker`]'s builder fills it
//! in; [`crate::rabbitmq`] serves it. Neither imports the other.

use std::time::Duration;

use serde_json::Value;

use crate::handler::ErasedHandler;

/// The RabbitMQ of a development machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Requests of one queue handled at once.
pub const DEFAULT_PREFETCH: u16 = 16;
/// How long shutdown waits for requests in progress.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a cancelled handler may take to return by itself before it is dropped.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

/// One queue and its handler.
pub(crate) struct Route {
    pub queue: String,
    /// Queue arguments to declare with; `None`: the worker has no opinion.
    pub arguments: Option<Value>,
    pub handler: ErasedHandler,
}

/// A worker's settings; see [`crate::WorkerBuilder`] for what each means.
pub(crate) struct Settings {
    pub amqp_url: String,
    pub prefetch: u16,
    pub shutdown_grace: Duration,
    pub cancel_grace: Duration,
    pub routes: Vec<Route>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            amqp_url: DEFAULT_AMQP_URL.to_owned(),
            prefetch: DEFAULT_PREFETCH,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            routes: Vec::new(),
        }
    }
}
