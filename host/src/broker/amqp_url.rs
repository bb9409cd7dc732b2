//! An AMQP URI (`amqp://user:password@host:port/vhost?heartbeat=30`) as the connection
//! settings of the AMQP client, following RabbitMQ's URI spec: user, password and vhost are
//! percent-decoded (`/%2f` is the vhost `/`), a missing user or password is `guest`, a
//! missing vhost is `/`.

use amqprs::connection::OpenConnectionArguments;
use percent_encoding::percent_decode_str;
use url::Url;

const DEFAULT_PORT: u16 = 5672;
const DEFAULT_CREDENTIAL: &str = "guest";

/// What an AMQP URI says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Seconds; the client's default when absent.
    pub heartbeat: Option<u16>,
}

impl AmqpUri {
    /// The AMQP client's connection settings, with the name the connection carries.
    pub fn connection_arguments(&self, connection_name: &str) -> OpenConnectionArguments {
        let mut arguments =
            OpenConnectionArguments::new(&self.host, self.port, &self.user, &self.password);
        arguments
            .virtual_host(&self.vhost)
            .connection_name(connection_name);
        if let Some(seconds) = self.heartbeat {
            arguments.heartbeat(seconds);
        }
        arguments.finish()
    }
}

/// Reads an AMQP URI; the error says what is wrong (it never repeats the password).
pub fn parse(uri: &str) -> Result<AmqpUri, String> {
    let url = Url::parse(uri).map_err(|e| format!("not an AMQP URI ({e})"))?;
    match url.scheme() {
        "amqp" => {}
        "amqps" => {
            return Err(
                "amqps:// (TLS to the broker) is not built into this host; reach RabbitMQ over \
                 amqp:// on a private network or through a local TLS tunnel"
                    .to_owned(),
            )
        }
        other => return Err(format!("unsupported scheme `{other}` (expected amqp://)")),
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URI has no host")?;
    // An IPv6 address keeps its brackets: the client joins host and port with a colon.
    let user = decode(url.username(), "user")?;
    let user = if user.is_empty() {
        DEFAULT_CREDENTIAL.to_owned()
    } else {
        user
    };
    let password = match url.password() {
        Some(password) => decode(password, "password")?,
        None => DEFAULT_CREDENTIAL.to_owned(),
    };
    let vhost = match url.path() {
        "" | "/" => "/".to_owned(),
        path => decode(&path[1..], "vhost")?,
    };
    // amqprs would panic on a vhost AMQP cannot carry.
    if vhost.len() > 255 {
        return Err("the vhost is longer than AMQP's 255 bytes".to_owned());
    }
    let mut heartbeat = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "heartbeat" => {
                let seconds = value
                    .parse::<u16>()
                    .map_err(|_| format!("heartbeat `{value}` is not a number of seconds"))?;
                heartbeat = Some(seconds);
            }
            // Accepted for compatibility with other clients' URIs; the host bounds its
            // own connection attempts.
            "connection_timeout" | "channel_max" | "frame_max" => {}
            other => return Err(format!("unknown URI option `{other}`")),
        }
    }
    Ok(AmqpUri {
        host: host.to_owned(),
        port: url.port().unwrap_or(DEFAULT_PORT),
        user,
        password,
        vhost,
        heartbeat,
    })
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} in the URI is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_encoded_default_vhost_is_the_slash() {
        let uri = parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(
            uri,
            AmqpUri {
                host: "127.0.0.1".into(),
                port: 5672,
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into(),
                heartbeat: None,
            }
        );
    }

    #[test]
    fn user_password_and_vhost_are_percent_decoded() {
        let uri = parse("amqp://ali%40ce:p%3Ass%2Fw@rabbit:5673/team%2Fa?heartbeat=15").unwrap();
        assert_eq!(uri.user, "ali@ce");
        assert_eq!(uri.password, "p:ss/w");
        assert_eq!(uri.vhost, "team/a");
        assert_eq!(uri.port, 5673);
        assert_eq!(uri.heartbeat, Some(15));
    }

    #[test]
    fn missing_parts_take_the_defaults() {
        let uri = parse("amqp://rabbit").unwrap();
        assert_eq!(
            (uri.user.as_str(), uri.password.as_str()),
            ("guest", "guest")
        );
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.port, 5672);
        assert_eq!(parse("amqp://[::1]:5672/v").unwrap().host, "[::1]");
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        let long_vhost = format!("amqp://rabbit/{}", "v".repeat(256));
        for (uri, reason) in [
            ("http://rabbit", "unsupported scheme"),
            ("amqps://rabbit", "TLS"),
            ("not a uri", "not an AMQP URI"),
            ("amqp://rabbit?heartbeat=soon", "heartbeat"),
            ("amqp://rabbit?frobnicate=1", "unknown URI option"),
            ("amqp://rabbit/%FF", "not UTF-8"),
            (long_vhost.as_str(), "255 bytes"),
        ] {
            let error = parse(uri).unwrap_err();
            assert!(error.contains(reason), "{uri}: {error}");
        }
        let error = parse("amqp://user:secret@rabbit?heartbeat=x").unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }
}
