//! Session tokens (protocol §4.1): what a client presents on reconnect to prove which session it
//! had. A token is a JWT (HS256, the `jsonwebtoken` crate the host already verifies identities
//! with) whose `sid` claim is the session id. Its key is `[resume] secret` when set — every host of
//! a cluster shares it, so any host accepts any host's tokens — or a random one per process.
//! A token that does not verify is never an error: the client simply gets a new session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long a token is accepted: a session lives as long as its page (sessionStorage), and a
/// page left open for a month starts a new one.
const TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The id of one session: the owner of its anonymous connections' requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(Uuid);

impl SessionId {
    pub fn new() -> Self {
        SessionId(Uuid::new_v4())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sid: SessionId,
    iat: u64,
    exp: u64,
}

/// Issues and checks session tokens with one key.
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Keys from the cluster's shared secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        SessionKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Keys only this process knows: sessions resume on this host only.
    pub fn random() -> Self {
        let mut secret = Vec::with_capacity(32);
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        secret.extend_from_slice(Uuid::new_v4().as_bytes());
        Self::from_secret(&secret)
    }

    /// The token of session `id`; `None` only if signing fails, which HS256 does not.
    pub fn issue(&self, id: SessionId) -> Option<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sid: id,
            iat: now,
            exp: now + TOKEN_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).ok()
    }

    /// The session a token names, if this key signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Option<SessionId> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims.sid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_session_for_the_same_key_only() {
        let keys = SessionKeys::from_secret(b"a cluster secret of some length!");
        let id = SessionId::new();
        let token = keys.issue(id).unwrap();
        assert_eq!(keys.verify(&token), Some(id));
        // Another host of the same cluster: the same secret.
        let peer = SessionKeys::from_secret(b"a cluster secret of some length!");
        assert_eq!(peer.verify(&token), Some(id));
        assert_eq!(SessionKeys::random().verify(&token), None);
        assert_eq!(keys.verify("nonsense"), None);
        assert_eq!(keys.verify(""), None);
    }

    #[test]
    fn a_token_whose_claims_were_changed_is_refused() {
        let keys = SessionKeys::random();
        let token = keys.issue(SessionId::new()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let other = keys.issue(SessionId::new()).unwrap();
        let other_claims = other.split('.').nth(1).unwrap();
        let forged = format!("{}.{}.{}", parts[0], other_claims, parts[2]);
        assert_eq!(keys.verify(&forged), None);
        // alg: none is refused.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
        assert_eq!(keys.verify(&none), None);
    }
}
