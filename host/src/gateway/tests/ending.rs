//! Requests ended other than by their final reply: cancel, timeouts, disconnect, shutdown
//! and `fail_all`.

use super::*;

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
async fn an_operator_cancel_ends_a_held_request_and_tells_workers_of_any() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    assert!(h.gateway.cancel_by_operator(c, "alice"));
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["error"]["code"], json!("CANCELLED"));
    h.assert_clean();
    let elsewhere = Uuid::new_v4();
    assert!(!h.gateway.cancel_by_operator(elsewhere, "alice"));
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![c, elsewhere]);
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
    let (ack, events) = h
        .with_confirm_held(|_| {
            h.gateway.cancel(
                CONN,
                Ok(CancelEnvelope {
                    id: Some(json!("a")),
                }),
            )
        })
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(events[0]["error"]["code"], json!("CANCELLED"));
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

#[tokio::test]
async fn once_admission_stops_new_requests_are_unavailable_and_requests_in_flight_go_on() {
    let h = harness();
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.stop_admitting();
    assert!(!h.gateway.is_admitting());
    let ack = h.submit(2, req("b", "echo", json!(1))).await;
    assert_eq!(refusal_code(&ack), "UNAVAILABLE");
    assert_eq!(ack["error"]["message"], json!("the host is shutting down"));
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
    assert_eq!(
        h.gateway
            .fail_all(crate::error::UnavailableCause::BrokerLost),
        2
    );
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
