//! Unit tests of the gateway through the in-memory broker and client sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskgate_plugin_api::host::Validation;
use taskgate_plugin_api::Problem;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::routes::testing::{parts, FnValidator};
use crate::routes::{PayloadValidator, RequestTypeSpec, RoutingTable};
use crate::sink::memory::MemorySink;

struct Harness {
    gateway: Arc<Gateway<MemoryBroker, MemorySink>>,
    broker: Arc<MemoryBroker>,
    sink: Arc<MemorySink>,
}

const CONN: u32 = 1;

fn harness() -> Harness {
    let mut echo = parts("echo");
    echo.streams = true;
    let mut slow = parts("slow");
    slow.timeout = Duration::from_millis(500);
    let mut small = parts("small");
    small.max_payload_bytes = 10;
    let strict: Arc<dyn PayloadValidator> = Arc::new(FnValidator(|p: &str| {
        match serde_json::from_str::<Value>(p) {
            Ok(Value::Object(o)) if o.get("n").is_some_and(Value::is_u64) => {
                Validation::Valid(json!({ "n": o["n"] }).to_string())
            }
            _ => Validation::Invalid(vec![Problem {
                pointer: "/n".into(),
                message: "required".into(),
            }]),
        }
    }));
    let routes = RoutingTable::new([
        RequestTypeSpec::new(echo, None).unwrap(),
        RequestTypeSpec::new(slow, None).unwrap(),
        RequestTypeSpec::new(small, None).unwrap(),
        RequestTypeSpec::new(parts("strict"), Some(strict)).unwrap(),
    ]);
    let broker = Arc::new(MemoryBroker::new());
    let sink = Arc::new(MemorySink::default());
    let gateway = Arc::new(Gateway::new(
        broker.clone(),
        sink.clone(),
        routes,
        GatewayOptions {
            publish_timeout: Duration::from_secs(1),
        },
    ));
    gateway.connected(CONN);
    Harness {
        gateway,
        broker,
        sink,
    }
}

fn envelope(v: Value) -> Result<RequestEnvelope, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn req(id: &str, request_type: &str, payload: Value) -> Result<RequestEnvelope, String> {
    envelope(json!({ "id": id, "requestType": request_type, "payload": payload }))
}

fn reply(correlation_id: Uuid, kind: &str, body: &str) -> IncomingReply {
    IncomingReply {
        correlation_id: Some(correlation_id.to_string()),
        kind: Some(kind.to_owned()),
        seq: None,
        body: body.as_bytes().to_vec(),
    }
}

impl Harness {
    async fn submit(&self, tag: u32, envelope: Result<RequestEnvelope, String>) -> Value {
        self.gateway.handle_request(CONN, envelope, tag).await;
        self.sink.acks(tag).pop().expect("an ack")
    }

    fn last_correlation_id(&self) -> Uuid {
        self.broker
            .published()
            .last()
            .expect("a publish")
            .correlation_id
    }

    fn assert_clean(&self) {
        assert_eq!(self.gateway.in_flight(), 0, "in-flight map not empty");
        assert_eq!(self.gateway.reserved_ids(), 0, "client id map not empty");
        assert_eq!(
            self.gateway.watched_deadlines(),
            0,
            "deadlines still watched"
        );
    }
}

fn refusal_code(ack: &Value) -> &str {
    assert_eq!(ack["ok"], json!(false), "expected a refusal, got {ack}");
    ack["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn accepted_request_is_published_acked_and_its_result_relayed() {
    let h = harness();
    let ack = h.submit(1, req("a", "echo", json!({"x": [1, 2]}))).await;
    assert_eq!(ack, json!({"ok": true}));
    let published = h.broker.published();
    assert_eq!(published.len(), 1);
    let p = &published[0];
    assert_eq!(&*p.queue, "taskgate.echo");
    assert_eq!(&*p.request_type, "echo");
    assert!(p.streams);
    assert_eq!(&*p.body, r#"{"x":[1,2]}"#);

    h.gateway
        .on_reply(reply(p.correlation_id, "result", r#"{"y":  true}"#));
    assert_eq!(
        h.sink.events(CONN),
        vec![json!({"id": "a", "type": "result", "data": {"y": true}})]
    );
    h.assert_clean();
}

#[tokio::test]
async fn payload_bytes_pass_through_unchanged_when_the_type_does_not_validate() {
    let h = harness();
    let envelope: RequestEnvelope =
        serde_json::from_str(r#"{"id":"a","requestType":"echo","payload":{ "k" :  "v\u00e9" }}"#)
            .unwrap();
    h.gateway.handle_request(CONN, Ok(envelope), 1).await;
    assert_eq!(&*h.broker.published()[0].body, r#"{ "k" :  "v\u00e9" }"#);
}

#[tokio::test]
async fn plugin_validation_normalises_the_published_payload() {
    let h = harness();
    let ack = h
        .submit(1, req("a", "strict", json!({"n": 3, "extra": true})))
        .await;
    assert_eq!(ack["ok"], json!(true));
    assert_eq!(&*h.broker.published()[0].body, r#"{"n":3}"#);
}

#[tokio::test]
async fn malformed_envelopes_are_bad_requests() {
    let h = harness();
    let long_id = "x".repeat(MAX_CLIENT_ID_LEN + 1);
    let cases = [
        Err("invalid type: integer `5`, expected struct RequestEnvelope".to_owned()),
        envelope(json!({"requestType": "echo"})),
        envelope(json!({"id": 7, "requestType": "echo"})),
        envelope(json!({"id": "", "requestType": "echo"})),
        envelope(json!({"id": long_id, "requestType": "echo"})),
        envelope(json!({"id": "a"})),
        envelope(json!({"id": "a", "requestType": ["echo"]})),
    ];
    for (tag, case) in cases.into_iter().enumerate() {
        let ack = h.submit(tag as u32, case).await;
        assert_eq!(refusal_code(&ack), "BAD_REQUEST", "case {tag}: {ack}");
        assert!(!ack["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(h.broker.published().is_empty());
    h.assert_clean();
}

#[tokio::test]
async fn an_id_of_exactly_128_characters_is_accepted() {
    let h = harness();
    let id = "é".repeat(MAX_CLIENT_ID_LEN);
    assert_eq!(
        h.submit(1, req(&id, "echo", json!(1))).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn unknown_types_invalid_and_oversized_payloads_are_refused_and_never_published() {
    let h = harness();
    assert_eq!(
        refusal_code(&h.submit(1, req("a", "nope", json!({}))).await),
        "UNKNOWN_REQUEST_TYPE"
    );
    let invalid = h.submit(2, req("b", "strict", json!({"n": "x"}))).await;
    assert_eq!(refusal_code(&invalid), "INVALID_PAYLOAD");
    assert_eq!(
        invalid["error"]["details"]["problems"][0]["pointer"],
        json!("/n")
    );
    let big = h
        .submit(3, req("c", "small", json!("0123456789abcdef")))
        .await;
    assert_eq!(refusal_code(&big), "PAYLOAD_TOO_LARGE");
    assert!(h.broker.published().is_empty());
    h.assert_clean();
}

#[tokio::test]
async fn missing_payload_is_null() {
    let h = harness();
    let ack = h
        .submit(1, envelope(json!({"id": "a", "requestType": "echo"})))
        .await;
    assert_eq!(ack["ok"], json!(true));
    assert_eq!(&*h.broker.published()[0].body, "null");
}

#[tokio::test]
async fn duplicate_ids_are_refused_while_in_flight_and_reusable_after() {
    let h = harness();
    assert_eq!(
        h.submit(1, req("a", "echo", json!(1))).await["ok"],
        json!(true)
    );
    assert_eq!(
        refusal_code(&h.submit(2, req("a", "echo", json!(2))).await),
        "DUPLICATE_ID"
    );
    // The same id on another connection is fine.
    h.gateway.connected(2);
    h.gateway
        .handle_request(2, req("a", "echo", json!(3)), 3)
        .await;
    assert_eq!(h.sink.acks(3), vec![json!({"ok": true})]);

    let first = h.broker.published()[0].correlation_id;
    h.gateway.on_reply(reply(first, "result", "1"));
    assert_eq!(
        h.submit(4, req("a", "echo", json!(4))).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn a_failed_publish_is_unavailable_and_leaves_nothing_behind() {
    let h = harness();
    h.broker.fail_with(Some(PublishError::NotConnected));
    let ack = h.submit(1, req("a", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    h.assert_clean();
    // And the id is free again.
    h.broker.fail_with(None);
    assert_eq!(
        h.submit(2, req("a", "echo", json!(1))).await["ok"],
        json!(true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_confirm_that_never_comes_is_unavailable_not_a_hang() {
    let h = harness();
    h.broker.hold_confirms(true);
    let ack = h.submit(1, req("a", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    assert!(ack["error"]["message"]
        .as_str()
        .unwrap()
        .contains("confirm"));
    h.assert_clean();
}

#[tokio::test]
async fn chunks_are_relayed_in_order_with_seq_and_nothing_follows_the_final_reply() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    for i in 0..3 {
        h.gateway
            .on_reply(reply(c, "chunk", &format!("{{\"i\":{i}}}")));
    }
    h.gateway.on_reply(reply(c, "result", "\"done\""));
    h.gateway.on_reply(reply(c, "chunk", "{\"late\":true}"));
    h.gateway.on_reply(reply(c, "result", "\"again\""));
    assert_eq!(
        h.sink.events(CONN),
        vec![
            json!({"id": "a", "type": "chunk", "seq": 0, "data": {"i": 0}}),
            json!({"id": "a", "type": "chunk", "seq": 1, "data": {"i": 1}}),
            json!({"id": "a", "type": "chunk", "seq": 2, "data": {"i": 2}}),
            json!({"id": "a", "type": "result", "data": "done"}),
        ]
    );
    h.assert_clean();
}

#[tokio::test]
async fn chunks_replayed_by_a_redelivered_request_are_not_sent_twice() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    let chunk = |seq: i64| IncomingReply {
        seq: Some(seq),
        ..reply(c, "chunk", &seq.to_string())
    };
    for seq in [0, 1, 0, 1, 2] {
        h.gateway.on_reply(chunk(seq));
    }
    let seqs: Vec<Value> = h
        .sink
        .events(CONN)
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(0), json!(1), json!(2)]);
}

#[tokio::test]
async fn replies_before_the_confirm_wait_until_the_ack_is_sent() {
    let h = harness();
    h.broker.hold_confirms(true);
    let gateway = h.gateway.clone();
    let submit = tokio::spawn(async move {
        gateway
            .handle_request(CONN, req("a", "echo", json!(1)), 1)
            .await
    });
    while h.broker.published().is_empty() {
        tokio::task::yield_now().await;
    }
    let c = h.last_correlation_id();
    h.gateway.on_reply(reply(c, "chunk", "1"));
    h.gateway.on_reply(reply(c, "result", "2"));
    assert!(
        h.sink.events(CONN).is_empty(),
        "nothing may precede the ack"
    );
    assert!(h.sink.acks(1).is_empty());
    h.broker.release_confirms();
    submit.await.unwrap();
    assert_eq!(h.sink.acks(1), vec![json!({"ok": true})]);
    assert_eq!(h.sink.events(CONN).len(), 2);
    h.assert_clean();
}

#[tokio::test]
async fn cancel_ends_the_request_and_notifies_workers() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.cancel(
        CONN,
        serde_json::from_value(json!({"id": "a"})).map_err(|e: serde_json::Error| e.to_string()),
    );
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], json!("error"));
    assert_eq!(events[0]["error"]["code"], json!("CANCELLED"));
    // A late result is dropped.
    h.gateway.on_reply(reply(c, "result", "1"));
    assert_eq!(h.sink.events(CONN).len(), 1);
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![c]);
}

#[tokio::test]
async fn cancel_of_an_unknown_or_malformed_id_is_ignored() {
    let h = harness();
    h.gateway.cancel(
        CONN,
        Ok(CancelEnvelope {
            id: Some(json!("nope")),
        }),
    );
    h.gateway
        .cancel(CONN, Ok(CancelEnvelope { id: Some(json!(5)) }));
    h.gateway.cancel(CONN, Err("not an object".into()));
    assert!(h.sink.events(CONN).is_empty());
}

#[tokio::test]
async fn cancel_while_publishing_acks_then_cancels() {
    let h = harness();
    h.broker.hold_confirms(true);
    let gateway = h.gateway.clone();
    let submit = tokio::spawn(async move {
        gateway
            .handle_request(CONN, req("a", "echo", json!(1)), 1)
            .await
    });
    while h.broker.published().is_empty() {
        tokio::task::yield_now().await;
    }
    h.gateway.cancel(
        CONN,
        Ok(CancelEnvelope {
            id: Some(json!("a")),
        }),
    );
    h.broker.release_confirms();
    submit.await.unwrap();
    assert_eq!(h.sink.acks(1), vec![json!({"ok": true})]);
    assert_eq!(h.sink.events(CONN)[0]["error"]["code"], json!("CANCELLED"));
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_final_reply_times_out_and_workers_are_told() {
    let h = harness();
    h.submit(1, req("a", "slow", json!(1))).await;
    let c = h.last_correlation_id();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.sink.events(CONN).is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error"]["code"], json!("TIMEOUT"));
    assert_eq!(events[0]["error"]["details"]["timeoutMs"], json!(500));
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![c]);
}

#[tokio::test(start_paused = true)]
async fn a_finished_request_does_not_time_out_later() {
    let h = harness();
    h.submit(1, req("a", "slow", json!(1))).await;
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "result", "1"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.sink.events(CONN).len(), 1);
    h.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn requests_time_out_one_by_one_at_their_own_deadlines() {
    let h = harness();
    h.submit(1, req("a", "slow", json!(1))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.submit(2, req("b", "slow", json!(1))).await;
    // a's deadline (500 ms) passes, b's (700 ms) not yet.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], json!("a"));
    assert_eq!(h.gateway.watched_deadlines(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["id"], json!("b"));
    assert_eq!(events[1]["error"]["code"], json!("TIMEOUT"));
    h.assert_clean();
}

#[tokio::test]
async fn disconnect_forgets_every_request_of_the_connection_and_cancels_them() {
    let h = harness();
    for (tag, id) in ["a", "b", "c"].iter().enumerate() {
        h.submit(tag as u32, req(id, "echo", json!(1))).await;
    }
    h.gateway.disconnected(CONN);
    h.assert_clean();
    assert_eq!(h.gateway.connections(), 0);
    for p in h.broker.published() {
        h.gateway.on_reply(reply(p.correlation_id, "result", "1"));
    }
    assert!(h.sink.events(CONN).is_empty());
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels().len(), 3);
    // A request arriving after the disconnect is refused, not leaked.
    let ack = h.submit(9, req("z", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    h.assert_clean();
}

#[tokio::test]
async fn malformed_worker_replies_never_break_the_request() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.on_reply(reply(c, "chunk", "not json"));
    h.gateway.on_reply(reply(c, "bogus", "1"));
    h.gateway.on_reply(IncomingReply {
        kind: None,
        ..reply(c, "x", "1")
    });
    h.gateway.on_reply(IncomingReply {
        correlation_id: Some("garbage".into()),
        ..reply(c, "result", "1")
    });
    h.gateway.on_reply(reply(Uuid::new_v4(), "result", "1"));
    assert!(h.sink.events(CONN).is_empty());
    h.gateway.on_reply(IncomingReply {
        body: vec![0xff, 0xfe],
        ..reply(c, "result", "")
    });
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error"]["code"], json!("WORKER_ERROR"));
    h.assert_clean();
}

#[tokio::test]
async fn worker_errors_keep_their_code_or_default_to_worker_error() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    h.gateway.on_reply(reply(
        h.last_correlation_id(),
        "error",
        r#"{"message":"boom","details":{"k":1}}"#,
    ));
    h.submit(2, req("b", "echo", json!(1))).await;
    h.gateway.on_reply(reply(
        h.last_correlation_id(),
        "error",
        r#"{"code":"NOT_FOUND","message":"no"}"#,
    ));
    h.submit(3, req("c", "echo", json!(1))).await;
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "error", r#"[1,2]"#));
    let errors: Vec<Value> = h
        .sink
        .events(CONN)
        .iter()
        .map(|e| e["error"].clone())
        .collect();
    assert_eq!(
        errors[0],
        json!({"code": "WORKER_ERROR", "message": "boom", "details": {"k": 1}})
    );
    assert_eq!(errors[1], json!({"code": "NOT_FOUND", "message": "no"}));
    assert_eq!(errors[2]["code"], json!("WORKER_ERROR"));
    h.assert_clean();
}

#[tokio::test]
async fn results_with_surrounding_whitespace_are_relayed() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "result", " {\"a\":1}\n"));
    assert_eq!(h.sink.events(CONN)[0]["data"], json!({"a": 1}));
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    h.sink.make_full(CONN);
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "chunk", "1"));
    assert_eq!(h.sink.disconnected(), vec![CONN]);
}

#[tokio::test]
async fn a_cancel_right_after_a_request_finds_it_even_before_the_publish_runs() {
    let h = harness();
    // Admission is synchronous: the publish step has not run yet when cancel arrives.
    let publish = h
        .gateway
        .submit(CONN, req("a", "echo", json!(1)), 1)
        .expect("admitted");
    h.gateway.cancel(
        CONN,
        Ok(CancelEnvelope {
            id: Some(json!("a")),
        }),
    );
    publish.await;
    assert_eq!(h.sink.acks(1), vec![json!({"ok": true})]);
    assert_eq!(h.sink.events(CONN)[0]["error"]["code"], json!("CANCELLED"));
    h.assert_clean();
}

#[tokio::test]
async fn an_ack_that_cannot_be_sent_cancels_the_request_and_drops_the_client() {
    let h = harness();
    h.sink.fail_ack(1);
    h.gateway
        .handle_request(CONN, req("a", "echo", json!(1)), 1)
        .await;
    h.assert_clean();
    assert_eq!(h.sink.disconnected(), vec![CONN]);
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels().len(), 1, "workers are told to stop");
}

#[tokio::test]
async fn a_refusal_that_cannot_be_sent_drops_the_client() {
    let h = harness();
    h.sink.fail_ack(1);
    h.gateway
        .handle_request(CONN, req("a", "nope", json!(1)), 1)
        .await;
    assert_eq!(h.sink.disconnected(), vec![CONN]);
}

// Hot reload swaps the routing table under requests in flight: they finish with what they
// were admitted with, even when their type is gone from the new table or changed.

#[tokio::test]
async fn a_request_in_flight_when_its_type_is_disabled_still_gets_its_replies() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.set_routes(RoutingTable::default());

    let ack = h.submit(2, req("b", "echo", json!(2))).await;
    assert_eq!(refusal_code(&ack), "UNKNOWN_REQUEST_TYPE");

    let mut chunk = reply(c, "chunk", "\"part\"");
    chunk.seq = Some(0);
    h.gateway.on_reply(chunk);
    h.gateway.on_reply(reply(c, "result", "\"done\""));
    assert_eq!(
        h.sink.events(CONN),
        vec![
            json!({"id": "a", "type": "chunk", "seq": 0, "data": "part"}),
            json!({"id": "a", "type": "result", "data": "done"}),
        ]
    );
    h.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_type_was_disabled_times_out_with_the_timeout_it_was_admitted_with() {
    let h = harness();
    h.submit(1, req("a", "slow", json!(1))).await;
    h.gateway.set_routes(RoutingTable::default());
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error"]["code"], json!("TIMEOUT"));
    assert_eq!(events[0]["error"]["details"]["timeoutMs"], json!(500));
    h.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_new_timeout_applies_to_new_requests_only() {
    let h = harness();
    h.submit(1, req("a", "slow", json!(1))).await;
    let mut longer = parts("slow");
    longer.timeout = Duration::from_millis(5000);
    h.gateway.set_routes(RoutingTable::new([
        RequestTypeSpec::new(longer, None).unwrap()
    ]));
    h.submit(2, req("b", "slow", json!(2))).await;

    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = h.sink.events(CONN);
    assert_eq!(
        events.len(),
        1,
        "only the first request timed out: {events:?}"
    );
    assert_eq!(events[0]["id"], json!("a"));
    assert_eq!(events[0]["error"]["details"]["timeoutMs"], json!(500));
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["id"], json!("b"));
    assert_eq!(events[1]["error"]["details"]["timeoutMs"], json!(5000));
    h.assert_clean();
}

// ---- trace context (protocol §3.10) ----

const CLIENT_TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn traced(id: &str, traceparent: Value) -> Result<RequestEnvelope, String> {
    envelope(json!({ "id": id, "requestType": "echo", "payload": 1, "traceparent": traceparent }))
}

#[tokio::test]
async fn a_clients_traceparent_is_continued_to_the_worker() {
    let h = harness();
    let ack = h.submit(1, traced("a", json!(CLIENT_TRACE))).await;
    assert_eq!(ack, json!({"ok": true}), "the ack is unchanged by tracing");
    let published = h.broker.published();
    let forwarded = published[0].traceparent;
    assert_eq!(forwarded.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
    assert_ne!(
        forwarded.parent_id, 0x00f067aa0ba902b7,
        "the host is a span of its own"
    );
    assert_eq!(forwarded.flags, 1);
}

#[tokio::test]
async fn without_a_valid_traceparent_a_new_trace_starts_and_the_request_is_not_refused() {
    let h = harness();
    assert_eq!(
        h.submit(1, req("a", "echo", json!(1))).await["ok"],
        json!(true)
    );
    let invalid = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
    assert_eq!(
        h.submit(2, traced("b", json!(invalid))).await["ok"],
        json!(true)
    );
    assert_eq!(
        h.submit(3, traced("c", json!({"x": 1}))).await["ok"],
        json!(true)
    );
    let published = h.broker.published();
    for p in &published {
        assert_eq!(
            p.traceparent.trace_id_hex(),
            p.correlation_id.simple().to_string(),
            "a new trace is named after the correlation id"
        );
    }
}

// ---- metrics ----

/// Runs `body` with a Prometheus recorder of its own (thread-local: the tests' runtime is
/// single-threaded, so the gateway's spawned tasks record into it too); returns the text.
fn rendered(recorder: &metrics_exporter_prometheus::PrometheusRecorder) -> String {
    crate::metrics::render(&recorder.handle())
}

fn count(text: &str, request_type: &str, outcome: &str) -> f64 {
    crate::metrics::sample(
        text,
        crate::metrics::REQUESTS_TOTAL,
        &[("request_type", request_type), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn every_way_a_request_ends_is_counted_once_by_type_and_outcome() {
    let recorder = crate::metrics::builder().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let h = harness();
    // ok, with two chunks
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.on_reply(reply(c, "chunk", "1"));
    h.gateway.on_reply(reply(c, "chunk", "2"));
    h.gateway.on_reply(reply(c, "result", "3"));
    // worker error with its own code
    h.submit(2, req("b", "echo", json!(1))).await;
    h.gateway.on_reply(reply(
        h.last_correlation_id(),
        "error",
        r#"{"code":"NOT_FOUND","message":"no"}"#,
    ));
    // cancelled
    h.submit(3, req("c", "echo", json!(1))).await;
    h.gateway.cancel(
        CONN,
        Ok(CancelEnvelope {
            id: Some(json!("c")),
        }),
    );
    // timeout
    h.submit(4, req("d", "slow", json!(1))).await;
    // refusals: unknown type, bad envelope, invalid payload
    h.submit(5, req("e", "no.such.type", json!(1))).await;
    h.submit(6, envelope(json!({"requestType": "echo"}))).await;
    h.submit(7, req("f", "strict", json!({}))).await;
    // still in flight, then the client leaves
    h.submit(8, req("g", "echo", json!(1))).await;
    let text = rendered(&recorder);
    assert_eq!(
        crate::metrics::sample(&text, crate::metrics::REQUESTS_IN_FLIGHT, &[]),
        Some(2.0),
        "the slow one and the last one: {text}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.gateway.disconnected(CONN);

    let text = rendered(&recorder);
    assert_eq!(count(&text, "echo", "ok"), 1.0, "{text}");
    assert_eq!(count(&text, "echo", "not_found"), 1.0, "{text}");
    assert_eq!(count(&text, "echo", "cancelled"), 1.0, "{text}");
    assert_eq!(count(&text, "slow", "timeout"), 1.0, "{text}");
    assert_eq!(count(&text, "echo", "disconnected"), 1.0, "{text}");
    assert_eq!(
        count(&text, "_unknown", "unknown_request_type"),
        1.0,
        "{text}"
    );
    assert_eq!(count(&text, "_unknown", "bad_request"), 1.0, "{text}");
    assert_eq!(count(&text, "strict", "invalid_payload"), 1.0, "{text}");
    assert_eq!(
        crate::metrics::sample(
            &text,
            crate::metrics::CHUNKS_RELAYED,
            &[("request_type", "echo")]
        ),
        Some(2.0)
    );
    assert_eq!(
        crate::metrics::sample(&text, crate::metrics::REQUESTS_IN_FLIGHT, &[]),
        Some(0.0)
    );
    assert_eq!(
        crate::metrics::sample(&text, crate::metrics::CONNECTED_SOCKETS, &[]),
        Some(0.0),
        "connected once, disconnected once"
    );
    let durations = format!("{}_count", crate::metrics::REQUEST_DURATION);
    assert_eq!(
        crate::metrics::sample(&text, &durations, &[("request_type", "echo")]),
        Some(4.0),
        "admitted requests have a duration; refusals before admission do not"
    );
    h.assert_clean();
}

#[tokio::test]
async fn a_publish_that_fails_counts_as_unavailable() {
    let recorder = crate::metrics::builder().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let h = harness();
    h.broker.fail_with(Some(PublishError::NotConnected));
    h.submit(1, req("a", "echo", json!(1))).await;
    assert_eq!(count(&rendered(&recorder), "echo", "unavailable"), 1.0);
}

// ---- shutdown and broker loss ----

#[tokio::test]
async fn once_admission_stops_new_requests_are_unavailable_and_requests_in_flight_go_on() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.stop_admitting();
    assert!(!h.gateway.is_admitting());
    let ack = h.submit(2, req("b", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    assert!(ack["error"]["message"]
        .as_str()
        .unwrap()
        .contains("shutting down"));
    assert_eq!(
        h.broker.published().len(),
        1,
        "the refused one was not published"
    );
    assert!(!h.gateway.is_settled());
    h.gateway.on_reply(reply(c, "result", "\"done\""));
    assert_eq!(
        h.sink.events(CONN),
        vec![json!({"id": "a", "type": "result", "data": "done"})]
    );
    assert!(h.gateway.is_settled());
    h.assert_clean();
}

#[tokio::test]
async fn fail_all_ends_every_request_unavailable_and_tells_workers() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let active = h.last_correlation_id();
    // One more, still waiting for its confirm.
    h.broker.hold_confirms(true);
    let gateway = h.gateway.clone();
    let publishing = tokio::spawn(async move {
        gateway
            .handle_request(CONN, req("b", "echo", json!(1)), 2)
            .await
    });
    while h.broker.published().len() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.gateway.fail_all("the broker connection was lost"), 2);
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], json!("a"));
    assert_eq!(events[0]["error"]["code"], json!("UNAVAILABLE"));
    assert!(events[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the broker connection was lost"));
    // The publishing one: its ack first (never a response before the ack), then the error.
    assert!(h.sink.acks(2).is_empty());
    h.broker.release_confirms();
    publishing.await.unwrap();
    assert_eq!(h.sink.acks(2), vec![json!({"ok": true})]);
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["id"], json!("b"));
    assert_eq!(events[1]["error"]["code"], json!("UNAVAILABLE"));
    // A late reply finds nothing.
    h.gateway.on_reply(reply(active, "result", "1"));
    assert_eq!(h.sink.events(CONN).len(), 2);
    h.assert_clean();
    while !h.gateway.is_settled() {
        tokio::task::yield_now().await;
    }
    assert_eq!(h.broker.cancels().len(), 2, "workers are told to stop both");
}
