//! Unit tests of the authenticators: static tokens from a file and from the environment,
//! HS256 JWTs with every claim check, and what refusals and errors reveal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &str = "an-hmac-secret-that-is-long-enough-0123456789";
const ALICE_TOKEN: &str = "alice-token-0123456789abcdef";

/// A file in a private temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "taskgate-auth-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn handshake(token: &str) -> Value {
    json!({ "token": token })
}

fn tokens_toml() -> String {
    format!(
        r#"
        [[tokens]]
        token = "{ALICE_TOKEN}"
        subject = "alice"
        roles = ["admin", "ops"]

        [[tokens]]
        token_sha256 = "{}"
        subject = "reports"
        "#,
        hex::encode(sha256("reports-service-token-0123"))
    )
}

fn static_section(file: &TempFile) -> AuthSection {
    AuthSection {
        mode: AuthMode::Static,
        tokens_file: Some(file.0.clone()),
        ..AuthSection::default()
    }
}

#[test]
fn without_authentication_everyone_is_anonymous() {
    let auth = Authenticator::from_config_with_env(&AuthSection::default(), no_env).unwrap();
    assert_eq!(auth.mode(), AuthMode::None);
    assert_eq!(auth.authenticate(None), Ok(None));
    assert_eq!(auth.authenticate(Some(&handshake("anything"))), Ok(None));
}

#[test]
fn static_tokens_from_a_file_map_to_identities() {
    let file = TempFile::new("tokens.toml", &tokens_toml());
    let auth = Authenticator::from_config_with_env(&static_section(&file), no_env).unwrap();
    assert_eq!(
        auth.authenticate(Some(&handshake(ALICE_TOKEN))),
        Ok(Some(Identity::new("alice", ["admin", "ops"])))
    );
    assert_eq!(
        auth.authenticate(Some(&handshake("reports-service-token-0123"))),
        Ok(Some(Identity::new("reports", Vec::<String>::new())))
    );
}

#[test]
fn static_tokens_refuse_unknown_missing_empty_and_oversized_tokens() {
    let file = TempFile::new("tokens.toml", &tokens_toml());
    let auth = Authenticator::from_config_with_env(&static_section(&file), no_env).unwrap();
    assert_eq!(
        auth.authenticate(Some(&handshake("alice-token-0123456789abcdeF"))),
        Err(Refusal::UnknownToken)
    );
    assert_eq!(auth.authenticate(None), Err(Refusal::Missing));
    assert_eq!(auth.authenticate(Some(&json!({}))), Err(Refusal::Missing));
    assert_eq!(
        auth.authenticate(Some(&json!({"token": 5}))),
        Err(Refusal::Missing)
    );
    assert_eq!(
        auth.authenticate(Some(&json!("token"))),
        Err(Refusal::Missing)
    );
    assert_eq!(
        auth.authenticate(Some(&handshake(""))),
        Err(Refusal::Missing)
    );
    let long = "x".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        auth.authenticate(Some(&handshake(&long))),
        Err(Refusal::TooLong)
    );
}

#[test]
fn static_tokens_from_the_environment() {
    let section = AuthSection {
        mode: AuthMode::Static,
        tokens_env: Some("TOKENS".into()),
        ..AuthSection::default()
    };
    let env = |name: &str| (name == "TOKENS").then(tokens_toml);
    let auth = Authenticator::from_config_with_env(&section, env).unwrap();
    assert!(auth.authenticate(Some(&handshake(ALICE_TOKEN))).is_ok());
    let err = Authenticator::from_config_with_env(&section, no_env).unwrap_err();
    assert!(err.to_string().contains("TOKENS is not set"), "{err}");
}

#[test]
fn bad_static_token_files_are_refused_without_showing_tokens() {
    let cases = [
        (
            "[[tokens]]\ntoken = \"short-secret\"\nsubject = \"a\"\n",
            "shorter than 16",
        ),
        (
            "[[tokens]]\ntoken_sha256 = \"zz\"\nsubject = \"a\"\n",
            "not 64 hex digits",
        ),
        (
            "[[tokens]]\nsubject = \"a\"\n",
            "exactly one of `token` and `token_sha256`",
        ),
        (
            "[[tokens]]\ntoken = \"very-secret-token-1234\"\nsubject = \" \"\n",
            "empty subject",
        ),
        ("tokens = []\n", "no [[tokens]]"),
        (
            "[[tokens]]\ntoken = \"very-secret-token-1234\"\nsubject = \"a\"\n[[tokens]]\ntoken = \"very-secret-token-1234\"\nsubject = \"b\"\n",
            "repeats the token of `a`",
        ),
        (
            "[[tokens]]\ntoken = \"very-secret-token-1234\"\nsubject = \"a\"\nrole = [\"x\"]\n",
            "not a TOML list",
        ),
        ("very-secret-token-1234 = oops", "not a TOML list"),
    ];
    for (text, expected) in cases {
        let file = TempFile::new("tokens.toml", text);
        let err = Authenticator::from_config_with_env(&static_section(&file), no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(!err.contains("very-secret-token"), "a token leaked: {err}");
        assert!(!err.contains("short-secret"), "a token leaked: {err}");
    }
}

#[test]
fn keys_of_another_mode_and_missing_sources_are_configuration_errors() {
    let err = Authenticator::from_config_with_env(
        &AuthSection {
            tokens_file: Some("t.toml".into()),
            ..AuthSection::default()
        },
        no_env,
    )
    .unwrap_err();
    assert!(err
        .to_string()
        .contains("`tokens_file` does not apply to mode = \"none\""));
    let err = Authenticator::from_config_with_env(
        &AuthSection {
            mode: AuthMode::Static,
            ..AuthSection::default()
        },
        no_env,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("set `tokens_file` or `tokens_env`"),
        "{err}"
    );
    let err = Authenticator::from_config_with_env(
        &AuthSection {
            mode: AuthMode::Static,
            tokens_file: Some("/nonexistent/taskgate/tokens.toml".into()),
            ..AuthSection::default()
        },
        no_env,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/taskgate/tokens.toml"),
        "{err}"
    );
}

// ---- JWT ----------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn jwt_section() -> AuthSection {
    AuthSection {
        mode: AuthMode::Jwt,
        algorithm: Some("HS256".into()),
        secret_env: Some("JWT_SECRET".into()),
        issuer: Some("https://id.example.com/".into()),
        audience: Some("taskgate".into()),
        leeway_secs: Some(5),
        ..AuthSection::default()
    }
}

fn jwt_env(name: &str) -> Option<String> {
    (name == "JWT_SECRET").then(|| format!("{SECRET}\n"))
}

fn jwt_auth() -> Authenticator {
    Authenticator::from_config_with_env(&jwt_section(), jwt_env).unwrap()
}

fn good_claims() -> Value {
    json!({
        "sub": "alice",
        "iss": "https://id.example.com/",
        "aud": "taskgate",
        "exp": now() + 600,
        "nbf": now() - 10,
        "roles": ["admin", "ops"],
    })
}

fn sign(claims: &Value) -> String {
    sign_with(claims, SECRET, Algorithm::HS256)
}

fn sign_with(claims: &Value, secret: &str, algorithm: Algorithm) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn with(change: impl FnOnce(&mut Map<String, Value>)) -> Value {
    let mut claims = good_claims();
    change(claims.as_object_mut().unwrap());
    claims
}

fn refusal(auth: &Authenticator, token: &str) -> String {
    match auth.authenticate(Some(&handshake(token))) {
        Err(Refusal::InvalidToken(reason)) => reason,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[test]
fn a_valid_jwt_gives_its_subject_and_roles() {
    let auth = jwt_auth();
    assert_eq!(auth.mode(), AuthMode::Jwt);
    assert_eq!(
        auth.authenticate(Some(&handshake(&sign(&good_claims())))),
        Ok(Some(Identity::new("alice", ["admin", "ops"])))
    );
    // The audience may be one of several.
    let several = with(|c| {
        c.insert("aud".into(), json!(["other", "taskgate"]));
    });
    assert!(auth.authenticate(Some(&handshake(&sign(&several)))).is_ok());
}

#[test]
fn expired_not_yet_valid_and_foreign_tokens_are_refused() {
    let auth = jwt_auth();
    let expired = with(|c| {
        c.insert("exp".into(), json!(now() - 60));
    });
    assert!(
        refusal(&auth, &sign(&expired)).contains("expired (exp)"),
        "exp"
    );
    let early = with(|c| {
        c.insert("nbf".into(), json!(now() + 600));
    });
    assert!(
        refusal(&auth, &sign(&early)).contains("not valid yet (nbf)"),
        "nbf"
    );
    let issuer = with(|c| {
        c.insert("iss".into(), json!("https://evil.example.com/"));
    });
    assert!(
        refusal(&auth, &sign(&issuer)).contains("wrong issuer"),
        "iss"
    );
    let audience = with(|c| {
        c.insert("aud".into(), json!("another-service"));
    });
    assert!(
        refusal(&auth, &sign(&audience)).contains("wrong audience"),
        "aud"
    );
    for claim in ["exp", "iss", "aud", "sub"] {
        let missing = with(|c| {
            c.remove(claim);
        });
        let reason = refusal(&auth, &sign(&missing));
        assert!(reason.contains(claim), "missing {claim}: {reason}");
    }
    let empty_subject = with(|c| {
        c.insert("sub".into(), json!(""));
    });
    assert!(refusal(&auth, &sign(&empty_subject)).contains("sub"));
}

#[test]
fn the_leeway_tolerates_small_clock_skew_only() {
    let auth = jwt_auth();
    let just_expired = with(|c| {
        c.insert("exp".into(), json!(now() - 2));
    });
    assert!(auth
        .authenticate(Some(&handshake(&sign(&just_expired))))
        .is_ok());
    let long_expired = with(|c| {
        c.insert("exp".into(), json!(now() - 30));
    });
    assert!(auth
        .authenticate(Some(&handshake(&sign(&long_expired))))
        .is_err());
}

#[test]
fn forged_and_malformed_jwts_are_refused() {
    let auth = jwt_auth();
    let other_secret = sign_with(
        &good_claims(),
        "another-secret-that-is-long-enough-987654321",
        Algorithm::HS256,
    );
    assert!(refusal(&auth, &other_secret).contains("bad signature"));
    // Another algorithm than the configured one, even with the right secret.
    let hs512 = sign_with(&good_claims(), SECRET, Algorithm::HS512);
    assert!(refusal(&auth, &hs512).contains("algorithm other than the configured one"));
    // alg "none": an unsigned token.
    let good = sign(&good_claims());
    let mut parts = good.split('.');
    let (_, payload) = (parts.next().unwrap(), parts.next().unwrap());
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let unsigned = format!("{none_header}.{payload}.");
    assert!(auth.authenticate(Some(&handshake(&unsigned))).is_err());
    // A tampered payload under the original signature.
    let tampered_claims = with(|c| {
        c.insert("roles".into(), json!(["admin", "root"]));
    });
    let tampered = sign(&tampered_claims);
    let forged = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        tampered.split('.').nth(1).unwrap(),
        good.split('.').nth(2).unwrap()
    );
    assert!(refusal(&auth, &forged).contains("bad signature"));
    for junk in [
        "a.b.c",
        "not a jwt",
        "...",
        "e30.e30.",
        "\u{0}\u{1}",
        "eyJ!.x.y",
    ] {
        // The reason quotes nothing of the token.
        assert_eq!(refusal(&auth, junk), "not a well-formed JWT", "{junk:?}");
    }
}

#[test]
fn roles_come_from_a_configurable_claim_as_an_array_or_a_string() {
    let section = AuthSection {
        roles_claim: Some("realm_access.roles".into()),
        ..jwt_section()
    };
    let auth = Authenticator::from_config_with_env(&section, jwt_env).unwrap();
    let nested = with(|c| {
        c.insert("realm_access".into(), json!({"roles": ["reader"]}));
    });
    assert_eq!(
        auth.authenticate(Some(&handshake(&sign(&nested)))),
        Ok(Some(Identity::new("alice", ["reader"])))
    );
    // Without the claim: an identity without roles.
    assert_eq!(
        auth.authenticate(Some(&handshake(&sign(&good_claims())))),
        Ok(Some(Identity::new("alice", Vec::<String>::new())))
    );
    let scope = AuthSection {
        roles_claim: Some("scope".into()),
        ..jwt_section()
    };
    let auth = Authenticator::from_config_with_env(&scope, jwt_env).unwrap();
    let spaced = with(|c| {
        c.insert("scope".into(), json!("read write"));
    });
    assert_eq!(
        auth.authenticate(Some(&handshake(&sign(&spaced)))),
        Ok(Some(Identity::new("alice", ["read", "write"])))
    );
    let numeric = with(|c| {
        c.insert("scope".into(), json!([1, 2]));
    });
    assert!(refusal(&auth, &sign(&numeric)).contains("scope"));
}

#[test]
fn jwt_configuration_errors_are_specific_and_reveal_no_secret() {
    let check = |section: AuthSection, env: &dyn Fn(&str) -> Option<String>, expected: &str| {
        let err = Authenticator::from_config_with_env(&section, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains(SECRET), "the secret leaked: {err}");
    };
    check(
        AuthSection {
            algorithm: None,
            ..jwt_section()
        },
        &jwt_env,
        "needs `algorithm`",
    );
    check(
        AuthSection {
            algorithm: Some("none".into()),
            ..jwt_section()
        },
        &jwt_env,
        "unknown algorithm `none`",
    );
    check(
        AuthSection {
            issuer: None,
            ..jwt_section()
        },
        &jwt_env,
        "needs `issuer`",
    );
    check(
        AuthSection {
            audience: Some(String::new()),
            ..jwt_section()
        },
        &jwt_env,
        "needs `audience`",
    );
    check(
        jwt_section(),
        &|_| Some("too-short".into()),
        "shorter than 32 bytes",
    );
    check(
        AuthSection {
            algorithm: Some("RS256".into()),
            ..jwt_section()
        },
        &jwt_env,
        "verifies with a public key",
    );
    check(
        AuthSection {
            algorithm: Some("RS256".into()),
            secret_env: None,
            ..jwt_section()
        },
        &jwt_env,
        "needs `public_key_file`",
    );
    let not_a_key = TempFile::new(
        "key.pem",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    check(
        AuthSection {
            algorithm: Some("ES256".into()),
            secret_env: None,
            public_key_file: Some(not_a_key.0.clone()),
            ..jwt_section()
        },
        &jwt_env,
        "not a usable ES256 key",
    );
    check(
        AuthSection {
            tokens_env: Some("X".into()),
            ..jwt_section()
        },
        &jwt_env,
        "`tokens_env` does not apply to mode = \"jwt\"",
    );
}

#[test]
fn debug_output_names_the_mode_not_the_secrets() {
    let text = format!("{:?}", jwt_auth());
    assert!(text.contains("jwt"));
    assert!(!text.contains(SECRET));
    let file = TempFile::new("tokens.toml", &tokens_toml());
    let text = format!(
        "{:?}",
        Authenticator::from_config_with_env(&static_section(&file), no_env).unwrap()
    );
    assert_eq!(text, "Authenticator(static, 2 tokens)");
}

#[test]
fn client_data_targets_are_capped_at_info() {
    use tracing::callsite::Identifier;
    use tracing::field::FieldSet;
    use tracing::metadata::Kind;
    use tracing::Level;
    struct Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static CALLSITE: Callsite = Callsite;
    let meta = |target: &'static str, level: Level| {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&CALLSITE)),
            Kind::EVENT,
        )
    };
    assert!(!loggable(&meta("socketioxide::client", Level::DEBUG)));
    assert!(!loggable(&meta("engineioxide", Level::TRACE)));
    assert!(!loggable(&meta("tungstenite::protocol", Level::TRACE)));
    assert!(loggable(&meta("socketioxide::client", Level::INFO)));
    assert!(loggable(&meta("socketioxide", Level::WARN)));
    assert!(loggable(&meta("taskgate_host::gateway", Level::TRACE)));
    assert!(loggable(&meta("socketioxide_like_but_other", Level::DEBUG)));
    // One line per packet of a client's flood: not logged (issue 20 #1).
    assert!(!loggable(&meta("socketioxide::client", Level::ERROR)));
    assert!(loggable(&meta("socketioxide::ns", Level::ERROR)));
}

#[test]
fn a_jwt_connection_is_valid_until_exp_plus_the_leeway_other_modes_have_no_end() {
    // A connection lives exactly as long as its token would still pass a handshake
    // (issue 20 #9): so a client that reconnects with the same token at the close is
    // refused, and one with a fresh token is let in.
    let auth = jwt_auth();
    let exp = now() + 600;
    let claims = with(|c| {
        c.insert("exp".into(), json!(exp));
    });
    let checked = auth.check(Some(&handshake(&sign(&claims)))).unwrap();
    assert_eq!(
        checked.identity,
        Some(Identity::new("alice", ["admin", "ops"]))
    );
    assert_eq!(
        checked.valid_until,
        Some(UNIX_EPOCH + std::time::Duration::from_secs(exp as u64 + 5))
    );

    // At exp + leeway the token is done, to the second (RFC 7519: "before" exp), though
    // the JWT library still takes it for the rest of that second.
    let just_expired = with(|c| {
        c.insert("exp".into(), json!(now() - 5));
    });
    assert_eq!(refusal(&auth, &sign(&just_expired)), "expired (exp)");

    let file = TempFile::new("tokens.toml", &tokens_toml());
    let static_auth = Authenticator::from_config_with_env(&static_section(&file), no_env).unwrap();
    let checked = static_auth.check(Some(&handshake(ALICE_TOKEN))).unwrap();
    assert!(checked.identity.is_some());
    assert_eq!(checked.valid_until, None);
    assert_eq!(Authenticator::none().check(None).unwrap().valid_until, None);
}
