//! Authentication at the Socket.IO handshake (protocol §1: `auth: { token }`).
//!
//! `[auth] mode` in plugins.toml picks one of three [`Authenticator`]s:
//! - `none`: everyone is let in, anonymously (development; the host warns loudly);
//! - `static`: tokens the operator lists (plain or as SHA-256), each mapped to an
//!   [`Identity`] — for services and small deployments;
//! - `jwt`: JSON Web Tokens signed by an identity provider with one configured
//!   algorithm; `exp`, `nbf`, `iss`, `aud` and `sub` are checked, roles come from a claim.
//!
//! Tokens are secrets: they are never logged, never kept after the check (only the
//! identity is), and every configuration error names the file or variable, not its
//! content. Refusals carry a reason for the host's log; the client only ever sees
//! `"unauthorized"`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use taskgate_protocol::Identity;
use tracing::Metadata;

use crate::config::{AuthMode, AuthSection};

/// The `connect_error` message of every refused handshake (protocol §1).
pub const UNAUTHORIZED: &str = "unauthorized";
/// Longer tokens are refused without looking at them (no hashing or parsing of junk).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// A static token shorter than this is guessable: the configuration is refused.
pub const MIN_STATIC_TOKEN_CHARS: usize = 16;
/// An HMAC secret shorter than the hash it keys is refused (RFC 7518 §3.2).
pub const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Default clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
pub const DEFAULT_ROLES_CLAIM: &str = "roles";

/// Why the authentication configuration cannot be used. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("[auth] {0}")]
    Invalid(String),
    #[error("[auth] cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("[auth] environment variable {0} is not set (or not UTF-8)")]
    MissingEnv(String),
    #[error("[auth] static tokens from {origin}: {message}")]
    Tokens { origin: String, message: String },
    #[error("[auth] the public key in {path} is not a usable {algorithm:?} key: {reason}")]
    Key {
        path: PathBuf,
        algorithm: Algorithm,
        reason: String,
    },
}

/// Why a handshake was refused: for the host's log, never for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no token in the handshake's `auth.token`")]
    Missing,
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("the token is not one of the configured static tokens")]
    UnknownToken,
    #[error("the token is not valid: {0}")]
    InvalidToken(String),
}

impl Refusal {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::TooLong => "too_long",
            Refusal::UnknownToken => "unknown",
            Refusal::InvalidToken(_) => "invalid",
        }
    }
}

/// What a handshake's token says: who the client is, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// `None` when the host runs without authentication.
    pub identity: Option<Identity>,
    /// When the token stops passing a handshake (a JWT's `exp` plus the leeway); the
    /// connection is closed then (issue 20 #9). `None`: the token does not expire.
    pub valid_until: Option<SystemTime>,
}

/// Checks handshake tokens. Built once at start from `[auth]`.
pub struct Authenticator {
    method: Method,
}

enum Method {
    None,
    Static(HashMap<[u8; 32], Identity>),
    Jwt(Box<JwtVerifier>),
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    /// The dotted path of the roles claim, split.
    roles_claim: Vec<String>,
}

impl fmt::Debug for Authenticator {
    /// Says which mode and how many tokens; never a token, hash, secret or key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Method::None => f.write_str("Authenticator(none)"),
            Method::Static(tokens) => write!(f, "Authenticator(static, {} tokens)", tokens.len()),
            Method::Jwt(jwt) => write!(f, "Authenticator(jwt, {:?})", jwt.validation.algorithms),
        }
    }
}

/// One entry of a static tokens file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: Option<String>,
    token_sha256: Option<String>,
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of a handshake's `auth` payload: `{ "token": "<string>" }`.
pub fn token_of(auth: Option<&Value>) -> Option<&str> {
    auth?.get("token")?.as_str()
}

impl Authenticator {
    /// Lets everyone in, anonymously.
    pub fn none() -> Self {
        Authenticator {
            method: Method::None,
        }
    }

    /// Builds the authenticator `[auth]` describes, reading files and the process
    /// environment.
    pub fn from_config(section: &AuthSection) -> Result<Self, AuthConfigError> {
        Self::from_config_with_env(section, |name| std::env::var(name).ok())
    }

    /// [`Authenticator::from_config`] with the environment given (tests).
    pub fn from_config_with_env(
        section: &AuthSection,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, AuthConfigError> {
        let only = |mode: AuthMode, keys: &[(&str, bool)]| -> Result<(), AuthConfigError> {
            match keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(AuthConfigError::Invalid(format!(
                    "`{key}` does not apply to mode = \"{}\"",
                    mode.as_str()
                ))),
                None => Ok(()),
            }
        };
        let static_keys = [
            ("tokens_file", section.tokens_file.is_some()),
            ("tokens_env", section.tokens_env.is_some()),
        ];
        let jwt_keys = [
            ("algorithm", section.algorithm.is_some()),
            ("secret_file", section.secret_file.is_some()),
            ("secret_env", section.secret_env.is_some()),
            ("public_key_file", section.public_key_file.is_some()),
            ("issuer", section.issuer.is_some()),
            ("audience", section.audience.is_some()),
            ("leeway_secs", section.leeway_secs.is_some()),
            ("roles_claim", section.roles_claim.is_some()),
        ];
        let method = match section.mode {
            AuthMode::None => {
                only(AuthMode::None, &static_keys)?;
                only(AuthMode::None, &jwt_keys)?;
                Method::None
            }
            AuthMode::Static => {
                only(AuthMode::Static, &jwt_keys)?;
                Method::Static(static_tokens(section, &env)?)
            }
            AuthMode::Jwt => {
                only(AuthMode::Jwt, &static_keys)?;
                Method::Jwt(Box::new(jwt_verifier(section, &env)?))
            }
        };
        Ok(Authenticator { method })
    }

    pub fn mode(&self) -> AuthMode {
        match self.method {
            Method::None => AuthMode::None,
            Method::Static(_) => AuthMode::Static,
            Method::Jwt(_) => AuthMode::Jwt,
        }
    }

    /// Checks a handshake's `auth` payload. `Ok(None)`: the host runs without
    /// authentication and the connection is anonymous.
    pub fn authenticate(&self, auth: Option<&Value>) -> Result<Option<Identity>, Refusal> {
        self.check(auth).map(|checked| checked.identity)
    }

    /// [`Authenticator::authenticate`], and until when the token is good.
    pub fn check(&self, auth: Option<&Value>) -> Result<Checked, Refusal> {
        if let Method::None = self.method {
            return Ok(Checked::default());
        }
        let token = token_of(auth).ok_or(Refusal::Missing)?;
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::TooLong);
        }
        match &self.method {
            Method::None => Ok(Checked::default()),
            // A lookup by the token's hash: the time it takes says nothing about the
            // configured tokens' bytes.
            Method::Static(tokens) => tokens
                .get(&sha256(token))
                .cloned()
                .map(|identity| Checked {
                    identity: Some(identity),
                    valid_until: None,
                })
                .ok_or(Refusal::UnknownToken),
            Method::Jwt(jwt) => jwt.verify(token),
        }
    }
}

fn read_secret_file(what: &'static str, path: &Path) -> Result<String, AuthConfigError> {
    std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A secret of another table (`[resume]`, `[host]`) read the way `[auth]`'s are: `None`
/// when neither key is set, else the trimmed secret and where it came from. Errors name
/// `table` and the keys, never the secret.
pub(crate) fn optional_secret(
    table: &str,
    what: &'static str,
    (file_key, file): (&str, Option<&PathBuf>),
    (env_key, env_name): (&str, Option<&String>),
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<(String, String)>, String> {
    if file.is_none() && env_name.is_none() {
        return Ok(None);
    }
    let (secret, origin) = file_or_env(what, file, file_key, env_name, env_key, env)
        .map_err(|e| format!("{table} {}", e.to_string().trim_start_matches("[auth] ")))?;
    Ok(Some((secret.trim().to_owned(), origin)))
}

/// Exactly one of a file and an environment variable.
fn file_or_env(
    what: &'static str,
    file: Option<&PathBuf>,
    file_key: &str,
    env_name: Option<&String>,
    env_key: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(String, String), AuthConfigError> {
    match (file, env_name) {
        (Some(path), None) => Ok((read_secret_file(what, path)?, path.display().to_string())),
        (None, Some(name)) => Ok((
            env(name).ok_or_else(|| AuthConfigError::MissingEnv(name.clone()))?,
            format!("${name}"),
        )),
        (Some(_), Some(_)) => Err(AuthConfigError::Invalid(format!(
            "set one of `{file_key}` and `{env_key}`, not both"
        ))),
        (None, None) => Err(AuthConfigError::Invalid(format!(
            "{what}: set `{file_key}` or `{env_key}`"
        ))),
    }
}

fn static_tokens(
    section: &AuthSection,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<HashMap<[u8; 32], Identity>, AuthConfigError> {
    let (text, origin) = file_or_env(
        "static tokens",
        section.tokens_file.as_ref(),
        "tokens_file",
        section.tokens_env.as_ref(),
        "tokens_env",
        env,
    )?;
    let bad = |message: String| AuthConfigError::Tokens {
        origin: origin.clone(),
        message,
    };
    // toml's messages quote the offending line, which may hold a token: say only where.
    let file: TokensFile = toml::from_str(&text).map_err(|e| {
        let place = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        bad(format!(
            "not a TOML list of [[tokens]] with token or token_sha256, subject and roles{place}"
        ))
    })?;
    if file.tokens.is_empty() {
        return Err(bad("no [[tokens]] entries: nobody could connect".to_owned()));
    }
    let mut tokens = HashMap::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let n = i + 1;
        if entry.subject.trim().is_empty() {
            return Err(bad(format!("entry {n} has an empty subject")));
        }
        if entry.roles.iter().any(|r| r.trim().is_empty()) {
            return Err(bad(format!(
                "entry {n} ({}) has an empty role",
                entry.subject
            )));
        }
        let hash = match (entry.token, entry.token_sha256) {
            (Some(token), None) => {
                if token.chars().count() < MIN_STATIC_TOKEN_CHARS {
                    return Err(bad(format!(
                        "the token of entry {n} ({}) is shorter than {MIN_STATIC_TOKEN_CHARS} characters",
                        entry.subject
                    )));
                }
                sha256(&token)
            }
            (None, Some(hex_hash)) => {
                let bytes = hex::decode(hex_hash.trim()).ok();
                match bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                    Some(hash) => hash,
                    None => {
                        return Err(bad(format!(
                            "token_sha256 of entry {n} ({}) is not 64 hex digits",
                            entry.subject
                        )))
                    }
                }
            }
            _ => {
                return Err(bad(format!(
                    "entry {n} ({}) needs exactly one of `token` and `token_sha256`",
                    entry.subject
                )))
            }
        };
        let identity = Identity::new(entry.subject, entry.roles);
        if let Some(other) = tokens.insert(hash, identity) {
            return Err(bad(format!(
                "entry {n} repeats the token of `{}`",
                other.subject
            )));
        }
    }
    Ok(tokens)
}

fn jwt_verifier(
    section: &AuthSection,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<JwtVerifier, AuthConfigError> {
    let invalid = |m: &str| AuthConfigError::Invalid(m.to_owned());
    let name = section
        .algorithm
        .as_deref()
        .ok_or_else(|| invalid("mode = \"jwt\" needs `algorithm`, e.g. \"RS256\""))?;
    let algorithm: Algorithm = name.parse().map_err(|_| {
        AuthConfigError::Invalid(format!(
            "unknown algorithm `{name}` (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"
        ))
    })?;
    let issuer = section
        .issuer
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("mode = \"jwt\" needs `issuer` (the `iss` tokens must carry)"))?;
    let audience = section
        .audience
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("mode = \"jwt\" needs `audience` (the `aud` tokens must carry)"))?;
    let hmac = matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    );
    let key = if hmac {
        if section.public_key_file.is_some() {
            return Err(invalid(
                "`public_key_file` does not apply to HS* algorithms: use secret_file or secret_env",
            ));
        }
        let (secret, origin) = file_or_env(
            "the JWT secret",
            section.secret_file.as_ref(),
            "secret_file",
            section.secret_env.as_ref(),
            "secret_env",
            env,
        )?;
        // A file usually ends with a newline that is not part of the secret.
        let secret = secret.trim_end_matches(['\n', '\r']);
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(AuthConfigError::Invalid(format!(
                "the JWT secret from {origin} is shorter than {MIN_HMAC_SECRET_BYTES} bytes"
            )));
        }
        DecodingKey::from_secret(secret.as_bytes())
    } else {
        if section.secret_file.is_some() || section.secret_env.is_some() {
            return Err(AuthConfigError::Invalid(format!(
                "{name} verifies with a public key: set `public_key_file`, not a secret"
            )));
        }
        let path = section.public_key_file.as_ref().ok_or_else(|| {
            AuthConfigError::Invalid(format!("{name} needs `public_key_file` (PEM)"))
        })?;
        let pem = read_secret_file("the JWT public key", path)?;
        let parsed = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
        };
        parsed.map_err(|e| AuthConfigError::Key {
            path: path.clone(),
            algorithm,
            reason: e.to_string(),
        })?
    };
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = section.leeway_secs.unwrap_or(DEFAULT_LEEWAY_SECS);
    let roles_claim: Vec<String> = section
        .roles_claim
        .as_deref()
        .unwrap_or(DEFAULT_ROLES_CLAIM)
        .split('.')
        .map(str::to_owned)
        .collect();
    if roles_claim.iter().any(String::is_empty) {
        return Err(invalid("`roles_claim` has an empty segment"));
    }
    Ok(JwtVerifier {
        key,
        validation,
        roles_claim,
    })
}

impl JwtVerifier {
    fn verify(&self, token: &str) -> Result<Checked, Refusal> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| Refusal::InvalidToken(why_invalid(e.kind())))?;
        let claims = Value::Object(data.claims);
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(Refusal::InvalidToken(
                    "`sub` is not a non-empty string".into(),
                ))
            }
        };
        let roles = self.roles(&claims)?;
        // `exp` is required and was checked: a number of seconds since the epoch. The
        // token keeps passing handshakes for the leeway after it.
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .ok_or_else(|| Refusal::InvalidToken("`exp` is not a number".into()))?;
        let valid_until = Duration::try_from_secs_f64(exp.max(0.0))
            .ok()
            .and_then(|exp| UNIX_EPOCH.checked_add(exp))
            .and_then(|exp| exp.checked_add(Duration::from_secs(self.validation.leeway)));
        // The library compares whole seconds and lets a token through for the whole second
        // of its `exp`; a connection is closed at `exp` itself, so the handshake agrees.
        if valid_until.is_some_and(|until| until <= SystemTime::now()) {
            return Err(Refusal::InvalidToken(why_invalid(
                &jsonwebtoken::errors::ErrorKind::ExpiredSignature,
            )));
        }
        Ok(Checked {
            identity: Some(Identity::new(subject, roles)),
            valid_until,
        })
    }

    /// The roles claim: an array of strings, or one space-separated string (as OAuth
    /// `scope`). Missing: no roles.
    fn roles(&self, claims: &Value) -> Result<Vec<String>, Refusal> {
        let claim = self
            .roles_claim
            .iter()
            .try_fold(claims, |value, key| value.get(key));
        let bad = || {
            Refusal::InvalidToken(format!(
                "`{}` is neither an array of strings nor a string",
                self.roles_claim.join(".")
            ))
        };
        match claim {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_owned).ok_or_else(bad))
                .collect(),
            Some(_) => Err(bad()),
        }
    }
}

/// Why a JWT was refused, in fixed words: some of the library's messages quote bytes of
/// the token (e.g. the symbol base64 choked on), and refusals are logged.
fn why_invalid(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "expired (exp)".to_owned(),
        K::ImmatureSignature => "not valid yet (nbf)".to_owned(),
        K::InvalidIssuer => "wrong issuer (iss)".to_owned(),
        K::InvalidAudience => "wrong audience (aud)".to_owned(),
        K::InvalidSubject => "wrong subject (sub)".to_owned(),
        K::InvalidSignature => "bad signature".to_owned(),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::UnsupportedAlgorithm => {
            "signed with an algorithm other than the configured one".to_owned()
        }
        // Claim names come from our own validation settings, never from the token.
        K::MissingRequiredClaim(claim) => format!("missing claim `{claim}`"),
        K::InvalidClaimFormat(claim) => format!("claim `{claim}` has the wrong type"),
        _ => "not a well-formed JWT".to_owned(),
    }
}

/// Log targets that print what clients send — socketioxide logs the handshake's `auth`
/// at debug level, engineioxide and the WebSocket stack log packets and frames at
/// debug/trace. With their events capped at INFO, no `TASKGATE_LOG` filter can make a
/// token (or a payload) reach the log.
const CLIENT_DATA_TARGETS: [&str; 6] = [
    "socketioxide",
    "engineioxide",
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
];

/// socketioxide's module that writes one ERROR line for every packet it cannot queue to a
/// client — e.g. each "Invalid namespace" answer to a flood of CONNECTs to an unknown
/// namespace (issue 20 #1: 229 lines from 3 requests). A client triggers these at will,
/// and they say nothing an operator can act on (the host drops clients that do not keep
/// up and says so itself), so its ERROR events are not logged.
const CLIENT_TRIGGERED_ERRORS: &str = "socketioxide::client";

/// Whether an event may be logged: false for DEBUG and TRACE events of the targets
/// that print client data, and for the ERROR lines a client can make socketioxide write
/// at will. Install with `tracing_subscriber::filter::filter_fn`.
pub fn loggable(metadata: &Metadata<'_>) -> bool {
    if *metadata.level() == tracing::Level::ERROR && metadata.target() == CLIENT_TRIGGERED_ERRORS {
        return false;
    }
    if *metadata.level() <= tracing::Level::INFO {
        return true;
    }
    let target = metadata.target();
    !CLIENT_DATA_TARGETS.iter().any(|t| {
        target
            .strip_prefix(t)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
