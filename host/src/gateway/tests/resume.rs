//! Requests of sessions (protocol §4): parked when their connection drops, picked up by an
//! `attach` on the owner's next connection, cancelled when the window passes.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::resume::{Owner, ResumeSettings, SessionId};
use crate::session::Session;

const WINDOW: Duration = Duration::from_secs(10);

fn settings() -> ResumeSettings {
    ResumeSettings {
        window: WINDOW,
        request_bytes: 1 << 20,
        ..ResumeSettings::default()
    }
}

fn resumable() -> (Harness, Owner) {
    let h = harness_with(|g| g.with_resume(settings()));
    let owner = Owner::Session(SessionId::new());
    h.gateway.disconnected(CONN);
    h.gateway
        .connected_as(CONN, Session::anonymous().with_owner(owner.clone()));
    (h, owner)
}

fn attach(v: Value) -> Result<AttachEnvelope, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn chunk(correlation_id: Uuid, seq: i64, body: &str) -> IncomingReply {
    IncomingReply {
        seq: Some(seq),
        ..reply(correlation_id, "chunk", body)
    }
}

fn chunk_seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "chunk")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

impl Harness {
    fn attach(&self, conn: u32, tag: u32, v: Value) -> Value {
        self.gateway.attach(conn, attach(v), tag);
        self.sink.acks(tag).pop().expect("an attach ack")
    }
}

#[tokio::test]
async fn a_parked_request_goes_on_and_attach_replays_what_the_client_missed() {
    let (h, owner) = resumable();
    assert_eq!(
        h.submit(1, req("a", "echo", json!(1))).await,
        json!({"ok": true})
    );
    let id = h.last_correlation_id();
    for seq in 0..3 {
        h.gateway.on_reply(chunk(id, seq, &seq.to_string()));
    }
    assert_eq!(chunk_seqs(&h.sink.events(CONN)), vec![0, 1, 2]);

    h.gateway.disconnected(CONN);
    for seq in 3..5 {
        h.gateway.on_reply(chunk(id, seq, &seq.to_string()));
    }
    tokio::task::yield_now().await;
    assert!(
        h.broker.cancels().is_empty(),
        "the worker is not told to stop"
    );
    assert_eq!(h.gateway.in_flight(), 1);

    // The client saw up to 1 (2 was lost with the connection).
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner.clone()));
    let ack = h.attach(2, 10, json!({"id": "a", "afterSeq": 1}));
    assert_eq!(ack, json!({"ok": true, "state": "running", "firstSeq": 2}));
    assert_eq!(chunk_seqs(&h.sink.events(2)), vec![2, 3, 4]);
    h.gateway.on_reply(chunk(id, 5, "5"));
    h.gateway.on_reply(reply(id, "result", "\"done\""));
    let events = h.sink.events(2);
    assert_eq!(chunk_seqs(&events), vec![2, 3, 4, 5]);
    assert_eq!(
        events.last(),
        Some(&json!({"id": "a", "type": "result", "data": "done"}))
    );
    assert_eq!(
        chunk_seqs(&h.sink.events(CONN)),
        vec![0, 1, 2],
        "nothing more to the old connection"
    );
    // Over: nothing left, and nothing to attach to.
    h.assert_clean();
    assert_eq!(h.gateway.tasks_kept(), 0);
    let again = h.attach(2, 11, json!({"id": "a", "afterSeq": 5}));
    assert_eq!(refusal_code(&again), "TASK_NOT_FOUND");
    assert!(h.broker.cancels().is_empty());
}

#[tokio::test]
async fn a_final_reply_while_parked_is_kept_until_attach_delivers_it() {
    let (h, owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.on_reply(chunk(id, 0, "0"));
    h.gateway.disconnected(CONN);
    h.gateway.on_reply(chunk(id, 1, "1"));
    h.gateway.on_reply(reply(id, "result", "\"done\""));
    assert_eq!(h.gateway.in_flight(), 0);
    assert_eq!(h.gateway.tasks_kept(), 1);

    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    let ack = h.attach(2, 10, json!({"id": "a", "afterSeq": 0}));
    assert_eq!(
        ack,
        json!({"ok": true, "state": "succeeded", "firstSeq": 1})
    );
    let events = h.sink.events(2);
    assert_eq!(chunk_seqs(&events), vec![1]);
    assert_eq!(events.last().unwrap()["type"], "result");
    assert_eq!(h.gateway.tasks_kept(), 0);
    let again = h.attach(2, 11, json!({"id": "a"}));
    assert_eq!(refusal_code(&again), "TASK_NOT_FOUND");
    h.assert_clean();
}

#[tokio::test]
async fn an_error_while_parked_is_kept_with_its_state() {
    let (h, owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.disconnected(CONN);
    h.gateway.on_reply(reply(
        id,
        "error",
        r#"{"code": "CANCELLED", "message": "stopped"}"#,
    ));
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    let ack = h.attach(2, 10, json!({"id": "a", "afterSeq": -1}));
    assert_eq!(
        ack,
        json!({"ok": true, "state": "cancelled", "firstSeq": 0})
    );
    assert_eq!(
        h.sink.events(2).last().unwrap()["error"]["code"],
        "CANCELLED"
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_window_a_parked_request_is_cancelled_and_forgotten() {
    let (h, owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.disconnected(CONN);
    tokio::time::sleep(WINDOW - Duration::from_millis(100)).await;
    assert!(h.broker.cancels().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![id]);
    h.assert_clean();
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    assert_eq!(
        refusal_code(&h.attach(2, 10, json!({"id": "a"}))),
        "TASK_NOT_FOUND"
    );
    // A reply that comes later finds nothing.
    h.gateway.on_reply(reply(id, "result", "1"));
    assert!(h.sink.events(2).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_kept_outcome_is_forgotten_when_the_window_passes() {
    let (h, _owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.disconnected(CONN);
    h.gateway.on_reply(reply(id, "result", "1"));
    assert_eq!(h.gateway.tasks_kept(), 1);
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.gateway.tasks_kept(), 0);
    assert!(
        h.broker.cancels().is_empty(),
        "it had ended: nothing to stop"
    );
}

#[tokio::test(start_paused = true)]
async fn the_request_timeout_still_applies_while_parked() {
    let (h, owner) = resumable();
    h.submit(1, req("s", "slow", json!(1))).await;
    h.gateway.disconnected(CONN);
    tokio::time::sleep(Duration::from_millis(600)).await;
    tokio::task::yield_now().await;
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    let ack = h.attach(2, 10, json!({"id": "s"}));
    assert_eq!(ack["state"], "failed");
    assert_eq!(h.sink.events(2).last().unwrap()["error"]["code"], "TIMEOUT");
}

#[tokio::test]
async fn nobody_else_can_attach_and_the_answer_reveals_nothing() {
    let (h, owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    h.gateway.disconnected(CONN);
    let stranger = Owner::Session(SessionId::new());
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(stranger));
    h.gateway.connected(3); // did not opt in
    let theirs = h.attach(2, 10, json!({"id": "a"}));
    let never = h.attach(2, 11, json!({"id": "never-was"}));
    assert_eq!(refusal_code(&theirs), "TASK_NOT_FOUND");
    assert_eq!(
        theirs, never,
        "the same answer as for an id that never existed"
    );
    assert_eq!(
        refusal_code(&h.attach(3, 12, json!({"id": "a"}))),
        "TASK_NOT_FOUND"
    );
    // The owner still can.
    h.gateway
        .connected_as(4, Session::anonymous().with_owner(owner));
    assert_eq!(h.attach(4, 13, json!({"id": "a"}))["ok"], true);
}

#[tokio::test]
async fn a_malformed_attach_is_a_bad_request() {
    let (h, _owner) = resumable();
    for bad in [
        json!({}),
        json!({"id": 5}),
        json!({"id": ""}),
        json!({"id": "x".repeat(MAX_CLIENT_ID_LEN + 1)}),
        json!({"id": "a", "afterSeq": "1"}),
        json!({"id": "a", "afterSeq": 1.5}),
    ] {
        assert_eq!(
            refusal_code(&h.attach(CONN, 10, bad.clone())),
            "BAD_REQUEST",
            "{bad}"
        );
    }
    h.gateway.attach(CONN, Err("not an object".to_owned()), 11);
    assert_eq!(refusal_code(&h.sink.acks(11)[0]), "BAD_REQUEST");
}

#[tokio::test]
async fn attach_moves_a_live_request_from_another_connection_of_the_owner() {
    let (h, owner) = resumable();
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.on_reply(chunk(id, 0, "0"));
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    assert_eq!(
        h.attach(2, 10, json!({"id": "a", "afterSeq": 0}))["ok"],
        true
    );
    h.gateway.on_reply(chunk(id, 1, "1"));
    assert_eq!(chunk_seqs(&h.sink.events(CONN)), vec![0]);
    assert_eq!(chunk_seqs(&h.sink.events(2)), vec![1]);
    // The first connection's end no longer touches it.
    h.gateway.disconnected(CONN);
    h.gateway.on_reply(reply(id, "result", "1"));
    assert_eq!(h.sink.events(2).last().unwrap()["type"], "result");
    h.gateway.disconnected(2);
    h.assert_clean();
}

#[tokio::test]
async fn without_an_owner_a_disconnect_cancels_as_before() {
    let h = harness_with(|g| g.with_resume(settings()));
    h.submit(1, req("a", "echo", json!(1))).await;
    let id = h.last_correlation_id();
    h.gateway.disconnected(CONN);
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![id]);
    h.assert_clean();
}

// §4.3: detached tasks.

fn detached(id: &str) -> Result<RequestEnvelope, String> {
    envelope(json!({ "id": id, "requestType": "echo", "payload": 1, "detach": true }))
}

impl Harness {
    fn tasks(&self, conn: u32, tag: u32) -> Value {
        self.gateway.tasks(conn, tag);
        self.sink.acks(tag).pop().expect("a tasks ack")
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_has_no_window_and_its_outcome_is_kept_for_the_result_ttl() {
    let (h, owner) = resumable();
    assert_eq!(h.submit(1, detached("t")).await, json!({"ok": true}));
    let id = h.last_correlation_id();
    h.gateway.on_reply(chunk(id, 0, "{\"left\":3}"));
    h.gateway.disconnected(CONN);
    tokio::time::sleep(WINDOW * 2).await;
    tokio::task::yield_now().await;
    assert!(h.broker.cancels().is_empty(), "no window for a task");
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner.clone()));
    let listed = h.tasks(2, 10);
    assert_eq!(listed["tasks"][0]["id"], "t");
    assert_eq!(listed["tasks"][0]["state"], "running");
    assert_eq!(listed["tasks"][0]["lastSeq"], 0);
    assert_eq!(listed["tasks"][0]["lastChunk"], json!({"left": 3}));
    let held = h.gateway.tasks_held();
    assert_eq!(held.by_state, [1, 0, 0, 0], "one running");
    assert_eq!(held.bytes, h.gateway.kept_bytes(), "its one chunk");
    assert_eq!(h.attach(2, 11, json!({"id": "t"}))["state"], "running");
    h.gateway.on_reply(reply(id, "result", "\"done\""));
    assert_eq!(h.sink.events(2).last().unwrap()["type"], "result");
    // Delivered, and still kept: a later page can fetch it again.
    assert_eq!(h.gateway.tasks_kept(), 1);
    let held = h.gateway.tasks_held();
    assert_eq!(held.by_state, [0, 1, 0, 0], "one succeeded");
    assert!(held.bytes > h.gateway.kept_bytes(), "its chunk and outcome");
    let again = h.attach(2, 12, json!({"id": "t", "afterSeq": 0}));
    assert_eq!(
        again,
        json!({"ok": true, "state": "succeeded", "firstSeq": 1})
    );
    assert_eq!(h.tasks(2, 13)["tasks"][0]["state"], "succeeded");
    tokio::time::sleep(ResumeSettings::default().result_ttl + Duration::from_secs(1)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.gateway.tasks_kept(), 0);
    assert_eq!(
        refusal_code(&h.attach(2, 14, json!({"id": "t"}))),
        "TASK_NOT_FOUND"
    );
    assert_eq!(h.tasks(2, 15)["tasks"], json!([]));
    assert_eq!(h.gateway.tasks_held(), TasksHeld::default());
    h.assert_clean();
}

#[tokio::test]
async fn a_resent_id_attaches_instead_of_running_again() {
    let (h, owner) = resumable();
    h.submit(1, detached("t")).await;
    let id = h.last_correlation_id();
    h.gateway.on_reply(chunk(id, 0, "0"));
    h.gateway.disconnected(CONN);
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    h.gateway.handle_request(2, detached("t"), 10).await;
    assert_eq!(h.sink.acks(10), vec![json!({"ok": true})]);
    assert_eq!(h.broker.published().len(), 1, "published once");
    assert_eq!(
        chunk_seqs(&h.sink.events(2)),
        vec![0],
        "replayed from the start"
    );
    // On the connection it is attached to, the same id is DUPLICATE_ID as ever.
    h.gateway.handle_request(2, detached("t"), 11).await;
    assert_eq!(refusal_code(&h.sink.acks(11)[0]), "DUPLICATE_ID");
}

#[tokio::test]
async fn tasks_need_a_session_and_are_bounded_per_owner() {
    let h = harness_with(|g| {
        g.with_resume(ResumeSettings {
            max_tasks: 2,
            ..settings()
        })
    });
    assert_eq!(
        refusal_code(&h.submit(1, detached("plain")).await),
        "BAD_REQUEST"
    );
    let owner = Owner::Session(SessionId::new());
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    for (tag, id) in [(2, "a"), (3, "b")] {
        h.gateway.handle_request(2, detached(id), tag).await;
        assert_eq!(h.sink.acks(tag), vec![json!({"ok": true})]);
    }
    h.gateway.handle_request(2, detached("c"), 4).await;
    let refused = &h.sink.acks(4)[0];
    assert_eq!(refusal_code(refused), "RATE_LIMITED");
    assert_eq!(
        refused["error"]["details"],
        json!({"limit": "tasks", "max": 2})
    );
    // One ends and is forgotten (its result expires): room again. Here: a plain request
    // is no task and not limited.
    h.gateway
        .handle_request(2, req("d", "echo", json!(1)), 5)
        .await;
    assert_eq!(h.sink.acks(5), vec![json!({"ok": true})]);
    assert_eq!(h.tasks(2, 6)["tasks"].as_array().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn chunks_kept_in_all_are_bounded_and_a_new_task_is_refused_when_a_replay_would_not_fit() {
    // Each chunk below costs 134 bytes: a request keeps 2 (268 ≤ 300), the host 4 (536 ≤ 600).
    let h = harness_with(|g| {
        g.with_resume(ResumeSettings {
            request_bytes: 300,
            max_kept_bytes: 600,
            ..settings()
        })
    });
    let owner = Owner::Session(SessionId::new());
    h.gateway
        .connected_as(2, Session::anonymous().with_owner(owner));
    let big = format!("\"{}\"", "x".repeat(100));
    for (tag, id) in [(2, "a"), (3, "b")] {
        h.gateway.handle_request(2, detached(id), tag).await;
        assert_eq!(h.sink.acks(tag), vec![json!({"ok": true})]);
        let correlation_id = h.last_correlation_id();
        for seq in 0..10 {
            h.gateway.on_reply(chunk(correlation_id, seq, &big));
        }
    }
    assert_eq!(h.gateway.kept_bytes(), 536);
    h.gateway.handle_request(2, detached("c"), 4).await;
    let refused = &h.sink.acks(4)[0];
    assert_eq!(refusal_code(refused), "RATE_LIMITED");
    assert_eq!(
        refused["error"]["details"],
        json!({"limit": "keptBytes", "max": 600})
    );
    // An ordinary request of a session still runs; its replay keeps what fits, at least its
    // latest chunk, and the total stays within the limit plus that one chunk.
    h.gateway
        .handle_request(2, req("d", "echo", json!(1)), 5)
        .await;
    assert_eq!(h.sink.acks(5), vec![json!({"ok": true})]);
    let d = h.last_correlation_id();
    for seq in 0..10 {
        h.gateway.on_reply(chunk(d, seq, &big));
    }
    assert!(
        h.gateway.kept_bytes() <= 600 + 134,
        "{}",
        h.gateway.kept_bytes()
    );
    // d ends and is forgotten: what it kept is given back.
    h.gateway.on_reply(reply(d, "result", "1"));
    assert_eq!(h.gateway.kept_bytes(), 536);
}

#[tokio::test(start_paused = true)]
async fn past_max_parked_per_owner_the_excess_ends_as_on_a_disconnect() {
    let h = harness_with(|g| {
        g.with_resume(ResumeSettings {
            max_parked_per_owner: 2,
            ..settings()
        })
    });
    let owner = Owner::Session(SessionId::new());
    let connect = |conn: u32| {
        h.gateway
            .connected_as(conn, Session::anonymous().with_owner(owner.clone()))
    };
    connect(2);
    connect(3);
    let mut ids = Vec::new();
    for (conn, tag, id) in [(2, 1, "a"), (2, 2, "b"), (3, 3, "c")] {
        h.gateway
            .handle_request(conn, req(id, "echo", json!(1)), tag)
            .await;
        assert_eq!(h.sink.acks(tag), vec![json!({"ok": true})]);
        ids.push(h.last_correlation_id());
    }
    h.gateway.disconnected(2);
    // `a` ends while parked: its kept outcome still waits for the client, so it counts.
    h.gateway.on_reply(reply(ids[0], "result", "1"));
    assert_eq!(h.gateway.parked_of(&owner), 2);

    h.gateway.disconnected(3);
    tokio::task::yield_now().await;
    assert_eq!(h.broker.cancels(), vec![ids[2]], "c is over the bound");
    assert_eq!(h.gateway.parked_of(&owner), 2);
    assert_eq!(h.gateway.in_flight(), 1, "b stays parked");
    connect(4);
    assert_eq!(
        refusal_code(&h.attach(4, 10, json!({"id": "c"}))),
        "TASK_NOT_FOUND"
    );
    // Picking up `a`'s outcome and attaching `b` leave nothing parked: room again.
    assert_eq!(h.attach(4, 11, json!({"id": "a"}))["state"], "succeeded");
    assert_eq!(h.attach(4, 12, json!({"id": "b"}))["state"], "running");
    assert_eq!(h.gateway.parked_of(&owner), 0);
    h.gateway
        .handle_request(4, req("d", "echo", json!(1)), 13)
        .await;
    h.gateway.disconnected(4);
    assert_eq!(h.gateway.parked_of(&owner), 2, "b and d");
    assert_eq!(h.broker.cancels(), vec![ids[2]]);
    // The window's end frees the places too.
    tokio::time::sleep(WINDOW + Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.gateway.parked_of(&owner), 0);
    h.assert_clean();
}
