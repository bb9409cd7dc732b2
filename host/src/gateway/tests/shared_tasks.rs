//! Detached tasks in a task store the hosts share (protocol §4.4): two gateways — two hosts —
//! over one store. Replies reach the store as the task-reply consumer puts them there
//! (`tasks::replies::keep`), whichever host it runs on.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::resume::{Owner, ResumeSettings, SessionId};
use crate::session::Session;
use crate::tasks::replies::keep;
use crate::tasks::{MemoryTaskStore, NewTask, OwnerKey, StoreLimits, TaskStore};

const QUEUE: &str = "taskgate.task-replies.test";

fn settings() -> ResumeSettings {
    ResumeSettings {
        max_tasks: 2,
        ..ResumeSettings::default()
    }
}

/// Two hosts sharing `store`, each with one connection of `owner` (CONN).
fn cluster(store: &Arc<MemoryTaskStore>, owner: &Owner) -> (Harness, Harness) {
    let host = || {
        let shared: Arc<dyn TaskStore> = store.clone();
        let h = harness_with(|g| g.with_resume(settings()).with_task_store(shared, QUEUE));
        h.gateway.disconnected(CONN);
        h.gateway
            .connected_as(CONN, Session::anonymous().with_owner(owner.clone()));
        h
    };
    (host(), host())
}

fn store() -> Arc<MemoryTaskStore> {
    Arc::new(MemoryTaskStore::new(StoreLimits::from(&settings())))
}

fn detached(id: &str, request_type: &str) -> Result<RequestEnvelope, String> {
    envelope(json!({ "id": id, "requestType": request_type, "payload": 1, "detach": true }))
}

fn chunk(correlation_id: Uuid, seq: i64, body: &str) -> IncomingReply {
    IncomingReply {
        seq: Some(seq),
        ..reply(correlation_id, "chunk", body)
    }
}

/// Waits for what the background work of the shared path sends.
async fn until<T>(mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1000 {
        if let Some(found) = probe() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("nothing came");
}

impl Harness {
    async fn ack_of(&self, tag: u32) -> Value {
        until(|| self.sink.acks(tag).pop()).await
    }

    async fn start(&self, tag: u32, envelope: Result<RequestEnvelope, String>) -> Value {
        assert!(
            self.gateway.submit(CONN, envelope, tag).is_none(),
            "the shared path runs by itself"
        );
        self.ack_of(tag).await
    }
}

#[tokio::test]
async fn a_task_started_on_one_host_is_listed_attached_and_cancelled_on_another() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let (a, b) = cluster(&store, &owner);
    assert_eq!(
        a.start(1, detached("job", "echo")).await,
        json!({"ok": true})
    );
    let published = a.broker.published();
    assert_eq!(
        published[0].reply_to.as_deref(),
        Some(QUEUE),
        "replies go to the shared queue"
    );
    let id = published[0].correlation_id;
    for seq in 0..3 {
        keep(
            store.as_ref(),
            chunk(id, seq, &format!("{{\"n\":{seq}}}")),
            1 << 20,
        )
        .await
        .unwrap();
    }
    until(|| (a.sink.events(CONN).len() == 3).then_some(())).await;

    // Host B: the list with progress, then an attach from seq 1 on.
    b.gateway.tasks(CONN, 2);
    let listed = b.ack_of(2).await;
    assert_eq!(listed["tasks"][0]["id"], "job");
    assert_eq!(listed["tasks"][0]["state"], "running");
    assert_eq!(listed["tasks"][0]["lastSeq"], 2);
    assert_eq!(listed["tasks"][0]["lastChunk"], json!({"n": 2}));
    b.gateway.attach(
        CONN,
        serde_json::from_value(json!({"id": "job", "afterSeq": 0}))
            .map_err(|e: serde_json::Error| e.to_string()),
        3,
    );
    assert_eq!(
        b.ack_of(3).await,
        json!({"ok": true, "state": "running", "firstSeq": 1})
    );
    until(|| (b.sink.events(CONN).len() == 2).then_some(())).await;

    // Cancel through B: CANCELLED to both attached clients, workers told by B, once.
    b.gateway.cancel(
        CONN,
        serde_json::from_value(json!({"id": "job"})).map_err(|e: serde_json::Error| e.to_string()),
    );
    until(|| (b.broker.cancels() == vec![id]).then_some(())).await;
    for host in [&a, &b] {
        let events = until(|| {
            let events = host.sink.events(CONN);
            events
                .last()
                .filter(|e| e["type"] == "error")
                .map(|_| events.clone())
        })
        .await;
        assert_eq!(events.last().unwrap()["error"]["code"], "CANCELLED");
    }
    // A late result changes nothing.
    keep(store.as_ref(), reply(id, "result", "1"), 1 << 20)
        .await
        .unwrap();
    b.gateway.tasks(CONN, 4);
    assert_eq!(b.ack_of(4).await["tasks"][0]["state"], "cancelled");
    assert!(a.broker.cancels().is_empty());
}

#[tokio::test]
async fn a_task_of_a_type_nobody_serves_is_refused_before_it_is_stored() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let (a, _) = cluster(&store, &owner);
    for _ in 0..crate::serving::UNSERVED_AFTER_LOOKS {
        a.gateway.serving().observe("taskgate.echo", Ok(0));
    }
    let ack = a.start(1, detached("t1", "echo")).await;
    assert_eq!(ack["error"]["details"]["reason"], json!("noConsumers"));
    assert!(a.broker.published().is_empty());
    let key = OwnerKey::of(&owner);
    assert!(
        store.list(&key).await.unwrap().is_empty(),
        "no task was stored"
    );
}

/// The refusals of the shared path reach the console's recent failures as those of the
/// plain path do (`keep_refusal`): unknown type, invalid payload, no workers, a failed
/// publish; not a rate limit.
#[tokio::test]
async fn refusals_of_detached_tasks_are_kept_for_the_console() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let failures = Arc::new(crate::console::failures::RecentFailures::new("host-a", 20));
    let shared: Arc<dyn TaskStore> = store.clone();
    let a = harness_with(|g| {
        g.with_resume(settings())
            .with_task_store(shared, QUEUE)
            .with_recent_failures(failures.clone())
    });
    a.gateway.disconnected(CONN);
    a.gateway
        .connected_as(CONN, Session::anonymous().with_owner(owner.clone()));

    let unknown = a.start(1, detached("u", "nope")).await;
    assert_eq!(unknown["error"]["code"], "UNKNOWN_REQUEST_TYPE");
    let invalid = envelope(
        json!({"id": "i", "requestType": "strict", "payload": {"n": "x"}, "detach": true}),
    );
    assert_eq!(
        a.start(2, invalid).await["error"]["code"],
        "INVALID_PAYLOAD"
    );
    a.broker.fail_with(Some(PublishError::NotConnected));
    assert_eq!(
        a.start(3, detached("p", "slow")).await["error"]["code"],
        "UNAVAILABLE"
    );
    a.broker.fail_with(None);
    for _ in 0..crate::serving::UNSERVED_AFTER_LOOKS {
        a.gateway.serving().observe("taskgate.echo", Ok(0));
    }
    assert_eq!(
        a.start(4, detached("w", "echo")).await["error"]["code"],
        "UNAVAILABLE"
    );
    // max_tasks is 2, and the task whose publish failed is kept (failed) and counts.
    assert_eq!(
        a.start(5, detached("ok", "slow")).await,
        json!({"ok": true})
    );
    let before = failures.list().len();
    let limited = a.start(7, detached("over", "slow")).await;
    assert_eq!(limited["error"]["code"], "RATE_LIMITED");
    assert_eq!(failures.list().len(), before, "a rate limit is not kept");

    let kept = failures.list();
    let seen = types_and_codes(&kept);
    assert_eq!(
        seen,
        [
            ("echo", "UNAVAILABLE"),
            ("slow", "UNAVAILABLE"),
            ("strict", "INVALID_PAYLOAD"),
            ("nope", "UNKNOWN_REQUEST_TYPE"),
        ],
        "{kept:#?}"
    );
    assert!(kept[0].message.contains("taskgate.echo"), "{:?}", kept[0]);
    assert!(
        !kept[1].correlation_id.is_empty(),
        "a publish that failed had one"
    );
    assert_eq!(kept[3].correlation_id, "", "refused before it had one");
}

#[tokio::test]
async fn other_owners_resends_bounds_and_sessions() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let (a, b) = cluster(&store, &owner);
    assert_eq!(
        a.start(1, detached("job", "echo")).await,
        json!({"ok": true})
    );
    let id = a.last_correlation_id();
    keep(store.as_ref(), reply(id, "result", "\"done\""), 1 << 20)
        .await
        .unwrap();

    // A resend through B runs nothing and delivers the outcome.
    assert_eq!(
        b.start(2, detached("job", "echo")).await,
        json!({"ok": true})
    );
    assert!(b.broker.published().is_empty(), "not run again");
    let events = until(|| {
        let events = b.sink.events(CONN);
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(
        events[0],
        json!({"id": "job", "type": "result", "data": "done"})
    );

    // Another owner on B learns nothing, and cannot cancel.
    let stranger = Owner::Session(SessionId::new());
    b.gateway
        .connected_as(7, Session::anonymous().with_owner(stranger));
    b.gateway.tasks(7, 3);
    assert_eq!(b.ack_of(3).await, json!({"ok": true, "tasks": []}));
    b.gateway.attach(
        7,
        serde_json::from_value(json!({"id": "job"})).map_err(|e: serde_json::Error| e.to_string()),
        4,
    );
    assert_eq!(b.ack_of(4).await["error"]["code"], "TASK_NOT_FOUND");

    // max_tasks counts across hosts; detach needs a session.
    assert_eq!(
        b.start(5, detached("second", "echo")).await,
        json!({"ok": true})
    );
    let refused = a.start(6, detached("third", "echo")).await;
    assert_eq!(refused["error"]["code"], "RATE_LIMITED");
    a.gateway.connected(8);
    a.gateway.submit(8, detached("x", "echo"), 9);
    assert_eq!(a.ack_of(9).await["error"]["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn the_taking_host_times_a_task_out_and_a_dead_hosts_task_times_out_when_read() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let (a, b) = cluster(&store, &owner);
    // "slow" times out after 500 ms: A's timer ends it and tells the workers.
    assert_eq!(
        a.start(1, detached("slow", "slow")).await,
        json!({"ok": true})
    );
    let id = a.last_correlation_id();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.broker.cancels(), vec![id]);
    let events = a.sink.events(CONN);
    assert_eq!(events.last().unwrap()["error"]["code"], "TIMEOUT");

    // A task whose host died (no timer left): B, reading it past its deadline, ends it.
    let orphan = NewTask {
        owner: OwnerKey::of(&owner),
        client_id: "orphan".into(),
        correlation_id: Uuid::new_v4(),
        request_type: "slow".into(),
        started_at_ms: 0,
        timeout: Duration::from_millis(100),
    };
    store.create(&orphan).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.gateway.tasks(CONN, 2);
    let listed = b.ack_of(2).await;
    let entry = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "orphan")
        .cloned()
        .unwrap();
    assert_eq!(entry["state"], "failed");
    assert_eq!(b.broker.cancels(), vec![orphan.correlation_id]);
}

#[tokio::test]
async fn a_client_attached_to_a_dead_hosts_task_gets_its_timeout() {
    let store = store();
    let owner = Owner::Session(SessionId::new());
    let (_, b) = cluster(&store, &owner);
    let orphan = NewTask {
        owner: OwnerKey::of(&owner),
        client_id: "orphan".into(),
        correlation_id: Uuid::new_v4(),
        request_type: "slow".into(),
        started_at_ms: 0,
        timeout: Duration::from_millis(300),
    };
    store.create(&orphan).await.unwrap();
    b.gateway.attach(
        CONN,
        serde_json::from_value(json!({"id": "orphan"}))
            .map_err(|e: serde_json::Error| e.to_string()),
        1,
    );
    assert_eq!(b.ack_of(1).await["state"], "running");
    let events = until(|| {
        let events = b.sink.events(CONN);
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events[0]["error"]["code"], "TIMEOUT");
    assert_eq!(b.broker.cancels(), vec![orphan.correlation_id]);
}
