//! Who may use the console. It authenticates with the host's own `[auth]`: the token comes
//! as `Authorization: Bearer <token>` (never a cookie, so a cross-site request cannot ride
//! on a browser's credentials and no CSRF token is needed), and its identity must have the
//! role `[console] role` names. With `[auth] mode = "none"` nobody has an identity: the
//! console then answers loopback peers only, so that turning it on in development does not
//! open it to the network.

use std::net::SocketAddr;

use axum::http::header::WWW_AUTHENTICATE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::auth::Authenticator;
use crate::config::AuthMode;

/// Who was let in, for the log lines of their actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator(pub String);

/// Why the console refused a request; the message is what the caller reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the console needs Authorization: Bearer <token> (a token of the host's [auth])")]
    NoToken,
    #[error("the token is not accepted by the host's [auth]")]
    BadToken,
    #[error("the console needs the role `{0}` ([console] role); this identity does not have it")]
    MissingRole(String),
    #[error("with [auth] mode = \"none\" the console answers loopback connections only (127.0.0.1, ::1); configure [auth] to reach it from elsewhere")]
    NotLoopback,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::NoToken | Refused::BadToken => StatusCode::UNAUTHORIZED,
            Refused::MissingRole(_) | Refused::NotLoopback => StatusCode::FORBIDDEN,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = axum::Json(json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// Decides one request: `peer` is the connection's address (`None` if unknown: refused
/// when only loopback may enter), `authorization` its `Authorization` header.
pub fn check(
    authenticator: &Authenticator,
    role: &str,
    peer: Option<SocketAddr>,
    authorization: Option<&str>,
) -> Result<Operator, Refused> {
    if authenticator.mode() == AuthMode::None {
        return match peer {
            Some(peer) if peer.ip().is_loopback() || is_mapped_loopback(peer) => {
                Ok(Operator(format!("anonymous@{}", peer.ip())))
            }
            _ => Err(Refused::NotLoopback),
        };
    }
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(Refused::NoToken)?;
    let identity = authenticator
        .authenticate(Some(&json!({ "token": token })))
        .map_err(|_| Refused::BadToken)?
        .ok_or(Refused::BadToken)?;
    if !identity.roles.iter().any(|r| r == role) {
        return Err(Refused::MissingRole(role.to_owned()));
    }
    Ok(Operator(identity.subject))
}

/// The page and its script and style hold no data (the API does): with authentication on
/// anyone may load them (the page then asks for a token); without, loopback only, like the API.
pub fn may_load_page(
    authenticator: &Authenticator,
    peer: Option<SocketAddr>,
) -> Result<(), Refused> {
    if authenticator.mode() != AuthMode::None {
        return Ok(());
    }
    match peer {
        Some(peer) if peer.ip().is_loopback() || is_mapped_loopback(peer) => Ok(()),
        _ => Err(Refused::NotLoopback),
    }
}

/// `::ffff:127.0.0.1`, as a dual-stack listener sees an IPv4 loopback peer.
fn is_mapped_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::AuthSection;

    fn static_tokens() -> (Authenticator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.toml");
        std::fs::write(
            &file,
            r#"
            [[tokens]]
            token = "admin-token-0123456789"
            subject = "alice"
            roles = ["admin"]
            [[tokens]]
            token = "user-token-0123456789"
            subject = "bob"
            roles = ["user"]
            "#,
        )
        .unwrap();
        let section = AuthSection {
            mode: AuthMode::Static,
            tokens_file: Some(file),
            ..AuthSection::default()
        };
        (
            Authenticator::from_config_with_env(&section, |_| None).unwrap(),
            dir,
        )
    }

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn without_authentication_only_loopback_peers_get_in() {
        let none = Authenticator::none();
        assert!(check(&none, "admin", peer("127.0.0.1:5000"), None).is_ok());
        assert!(check(&none, "admin", peer("[::1]:5000"), None).is_ok());
        assert!(check(&none, "admin", peer("[::ffff:127.0.0.1]:5000"), None).is_ok());
        let refused = check(&none, "admin", peer("192.168.1.20:5000"), None).unwrap_err();
        assert_eq!(refused, Refused::NotLoopback);
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(refused.to_string().contains("loopback"), "{refused}");
        assert_eq!(
            check(&none, "admin", None, None).unwrap_err(),
            Refused::NotLoopback,
            "an unknown peer is not trusted"
        );
    }

    #[test]
    fn with_authentication_a_bearer_token_with_the_role_gets_in_from_anywhere() {
        let (auth, _dir) = static_tokens();
        let far = peer("203.0.113.9:4000");
        assert_eq!(
            check(&auth, "admin", far, Some("Bearer admin-token-0123456789")).unwrap(),
            Operator("alice".into())
        );
        assert_eq!(
            check(&auth, "admin", far, Some("Bearer user-token-0123456789")).unwrap_err(),
            Refused::MissingRole("admin".into())
        );
        assert_eq!(
            check(&auth, "admin", far, Some("Bearer nope-0123456789")).unwrap_err(),
            Refused::BadToken
        );
        assert_eq!(
            check(&auth, "admin", far, None).unwrap_err(),
            Refused::NoToken
        );
        assert_eq!(
            check(&auth, "admin", far, Some("admin-token-0123456789")).unwrap_err(),
            Refused::NoToken,
            "only the Bearer scheme"
        );
        // Loopback is no way around the token when authentication is on.
        assert_eq!(
            check(&auth, "admin", peer("127.0.0.1:1"), None).unwrap_err(),
            Refused::NoToken
        );
        assert_eq!(Refused::NoToken.status(), StatusCode::UNAUTHORIZED);
    }
}
