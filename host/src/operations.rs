//! Who may read the operations endpoints. `/readyz` and `/metrics` show the host id, the reply
//! queue's name and the plugin versions (security review, issue 20 #4): with `[host]
//! operations_token_env` or `operations_token_file` they answer only requests that carry
//! `Authorization: Bearer <token>`. `/healthz` shows nothing and stays open for load balancers.
//! The token is kept as its SHA-256 only, like the static client tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The shortest operations token accepted.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The SHA-256 of the operations token; `None`: the endpoints are open.
#[derive(Clone, Default)]
pub struct OperationsToken(Option<Arc<[u8; 32]>>);

impl OperationsToken {
    /// From `[host] operations_token_env` / `operations_token_file`; an error names the key,
    /// never the token.
    pub fn from_config(
        env_name: Option<&String>,
        file: Option<&std::path::PathBuf>,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let Some((token, origin)) = crate::auth::optional_secret(
            "[host]",
            "the operations token",
            ("operations_token_file", file),
            ("operations_token_env", env_name),
            env,
        )?
        else {
            return Ok(OperationsToken(None));
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "[host] operations_token from {origin} is shorter than {MIN_TOKEN_CHARS} characters"
            ));
        }
        Ok(OperationsToken(Some(Arc::new(
            Sha256::digest(token.as_bytes()).into(),
        ))))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn admits(&self, header: Option<&str>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        given == **expected
    }
}

/// Axum middleware on `/readyz` and `/metrics`: 401 without the token when one is set.
pub async fn guard(State(token): State<OperationsToken>, request: Request, next: Next) -> Response {
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if token.admits(header) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, "Bearer")],
        "the operations endpoints need Authorization: Bearer <[host] operations token>\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env(name: &str, value: Option<&str>) -> Result<OperationsToken, String> {
        let value = value.map(str::to_owned);
        OperationsToken::from_config(Some(&name.to_owned()), None, &|_| value.clone())
    }

    #[test]
    fn only_the_bearer_of_the_token_is_admitted() {
        let token = from_env("T", Some("an-operations-token-0123")).unwrap();
        assert!(token.is_set());
        assert!(token.admits(Some("Bearer an-operations-token-0123")));
        assert!(!token.admits(Some("Bearer an-operations-token-0124")));
        assert!(!token.admits(Some("an-operations-token-0123")));
        assert!(!token.admits(None));
        let open = OperationsToken::from_config(None, None, &|_| None).unwrap();
        assert!(!open.is_set());
        assert!(open.admits(None));
    }

    #[test]
    fn a_short_or_missing_token_is_a_configuration_error_that_does_not_show_it() {
        let short = from_env("T", Some("short")).err().unwrap();
        assert!(
            short.contains("operations_token") && !short.contains("short\""),
            "{short}"
        );
        let missing = from_env("UNSET", None).err().unwrap();
        assert!(missing.contains("UNSET"), "{missing}");
    }
}
