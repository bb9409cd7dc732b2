//! Requests that outlive their connection (protocol §4; the plan: docs/long-running-tasks.md).
//!
//! A client opts in with `auth.session` at the handshake and gets a session token; when its
//! connection drops, its requests are *parked* in the gateway for `[resume] window` instead of
//! being cancelled, and an `attach` from its next connection picks each one up where the client
//! lost it. This module holds the pieces that do not depend on the gateway: the settings, the
//! tokens ([`token`]) and the per-request chunk buffer ([`replay`]).

pub mod replay;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

pub use replay::Replay;
pub use token::{SessionId, SessionKeys};

/// How long a dropped connection's requests wait for their client unless `[resume] window`
/// says otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The longest window the host accepts: parked requests hold memory and worker capacity.
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// Chunks kept per request for replay unless `[resume] request_bytes` says otherwise.
pub const DEFAULT_REQUEST_BYTES: u64 = 1024 * 1024;
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
}

impl Default for ResumeSettings {
    fn default() -> Self {
        ResumeSettings {
            window: DEFAULT_WINDOW,
            request_bytes: DEFAULT_REQUEST_BYTES as usize,
        }
    }
}

impl ResumeSettings {
    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }
}
