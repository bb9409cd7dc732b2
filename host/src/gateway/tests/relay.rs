//! Worker replies relayed to the client: order, `seq`, replies before the ack, malformed
//! replies, a client that does not read.

use super::*;

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
    let (ack, events) = h
        .with_confirm_held(|c| {
            h.gateway.on_reply(reply(c, "chunk", "1"));
            h.gateway.on_reply(reply(c, "result", "2"));
        })
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(events.len(), 2);
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

/// A gateway whose replies may have at most `max_reply_bytes` bytes.
fn harness_with_reply_limit(max_reply_bytes: usize) -> Harness {
    harness_with(|gateway| {
        gateway.with_limits(&Limits {
            max_reply_bytes,
            ..Limits::default()
        })
    })
}

#[tokio::test]
async fn a_reply_over_the_size_limit_ends_the_request_worker_error_and_stops_workers() {
    let h = harness_with_reply_limit(16);
    h.submit(1, req("a", "echo", json!(1))).await;
    let c = h.last_correlation_id();
    h.gateway.on_reply(reply(c, "chunk", "1"));
    // A chunk over the limit: the client must not see a silent gap, so the request ends.
    h.gateway
        .on_reply(reply(c, "chunk", &format!("\"{}\"", "x".repeat(18))));
    h.gateway.on_reply(reply(c, "result", "2"));
    let events = h.sink.events(CONN);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["data"], json!(1));
    assert_eq!(events[1]["error"]["code"], json!("WORKER_ERROR"));
    assert_eq!(
        events[1]["error"]["details"],
        json!({"size": 20, "limit": 16})
    );
    assert!(events[1]["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("the worker's reply is larger than 16 bytes"));
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![c]);

    // A result (or an error reply) over the limit ends its request the same way.
    for kind in ["result", "error"] {
        h.submit(2, req("b", "echo", json!(1))).await;
        let c = h.last_correlation_id();
        h.gateway.on_reply(reply(c, kind, &"1".repeat(17)));
        let events = h.sink.events(CONN);
        assert_eq!(
            events.last().unwrap()["error"]["details"],
            json!({"size": 17, "limit": 16})
        );
        h.assert_clean();
    }
}

#[tokio::test]
async fn a_reply_of_exactly_the_limit_is_relayed() {
    let h = harness_with_reply_limit(16);
    h.submit(1, req("a", "echo", json!(1))).await;
    let body = format!("\"{}\"", "x".repeat(14));
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "result", &body));
    assert_eq!(h.sink.events(CONN)[0]["type"], json!("result"));
    h.assert_clean();
}

#[tokio::test]
async fn replies_buffered_before_the_confirm_are_capped_in_number() {
    let h = harness();
    let (ack, events) = h
        .with_confirm_held(|c| {
            for _ in 0..MAX_EARLY_REPLIES + 5 {
                h.gateway.on_reply(reply(c, "chunk", "1"));
            }
            h.gateway.on_reply(reply(c, "result", "2"));
        })
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(events.len(), MAX_EARLY_REPLIES + 1);
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], json!("WORKER_ERROR"), "{last}");
    assert_eq!(
        last["error"]["details"]["replies"],
        json!(MAX_EARLY_REPLIES)
    );
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels().len(), 1);
}

#[tokio::test]
async fn replies_buffered_before_the_confirm_are_capped_in_bytes() {
    let h = harness_with_reply_limit(16);
    let (ack, events) = h
        .with_confirm_held(|c| {
            for _ in 0..3 {
                h.gateway.on_reply(reply(c, "chunk", "\"123456\""));
            }
        })
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0]["data"], json!("123456"));
    assert_eq!(events[1]["data"], json!("123456"));
    assert_eq!(events[2]["error"]["code"], json!("WORKER_ERROR"));
    assert_eq!(events[2]["error"]["details"]["bytes"], json!(16));
    h.assert_clean();
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels().len(), 1);
}

#[tokio::test]
async fn requests_that_end_with_an_error_are_kept_for_the_console_and_cancellations_are_not() {
    let failures = Arc::new(crate::console::failures::RecentFailures::new("host-a", 10));
    let h = harness_with(|gateway| gateway.with_recent_failures(failures.clone()));
    h.submit(1, req("a", "echo", json!(1))).await;
    let failed = h.last_correlation_id();
    h.gateway.on_reply(reply(
        failed,
        "error",
        r#"{"code":"NOT_FOUND","message":"no such"}"#,
    ));
    h.submit(2, req("b", "echo", json!(1))).await;
    h.gateway
        .on_reply(reply(h.last_correlation_id(), "result", "1"));
    h.submit(3, req("c", "echo", json!(1))).await;
    h.gateway.cancel(
        CONN,
        Ok(CancelEnvelope {
            id: Some(json!("c")),
        }),
    );
    let kept = failures.list();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].correlation_id, failed.to_string());
    assert_eq!(kept[0].request_type, "echo");
    assert_eq!(kept[0].code, "NOT_FOUND");
    assert_eq!(kept[0].message, "no such");
    assert_eq!(kept[0].host, "host-a");
    assert!(kept[0].traceparent.starts_with("00-"), "{kept:?}");
    h.assert_clean();
}

/// Requests refused before they ran reach the console's failures too, with their code and
/// message (and their correlation id and trace once admitted); a client over its limits or a
/// host shutting down does not fill the list, and a request that succeeds adds nothing.
#[tokio::test]
async fn refusals_an_operator_must_see_are_kept_for_the_console_but_not_rate_limits_or_shutdown() {
    let failures = Arc::new(crate::console::failures::RecentFailures::new("host-a", 20));
    let h = harness_with(|gateway| {
        gateway
            .with_recent_failures(failures.clone())
            .with_limits(&Limits {
                max_in_flight: 1,
                ..Limits::default()
            })
    });
    h.submit(1, req("a", "nope", json!({}))).await;
    h.submit(2, req("b", "strict", json!({"n": "x"}))).await;
    h.submit(3, req("c", "small", json!("0123456789abcdef")))
        .await;
    h.submit(4, envelope(json!({"id": "d"}))).await;
    for _ in 0..crate::serving::UNSERVED_AFTER_LOOKS {
        h.gateway.serving().observe("taskgate.echo", Ok(0));
    }
    h.submit(5, req("e", "echo", json!(1))).await;
    h.broker.fail_with(Some(PublishError::NotConnected));
    h.submit(6, req("f", "slow", json!(1))).await;
    h.broker.fail_with(None);
    let before_ok = failures.list().len();
    assert_eq!(
        h.submit(7, req("g", "slow", json!(1))).await["ok"],
        json!(true)
    );
    assert_eq!(failures.list().len(), before_ok, "a success adds nothing");
    // Over the in-flight limit (1): RATE_LIMITED, not kept.
    assert_eq!(
        refusal_code(&h.submit(8, req("h", "slow", json!(1))).await),
        "RATE_LIMITED"
    );
    h.gateway.stop_admitting();
    assert_eq!(
        refusal_code(&h.submit(9, req("i", "slow", json!(1))).await),
        "UNAVAILABLE"
    );

    let kept = failures.list();
    let seen = types_and_codes(&kept);
    assert_eq!(
        seen,
        [
            ("slow", "UNAVAILABLE"),
            ("echo", "UNAVAILABLE"),
            ("", "BAD_REQUEST"),
            ("small", "PAYLOAD_TOO_LARGE"),
            ("strict", "INVALID_PAYLOAD"),
            ("nope", "UNKNOWN_REQUEST_TYPE"),
        ],
        "{kept:#?}"
    );
    let no_workers = &kept[1];
    assert!(
        no_workers.message.contains("taskgate.echo"),
        "{no_workers:?}"
    );
    assert!(
        !no_workers.correlation_id.is_empty(),
        "admitted: it has one"
    );
    assert!(no_workers.traceparent.starts_with("00-"), "{no_workers:?}");
    assert!(kept[0].message.contains("not connected"), "{:?}", kept[0]);
    let unknown = &kept[5];
    assert!(unknown.message.contains("`nope`"), "{unknown:?}");
    assert_eq!(unknown.correlation_id, "", "refused before it had one");
    assert_eq!(unknown.host, "host-a");
}
