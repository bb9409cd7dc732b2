//! What the host knows about one admitted connection: who it authenticated as, its
//! request-rate budget, and its place among the host's connections. Created by the
//! Socket.IO connect middleware only after the handshake passed every check, kept by
//! the gateway until the connection is gone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use taskgate_protocol::Identity;

use crate::limits::{ConnectionSlot, RequestRate};
use crate::resume::{Owner, SessionGreeting};

#[derive(Debug)]
pub struct Session {
    identity: Option<Identity>,
    /// The identity as the `x-identity` header value, serialised once per connection.
    identity_header: Option<Arc<str>>,
    rate: RequestRate,
    /// Frees the connection's place when the session is dropped.
    _slot: Option<ConnectionSlot>,
    /// Set when the client opted in to sessions (protocol §4): who its requests belong to.
    owner: Option<Owner>,
    /// What the `session` event tells the client, when it opted in.
    greeting: Option<SessionGreeting>,
    /// When its token stops being good: the transport closes the connection then.
    valid_until: Option<SystemTime>,
}

impl Session {
    /// A connection of a host without authentication and without limits (tests).
    pub fn anonymous() -> Self {
        Session::new(None, RequestRate::unlimited(), None)
    }

    pub fn new(
        identity: Option<Identity>,
        rate: RequestRate,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        let identity_header = identity
            .as_ref()
            .and_then(|id| serde_json::to_string(id).ok())
            .map(Arc::from);
        Session {
            identity,
            identity_header,
            rate,
            _slot: slot,
            owner: None,
            greeting: None,
            valid_until: None,
        }
    }

    /// The client opted in to sessions: its requests belong to `owner`, and the transport
    /// sends it `greeting` right after CONNECT.
    pub fn with_session(mut self, owner: Owner, greeting: SessionGreeting) -> Self {
        self.owner = Some(owner);
        self.greeting = Some(greeting);
        self
    }

    /// The connection ends when its token does (`None`: it does not expire).
    pub fn valid_until(mut self, valid_until: Option<SystemTime>) -> Self {
        self.valid_until = valid_until;
        self
    }

    /// How long the connection may still live: `None` when its token does not expire,
    /// zero once it has.
    pub fn lifetime_left(&self) -> Option<Duration> {
        self.valid_until.map(|until| {
            until
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// The `session` event to send after CONNECT, if the client opted in.
    pub fn greeting(&self) -> Option<&SessionGreeting> {
        self.greeting.as_ref()
    }

    /// The connection's requests belong to `owner` and outlive it (protocol §4).
    pub fn with_owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// `None` unless the client opted in to sessions.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// `None` when the host runs without authentication.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn identity_header(&self) -> Option<&Arc<str>> {
        self.identity_header.as_ref()
    }

    /// Whether the connection may call a type that requires `roles` (all of them).
    pub fn may_call(&self, roles: &[String]) -> bool {
        roles.is_empty() || self.identity.as_ref().is_some_and(|id| id.has_roles(roles))
    }

    /// The sustained rate of the connection's budget (0: unlimited).
    pub fn requests_per_second(&self) -> u32 {
        self.rate.per_second()
    }

    /// Takes one `request` event from the connection's budget.
    pub fn check_rate(&self) -> Result<(), Duration> {
        self.rate.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked_against_the_identity() {
        let alice = Session::new(
            Some(Identity::new("alice", ["admin", "ops"])),
            RequestRate::unlimited(),
            None,
        );
        assert!(alice.may_call(&[]));
        assert!(alice.may_call(&["admin".to_owned()]));
        assert!(alice.may_call(&["admin".to_owned(), "ops".to_owned()]));
        assert!(!alice.may_call(&["admin".to_owned(), "billing".to_owned()]));
        let anonymous = Session::anonymous();
        assert!(anonymous.may_call(&[]));
        assert!(!anonymous.may_call(&["admin".to_owned()]));
    }

    #[test]
    fn the_identity_header_is_the_identity_as_json() {
        let s = Session::new(
            Some(Identity::new("svc-1", ["b", "a"])),
            RequestRate::unlimited(),
            None,
        );
        assert_eq!(
            s.identity_header().map(|h| h.as_ref()),
            Some(r#"{"subject":"svc-1","roles":["a","b"]}"#)
        );
        assert!(Session::anonymous().identity_header().is_none());
    }
}
