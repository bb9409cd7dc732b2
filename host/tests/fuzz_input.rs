//! Property-based fuzzing of everything that parses untrusted input: `request` and
//! `cancel` envelopes and client ids (through the gateway), payloads through the real
//! plugin boundary (the example plugins' libraries), worker replies, and handshake
//! tokens. Generated inputs mix well-formed structure with garbage, so both the deep and
//! the shallow paths are exercised.
//!
//! Each target runs for a time budget rather than a case count, so the whole file takes
//! a bounded time in CI: `TASKGATE_FUZZ_SECONDS` per target (default 5; the targets run
//! in parallel). A failure prints the smallest input proptest could shrink it to.
//! Needs `scripts/build-plugins` (the plugin-boundary target loads build/plugins).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{json, Value};
use taskgate_host::auth::{Authenticator, Refusal};
use taskgate_host::broker::memory::MemoryBroker;
use taskgate_host::broker::IncomingReply;
use taskgate_host::config::{AuthMode, AuthSection};
use taskgate_host::gateway::{CancelEnvelope, Gateway, GatewayOptions, RequestEnvelope};
use taskgate_host::limits::{Limits, RequestRate};
use taskgate_host::routes::{PayloadValidator, RequestTypeSpec, RoutingTable, SpecParts};
use taskgate_host::session::Session;
use taskgate_host::sink::memory::MemorySink;
use taskgate_host::sink::{ClientSink, EmitError, ResponseEvent};
use taskgate_plugin_api::host::{LoadedPlugin, Validation};
use taskgate_protocol::{Identity, MAX_CLIENT_ID_LEN};

// ---- the harness ----------------------------------------------------------------------

fn budget() -> Duration {
    let seconds = std::env::var("TASKGATE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(seconds.max(0.1))
}

/// Runs `test` on inputs from `strategy` until the time budget is spent.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let started = Instant::now();
    let config = Config {
        cases: 32,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut cases = 0u64;
    while started.elapsed() < budget() {
        // A runner counts its successes across runs: a fresh one (with a fresh seed) for
        // each batch.
        let mut runner = TestRunner::new(config.clone());
        match runner.run(&strategy, &test) {
            Ok(()) => cases += u64::from(config.cases),
            Err(TestError::Fail(reason, input)) => {
                panic!("fuzz target `{name}` failed after {cases} cases: {reason}\nminimal input: {input:#?}")
            }
            Err(TestError::Abort(reason)) => panic!("fuzz target `{name}` aborted: {reason}"),
        }
    }
    eprintln!(
        "fuzz target `{name}`: {cases} cases in {:.1} s, no failure",
        started.elapsed().as_secs_f64()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Any JSON value, up to a few levels deep, with strings that include odd characters.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[a-z.]{1,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map("[a-zA-Z]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text: valid values, deeply nested ones, and garbage.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => (1usize..3000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
        1 => (1usize..3000).prop_map(|n| "[".repeat(n)),
        1 => (1usize..500).prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n))),
        1 => prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => ".{0,100}",
    ]
}

// ---- envelopes and ids through the gateway ----------------------------------------------

const REFUSAL_CODES: [&str; 7] = [
    "BAD_REQUEST",
    "UNKNOWN_REQUEST_TYPE",
    "INVALID_PAYLOAD",
    "PAYLOAD_TOO_LARGE",
    "DUPLICATE_ID",
    "FORBIDDEN",
    "RATE_LIMITED",
];

/// A validator like a typed plugin's: an object with a string `text`.
struct TextValidator;
impl PayloadValidator for TextValidator {
    fn validate(&self, _: &str, payload: &str) -> Validation {
        match serde_json::from_str::<Value>(payload) {
            Ok(Value::Object(o)) if o.get("text").is_some_and(Value::is_string) => {
                Validation::Valid(json!({ "text": o["text"] }).to_string())
            }
            _ => Validation::Invalid(vec![taskgate_plugin_api::Problem::new("/text", "required")]),
        }
    }
}

fn spec(name: &str, max_payload_bytes: usize, roles: &[&str], validator: bool) -> RequestTypeSpec {
    RequestTypeSpec::new(
        SpecParts {
            name: name.to_owned(),
            plugin: "fuzz".to_owned(),
            plugin_version: "0".to_owned(),
            queue: format!("q.{name}"),
            queue_arguments: Default::default(),
            streams: true,
            timeout: Duration::from_secs(30),
            max_payload_bytes,
            required_roles: roles.iter().map(|r| r.to_string()).collect(),
            payload_schema: Value::Bool(true),
        },
        validator.then(|| Arc::new(TextValidator) as Arc<dyn PayloadValidator>),
    )
    .unwrap()
}

fn gateway(
    limits: &Limits,
) -> (
    Arc<Gateway<MemoryBroker, MemorySink>>,
    Arc<MemoryBroker>,
    Arc<MemorySink>,
) {
    let routes = RoutingTable::new([
        spec("echo", 4096, &[], false),
        spec("text", 4096, &[], true),
        spec("admin", 4096, &["admin"], false),
    ]);
    let broker = Arc::new(MemoryBroker::new());
    let sink = Arc::new(MemorySink::default());
    let gateway = Arc::new(
        Gateway::new(
            broker.clone(),
            sink.clone(),
            routes,
            GatewayOptions::default(),
        )
        .with_limits(limits),
    );
    (gateway, broker, sink)
}

/// One client event: a `request` (its body as text, as socketioxide hands it over) or a
/// `cancel`.
#[derive(Debug, Clone)]
enum Event {
    Request(String),
    Cancel(String),
}

fn envelope_text() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        3 => "[a-c]{1,2}".prop_map(Value::String),
        1 => ".{0,140}".prop_map(Value::String),
        1 => json_value(),
    ];
    let request_type = prop_oneof![
        3 => prop::sample::select(vec!["echo", "text", "admin", "nope", "", "ECHO"]).prop_map(|s| json!(s)),
        1 => json_value(),
    ];
    let structured = (
        prop::option::of(id),
        prop::option::of(request_type),
        prop::option::of(prop_oneof![
            json_value(),
            Just(json!({"text": "a b"})),
            ".{0,5000}".prop_map(Value::String)
        ]),
    )
        .prop_map(|(id, request_type, payload)| {
            let mut o = serde_json::Map::new();
            if let Some(id) = id {
                o.insert("id".into(), id);
            }
            if let Some(t) = request_type {
                o.insert("requestType".into(), t);
            }
            if let Some(p) = payload {
                o.insert("payload".into(), p);
            }
            Value::Object(o).to_string()
        });
    prop_oneof![4 => structured, 1 => json_text()]
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            5 => envelope_text().prop_map(Event::Request),
            1 => prop_oneof![
                "[a-c]{1,2}".prop_map(|id| json!({"id": id}).to_string()),
                json_text(),
            ]
            .prop_map(Event::Cancel),
        ],
        1..24,
    )
}

#[test]
fn fuzz_request_and_cancel_envelopes_through_the_gateway() {
    let rt = runtime();
    fuzz("envelopes", events(), |events| {
        rt.block_on(async {
            let limits = Limits {
                max_in_flight: 8,
                ..Limits::default()
            };
            let (gateway, broker, sink) = gateway(&limits);
            let identity = Identity::new("fuzzer", ["admin"]);
            gateway.connected_as(
                1,
                Session::new(Some(identity), RequestRate::new(1000, 12), None),
            );
            let mut tags = Vec::new();
            for (tag, event) in events.iter().enumerate() {
                match event {
                    // What socketioxide's TryData does with the event body.
                    Event::Request(text) => {
                        let envelope: Result<RequestEnvelope, String> =
                            serde_json::from_str(text).map_err(|e| e.to_string());
                        gateway.handle_request(1, envelope, tag as u32).await;
                        tags.push(tag as u32);
                    }
                    Event::Cancel(text) => {
                        let envelope: Result<CancelEnvelope, String> =
                            serde_json::from_str(text).map_err(|e| e.to_string());
                        gateway.cancel(1, envelope);
                    }
                }
            }
            let mut accepted = 0;
            for tag in tags {
                let acks = sink.acks(tag);
                prop_assert_eq!(acks.len(), 1, "exactly one ack per request");
                let ack = &acks[0];
                if ack["ok"] == json!(true) {
                    accepted += 1;
                    prop_assert_eq!(ack, &json!({"ok": true}));
                } else {
                    let code = ack["error"]["code"].as_str().unwrap_or_default();
                    prop_assert!(REFUSAL_CODES.contains(&code), "unexpected code {}", code);
                    prop_assert!(ack["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.len() < 1000));
                }
            }
            prop_assert_eq!(broker.published().len(), accepted, "accepted ⇔ published");
            for published in broker.published() {
                prop_assert!(
                    serde_json::from_str::<Value>(&published.body).is_ok(),
                    "published JSON"
                );
            }
            // Every response is well-formed, and a disconnect leaves nothing behind.
            for event in sink.events(1) {
                prop_assert!(event["id"].is_string());
            }
            gateway.disconnected(1);
            prop_assert_eq!(gateway.in_flight(), 0);
            prop_assert_eq!(gateway.reserved_ids(), 0);
            Ok(())
        })
    });
}

#[test]
fn fuzz_client_ids() {
    let rt = runtime();
    fuzz("ids", ".{0,200}", |id| {
        rt.block_on(async {
            let (gateway, broker, sink) = gateway(&Limits::default());
            gateway.connected(1);
            let envelope =
                serde_json::from_value::<RequestEnvelope>(json!({"id": id, "requestType": "echo"}))
                    .map_err(|e| e.to_string());
            gateway.handle_request(1, envelope, 1).await;
            let chars = id.chars().count();
            let ack = sink.acks(1).pop().unwrap();
            if (1..=MAX_CLIENT_ID_LEN).contains(&chars) {
                prop_assert_eq!(ack, json!({"ok": true}));
                prop_assert_eq!(broker.published().len(), 1);
            } else {
                prop_assert_eq!(&ack["error"]["code"], &json!("BAD_REQUEST"));
                prop_assert!(broker.published().is_empty());
            }
            Ok(())
        })
    });
}

// ---- payloads through the plugin boundary -----------------------------------------------

fn example_plugin(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let path = repo.join("build/plugins").join(format!(
        "libtaskgate_plugin_{name}.{}",
        std::env::consts::DLL_EXTENSION
    ));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

/// The example plugins, loaded once per test process (libraries are never unloaded).
fn plugins() -> &'static Vec<LoadedPlugin> {
    static PLUGINS: OnceLock<Vec<LoadedPlugin>> = OnceLock::new();
    PLUGINS.get_or_init(|| {
        ["wordcount", "countdown", "echo"]
            .iter()
            .map(|name| {
                LoadedPlugin::load(&example_plugin(name)).expect("the example plugin loads")
            })
            .collect()
    })
}

fn plugin_payload() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => json_text(),
        1 => (".{0,30}", json_value()).prop_map(|(text, extra)| json!({"text": text, "extra": extra}).to_string()),
        1 => (any::<i64>(), prop::option::of(any::<i64>()))
            .prop_map(|(from, interval)| json!({"from": from, "intervalMs": interval}).to_string()),
    ]
}

#[test]
fn fuzz_payloads_through_the_plugin_boundary() {
    let loaded = plugins();
    // Every request type of every example plugin, as the host serves it.
    let mut specs: Vec<(String, RequestTypeSpec)> = Vec::new();
    for plugin in loaded {
        let manifest = plugin.manifest();
        for declared in &manifest.request_types {
            let validator: Arc<dyn PayloadValidator> = Arc::new(plugin.clone());
            let spec = RequestTypeSpec::new(
                SpecParts {
                    name: declared.name.clone(),
                    plugin: manifest.name.clone(),
                    plugin_version: manifest.version.clone(),
                    queue: declared.queue.clone(),
                    queue_arguments: declared.queue_arguments.clone(),
                    streams: declared.streams,
                    timeout: Duration::from_millis(declared.timeout_ms),
                    max_payload_bytes: declared.max_payload_bytes as usize,
                    required_roles: declared.required_roles.clone(),
                    payload_schema: declared.payload_schema.clone(),
                },
                declared.validates.then_some(validator),
            )
            .unwrap();
            specs.push((declared.name.clone(), spec));
        }
    }
    assert!(specs.len() >= 3, "the example plugins declare their types");
    fuzz(
        "payloads through the plugin boundary",
        plugin_payload(),
        |payload| {
            // The host only validates payloads that are JSON (socketioxide parsed them).
            let Ok(raw) = serde_json::from_str::<Box<serde_json::value::RawValue>>(&payload) else {
                return Ok(());
            };
            for (name, spec) in &specs {
                match spec.check(&raw) {
                    Ok(taskgate_host::routes::Checked::Unchanged) => {}
                    Ok(taskgate_host::routes::Checked::Normalised(json)) => {
                        prop_assert!(
                            serde_json::from_str::<Value>(&json).is_ok(),
                            "{}: normalised payload is JSON",
                            name
                        );
                    }
                    Err(error) => {
                        let body = error.to_body();
                        prop_assert!(
                            ["INVALID_PAYLOAD", "PAYLOAD_TOO_LARGE", "BAD_REQUEST"]
                                .contains(&body.code.as_str()),
                            "{}: a plugin failed with {:?} on {}",
                            name,
                            body,
                            payload
                        );
                        if let Some(problems) =
                            body.details.as_ref().and_then(|d| d["problems"].as_array())
                        {
                            prop_assert!(!problems.is_empty() && problems.len() <= 20);
                            for p in problems {
                                let pointer = p["pointer"].as_str().unwrap_or("?");
                                prop_assert!(
                                    pointer.is_empty() || pointer.starts_with('/'),
                                    "pointer {}",
                                    pointer
                                );
                            }
                        }
                    }
                }
            }
            Ok(())
        },
    );
}

// ---- worker replies -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Reply {
    /// Index of a request in flight, or a foreign id.
    target: Result<usize, String>,
    kind: Option<String>,
    seq: Option<i64>,
    body: Vec<u8>,
}

fn replies() -> impl Strategy<Value = Vec<Reply>> {
    let target = prop_oneof![
        4 => (0usize..4).prop_map(Ok),
        1 => prop_oneof![
            Just(uuid::Uuid::new_v4().to_string()),
            ".{0,40}",
            Just(String::new())
        ]
        .prop_map(Err),
    ];
    let kind = prop::option::of(prop_oneof![
        3 => prop::sample::select(vec!["chunk", "result", "error"]).prop_map(str::to_owned),
        1 => ".{0,8}",
    ]);
    let body = prop_oneof![
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => json_text().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..100),
        1 => (".{0,20}", prop::option::of(json_value()))
            .prop_map(|(m, code)| json!({"message": m, "code": code}).to_string().into_bytes()),
    ];
    let seq = prop::option::of(prop_oneof![0i64..6, any::<i64>()]);
    prop::collection::vec(
        (target, kind, seq, body).prop_map(|(target, kind, seq, body)| Reply {
            target,
            kind,
            seq,
            body,
        }),
        1..40,
    )
}

/// Records responses as the text the Socket.IO side would send: worker data is relayed
/// verbatim (a `RawValue`, at any depth), which a `serde_json::Value` could not hold.
#[derive(Default)]
struct TextSink {
    events: std::sync::Mutex<Vec<String>>,
}

/// The fields of a recorded `response` the checks need; `data` stays raw.
#[derive(serde::Deserialize)]
struct Recorded {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    #[allow(dead_code)]
    data: Option<Box<serde_json::value::RawValue>>,
    error: Option<taskgate_protocol::ErrorBody>,
}

impl ClientSink for TextSink {
    type Conn = u32;
    type Ack = ();

    fn ack(&self, _: (), _: Result<(), &taskgate_protocol::ErrorBody>) -> Result<(), EmitError> {
        Ok(())
    }

    fn ack_json(&self, _: (), _: &serde_json::Value) -> Result<(), EmitError> {
        Ok(())
    }

    fn emit(&self, _: u32, event: &ResponseEvent<'_>) -> Result<(), EmitError> {
        let text = serde_json::to_string(event).map_err(|_| EmitError::Encode)?;
        self.events.lock().unwrap().push(text);
        Ok(())
    }

    fn disconnect(&self, _: u32) {}
}

#[test]
fn fuzz_worker_replies() {
    let rt = runtime();
    fuzz("worker replies", replies(), |replies| {
        rt.block_on(async {
            let broker = Arc::new(MemoryBroker::new());
            let sink = Arc::new(TextSink::default());
            let gateway = Arc::new(Gateway::new(
                broker.clone(),
                sink.clone(),
                RoutingTable::new([spec("echo", 4096, &[], false)]),
                GatewayOptions::default(),
            ));
            gateway.connected(1);
            let ids = ["r0", "r1", "r2", "r3"];
            for id in ids {
                let envelope = serde_json::from_value::<RequestEnvelope>(
                    json!({"id": id, "requestType": "echo", "payload": 1}),
                )
                .map_err(|e| e.to_string());
                gateway.handle_request(1, envelope, ()).await;
            }
            let correlation: Vec<String> = broker
                .published()
                .iter()
                .map(|p| p.correlation_id.to_string())
                .collect();
            prop_assert_eq!(correlation.len(), 4);
            for reply in replies {
                gateway.on_reply(IncomingReply {
                    correlation_id: match &reply.target {
                        Ok(i) => Some(correlation[*i].clone()),
                        Err(foreign) if foreign.is_empty() => None,
                        Err(foreign) => Some(foreign.clone()),
                    },
                    kind: reply.kind,
                    seq: reply.seq,
                    body: reply.body,
                });
            }
            // Protocol §1 per id: chunks with seq 0, 1, 2 …, at most one final, nothing after it.
            let mut state: HashMap<String, (u64, bool)> = HashMap::new();
            for text in sink.events.lock().unwrap().iter() {
                let event: Recorded = serde_json::from_str(text)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {text:.200}")))?;
                prop_assert!(
                    ids.contains(&event.id.as_str()),
                    "response for an id never sent: {:.200}",
                    text
                );
                let (next_seq, finished) = state.entry(event.id.clone()).or_insert((0, false));
                prop_assert!(!*finished, "a response after the final one: {:.200}", text);
                match event.kind.as_str() {
                    "chunk" => {
                        prop_assert_eq!(event.seq, Some(*next_seq));
                        *next_seq += 1;
                    }
                    "result" => *finished = true,
                    "error" => {
                        let error = event.error.as_ref();
                        prop_assert!(
                            error.is_some_and(|e| !e.code.is_empty()),
                            "error without a code: {:.200}",
                            text
                        );
                        *finished = true;
                    }
                    other => prop_assert!(false, "unknown response type {}", other),
                }
            }
            let finished = state.values().filter(|(_, f)| *f).count();
            prop_assert_eq!(gateway.in_flight(), 4 - finished);
            gateway.disconnected(1);
            prop_assert_eq!(gateway.in_flight(), 0);
            Ok(())
        })
    });
}

// ---- handshake tokens ------------------------------------------------------------------

const STATIC_TOKEN: &str = "fuzz-static-token-0123456789";

fn static_authenticator() -> Authenticator {
    let section = AuthSection {
        mode: AuthMode::Static,
        tokens_env: Some("T".into()),
        ..AuthSection::default()
    };
    Authenticator::from_config_with_env(&section, |_| {
        Some(format!(
            "[[tokens]]\ntoken = \"{STATIC_TOKEN}\"\nsubject = \"s\"\nroles = [\"r\"]\n"
        ))
    })
    .unwrap()
}

#[test]
fn fuzz_handshake_auth_payloads() {
    let authenticator = static_authenticator();
    let auth = prop_oneof![
        2 => json_value(),
        2 => json_text().prop_map(|t| json!({ "token": t })),
        1 => ".{0,64}".prop_map(|t| json!({ "token": format!("{STATIC_TOKEN}{t}") })),
    ];
    fuzz("handshake auth", prop::option::of(auth), |auth| {
        let exact = auth
            .as_ref()
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
            == Some(STATIC_TOKEN);
        match authenticator.authenticate(auth.as_ref()) {
            Ok(Some(identity)) => {
                prop_assert!(exact, "a token other than the configured one was accepted");
                prop_assert_eq!(identity, Identity::new("s", ["r"]));
            }
            Ok(None) => prop_assert!(false, "static mode never lets anyone in anonymously"),
            Err(refusal) => prop_assert!(!exact, "the configured token was refused: {}", refusal),
        }
        Ok(())
    });
}

const JWT_SECRET: &str = "fuzz-jwt-secret-that-is-long-enough-0123456789";

fn jwt_authenticator() -> Authenticator {
    let section = AuthSection {
        mode: AuthMode::Jwt,
        algorithm: Some("HS256".into()),
        secret_env: Some("S".into()),
        issuer: Some("iss".into()),
        audience: Some("aud".into()),
        ..AuthSection::default()
    };
    Authenticator::from_config_with_env(&section, |_| Some(JWT_SECRET.to_owned())).unwrap()
}

fn valid_jwt() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "s", "iss": "iss", "aud": "aud", "exp": exp, "roles": ["r"]}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn fuzz_mutated_jwts_are_refused() {
    let authenticator = jwt_authenticator();
    let token = valid_jwt();
    assert!(authenticator
        .authenticate(Some(&json!({ "token": token })))
        .is_ok());
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \u{0}é"
            .chars()
            .collect();
    let len = token.chars().count();
    let mutation = prop::collection::vec((0..len, prop::sample::select(alphabet), 0u8..3), 1..4);
    fuzz("mutated JWTs", mutation, |edits| {
        let mut chars: Vec<char> = token.chars().collect();
        for (at, c, op) in edits {
            let at = at.min(chars.len().saturating_sub(1));
            match op {
                0 if !chars.is_empty() => chars[at] = c,
                1 => chars.insert(at, c),
                _ if !chars.is_empty() => {
                    chars.remove(at);
                }
                _ => {}
            }
        }
        let mutated: String = chars.into_iter().collect();
        if mutated == token {
            return Ok(());
        }
        let outcome = authenticator.authenticate(Some(&json!({ "token": mutated })));
        prop_assert!(
            matches!(outcome, Err(Refusal::InvalidToken(_))),
            "a mutated token was not refused as invalid: {:?}",
            outcome
        );
        Ok(())
    });
}
