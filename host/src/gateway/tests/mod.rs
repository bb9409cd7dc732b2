//! Unit tests of the gateway through the in-memory broker and client sink: the harness,
//! and admission and publish (`relay`, `ending` and `request_metrics` hold the rest).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskgate_plugin_api::host::Validation;
use taskgate_plugin_api::Problem;
use taskgate_protocol::MAX_CLIENT_ID_LEN;

use super::*;
use crate::broker::memory::MemoryBroker;
use crate::broker::{IncomingReply, PublishError};
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
    harness_with(|gateway| gateway)
}

/// A harness whose gateway `configure` finishes building (e.g. `with_resume`).
fn harness_with(
    configure: impl FnOnce(Gateway<MemoryBroker, MemorySink>) -> Gateway<MemoryBroker, MemorySink>,
) -> Harness {
    harness_on(MemoryBroker::new(), configure)
}

/// A harness on `broker` (one of several hosts on a bus, for `handoff`).
fn harness_on(
    broker: MemoryBroker,
    configure: impl FnOnce(Gateway<MemoryBroker, MemorySink>) -> Gateway<MemoryBroker, MemorySink>,
) -> Harness {
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
    let broker = Arc::new(broker);
    let sink = Arc::new(MemorySink::default());
    let gateway = Arc::new(configure(Gateway::new(
        broker.clone(),
        sink.clone(),
        routes,
        GatewayOptions {
            publish_timeout: Duration::from_secs(1),
        },
    )));
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

    /// Submits `a` with its confirm held back, runs `during` with its correlation id, then
    /// releases the confirm: returns the ack and the events the client got.
    async fn with_confirm_held(&self, during: impl FnOnce(Uuid)) -> (Value, Vec<Value>) {
        self.broker.hold_confirms(true);
        let gateway = self.gateway.clone();
        let submit = tokio::spawn(async move {
            gateway
                .handle_request(CONN, req("a", "echo", json!(1)), 1)
                .await
        });
        while self.broker.published().is_empty() {
            tokio::task::yield_now().await;
        }
        during(self.last_correlation_id());
        assert!(
            self.sink.events(CONN).is_empty(),
            "nothing may precede the ack"
        );
        assert!(self.sink.acks(1).is_empty(), "acked before the confirm");
        self.broker.release_confirms();
        submit.await.unwrap();
        (self.sink.acks(1).pop().unwrap(), self.sink.events(CONN))
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

/// Kept failures (`RecentFailures::list`) as (request type, code), in their order.
fn types_and_codes(kept: &[crate::console::failures::Failure]) -> Vec<(&str, &str)> {
    kept.iter()
        .map(|f| (f.request_type.as_str(), f.code.as_str()))
        .collect()
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
    assert_eq!(
        ack["error"]["message"],
        json!("the request could not be handed to the broker: not connected to the broker")
    );
    h.assert_clean();
    // And the id is free again.
    h.broker.fail_with(None);
    assert_eq!(
        h.submit(2, req("a", "echo", json!(1))).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn a_type_without_workers_is_refused_at_once_naming_its_queue_and_served_once_one_comes() {
    let h = harness();
    let serving = h.gateway.serving();
    // The watch has looked at the queue of `echo` several times: nobody consumes it.
    for _ in 0..crate::serving::UNSERVED_AFTER_LOOKS {
        serving.observe("taskgate.echo", Ok(0));
    }
    let ack = h.submit(1, req("a", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    assert_eq!(
        ack["error"]["details"],
        json!({"reason": "noConsumers", "requestType": "echo", "queue": "taskgate.echo"})
    );
    assert!(
        h.broker.published().is_empty(),
        "nothing waits in the queue"
    );
    h.assert_clean();
    // Other types are served as before.
    assert_eq!(
        h.submit(2, req("b", "slow", json!(1))).await["ok"],
        json!(true)
    );

    // A worker comes: the next look (the watch's, or the request's own) sees it.
    h.broker.set_consumers("taskgate.echo", 1);
    serving.observe("taskgate.echo", Ok(1));
    assert_eq!(
        h.submit(3, req("a", "echo", json!(1))).await["ok"],
        json!(true)
    );
}

#[tokio::test]
async fn a_type_that_queues_without_workers_is_published_for_a_worker_that_comes_later() {
    let h = harness_on(MemoryBroker::new(), |gateway| gateway);
    let mut routes: Vec<RequestTypeSpec> = Vec::new();
    let mut spec = RequestTypeSpec::new(parts("later"), None).unwrap();
    spec.when_no_workers = crate::serving::WhenNoWorkers::Queue;
    routes.push(spec);
    h.gateway.set_routes(RoutingTable::new(routes));
    for _ in 0..crate::serving::UNSERVED_AFTER_LOOKS {
        h.gateway.serving().observe("taskgate.later", Ok(0));
    }
    assert_eq!(
        h.submit(1, req("a", "later", json!(1))).await["ok"],
        json!(true)
    );
    assert_eq!(h.broker.published().len(), 1);
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
    // The broker is told at once, so that it can check its connection (a half-open link).
    assert_eq!(h.broker.confirm_timeouts(), 1);
    h.assert_clean();
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

mod ending;
mod handoff;
mod relay;
mod request_metrics;
mod resume;
mod shared_tasks;
mod task_list;
