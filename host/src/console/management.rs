//! What RabbitMQ's management HTTP API adds to the console's queues: the unacknowledged
//! messages (delivered to a worker, not yet answered), which a passive declare does not
//! give. One `GET /api/queues/<vhost>` every [`super::cluster::QUEUES_EVERY`] for the whole
//! vhost, whatever the number of consoles open. Without the management plugin the console
//! says so and shows what passive declares give (ready messages and consumers).
//!
//! Where: `[console] management_url`, or by default the AMQP URL's host with its user,
//! password and vhost — `http://` on port 15672 for `amqp://`, `https://` on 15671 for
//! `amqps://` (the credentials never travel in the clear to a broker reached over TLS).
//! https:// trusts what `amqps://` trusts: the system's CAs and the AMQP URL's `cacertfile`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use url::Url;

/// The management plugin's usual port.
pub const DEFAULT_PORT: u16 = 15672;
/// The management plugin's usual port with TLS.
pub const DEFAULT_TLS_PORT: u16 = 15671;
/// A look that takes longer is given up.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer read (a vhost with thousands of queues still fits).
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Where the management API is and who asks it.
#[derive(Clone)]
pub struct Management {
    /// `http://host:port`, without credentials (shown in the page).
    pub base: String,
    vhost: String,
    authorization: String,
    /// For an `https://` base: whom to trust.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

/// One queue as the management API describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// Whether the last look at the management API worked, for the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagementState {
    /// Where it was asked (no credentials); `None`: not configured (no HTTP URL).
    pub url: Option<String>,
    pub reachable: bool,
    /// Why not, when it is not.
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct QueueEntry {
    name: String,
    #[serde(default)]
    messages_ready: Option<u64>,
    #[serde(default)]
    messages_unacknowledged: Option<u64>,
    #[serde(default)]
    consumers: Option<u64>,
}

impl Management {
    /// From `[console] management_url` when set, else from the AMQP URL: its host, port
    /// 15672, its user and password (RabbitMQ's defaults when absent) and its vhost.
    pub fn from_urls(management_url: Option<&str>, amqp_url: &str) -> Result<Self, String> {
        let amqp = crate::broker::amqp_url::parse(amqp_url)?;
        let (base, user, password) = match management_url {
            Some(text) => {
                let url = Url::parse(text)
                    .map_err(|e| format!("[console] management_url is not a URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err("[console] management_url must be http:// or https://".into());
                }
                let host = url
                    .host_str()
                    .ok_or("[console] management_url has no host")?;
                let port = url.port().unwrap_or(match url.scheme() {
                    "https" => DEFAULT_TLS_PORT,
                    _ => DEFAULT_PORT,
                });
                let user = match url.username() {
                    "" => amqp.user.clone(),
                    user => decode(user),
                };
                let password = url.password().map_or(amqp.password.clone(), decode);
                (format!("{}://{host}:{port}", url.scheme()), user, password)
            }
            None if amqp.tls.is_some() => (
                format!("https://{}:{DEFAULT_TLS_PORT}", bracketed(&amqp.host)),
                amqp.user.clone(),
                amqp.password.clone(),
            ),
            None => (
                format!("http://{}:{DEFAULT_PORT}", bracketed(&amqp.host)),
                amqp.user.clone(),
                amqp.password.clone(),
            ),
        };
        let tls = if base.starts_with("https://") {
            let trusted = amqp.tls.clone().unwrap_or_default();
            let config = crate::broker::amqp_url::tls_client_config(&trusted)
                .map_err(|e| format!("the management API over https: {e}"))?;
            Some(Arc::new(config))
        } else {
            None
        };
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Ok(Management {
            base,
            vhost: amqp.vhost,
            authorization: format!("Basic {credentials}"),
            tls,
        })
    }

    /// The queues of the vhost, by name.
    pub async fn queues(&self) -> Result<BTreeMap<String, QueueCounts>, String> {
        let uri = format!(
            "{}/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers",
            self.base,
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC)
        );
        let request = hyper::Request::get(&uri)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = match &self.tls {
            None => send(Client::builder(TokioExecutor::new()).build_http(), request).await?,
            Some(config) => {
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(rustls::ClientConfig::clone(config))
                    .https_only()
                    .enable_http1()
                    .build();
                send(Client::builder(TokioExecutor::new()).build(https), request).await?
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await
        .map_err(|_| "the answer did not arrive in time".to_owned())?
        .map_err(|e| format!("the answer could not be read: {e}"))?
        .to_bytes();
        parse(&body)
    }
}

/// Sends `request` within [`TIMEOUT`]; the error names every cause (a refused connection,
/// an untrusted certificate).
async fn send<C>(
    client: Client<C, Empty<Bytes>>,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {} s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("unreachable: {}", causes(&e)))
}

/// `GET /api/queues/<vhost>`'s answer, by queue name.
pub fn parse(body: &[u8]) -> Result<BTreeMap<String, QueueCounts>, String> {
    let entries: Vec<QueueEntry> = serde_json::from_slice(body)
        .map_err(|e| format!("not the management API's queue list: {e}"))?;
    Ok(entries
        .into_iter()
        .map(|q| {
            (
                q.name,
                QueueCounts {
                    ready: q.messages_ready.unwrap_or(0),
                    unacked: q.messages_unacknowledged.unwrap_or(0),
                    consumers: q.consumers.unwrap_or(0),
                },
            )
        })
        .collect())
}

/// An error and its sources on one line: hyper's own says only "client error (Connect)".
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn bracketed(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn by_default_the_amqp_urls_host_credentials_and_vhost_are_used() {
        let m =
            Management::from_urls(None, "amqp://ops:s%40cret@rabbit.internal:5672/prod").unwrap();
        assert_eq!(m.base, "http://rabbit.internal:15672");
        assert_eq!(m.vhost, "prod");
        let expected = base64::engine::general_purpose::STANDARD.encode("ops:s@cret");
        assert_eq!(m.authorization, format!("Basic {expected}"));
        assert!(!format!("{m:?}").contains("cret"), "no password in logs");
        let m =
            Management::from_urls(Some("http://admin:pw@mgmt:8080/"), "amqp://localhost").unwrap();
        assert_eq!(m.base, "http://mgmt:8080");
        assert_eq!(m.vhost, "/");
        assert!(Management::from_urls(Some("ftp://x"), "amqp://localhost").is_err());
    }

    #[test]
    fn with_amqps_the_default_is_https_on_the_management_tls_port() {
        let m = Management::from_urls(None, "amqps://ops:pw@rabbit.internal/prod").unwrap();
        assert_eq!(m.base, "https://rabbit.internal:15671");
        assert!(m.tls.is_some());
        let m = Management::from_urls(None, "amqp://rabbit.internal").unwrap();
        assert!(m.tls.is_none(), "plain http needs no TLS set-up");
    }

    #[test]
    fn the_queue_list_is_read_by_name_and_garbage_is_an_error() {
        let body = br#"[{"name":"q.a","messages_ready":3,"messages_unacknowledged":7,"consumers":2},{"name":"q.b"}]"#;
        let queues = parse(body).unwrap();
        assert_eq!(
            queues["q.a"],
            QueueCounts {
                ready: 3,
                unacked: 7,
                consumers: 2
            }
        );
        assert_eq!(queues["q.b"], QueueCounts::default());
        assert!(parse(b"<html>").is_err());
    }

    /// A real HTTP exchange with a stand-in for the management API on an ephemeral port.
    #[tokio::test]
    async fn queues_are_fetched_with_basic_auth_and_an_unreachable_api_is_an_error() {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/api/queues/{vhost}",
            get(
                |axum::extract::Path(vhost): axum::extract::Path<String>,
                 headers: axum::http::HeaderMap| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let expected = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("guest:guest")
                    );
                    if auth != expected || vhost != "/" {
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    (
                        axum::http::StatusCode::OK,
                        r#"[{"name":"q","messages_ready":1,"messages_unacknowledged":4,"consumers":1}]"#.to_owned(),
                    )
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let m =
            Management::from_urls(Some(&format!("http://{address}")), "amqp://localhost").unwrap();
        assert_eq!(m.queues().await.unwrap()["q"].unacked, 4);
        let wrong = Management::from_urls(
            Some(&format!("http://bob:nope@{address}")),
            "amqp://localhost",
        )
        .unwrap();
        assert!(wrong.queues().await.unwrap_err().contains("401"));
        server.abort();
        let _ = server.await;
        let gone = m.queues().await.unwrap_err();
        assert!(gone.contains("unreachable"), "{gone}");
        assert!(gone.contains("refused"), "says why: {gone}");
    }
}
