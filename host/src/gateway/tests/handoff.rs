//! A blip that comes back through another host (protocol §4.4): several gateways on one
//! in-memory bus claim requests from each other, hand them off and forward their replies.

use std::time::Duration;

use serde_json::{json, Value};
use taskgate_protocol::amqp as names;

use super::*;
use crate::broker::memory::MemoryBus;
use crate::broker::HostMessage;
use crate::resume::{Owner, ResumeSettings, SessionId};
use crate::session::Session;

const WINDOW: Duration = Duration::from_secs(10);

/// One host of a cluster on `bus`, its client connection `CONN` of `owner`.
fn host(bus: &Arc<MemoryBus>, name: &str, owner: &Owner) -> Harness {
    let queue = format!("{}{name}", names::REPLY_QUEUE_PREFIX);
    let h = harness_on(MemoryBroker::on_bus(bus.clone(), &queue), |g| {
        g.with_resume(ResumeSettings {
            window: WINDOW,
            request_bytes: 1 << 20,
            ..ResumeSettings::default()
        })
        .with_handoff(true)
    });
    let gateway = Arc::downgrade(&h.gateway);
    bus.serve(&queue, move |reply| {
        if let Some(gateway) = gateway.upgrade() {
            gateway.on_reply(reply);
        }
    });
    h.gateway.disconnected(CONN);
    h.gateway
        .connected_as(CONN, Session::anonymous().with_owner(owner.clone()));
    h
}

fn owner() -> Owner {
    Owner::Session(SessionId::new())
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

/// Lets a batch of claims leave and the sender of messages between hosts run.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

impl Harness {
    /// An attach whose ack may come later (after a claim): waits for it.
    async fn attach_later(&self, tag: u32, v: Value) -> Value {
        self.gateway.attach(
            CONN,
            serde_json::from_value(v).map_err(|e| e.to_string()),
            tag,
        );
        for _ in 0..100 {
            if let Some(ack) = self.sink.acks(tag).pop() {
                return ack;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no attach ack");
    }

    /// A streaming request with chunks 0..`chunks` relayed, then its connection cut.
    async fn parked_after(&self, id: &str, chunks: i64) -> Uuid {
        assert_eq!(
            self.submit(1, req(id, "echo", json!(1))).await,
            json!({"ok": true})
        );
        let correlation_id = self.last_correlation_id();
        for seq in 0..chunks {
            self.gateway
                .on_reply(chunk(correlation_id, seq, &seq.to_string()));
        }
        self.gateway.disconnected(CONN);
        correlation_id
    }
}

/// Handoffs (not claims) that went over the bus.
fn handoffs(bus: &MemoryBus) -> usize {
    bus.sent()
        .iter()
        .filter(|(_, m)| &*m.kind == names::HANDOFF_TYPE)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_parked_request_is_handed_to_the_host_its_client_reconnects_to() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    let id = a.parked_after("s", 3).await;
    // Sent while the client was away (it saw up to 1).
    a.gateway.on_reply(chunk(id, 3, "3"));
    a.gateway.on_reply(chunk(id, 4, "4"));

    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 1})).await;
    assert_eq!(ack, json!({"ok": true, "state": "running", "firstSeq": 2}));
    settle().await;
    assert_eq!(chunk_seqs(&b.sink.events(CONN)), vec![2, 3, 4]);
    assert_eq!(a.gateway.in_flight(), 0, "the holder let it go");
    assert_eq!(a.gateway.forwarding(), 1);
    assert_eq!(b.gateway.in_flight(), 1);
    // What is kept moved with the request: `[resume] max_kept_bytes` counts it on the new host.
    assert_eq!(
        a.gateway.kept_bytes(),
        0,
        "the holder gave back what it kept"
    );
    assert!(b.gateway.kept_bytes() > 0, "the new host counts its replay");

    // The worker still replies to the first host, which forwards.
    a.gateway.on_reply(chunk(id, 5, "5"));
    a.gateway.on_reply(reply(id, "result", "\"done\""));
    settle().await;
    let events = b.sink.events(CONN);
    assert_eq!(chunk_seqs(&events), vec![2, 3, 4, 5]);
    assert_eq!(
        events[0],
        json!({"id": "s", "type": "chunk", "seq": 2, "data": 2})
    );
    assert_eq!(
        events.last(),
        Some(&json!({"id": "s", "type": "result", "data": "done"}))
    );
    assert_eq!(
        a.gateway.forwarding(),
        0,
        "forwarding ends with the final reply"
    );
    a.assert_clean();
    b.assert_clean();
    assert_eq!(b.gateway.kept_bytes(), 0, "given back when it ended");
    assert_eq!(a.broker.published().len(), 1, "the work ran once");
    assert!(b.broker.published().is_empty());
    assert!(a.broker.cancels().is_empty() && b.broker.cancels().is_empty());
    assert_eq!(handoffs(&bus), 1);
}

#[tokio::test(start_paused = true)]
async fn another_owners_claim_is_not_answered() {
    let bus = MemoryBus::new();
    let a = host(&bus, "a", &owner());
    let b = host(&bus, "b", &owner());
    a.parked_after("s", 2).await;

    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 1})).await;
    assert_eq!(refusal_code(&ack), "TASK_NOT_FOUND");
    assert_eq!(handoffs(&bus), 0);
    assert_eq!(a.gateway.in_flight(), 1, "still parked on its host");
    assert_eq!(b.gateway.pending_claims(), 0);
    b.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_request_nobody_holds_is_not_found_within_the_claim_timeout() {
    let bus = MemoryBus::new();
    let b = host(&bus, "b", &owner());
    let started = tokio::time::Instant::now();
    let ack = b.attach_later(7, json!({"id": "gone"})).await;
    assert_eq!(refusal_code(&ack), "TASK_NOT_FOUND");
    let waited = started.elapsed();
    assert!(
        waited >= CLAIM_TIMEOUT && waited < CLAIM_TIMEOUT + Duration::from_millis(200),
        "{waited:?}"
    );
    b.assert_clean();
    assert_eq!(b.gateway.pending_claims(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_cluster_an_unknown_attach_is_refused_at_once() {
    // On a bus, but without the cluster secret: a host on its own.
    let bus = MemoryBus::new();
    let h = harness_on(MemoryBroker::on_bus(bus.clone(), "taskgate.reply.x"), |g| {
        g.with_resume(ResumeSettings::default())
    });
    let owner = owner();
    h.gateway.disconnected(CONN);
    h.gateway
        .connected_as(CONN, Session::anonymous().with_owner(owner));
    h.gateway.attach(
        CONN,
        Ok(serde_json::from_value(json!({"id": "x"})).unwrap()),
        3,
    );
    assert_eq!(refusal_code(&h.sink.acks(3)[0]), "TASK_NOT_FOUND");
    assert!(bus.sent().is_empty(), "no claim");
}

#[tokio::test(start_paused = true)]
async fn the_outcome_of_a_request_that_ended_while_parked_is_handed_off() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    let id = a.parked_after("s", 1).await;
    a.gateway.on_reply(chunk(id, 1, "1"));
    a.gateway.on_reply(reply(
        id,
        "error",
        r#"{"code": "QUOTA", "message": "over", "details": {"n": 1}}"#,
    ));
    assert_eq!(a.gateway.tasks_kept(), 1);

    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 0})).await;
    assert_eq!(ack, json!({"ok": true, "state": "failed", "firstSeq": 1}));
    settle().await;
    let events = b.sink.events(CONN);
    assert_eq!(chunk_seqs(&events), vec![1]);
    assert_eq!(
        events.last(),
        Some(&json!({"id": "s", "type": "error",
            "error": {"code": "QUOTA", "message": "over", "details": {"n": 1}}}))
    );
    assert_eq!(a.gateway.tasks_kept(), 0);
    assert_eq!(a.gateway.forwarding(), 0);
    a.assert_clean();
    b.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn a_second_blip_hands_the_request_on_and_the_first_host_keeps_forwarding() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    let c = host(&bus, "c", &owner);
    let id = a.parked_after("s", 2).await;
    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 1})).await;
    assert_eq!(ack["ok"], true);
    a.gateway.on_reply(chunk(id, 2, "2"));
    settle().await;
    assert_eq!(chunk_seqs(&b.sink.events(CONN)), vec![2]);

    b.gateway.disconnected(CONN);
    a.gateway.on_reply(chunk(id, 3, "3"));
    settle().await;
    let ack = c.attach_later(8, json!({"id": "s", "afterSeq": 2})).await;
    assert_eq!(ack, json!({"ok": true, "state": "running", "firstSeq": 3}));
    a.gateway.on_reply(chunk(id, 4, "4"));
    a.gateway.on_reply(reply(id, "result", "true"));
    settle().await;
    let events = c.sink.events(CONN);
    assert_eq!(chunk_seqs(&events), vec![3, 4]);
    assert_eq!(events.last().unwrap()["type"], "result");
    for h in [&a, &b, &c] {
        h.assert_clean();
        assert_eq!(h.gateway.forwarding(), 0);
    }
    assert_eq!(a.broker.published().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_still_on_a_half_open_connection_of_its_holder_is_handed_off() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    a.submit(1, req("s", "echo", json!(1))).await;
    let id = a.last_correlation_id();
    a.gateway.on_reply(chunk(id, 0, "0"));
    // The holder has not noticed that the connection is gone.
    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 0})).await;
    assert_eq!(ack, json!({"ok": true, "state": "running", "firstSeq": 1}));
    assert_eq!(a.gateway.reserved_ids(), 0, "the old binding dropped");
    a.gateway.on_reply(chunk(id, 1, "1"));
    settle().await;
    assert_eq!(chunk_seqs(&a.sink.events(CONN)), vec![0]);
    assert_eq!(chunk_seqs(&b.sink.events(CONN)), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn forged_or_malformed_messages_between_hosts_change_nothing() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    a.parked_after("s", 1).await;
    let message = |kind: &str, body: Value| {
        HostMessage {
            correlation_id: Uuid::new_v4(),
            kind: kind.into(),
            seq: None,
            body: serde_json::to_vec(&body).unwrap(),
        }
        .into_reply()
    };
    let owner_json = match &owner {
        Owner::Session(id) => json!({ "session": id }),
        Owner::Subject(_) => unreachable!(),
    };
    // Malformed claims, and a claim that would send the request to a worker's queue.
    for body in [
        json!("nonsense"),
        json!({"owner": owner_json, "replyTo": "taskgate.reply.b"}),
        json!({"owner": owner_json, "replyTo": "taskgate.echo",
            "requests": [{"claimId": Uuid::new_v4(), "clientId": "s", "afterSeq": -1}]}),
    ] {
        a.gateway.on_reply(message(names::CLAIM_TYPE, body));
    }
    settle().await;
    assert_eq!(a.gateway.in_flight(), 1, "still held");
    assert_eq!(handoffs(&bus), 0);

    // A hand-off nobody asked for: no request is created.
    let forged = |claim_id: Uuid, owner: Value| {
        json!({
            "claimId": claim_id, "owner": owner, "clientId": "s", "requestType": "echo",
            "timeoutMs": 1000, "remainingMs": 1000, "nextSeq": 0, "firstSeq": 0,
            "state": "running", "traceparent": "", "startedAtMs": 0
        })
    };
    b.gateway
        .on_reply(message(names::HANDOFF_TYPE, json!([1, 2])));
    b.gateway.on_reply(message(
        names::HANDOFF_TYPE,
        forged(Uuid::new_v4(), owner_json.clone()),
    ));
    assert_eq!(b.gateway.in_flight(), 0);

    // A hand-off naming a pending claim but another owner: dropped, the claim still waits.
    b.gateway.attach(
        CONN,
        serde_json::from_value(json!({"id": "other"})).map_err(|e| e.to_string()),
        9,
    );
    settle().await;
    let claim = bus
        .sent()
        .iter()
        .rev()
        .find(|(_, m)| &*m.kind == names::CLAIM_TYPE)
        .map(|(_, m)| serde_json::from_slice::<Value>(&m.body).unwrap())
        .unwrap();
    let claim_id: Uuid = serde_json::from_value(claim["requests"][0]["claimId"].clone()).unwrap();
    b.gateway.on_reply(message(
        names::HANDOFF_TYPE,
        forged(claim_id, json!({"subject": "mallory"})),
    ));
    assert_eq!(b.gateway.in_flight(), 0);
    assert_eq!(b.gateway.pending_claims(), 1);
    tokio::time::sleep(CLAIM_TIMEOUT + Duration::from_millis(10)).await;
    assert_eq!(refusal_code(&b.sink.acks(9)[0]), "TASK_NOT_FOUND");
    b.assert_clean();
}

#[tokio::test(start_paused = true)]
async fn the_attaches_of_one_reconnect_leave_as_one_claim() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    for (tag, id) in [(1, "x"), (2, "y"), (3, "z")] {
        a.submit(tag, req(id, "echo", json!(1))).await;
    }
    a.gateway.disconnected(CONN);
    for (tag, id) in [(11, "x"), (12, "y"), (13, "z")] {
        b.gateway.attach(
            CONN,
            serde_json::from_value(json!({ "id": id })).map_err(|e| e.to_string()),
            tag,
        );
    }
    settle().await;
    let claims: Vec<_> = bus
        .sent()
        .into_iter()
        .filter(|(_, m)| &*m.kind == names::CLAIM_TYPE)
        .collect();
    assert_eq!(claims.len(), 1, "one claim for the three");
    for tag in [11, 12, 13] {
        assert_eq!(b.sink.acks(tag)[0]["ok"], true);
    }
    assert_eq!((a.gateway.in_flight(), b.gateway.in_flight()), (0, 3));
}

#[tokio::test(start_paused = true)]
async fn a_cancel_on_the_new_host_stops_the_worker_and_the_old_host_forwards_until_the_end() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    let id = a.parked_after("s", 1).await;
    let ack = b.attach_later(7, json!({"id": "s", "afterSeq": 0})).await;
    assert_eq!(ack["ok"], true);
    b.gateway.cancel(
        CONN,
        serde_json::from_value(json!({"id": "s"})).map_err(|e| e.to_string()),
    );
    settle().await;
    assert_eq!(
        b.broker.cancels(),
        vec![id],
        "the workers are told, from the new host"
    );
    assert_eq!(
        b.sink.events(CONN).last().unwrap()["error"]["code"],
        "CANCELLED"
    );
    b.assert_clean();
    // The worker's own CANCELLED error reaches the old host, which forwards it and forgets.
    assert_eq!(a.gateway.forwarding(), 1);
    a.gateway.on_reply(reply(
        id,
        "error",
        r#"{"code": "CANCELLED", "message": "stopped"}"#,
    ));
    settle().await;
    assert_eq!(a.gateway.forwarding(), 0);
    a.assert_clean();
    assert_eq!(
        b.sink.events(CONN).len(),
        1,
        "nothing after the final response"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_can_come_back_to_the_host_that_published_it() {
    let bus = MemoryBus::new();
    let owner = owner();
    let a = host(&bus, "a", &owner);
    let b = host(&bus, "b", &owner);
    let id = a.parked_after("s", 1).await;
    assert_eq!(
        b.attach_later(7, json!({"id": "s", "afterSeq": 0})).await["ok"],
        true
    );
    a.gateway.on_reply(chunk(id, 1, "1"));
    settle().await;
    b.gateway.disconnected(CONN);
    a.gateway.on_reply(chunk(id, 2, "2"));
    settle().await;

    // Back through A (a new connection there): B hands it back, A stops forwarding.
    a.gateway
        .connected_as(2, Session::anonymous().with_owner(owner.clone()));
    a.gateway.attach(
        2,
        serde_json::from_value(json!({"id": "s", "afterSeq": 1})).map_err(|e| e.to_string()),
        8,
    );
    // A reply while the claim is out: held here, not sent to B, delivered after B's.
    a.gateway.on_reply(chunk(id, 3, "3"));
    settle().await;
    assert_eq!(
        a.sink.acks(8),
        vec![json!({"ok": true, "state": "running", "firstSeq": 2})]
    );
    assert_eq!(a.gateway.forwarding(), 0);
    assert!(
        !bus.sent()
            .iter()
            .any(|(queue, m)| queue.ends_with(".b") && m.seq == Some(3)),
        "held, not forwarded"
    );
    a.gateway.on_reply(chunk(id, 4, "4"));
    a.gateway.on_reply(reply(id, "result", "true"));
    settle().await;
    let events = a.sink.events(2);
    assert_eq!(chunk_seqs(&events), vec![2, 3, 4]);
    assert_eq!(events.last().unwrap()["type"], "result");
    a.assert_clean();
    // B never sees the final reply (it went to A directly): its forwarding ends by the
    // request's deadline.
    assert_eq!(b.gateway.forwarding(), 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    b.assert_clean();
    assert_eq!(b.gateway.forwarding(), 0);
}
