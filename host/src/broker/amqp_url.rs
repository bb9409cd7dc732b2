//! An AMQP URI (`amqp://user:password@host:port/vhost?heartbeat=30`) as the connection
//! settings of the AMQP client, following RabbitMQ's URI spec: user, password and vhost are
//! percent-decoded (`/%2f` is the vhost `/`), a missing user or password is `guest`, a
//! missing vhost is `/`.
//!
//! `amqps://` connects with TLS (rustls), checking the broker's certificate against the
//! system's CA store plus, with `?cacertfile=/path/ca.pem` (the name RabbitMQ's URI spec
//! uses), a private CA. The certificate must name the URI's host.
//!
//! [`redact_url`] is the URI as logs and error messages may show it: its password hidden.

use std::path::PathBuf;
use std::sync::Arc;

use amqprs::connection::OpenConnectionArguments;
use amqprs::tls::TlsAdaptor;
use percent_encoding::percent_decode_str;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use url::Url;

const DEFAULT_PORT: u16 = 5672;
const DEFAULT_TLS_PORT: u16 = 5671;
const DEFAULT_CREDENTIAL: &str = "guest";

/// What an AMQP URI says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpUri {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// Seconds; [`DEFAULT_HEARTBEAT_SECS`] when absent.
    pub heartbeat: Option<u16>,
    /// `amqps://`: TLS, with these settings.
    pub tls: Option<Tls>,
}

/// TLS settings of an `amqps://` URI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// A PEM file of CA certificates trusted besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// The AMQP heartbeat when the URL sets none (amqprs would take 60 s). A dead link is noticed
/// after about two missed heartbeats: 20–30 s instead of two minutes. Its cost, measured on an
/// idle host (debug build, 60 s of `/proc/<pid>/stat`): 30 ms of CPU with 60 s and with 10 s alike.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

impl AmqpUri {
    /// The AMQP client's connection settings, with the name the connection carries. Fails
    /// only when TLS cannot be set up (an unreadable CA file, no CA at all).
    pub fn connection_arguments(
        &self,
        connection_name: &str,
    ) -> Result<OpenConnectionArguments, String> {
        let mut arguments =
            OpenConnectionArguments::new(&self.host, self.port, &self.user, &self.password);
        arguments
            .virtual_host(&self.vhost)
            .connection_name(connection_name);
        arguments.heartbeat(self.heartbeat.unwrap_or(DEFAULT_HEARTBEAT_SECS));
        if let Some(tls) = &self.tls {
            arguments.tls_adaptor(tls_adaptor(&self.host, tls)?);
        }
        Ok(arguments.finish())
    }
}

/// A rustls client on ring that trusts the system's CAs and the URI's `cacertfile`.
fn tls_adaptor(host: &str, tls: &Tls) -> Result<TlsAdaptor, String> {
    let config = tls_client_config(tls)?;
    let server_name = host.trim_start_matches('[').trim_end_matches(']');
    Ok(TlsAdaptor::new(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name.to_owned(),
    ))
}

/// The rustls client settings of an `amqps://` URI: ring, safe protocol versions, the
/// system's CAs and the URI's `cacertfile`. The console's https:// to RabbitMQ's
/// management API uses the same, so one `cacertfile` serves both.
pub fn tls_client_config(tls: &Tls) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // Unreadable entries of the system store are skipped, as every TLS client does.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = &tls.ca_file {
        let unreadable =
            |e: &dyn std::fmt::Display| format!("cannot read the CA file {}: {e}", path.display());
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|e| unreadable(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unreadable(&e))?;
        if certificates.is_empty() {
            return Err(unreadable(&"no PEM certificate in it"));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| unreadable(&e))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no CA certificate to check the broker's against: the system has none; \
             give one with ?cacertfile=/path/ca.pem"
                .to_owned(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Reads an AMQP URI; the error says what is wrong (it never repeats the password).
pub fn parse(uri: &str) -> Result<AmqpUri, String> {
    let url = Url::parse(uri).map_err(|e| format!("not an AMQP URI ({e})"))?;
    let mut tls = match url.scheme() {
        "amqp" => None,
        "amqps" => Some(Tls::default()),
        other => {
            return Err(format!(
                "unsupported scheme `{other}` (expected amqp:// or amqps://)"
            ))
        }
    };
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
            "cacertfile" => match &mut tls {
                Some(tls) => tls.ca_file = Some(PathBuf::from(value.as_ref())),
                None => return Err("cacertfile is for amqps:// URIs".to_owned()),
            },
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
        port: url.port().unwrap_or(if tls.is_some() {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        }),
        user,
        password,
        vhost,
        heartbeat,
        tls,
    })
}

fn decode(text: &str, what: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("the {what} in the URI is not UTF-8 once decoded"))
}

/// The URL with its password hidden, for log lines.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
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
                tls: None,
            }
        );
    }

    #[test]
    fn the_heartbeat_is_10_s_unless_the_url_says_otherwise() {
        let default = parse("amqp://rabbit").unwrap();
        let arguments = default.connection_arguments("n").unwrap();
        assert_eq!(arguments.get_heartbeat(), DEFAULT_HEARTBEAT_SECS);
        assert_eq!(DEFAULT_HEARTBEAT_SECS, 10);
        let set = parse("amqp://rabbit?heartbeat=30").unwrap();
        assert_eq!(set.connection_arguments("n").unwrap().get_heartbeat(), 30);
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
    fn amqps_means_tls_on_port_5671_with_an_optional_ca_file() {
        let uri = parse("amqps://rabbit.internal/%2f").unwrap();
        assert_eq!(uri.port, 5671);
        assert_eq!(uri.tls, Some(Tls::default()));
        let uri = parse("amqps://rabbit.internal:5999/?cacertfile=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(uri.port, 5999);
        assert_eq!(uri.tls.unwrap().ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn an_unreadable_ca_file_is_named_in_the_error() {
        let uri = parse("amqps://rabbit/?cacertfile=/nonexistent/ca.pem").unwrap();
        let Err(error) = uri.connection_arguments("n") else {
            panic!("a missing CA file was accepted");
        };
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        let long_vhost = format!("amqp://rabbit/{}", "v".repeat(256));
        for (uri, reason) in [
            ("http://rabbit", "unsupported scheme"),
            ("amqp://rabbit?cacertfile=/ca.pem", "amqps://"),
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

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
