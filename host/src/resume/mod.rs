//! Requests that outlive their connection (protocol §4; the plan: docs/long-running-tasks.md).
//!
//! A client opts in with `auth.session` at the handshake and gets a session token; when its
//! connection drops, its requests are *parked* in the gateway for `[resume] window` instead of
//! being cancelled, and an `attach` from its next connection picks each one up where the client
//! lost it. This module holds the pieces that do not depend on the gateway: the settings, the
//! tokens ([`token`]) and the per-request chunk buffer ([`replay`]).

pub mod parked;
pub mod replay;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use parked::{ParkedPerOwner, ParkedSlot};
pub use replay::{KeptBytes, Replay};
pub use token::{SessionId, SessionKeys};

/// How long a dropped connection's requests wait for their client unless `[resume] window`
/// says otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The longest window the host accepts: parked requests hold memory and worker capacity.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Chunks kept per request for replay unless `[resume] request_bytes` says otherwise.
pub const DEFAULT_REQUEST_BYTES: u64 = 1024 * 1024;
/// Chunks kept by all the requests of the host together unless `[resume] max_kept_bytes` says
/// otherwise.
pub const DEFAULT_MAX_KEPT_BYTES: u64 = 256 * 1024 * 1024;
/// How long a finished detached task's outcome stays retrievable unless `[resume]
/// result_ttl` says otherwise.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3600);
/// The longest result TTL the host accepts: kept outcomes hold memory.
pub const MAX_RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Detached tasks (running or kept) one owner may have unless `[resume] max_tasks` says
/// otherwise.
pub const DEFAULT_MAX_TASKS: usize = 100;
/// Requests one owner may have parked (or ended while parked, their outcome kept) unless
/// `[resume] max_parked_per_owner` says otherwise: ten connections' worth of the default
/// `[limits] max_in_flight`.
pub const DEFAULT_MAX_PARKED_PER_OWNER: usize = 1000;
/// The shortest cluster secret accepted (HS256 keys: RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Who the requests of a session belong to: the authenticated subject, so that every
/// connection of one user owns the same requests, or else the anonymous session.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Subject(Arc<str>),
    Session(SessionId),
}

/// `[resume]`, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeSettings {
    /// Zero: sessions are off, and `auth.session` is ignored (v1 behaviour).
    pub window: Duration,
    pub request_bytes: usize,
    /// Chunks kept by every request together (`KeptBytes`).
    pub max_kept_bytes: usize,
    /// How long a finished detached task's outcome is kept.
    pub result_ttl: Duration,
    /// Detached tasks one owner may have, running or kept.
    pub max_tasks: usize,
    /// Requests one owner may have parked or kept after a disconnect (0: no bound); past it
    /// the excess ends as on a disconnect without a session.
    pub max_parked_per_owner: usize,
    /// Where detached tasks live (`[resume] store`).
    pub store: crate::tasks::StoreChoice,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            window: DEFAULT_WINDOW,
            request_bytes: DEFAULT_REQUEST_BYTES as usize,
            max_kept_bytes: DEFAULT_MAX_KEPT_BYTES as usize,
            result_ttl: DEFAULT_RESULT_TTL,
            max_tasks: DEFAULT_MAX_TASKS,
            max_parked_per_owner: DEFAULT_MAX_PARKED_PER_OWNER,
            store: crate::tasks::StoreChoice::Memory,
        }
    }
}

impl ResumeSettings {
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }
}

/// The keys that sign session tokens: from `[resume] secret_file` / `secret_env` (the
/// cluster secret every host shares), or random for this process when neither is set.
/// `Ok((keys, true))` when they come from the shared secret.
pub fn keys(
    section: &crate::config::ResumeSection,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(SessionKeys, bool), String> {
    let Some((secret, origin)) = crate::auth::optional_secret(
        "[resume]",
        "the [resume] secret",
        ("secret_file", section.secret_file.as_ref()),
        ("secret_env", section.secret_env.as_ref()),
        env,
    )?
    else {
        return Ok((SessionKeys::random(), false));
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "[resume]: the secret from {origin} is shorter than {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok((SessionKeys::from_secret(secret.as_bytes()), true))
}

/// The body of the `session` event (protocol §4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionGreeting {
    pub token: String,
    pub resume_window_ms: u64,
    pub result_ttl_ms: u64,
}

/// Opens sessions at the handshake: who owns the connection's requests, and the token the
/// client keeps.
#[derive(Debug)]
pub struct Sessions {
    keys: SessionKeys,
    window: Duration,
    result_ttl: Duration,
}

impl Sessions {
    pub fn new(keys: SessionKeys, settings: &ResumeSettings) -> Self {
        Sessions {
            keys,
            window: settings.window,
            result_ttl: settings.result_ttl,
        }
    }

    /// `asked` is the handshake's `auth.session`: `true` for a new session, or the token of
    /// the one the client had (one that does not verify starts a new session: no error).
    /// `None` when the client did not opt in. With authentication, the owner is the subject.
    pub fn open(
        &self,
        asked: Option<&Value>,
        subject: Option<&str>,
    ) -> Option<(Owner, SessionGreeting)> {
        // A token that verifies is sent back as it is: it stays the same for the life of
        // the session (§4.1), which is how a client tells a resumed session from a new one.
        let (id, token) = match asked? {
            Value::Bool(true) => (SessionId::new(), None),
            Value::String(token) => match self.keys.verify(token) {
                Some(id) => (id, Some(token.clone())),
                None => (SessionId::new(), None),
            },
            _ => return None,
        };
        let token = match token {
            Some(token) => token,
            None => self.keys.issue(id)?,
        };
        let owner = match subject {
            Some(subject) => Owner::Subject(subject.into()),
            None => Owner::Session(id),
        };
        let greeting = SessionGreeting {
            token,
            resume_window_ms: millis(self.window),
            result_ttl_ms: millis(self.result_ttl),
        };
        Some((owner, greeting))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(SessionKeys::random(), &ResumeSettings::default())
    }

    #[test]
    fn a_session_is_opened_only_when_asked_and_a_token_brings_it_back() {
        let s = sessions();
        assert_eq!(s.open(None, None), None);
        assert_eq!(s.open(Some(&json!(false)), None), None);
        assert_eq!(s.open(Some(&json!(5)), None), None);
        let (owner, greeting) = s.open(Some(&json!(true)), None).unwrap();
        assert_eq!(greeting.resume_window_ms, 60_000);
        let (again, _) = s.open(Some(&json!(greeting.token)), None).unwrap();
        assert_eq!(again, owner, "the token brings the same session back");
        let (fresh, _) = s.open(Some(&json!("not a token")), None).unwrap();
        assert_ne!(fresh, owner, "a token that does not verify: a new session");
        let (other_host, _) = sessions().open(Some(&json!(greeting.token)), None).unwrap();
        assert_ne!(other_host, owner, "another key: a new session");
    }

    #[test]
    fn a_resumed_session_keeps_its_token_even_a_second_later() {
        // Protocol §4.1: the token "stays the same for the life of the session" — the
        // TypeScript client tells a resumed session from a new one by it.
        let s = sessions();
        let (_, greeting) = s.open(Some(&json!(true)), None).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let (_, again) = s.open(Some(&json!(greeting.token)), None).unwrap();
        assert_eq!(again.token, greeting.token);
    }

    #[test]
    fn keys_come_from_the_cluster_secret_or_are_random() {
        let none = crate::config::ResumeSection::default();
        let (_, shared) = keys(&none, &|_| None).unwrap();
        assert!(!shared);
        let section = crate::config::ResumeSection {
            secret_env: Some("SECRET".into()),
            ..Default::default()
        };
        let secret = "s".repeat(MIN_SECRET_BYTES);
        let (a, shared) = keys(&section, &|_| Some(secret.clone())).unwrap();
        assert!(shared);
        let (b, _) = keys(&section, &|_| Some(secret.clone())).unwrap();
        let token = a.issue(SessionId::new()).unwrap();
        assert!(b.verify(&token).is_some(), "two hosts, one secret");
        let short = keys(&section, &|_| Some("short".into())).unwrap_err();
        assert!(
            short.contains("shorter than 32 bytes") && !short.contains("short\""),
            "{short}"
        );
        let unset = keys(&section, &|_| None).unwrap_err();
        assert!(unset.contains("SECRET"), "{unset}");
    }

    #[test]
    fn with_authentication_the_subject_owns_the_requests() {
        let s = sessions();
        let (owner, _) = s.open(Some(&json!(true)), Some("alice")).unwrap();
        assert_eq!(owner, Owner::Subject("alice".into()));
        assert_eq!(
            serde_json::to_value(SessionGreeting {
                token: "t".into(),
                resume_window_ms: 5,
                result_ttl_ms: 6,
            })
            .unwrap(),
            json!({"token": "t", "resumeWindowMs": 5, "resultTtlMs": 6})
        );
    }
}
