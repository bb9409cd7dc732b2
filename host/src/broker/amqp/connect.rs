//! Opening one AMQP connection, and why one could not be opened ([`ConnectError`]): the
//! URL is unusable, the broker is unreachable, or it refused us.

use amqprs::connection::Connection;

use crate::broker::amqp_url::{self, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the broker at {url} refused the connection: {reason}")]
    Refused { url: String, reason: String },
    #[error("the broker URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot set up {what}: {reason}")]
    Setup { what: String, reason: String },
}

/// Opens one connection, classifying failures for a clear log line.
pub async fn connect(url: &str) -> Result<Connection, ConnectError> {
    connect_named(url, "taskgate-host").await
}

pub(super) async fn connect_named(
    url: &str,
    connection_name: &str,
) -> Result<Connection, ConnectError> {
    let arguments = amqp_url::parse(url)
        .and_then(|uri| uri.connection_arguments(connection_name))
        .map_err(|reason| ConnectError::BadUrl {
            url: redact_url(url),
            reason,
        })?;
    Connection::open(&arguments)
        .await
        .map_err(|e| classify(url, e.to_string()))
}

/// Refused (credentials, vhost) or unreachable, from the client's error text.
fn classify(url: &str, reason: String) -> ConnectError {
    let url = redact_url(url);
    if reason.contains("ACCESS_REFUSED") || reason.contains("NOT_ALLOWED") {
        ConnectError::Refused { url, reason }
    } else if reason.contains("reset by peer") {
        // RabbitMQ tells a client why its login failed only if the client announced the
        // `authentication_failure_close` capability, which amqprs does not: it just drops
        // the TCP connection, which it had accepted.
        ConnectError::Refused {
            url,
            reason: format!(
                "it dropped the connection during the login (wrong user or password?): {reason}"
            ),
        }
    } else {
        ConnectError::Unreachable { url, reason }
    }
}
