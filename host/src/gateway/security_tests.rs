//! Unit tests of the gateway's security checks — roles (`FORBIDDEN`), the request rate
//! and requests in flight (`RATE_LIMITED`), the payload ceiling, and the identity that
//! travels to workers — through the in-memory broker and client sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use serde_json::{json, Value};
use taskgate_protocol::Identity;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::limits::{ConnectionCounter, RequestRate};
use crate::routes::testing::parts;
use crate::routes::{RequestTypeSpec, RoutingTable};
use crate::sink::memory::MemorySink;

const ALICE: u32 = 1;
const BOB: u32 = 2;

struct Harness {
    gateway: Arc<Gateway<MemoryBroker, MemorySink>>,
    broker: Arc<MemoryBroker>,
    sink: Arc<MemorySink>,
    tag: std::sync::atomic::AtomicU32,
}

/// `open` needs no role, `admin` needs `admin`, `audit` needs `admin` and `auditor`.
fn harness(limits: Limits) -> Harness {
    let mut admin = parts("admin");
    admin.required_roles = vec!["admin".into()];
    let mut audit = parts("audit");
    audit.required_roles = vec!["admin".into(), "auditor".into()];
    let routes = RoutingTable::new([
        RequestTypeSpec::new(parts("open"), None).unwrap(),
        RequestTypeSpec::new(admin, None).unwrap(),
        RequestTypeSpec::new(audit, None).unwrap(),
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
        .with_limits(&limits),
    );
    Harness {
        gateway,
        broker,
        sink,
        tag: 0.into(),
    }
}

fn session(identity: Option<Identity>) -> Session {
    Session::new(identity, RequestRate::unlimited(), None)
}

impl Harness {
    /// Sends a request and returns its ack.
    async fn send(&self, conn: u32, envelope: Value) -> Value {
        let tag = self.tag.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1000;
        let envelope = serde_json::from_value(envelope).map_err(|e| e.to_string());
        self.gateway.handle_request(conn, envelope, tag).await;
        self.sink.acks(tag).pop().expect("an ack")
    }

    async fn call(&self, conn: u32, id: &str, request_type: &str) -> Value {
        self.send(
            conn,
            json!({"id": id, "requestType": request_type, "payload": {}}),
        )
        .await
    }
}

fn code(ack: &Value) -> &str {
    assert_eq!(ack["ok"], json!(false), "expected a refusal, got {ack}");
    ack["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn a_type_that_requires_roles_is_forbidden_to_identities_without_them_and_never_published() {
    let h = harness(Limits::default());
    h.gateway
        .connected_as(ALICE, session(Some(Identity::new("alice", ["admin"]))));
    h.gateway
        .connected_as(BOB, session(Some(Identity::new("bob", ["auditor"]))));

    assert_eq!(h.call(ALICE, "a1", "admin").await, json!({"ok": true}));
    assert_eq!(code(&h.call(ALICE, "a2", "audit").await), "FORBIDDEN");
    assert_eq!(h.call(ALICE, "a3", "open").await, json!({"ok": true}));
    assert_eq!(code(&h.call(BOB, "b1", "admin").await), "FORBIDDEN");
    assert_eq!(code(&h.call(BOB, "b2", "audit").await), "FORBIDDEN");
    assert_eq!(h.call(BOB, "b3", "open").await, json!({"ok": true}));

    let published: Vec<String> = h
        .broker
        .published()
        .iter()
        .map(|p| p.request_type.to_string())
        .collect();
    assert_eq!(published, vec!["admin", "open", "open"]);
    // A refused id is not reserved.
    assert_eq!(h.call(BOB, "b1", "open").await, json!({"ok": true}));
}

#[tokio::test]
async fn anonymous_connections_may_call_only_types_without_roles() {
    let h = harness(Limits::default());
    h.gateway.connected(ALICE);
    let ack = h.call(ALICE, "x", "admin").await;
    assert_eq!(code(&ack), "FORBIDDEN");
    assert!(ack["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`admin`"));
    assert_eq!(h.call(ALICE, "y", "open").await, json!({"ok": true}));
}

#[tokio::test]
async fn checks_run_in_the_documented_order() {
    let h = harness(Limits::default());
    h.gateway
        .connected_as(ALICE, session(Some(Identity::new("alice", ["x"]))));
    // Malformed before unknown before forbidden before size.
    assert_eq!(
        code(&h.send(ALICE, json!({"requestType": "admin"})).await),
        "BAD_REQUEST"
    );
    assert_eq!(
        code(&h.call(ALICE, "i", "nope").await),
        "UNKNOWN_REQUEST_TYPE"
    );
    let big = "z".repeat(5000);
    assert_eq!(
        code(
            &h.send(
                ALICE,
                json!({"id": "j", "requestType": "admin", "payload": big})
            )
            .await
        ),
        "FORBIDDEN"
    );
    assert_eq!(
        code(
            &h.send(
                ALICE,
                json!({"id": "k", "requestType": "open", "payload": big})
            )
            .await
        ),
        "PAYLOAD_TOO_LARGE"
    );
}

#[tokio::test]
async fn the_identity_travels_with_every_published_request() {
    let h = harness(Limits::default());
    h.gateway.connected_as(
        ALICE,
        session(Some(Identity::new("alice", ["ops", "admin"]))),
    );
    h.gateway.connected(BOB);
    assert_eq!(h.call(ALICE, "a", "open").await, json!({"ok": true}));
    assert_eq!(h.call(BOB, "b", "open").await, json!({"ok": true}));
    let published = h.broker.published();
    assert_eq!(
        published[0].identity.as_deref(),
        Some(r#"{"subject":"alice","roles":["admin","ops"]}"#)
    );
    assert_eq!(published[1].identity, None, "anonymous: no header");
}

#[tokio::test]
async fn over_the_rate_every_event_is_rate_limited_malformed_ones_included() {
    let h = harness(Limits::default());
    h.gateway
        .connected_as(ALICE, Session::new(None, RequestRate::new(1, 3), None));
    h.gateway.connected(BOB);
    // The burst: two malformed events and one request.
    assert_eq!(code(&h.send(ALICE, json!({"id": 5})).await), "BAD_REQUEST");
    assert_eq!(code(&h.send(ALICE, json!([])).await), "BAD_REQUEST");
    assert_eq!(h.call(ALICE, "a", "open").await, json!({"ok": true}));
    let ack = h.call(ALICE, "b", "open").await;
    assert_eq!(code(&ack), "RATE_LIMITED");
    assert_eq!(ack["error"]["details"]["limit"], json!("rate"));
    assert_eq!(ack["error"]["details"]["perSecond"], json!(1));
    assert!(ack["error"]["details"]["retryAfterMs"].as_u64().unwrap() >= 1);
    assert_eq!(code(&h.send(ALICE, json!({"id": 5})).await), "RATE_LIMITED");
    // Other connections have their own budget.
    for i in 0..10 {
        assert_eq!(
            h.call(BOB, &format!("b{i}"), "open").await,
            json!({"ok": true})
        );
    }
    assert_eq!(h.broker.published().len(), 11);
}

#[tokio::test]
async fn requests_in_flight_are_limited_per_connection_and_freed_when_final() {
    let h = harness(Limits {
        max_in_flight: 2,
        ..Limits::default()
    });
    h.gateway.connected(ALICE);
    h.gateway.connected(BOB);
    assert_eq!(h.call(ALICE, "a1", "open").await, json!({"ok": true}));
    assert_eq!(h.call(ALICE, "a2", "open").await, json!({"ok": true}));
    let ack = h.call(ALICE, "a3", "open").await;
    assert_eq!(code(&ack), "RATE_LIMITED");
    assert_eq!(
        ack["error"]["details"],
        json!({"limit": "inFlight", "max": 2})
    );
    assert_eq!(h.call(BOB, "b1", "open").await, json!({"ok": true}));
    // A final reply frees a place.
    let first = h.broker.published()[0].correlation_id;
    h.gateway.on_reply(crate::broker::IncomingReply {
        correlation_id: Some(first.to_string()),
        kind: Some("result".into()),
        seq: None,
        body: b"1".to_vec(),
    });
    assert_eq!(h.call(ALICE, "a3", "open").await, json!({"ok": true}));
    assert_eq!(h.gateway.in_flight(), 3);
}

#[tokio::test]
async fn a_zero_in_flight_limit_is_no_limit() {
    let h = harness(Limits {
        max_in_flight: 0,
        ..Limits::default()
    });
    h.gateway.connected(ALICE);
    for i in 0..300 {
        assert_eq!(
            h.call(ALICE, &format!("r{i}"), "open").await,
            json!({"ok": true})
        );
    }
}

#[tokio::test]
async fn a_disconnect_frees_the_connections_place_on_the_host() {
    let h = harness(Limits::default());
    let counter = ConnectionCounter::new(1);
    let slot = counter.try_acquire().unwrap();
    h.gateway.connected_as(
        ALICE,
        Session::new(None, RequestRate::unlimited(), Some(slot)),
    );
    assert!(counter.try_acquire().is_none());
    assert_eq!(h.call(ALICE, "a", "open").await, json!({"ok": true}));
    h.gateway.disconnected(ALICE);
    assert_eq!(counter.current(), 0);
    assert_eq!(h.gateway.in_flight(), 0);
    for _ in 0..100 {
        if !h.broker.cancels().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(h.broker.cancels().len(), 1, "its request is cancelled");
    // A late event of the gone connection reserves nothing and costs nothing.
    let ack = h.call(ALICE, "b", "open").await;
    assert_eq!(code(&ack), "UNAVAILABLE");
    assert_eq!(h.gateway.reserved_ids(), 0);
}
