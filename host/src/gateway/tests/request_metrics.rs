//! The metrics a request leaves: every way a request ends is counted once.

use super::*;

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

#[tokio::test(start_paused = true)]
async fn retry_notices_are_counted_by_type_and_never_relayed() {
    let recorder = crate::metrics::builder().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway
        .on_reply(reply(c, "retry", r#"{"attempt":2,"delayMs":100}"#));
    h.gateway
        .on_reply(reply(c, "retry", r#"{"attempt":3,"delayMs":200}"#));
    // One for a request the host does not know: dropped, not counted.
    h.gateway
        .on_reply(reply(Uuid::new_v4(), "retry", r#"{"attempt":2}"#));
    assert!(h.sink.events(CONN).is_empty(), "nothing relayed");
    h.gateway.on_reply(reply(c, "result", "3"));
    let text = rendered(&recorder);
    assert_eq!(
        crate::metrics::sample(&text, crate::metrics::RETRIES, &[("request_type", "echo")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(count(&text, "echo", "ok"), 1.0);
}
