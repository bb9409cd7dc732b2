//! Which browser origins may open Socket.IO connections.
//!
//! Browsers send an `Origin` header with every cross-origin request and with every
//! WebSocket upgrade; a page on another site must not be able to use a visitor's browser
//! to talk to the host. By default only the host's own origin (the `Host` the request
//! was sent to) is allowed; `[host] allowed_origins` adds others, `"*"` allows any.
//!
//! Two mechanisms apply the same policy: [`guard`] refuses a Socket.IO request (long-
//! polling or WebSocket upgrade) from a disallowed origin with 403 before socketioxide
//! sees it, and [`cors`] tells browsers which origins may read long-polling responses.
//! Requests without an `Origin` header (non-browser clients, which could forge it
//! anyway) are let through: the token is what authenticates them.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::info;

use crate::transport::SOCKET_IO_PATH;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[host] allowed_origins: `{0}` is not an origin like \"https://app.example.com\" (scheme://host[:port], no path) or \"*\"")]
pub struct OriginError(String);

/// The origin policy, built once from `[host] allowed_origins`.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    any: bool,
    /// Lower-cased `scheme://host[:port]`.
    listed: HashSet<String>,
}

impl AllowedOrigins {
    pub fn new(configured: &[String]) -> Result<Self, OriginError> {
        let mut policy = AllowedOrigins::default();
        for origin in configured {
            let origin = origin.trim();
            if origin == "*" {
                policy.any = true;
                continue;
            }
            let normal = origin.trim_end_matches('/').to_ascii_lowercase();
            let valid = match normal.split_once("://") {
                Some((scheme, authority)) => {
                    !scheme.is_empty()
                        && scheme
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                        && !authority.is_empty()
                        && !authority.contains(['/', '?', '#', '@', ' '])
                }
                // Sandboxed iframes and file:// pages send the literal origin "null".
                None => normal == "null",
            };
            if !valid {
                return Err(OriginError(origin.to_owned()));
            }
            policy.listed.insert(normal);
        }
        Ok(policy)
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// Whether a request with this `Origin` (sent to `host`, its `Host` header) may use
    /// the Socket.IO endpoint.
    pub fn allows(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        if self.any {
            return true;
        }
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.to_ascii_lowercase();
        if self.listed.contains(&origin) {
            return true;
        }
        // The host's own origin: the page was served by this host (whatever the scheme,
        // so that a TLS-terminating proxy in front changes nothing).
        let authority = origin.split_once("://").map(|(_, a)| a);
        match (authority, host.and_then(|h| h.to_str().ok())) {
            (Some(authority), Some(host)) => authority == host.to_ascii_lowercase(),
            _ => false,
        }
    }

    /// A description for the start-up log.
    pub fn describe(&self) -> String {
        if self.any {
            return "any origin".to_owned();
        }
        let mut listed: Vec<&str> = self.listed.iter().map(String::as_str).collect();
        listed.sort_unstable();
        if listed.is_empty() {
            "the host's own origin only".to_owned()
        } else {
            format!("the host's own origin and {}", listed.join(", "))
        }
    }
}

/// Axum middleware: refuses Socket.IO requests whose `Origin` the policy does not allow.
pub async fn guard(
    State(policy): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with(SOCKET_IO_PATH) {
        if let Some(origin) = request.headers().get(ORIGIN) {
            if !policy.allows(origin, request.headers().get(HOST)) {
                info!(origin = ?origin, "Socket.IO request from an origin that is not allowed refused");
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "origin")
                    .increment(1);
                return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
            }
        }
    }
    next.run(request).await
}

/// CORS headers for long-polling, for the origins the policy allows.
pub fn cors(policy: Arc<AllowedOrigins>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            policy.allows(origin, parts.headers.get(HOST))
        }))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([axum::http::header::CONTENT_TYPE])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn by_default_only_the_hosts_own_origin_is_allowed() {
        let p = AllowedOrigins::new(&[]).unwrap();
        let host = hv("127.0.0.1:8080");
        assert!(p.allows(&hv("http://127.0.0.1:8080"), Some(&host)));
        assert!(
            p.allows(&hv("https://127.0.0.1:8080"), Some(&host)),
            "behind a TLS proxy"
        );
        assert!(!p.allows(&hv("http://127.0.0.1:9090"), Some(&host)));
        assert!(!p.allows(&hv("https://evil.example"), Some(&host)));
        assert!(!p.allows(&hv("null"), Some(&host)));
        assert!(!p.allows(&hv("http://127.0.0.1:8080"), None));
        assert!(p.allows(&hv("HTTP://LOCALHOST:8080"), Some(&hv("localhost:8080"))));
        assert_eq!(p.describe(), "the host's own origin only");
    }

    #[test]
    fn listed_origins_and_the_wildcard() {
        let p = AllowedOrigins::new(&[
            "https://App.example.com/".to_owned(),
            "http://localhost:5173".to_owned(),
        ])
        .unwrap();
        let host = hv("api.example.com");
        assert!(p.allows(&hv("https://app.example.com"), Some(&host)));
        assert!(p.allows(&hv("http://localhost:5173"), Some(&host)));
        assert!(
            !p.allows(&hv("http://app.example.com"), Some(&host)),
            "scheme matters"
        );
        assert!(!p.allows(&hv("https://app.example.com.evil.net"), Some(&host)));
        assert!(p.allows(&hv("https://api.example.com"), Some(&host)));
        let any = AllowedOrigins::new(&["*".to_owned()]).unwrap();
        assert!(any.allows(&hv("https://whoever.example"), None));
        assert_eq!(any.describe(), "any origin");
    }

    #[test]
    fn malformed_origins_are_configuration_errors() {
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://",
            "://x",
            "https://user@host",
        ] {
            assert!(AllowedOrigins::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(AllowedOrigins::new(&["null".to_owned()]).is_ok());
    }
}
