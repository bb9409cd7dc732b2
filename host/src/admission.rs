//! Admission: what a Socket.IO handshake must pass before the connection gets any state —
//! room on the host, then a valid token. Both transports (the host's own `websocket` and
//! socketioxide in `socketio`) admit through the same [`Admission`], so the connection
//! limit counts them together and a refusal reads the same on both.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::info;

use crate::auth::Authenticator;
#[cfg(doc)]
use crate::auth::UNAUTHORIZED;
use crate::limits::{ConnectionCounter, Limits};
use crate::resume::Sessions;
use crate::session::Session;

/// What a handshake must pass before the connection gets any state.
pub struct Admission {
    pub authenticator: Authenticator,
    pub connections: ConnectionCounter,
    pub limits: Limits,
    /// Sessions (protocol §4); `None` when `[resume]` is off.
    pub sessions: Option<Sessions>,
    /// An operator drains the host (the console): new connections are refused, the
    /// connected ones and their requests go on.
    pub draining: AtomicBool,
}

impl Admission {
    /// No authentication, default limits (tests).
    pub fn open() -> Self {
        let limits = Limits::default();
        Admission {
            authenticator: Authenticator::none(),
            connections: ConnectionCounter::new(limits.max_connections),
            limits,
            sessions: None,
            draining: AtomicBool::new(false),
        }
    }
}

impl Admission {
    /// Decides whether a client may connect at all: room on the host, then a valid token
    /// (`auth` is the handshake's auth object). A refused client gets `connect_error`
    /// with the error's message and the host keeps nothing for it. `conn` names the
    /// connection in log lines.
    pub fn admit(
        &self,
        auth: Option<&Value>,
        conn: &dyn std::fmt::Display,
    ) -> Result<Session, HandshakeRefused> {
        if self.draining.load(Ordering::Relaxed) {
            info!(sid = %conn, "connection refused: the host is draining");
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "draining")
                .increment(1);
            return Err(HandshakeRefused::Draining);
        }
        // The cheap check first: a full host verifies no signatures.
        let Some(slot) = self.connections.try_acquire() else {
            info!(sid = %conn, max = self.limits.max_connections, "connection refused: the host is full");
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "full").increment(1);
            return Err(HandshakeRefused::Full);
        };
        let checked = match self.authenticator.check(auth) {
            Ok(checked) => checked,
            Err(refusal) => {
                info!(sid = %conn, reason = %refusal, "connection refused: unauthorized");
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => refusal.label())
                    .increment(1);
                return Err(HandshakeRefused::Unauthorized);
            }
        };
        // A client that asks for a session (`auth.session`) gets one; the owner of its
        // requests is its subject when it authenticated.
        let identity = checked.identity;
        let opened = self.sessions.as_ref().and_then(|sessions| {
            let asked = auth.and_then(|a| a.get("session"));
            sessions.open(asked, identity.as_ref().map(|i| i.subject.as_str()))
        });
        let session = Session::new(identity, self.limits.request_rate(), Some(slot))
            .valid_until(checked.valid_until);
        Ok(match opened {
            Some((owner, greeting)) => session.with_session(owner, greeting),
            None => session,
        })
    }
}

/// Why a handshake was refused; the message is what the client's `connect_error` says.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeRefused {
    /// Protocol §1's message, [`UNAUTHORIZED`].
    #[error("unauthorized")]
    Unauthorized,
    #[error("too many connections")]
    Full,
    /// An operator drains the host: the client should connect to another.
    #[error("the host is draining")]
    Draining,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_refused_handshake_says_what_protocol_1_says() {
        assert_eq!(
            HandshakeRefused::Unauthorized.to_string(),
            crate::auth::UNAUTHORIZED
        );
        assert_eq!(HandshakeRefused::Full.to_string(), "too many connections");
    }

    #[test]
    fn a_draining_host_refuses_new_connections_until_undrained() {
        let admission = Admission::open();
        assert!(admission.admit(None, &"c1").is_ok());
        admission.draining.store(true, Ordering::Relaxed);
        let refused = admission.admit(None, &"c2").err().unwrap();
        assert_eq!(refused.to_string(), "the host is draining");
        admission.draining.store(false, Ordering::Relaxed);
        assert!(admission.admit(None, &"c3").is_ok());
    }
}
