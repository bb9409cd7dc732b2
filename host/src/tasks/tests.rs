//! One suite, every engine: each test below runs against the memory store and against
//! Redis on 127.0.0.1:6379 (a key prefix of its own, deleted afterwards). Redis must be
//! running (scripts/ensure-deps starts it); when it is not, the Redis half fails saying so.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use uuid::Uuid;

use super::*;
use crate::resume::SessionId;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

fn limits() -> StoreLimits {
    StoreLimits {
        task_bytes: 1 << 20,
        result_ttl: Duration::from_secs(60),
        max_tasks: 100,
    }
}

/// A store for one test, and what to do when it is done.
#[async_trait]
trait Engine {
    async fn open(&self, limits: StoreLimits) -> (Arc<dyn TaskStore>, Cleanup);
}

struct Memory;
struct Redis;

/// Deletes a Redis test's keys.
struct Cleanup(Option<Arc<RedisTaskStore>>);

impl Cleanup {
    async fn run(self) {
        if let Some(store) = self.0 {
            store.delete_all().await.unwrap();
        }
    }
}

#[async_trait]
impl Engine for Memory {
    async fn open(&self, limits: StoreLimits) -> (Arc<dyn TaskStore>, Cleanup) {
        (Arc::new(MemoryTaskStore::new(limits)), Cleanup(None))
    }
}

#[async_trait]
impl Engine for Redis {
    async fn open(&self, limits: StoreLimits) -> (Arc<dyn TaskStore>, Cleanup) {
        let prefix = format!("taskgate-test:{}:", Uuid::new_v4().simple());
        let store = match RedisTaskStore::connect(REDIS_URL, &prefix, limits).await {
            Ok(store) => Arc::new(store),
            Err(error) => panic!(
                "these tests need Redis on 127.0.0.1:6379 (scripts/ensure-deps starts it): {error}"
            ),
        };
        (store.clone(), Cleanup(Some(store)))
    }
}

fn owner() -> OwnerKey {
    OwnerKey::of(&Owner::Session(SessionId::new()))
}

fn raw(text: &str) -> Arc<RawValue> {
    Arc::from(RawValue::from_string(text.to_owned()).unwrap())
}

fn task(owner: &OwnerKey, id: &str) -> NewTask {
    NewTask {
        owner: owner.clone(),
        client_id: id.into(),
        correlation_id: Uuid::new_v4(),
        request_type: "countdown".into(),
        started_at_ms: 1_000,
        timeout: Duration::from_secs(60),
    }
}

fn succeeded(text: &str) -> Outcome {
    Outcome {
        state: TaskState::Succeeded,
        response: raw(text),
    }
}

async fn started(store: &Arc<dyn TaskStore>, owner: &OwnerKey, id: &str) -> Uuid {
    let new = task(owner, id);
    assert_eq!(store.create(&new).await.unwrap(), Created::New);
    new.correlation_id
}

fn seqs(backlog: &Backlog) -> Vec<u64> {
    backlog.chunks.iter().map(|(seq, _)| *seq).collect()
}

/// Everything an attachment yields until its end: chunk seqs, and the outcome.
async fn drain(attachment: &mut Attachment) -> (Vec<u64>, Option<Outcome>) {
    let mut chunks = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), attachment.next())
            .await
            .expect("the attachment stalled")
            .unwrap();
        match next {
            Some(Entry::Chunk { seq, .. }) => chunks.push(seq),
            Some(Entry::End(outcome)) => return (chunks, Some(outcome)),
            None => return (chunks, None),
        }
    }
}

async fn a_task_is_created_once_per_owner_and_id(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let (alice, bob) = (owner(), owner());
    let first = started(&store, &alice, "job-1").await;
    let again = task(&alice, "job-1");
    assert_eq!(
        store.create(&again).await.unwrap(),
        Created::Existing(first),
        "an idempotent resend finds the task"
    );
    assert_eq!(store.record(again.correlation_id).await.unwrap(), None);
    assert_eq!(store.find(&alice, "job-1").await.unwrap(), Some(first));
    assert_eq!(
        store.find(&bob, "job-1").await.unwrap(),
        None,
        "owner isolation"
    );
    assert_eq!(store.find(&alice, "job-2").await.unwrap(), None);
    let bobs = started(&store, &bob, "job-1").await;
    assert_ne!(
        bobs, first,
        "the same client id of another owner is another task"
    );
    let record = store.record(first).await.unwrap().unwrap();
    assert_eq!(record.owner, alice);
    assert_eq!(&*record.client_id, "job-1");
    assert_eq!(&*record.request_type, "countdown");
    assert_eq!(record.started_at_ms, 1_000);
    assert_eq!(record.state, TaskState::Running);
    assert_eq!((record.last_seq, record.ended_at_ms), (None, None));
    assert!(!record.cancel_requested);
    assert!(record.deadline_ms > 1_000);
    cleanup.run().await;
}

async fn an_owner_has_at_most_max_tasks(engine: &dyn Engine) {
    let limits = StoreLimits {
        max_tasks: 2,
        result_ttl: Duration::from_millis(200),
        ..limits()
    };
    let (store, cleanup) = engine.open(limits).await;
    let (alice, bob) = (owner(), owner());
    let first = started(&store, &alice, "a").await;
    started(&store, &alice, "b").await;
    assert_eq!(
        store.create(&task(&alice, "c")).await.unwrap(),
        Created::TooMany { max: 2 }
    );
    assert!(
        matches!(store.create(&task(&alice, "a")).await.unwrap(), Created::Existing(id) if id == first),
        "a resend is not a new task"
    );
    started(&store, &bob, "c").await;
    assert!(store.finish(first, &succeeded("1")).await.unwrap());
    assert_eq!(
        store.create(&task(&alice, "c")).await.unwrap(),
        Created::TooMany { max: 2 },
        "a kept outcome still counts"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    started(&store, &alice, "c").await;
    cleanup.run().await;
}

async fn chunks_are_kept_in_order_once_each(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let alice = owner();
    let id = started(&store, &alice, "job").await;
    for seq in 0..5 {
        assert!(store
            .append(id, seq, &raw(&format!("{{\"n\":{seq}}}")))
            .await
            .unwrap());
    }
    assert!(
        !store.append(id, 3, &raw("3")).await.unwrap(),
        "a redelivered chunk is refused"
    );
    let all = store.read(id, -1).await.unwrap().unwrap();
    assert_eq!((all.first_seq, seqs(&all)), (0, vec![0, 1, 2, 3, 4]));
    assert_eq!(all.chunks[2].1.get(), "{\"n\":2}");
    assert!(all.outcome.is_none());
    let later = store.read(id, 2).await.unwrap().unwrap();
    assert_eq!((later.first_seq, seqs(&later)), (3, vec![3, 4]));
    let none = store.read(id, 4).await.unwrap().unwrap();
    assert_eq!((none.first_seq, seqs(&none)), (5, vec![]));
    let record = store.record(id).await.unwrap().unwrap();
    assert_eq!(record.last_seq, Some(4));
    assert_eq!(record.last_chunk.unwrap().get(), "{\"n\":4}");
    assert!(store
        .finish(id, &succeeded("{\"done\":true}"))
        .await
        .unwrap());
    assert!(
        !store.append(id, 5, &raw("5")).await.unwrap(),
        "nothing after the outcome"
    );
    let ended = store.read(id, 3).await.unwrap().unwrap();
    assert_eq!(seqs(&ended), vec![4]);
    assert_eq!(ended.outcome, Some(succeeded("{\"done\":true}")));
    cleanup.run().await;
}

async fn the_oldest_chunks_go_past_the_byte_bound_and_the_gap_is_told(engine: &dyn Engine) {
    let chunk = format!("\"{}\"", "x".repeat(100));
    let cost = chunk.len() + 32;
    let limits = StoreLimits {
        task_bytes: 3 * cost,
        ..limits()
    };
    let (store, cleanup) = engine.open(limits).await;
    let id = started(&store, &owner(), "job").await;
    for seq in 0..10 {
        assert!(store.append(id, seq, &raw(&chunk)).await.unwrap());
    }
    let kept = store.read(id, -1).await.unwrap().unwrap();
    assert_eq!((kept.first_seq, seqs(&kept)), (7, vec![7, 8, 9]));
    let after = store.read(id, 7).await.unwrap().unwrap();
    assert_eq!(
        (after.first_seq, seqs(&after)),
        (8, vec![8, 9]),
        "no gap after 7"
    );
    let huge = format!("\"{}\"", "y".repeat(4 * cost));
    assert!(store.append(id, 10, &raw(&huge)).await.unwrap());
    let none = store.read(id, -1).await.unwrap().unwrap();
    assert_eq!(
        (none.first_seq, seqs(&none)),
        (11, vec![]),
        "a chunk past the whole bound is not kept, and neither are those before"
    );
    assert!(store.append(id, 11, &raw("1")).await.unwrap());
    let last = store.read(id, 9).await.unwrap().unwrap();
    assert_eq!(
        (last.first_seq, seqs(&last)),
        (11, vec![11]),
        "10 is missing"
    );
    cleanup.run().await;
}

async fn the_first_outcome_wins(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = started(&store, &owner(), "job").await;
    let timeout = Outcome {
        state: TaskState::Failed,
        response: raw("{\"error\":\"TIMEOUT\"}"),
    };
    let late = succeeded("\"late\"");
    let (a, b) = tokio::join!(store.finish(id, &timeout), store.finish(id, &late));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one outcome is written");
    let winner = if a { timeout } else { late };
    let record = store.record(id).await.unwrap().unwrap();
    assert_eq!(record.state, winner.state);
    assert!(record.ended_at_ms.is_some());
    assert_eq!(
        store.read(id, -1).await.unwrap().unwrap().outcome,
        Some(winner)
    );
    let cancelled = Outcome {
        state: TaskState::Cancelled,
        response: raw("{}"),
    };
    assert!(!store.finish(id, &cancelled).await.unwrap());
    assert!(!store.finish(Uuid::new_v4(), &cancelled).await.unwrap());
    cleanup.run().await;
}

async fn an_owner_lists_its_own_tasks_newest_first(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let (alice, bob) = (owner(), owner());
    let mut older = task(&alice, "older");
    older.started_at_ms = 10;
    let mut newer = task(&alice, "newer");
    newer.started_at_ms = 20;
    store.create(&older).await.unwrap();
    store.create(&newer).await.unwrap();
    started(&store, &bob, "bobs").await;
    store
        .append(older.correlation_id, 0, &raw("{\"step\":1}"))
        .await
        .unwrap();
    store
        .finish(newer.correlation_id, &succeeded("2"))
        .await
        .unwrap();
    let listed = store.list(&alice).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| &*r.client_id).collect();
    assert_eq!(ids, vec!["newer", "older"]);
    assert_eq!(listed[0].state, TaskState::Succeeded);
    assert_eq!(listed[1].state, TaskState::Running);
    assert_eq!(listed[1].last_seq, Some(0));
    assert_eq!(
        listed[1].last_chunk.as_deref().map(RawValue::get),
        Some("{\"step\":1}")
    );
    assert_eq!(store.list(&owner()).await.unwrap(), vec![]);
    assert_eq!(store.list(&bob).await.unwrap().len(), 1);
    cleanup.run().await;
}

async fn an_outcome_expires_result_ttl_after_the_end(engine: &dyn Engine) {
    let limits = StoreLimits {
        result_ttl: Duration::from_millis(300),
        ..limits()
    };
    let (store, cleanup) = engine.open(limits).await;
    let alice = owner();
    let id = started(&store, &alice, "job").await;
    store.append(id, 0, &raw("0")).await.unwrap();
    store.finish(id, &succeeded("1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.record(id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.record(id).await.unwrap(), None);
    assert!(store.read(id, -1).await.unwrap().is_none());
    assert_eq!(store.find(&alice, "job").await.unwrap(), None);
    assert_eq!(store.list(&alice).await.unwrap(), vec![]);
    assert_eq!(
        store.create(&task(&alice, "job")).await.unwrap(),
        Created::New,
        "an expired id can be used again"
    );
    cleanup.run().await;
}

async fn a_running_task_lives_to_its_deadline_and_result_ttl_beyond(engine: &dyn Engine) {
    let limits = StoreLimits {
        result_ttl: Duration::from_millis(300),
        ..limits()
    };
    let (store, cleanup) = engine.open(limits).await;
    let alice = owner();
    let mut new = task(&alice, "job");
    new.timeout = Duration::from_millis(400);
    store.create(&new).await.unwrap();
    tokio::time::sleep(Duration::from_millis(550)).await;
    let record = store.record(new.correlation_id).await.unwrap().unwrap();
    assert_eq!(
        record.state,
        TaskState::Running,
        "past its deadline, still there for whoever writes its TIMEOUT"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.record(new.correlation_id).await.unwrap(), None);
    assert_eq!(store.find(&alice, "job").await.unwrap(), None);
    cleanup.run().await;
}

async fn cancel_marks_a_running_task(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = started(&store, &owner(), "job").await;
    assert!(store.request_cancel(id).await.unwrap());
    assert!(store.record(id).await.unwrap().unwrap().cancel_requested);
    store.finish(id, &succeeded("1")).await.unwrap();
    assert!(!store.request_cancel(id).await.unwrap(), "ended");
    assert!(
        !store.request_cancel(Uuid::new_v4()).await.unwrap(),
        "unknown"
    );
    cleanup.run().await;
}

async fn an_unknown_task_is_nothing(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = Uuid::new_v4();
    assert!(!store.append(id, 0, &raw("0")).await.unwrap());
    assert!(store.read(id, -1).await.unwrap().is_none());
    assert!(store.record(id).await.unwrap().is_none());
    assert!(Attachment::open(store.clone(), id, -1)
        .await
        .unwrap()
        .is_none());
    cleanup.run().await;
}

async fn an_attachment_racing_the_worker_sees_every_chunk_once(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = started(&store, &owner(), "job").await;
    for seq in 0..50 {
        store.append(id, seq, &raw(&seq.to_string())).await.unwrap();
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for seq in 50..400 {
                store.append(id, seq, &raw(&seq.to_string())).await.unwrap();
                if seq % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            store.finish(id, &succeeded("\"done\"")).await.unwrap();
        })
    };
    let mut attachment = Attachment::open(store.clone(), id, 9)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attachment.first_seq, 10);
    let (chunks, outcome) = drain(&mut attachment).await;
    writer.await.unwrap();
    assert_eq!(chunks, (10..400).collect::<Vec<_>>());
    assert_eq!(outcome, Some(succeeded("\"done\"")));
    let mut late = Attachment::open(store.clone(), id, 397)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.state, TaskState::Succeeded);
    assert_eq!(
        drain(&mut late).await,
        (vec![398, 399], Some(succeeded("\"done\"")))
    );
    cleanup.run().await;
}

async fn a_reader_that_falls_behind_reads_the_store(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = started(&store, &owner(), "job").await;
    let mut attachment = Attachment::open(store.clone(), id, -1)
        .await
        .unwrap()
        .unwrap();
    let total = 3 * SUBSCRIPTION_BUFFER as u64;
    for seq in 0..total {
        store.append(id, seq, &raw("1")).await.unwrap();
    }
    store.finish(id, &succeeded("2")).await.unwrap();
    // Let the pushes arrive and overflow the feed before reading.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (chunks, outcome) = drain(&mut attachment).await;
    assert_eq!(chunks, (0..total).collect::<Vec<_>>());
    assert_eq!(outcome, Some(succeeded("2")));
    cleanup.run().await;
}

async fn two_attachments_to_one_task_both_see_everything(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let id = started(&store, &owner(), "job").await;
    let mut first = Attachment::open(store.clone(), id, -1)
        .await
        .unwrap()
        .unwrap();
    let mut second = Attachment::open(store.clone(), id, -1)
        .await
        .unwrap()
        .unwrap();
    for seq in 0..20 {
        store.append(id, seq, &raw("1")).await.unwrap();
    }
    store.finish(id, &succeeded("2")).await.unwrap();
    let all = ((0..20).collect::<Vec<_>>(), Some(succeeded("2")));
    assert_eq!(drain(&mut first).await, all);
    drop(first);
    assert_eq!(drain(&mut second).await, all);
    cleanup.run().await;
}

async fn every_owners_latest_tasks_are_listed_newest_first_within_a_bound(engine: &dyn Engine) {
    let (store, cleanup) = engine.open(limits()).await;
    let (alice, bob) = (owner(), owner());
    let mut ids = Vec::new();
    for (n, who) in [&alice, &bob, &alice, &bob, &alice].into_iter().enumerate() {
        let mut new = task(who, &format!("job-{n}"));
        new.started_at_ms = 10 * (n as u64 + 1);
        assert_eq!(store.create(&new).await.unwrap(), Created::New);
        ids.push(new.correlation_id);
    }
    store.append(ids[4], 0, &raw("{\"big\":1}")).await.unwrap();
    let timeout = Outcome {
        state: TaskState::Failed,
        response: raw("{\"code\":\"TIMEOUT\",\"message\":\"too slow\"}"),
    };
    store.finish(ids[1], &timeout).await.unwrap();
    let cancelled = Outcome {
        state: TaskState::Cancelled,
        response: raw("{\"code\":\"CANCELLED\",\"message\":\"cancelled\"}"),
    };
    store.request_cancel(ids[2]).await.unwrap();
    store.finish(ids[2], &cancelled).await.unwrap();
    store
        .finish(ids[3], &succeeded("{\"code\":\"not an error\"}"))
        .await
        .unwrap();

    let latest = store.list_recent(3).await.unwrap();
    let listed: Vec<Uuid> = latest.iter().map(|r| r.correlation_id).collect();
    assert_eq!(
        listed,
        vec![ids[4], ids[3], ids[2]],
        "newest first, at most 3"
    );
    assert_eq!(latest[0].state, TaskState::Running);
    assert_eq!(latest[0].last_seq, Some(0));
    assert!(
        latest[0].last_chunk.is_none(),
        "a listing leaves chunks out"
    );
    assert_eq!(latest[0].owner, alice);
    assert_eq!(&*latest[0].client_id, "job-4");
    assert_eq!(&*latest[0].request_type, "countdown");
    assert_eq!(latest[0].started_at_ms, 50);
    assert_eq!(
        (latest[1].state, latest[1].error_code.as_deref()),
        (TaskState::Succeeded, None)
    );
    assert_eq!(latest[1].owner, bob);
    assert_eq!(
        (latest[2].state, latest[2].error_code.as_deref()),
        (TaskState::Cancelled, Some("CANCELLED"))
    );
    assert!(latest[2].cancel_requested);
    assert!(latest[2].ended_at_ms.is_some());

    let all = store.list_recent(100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[3].error_code.as_deref(), Some("TIMEOUT"));
    assert_eq!(all[4].correlation_id, ids[0]);
    assert_eq!(
        store
            .record(ids[1])
            .await
            .unwrap()
            .unwrap()
            .error_code
            .as_deref(),
        Some("TIMEOUT"),
        "a record says how it ended too"
    );
    assert_eq!(store.list_recent(0).await.unwrap(), vec![]);
    cleanup.run().await;
}

async fn expired_tasks_leave_the_recent_listing(engine: &dyn Engine) {
    let limits = StoreLimits {
        result_ttl: Duration::from_millis(200),
        ..limits()
    };
    let (store, cleanup) = engine.open(limits).await;
    let alice = owner();
    let mut ids = Vec::new();
    for n in 0..6 {
        let mut new = task(&alice, &format!("job-{n}"));
        new.started_at_ms = 10 + n;
        store.create(&new).await.unwrap();
        ids.push(new.correlation_id);
    }
    // The newest end and expire; the listing finds the older ones behind them.
    for id in &ids[2..] {
        store.finish(*id, &succeeded("1")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let listed: Vec<Uuid> = store
        .list_recent(2)
        .await
        .unwrap()
        .iter()
        .map(|r| r.correlation_id)
        .collect();
    assert_eq!(listed, vec![ids[1], ids[0]]);
    assert_eq!(store.list_recent(10).await.unwrap().len(), 2);
    cleanup.run().await;
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::Memory).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(&super::Redis).await;
                }
            )*
        }
    };
}

suite!(
    a_task_is_created_once_per_owner_and_id,
    an_owner_has_at_most_max_tasks,
    chunks_are_kept_in_order_once_each,
    the_oldest_chunks_go_past_the_byte_bound_and_the_gap_is_told,
    the_first_outcome_wins,
    an_owner_lists_its_own_tasks_newest_first,
    an_outcome_expires_result_ttl_after_the_end,
    a_running_task_lives_to_its_deadline_and_result_ttl_beyond,
    cancel_marks_a_running_task,
    an_unknown_task_is_nothing,
    an_attachment_racing_the_worker_sees_every_chunk_once,
    a_reader_that_falls_behind_reads_the_store,
    two_attachments_to_one_task_both_see_everything,
    every_owners_latest_tasks_are_listed_newest_first_within_a_bound,
    expired_tasks_leave_the_recent_listing,
);

#[test]
fn owner_keys_hide_the_subject_and_tell_owners_apart() {
    let alice = OwnerKey::of(&Owner::Subject("alice".into()));
    assert_eq!(alice, OwnerKey::of(&Owner::Subject("alice".into())));
    assert_ne!(alice, OwnerKey::of(&Owner::Subject("bob".into())));
    assert!(!alice.as_str().contains("alice"));
    assert_eq!(alice.as_str().len(), 32);
}

#[test]
fn published_entries_parse_back() {
    let chunk = redis_store::parse_entry(b"c12:{\"a\":\"b:c\"}").unwrap();
    assert!(matches!(chunk, Entry::Chunk { seq: 12, ref data } if data.get() == "{\"a\":\"b:c\"}"));
    let end = redis_store::parse_entry(b"efailed:{\"x\":1}").unwrap();
    assert!(matches!(
        end,
        Entry::End(Outcome {
            state: TaskState::Failed,
            ..
        })
    ));
    assert!(redis_store::parse_entry(b"junk").is_none());
    assert!(redis_store::parse_entry(b"cx:1").is_none());
}

#[tokio::test]
async fn an_unreachable_redis_is_a_clear_error_without_the_password() {
    let started = std::time::Instant::now();
    let Err(error) = RedisTaskStore::connect("redis://:hunter2@127.0.0.1:1/", "x:", limits()).await
    else {
        panic!("nothing listens on port 1");
    };
    let message = error.to_string();
    assert!(
        message.contains("unreachable") && message.contains("127.0.0.1:1"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10), "gives up soon");
}

async fn redis_store(prefix: &str, kept: usize) -> RedisTaskStore {
    match RedisTaskStore::connect(REDIS_URL, prefix, limits()).await {
        Ok(store) => store.with_recent_kept(kept),
        Err(error) => panic!("these tests need Redis on 127.0.0.1:6379: {error}"),
    }
}

#[tokio::test]
async fn the_redis_index_forgets_expired_tasks_and_keeps_its_bound() {
    let prefix = format!("taskgate-test:{}:", Uuid::new_v4().simple());
    let store = redis_store(&prefix, 5).await;
    let alice = owner();
    let store_dyn: Arc<dyn TaskStore> = Arc::new(redis_store(&prefix, 5).await);
    let mut ids = Vec::new();
    for n in 0..8 {
        let mut new = task(&alice, &format!("job-{n}"));
        new.started_at_ms = 100 + n;
        store.create(&new).await.unwrap();
        ids.push(new.correlation_id);
    }
    assert_eq!(store.recent_indexed().await.unwrap(), 5, "bounded");
    let listed: Vec<Uuid> = store_dyn
        .list_recent(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.correlation_id)
        .collect();
    assert_eq!(listed, ids[3..].iter().rev().copied().collect::<Vec<_>>());

    // Tasks whose hash is gone (as after expiry) leave the index as a listing meets them...
    let mut connection = ::redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for id in &ids[6..] {
        let _: () = ::redis::AsyncCommands::del(&mut connection, format!("{prefix}t:{id}"))
            .await
            .unwrap();
    }
    assert_eq!(store_dyn.list_recent(2).await.unwrap().len(), 2);
    assert_eq!(store.recent_indexed().await.unwrap(), 3);
    // ...and the oldest as tasks are created.
    for id in &ids[3..5] {
        let _: () = ::redis::AsyncCommands::del(&mut connection, format!("{prefix}t:{id}"))
            .await
            .unwrap();
    }
    let mut newer = task(&alice, "newer");
    newer.started_at_ms = 200;
    store.create(&newer).await.unwrap();
    assert_eq!(store.recent_indexed().await.unwrap(), 2);
    store.delete_all().await.unwrap();
}

/// What listing the latest 200 costs with 10,000 tasks in Redis (docs/performance.md, "Task
/// store engine"): `cargo test -p taskgate-host --lib -- --ignored --nocapture
/// recent_listing_cost`.
#[tokio::test]
#[ignore = "a measurement, not a test"]
async fn recent_listing_cost() {
    let prefix = format!("taskgate-test:{}:", Uuid::new_v4().simple());
    let store = Arc::new(redis_store(&prefix, RECENT_KEPT_FOR_COST).await);
    let owners: Vec<OwnerKey> = (0..100).map(|_| owner()).collect();
    let mut creating = Vec::new();
    for n in 0..10_000u64 {
        let store = store.clone();
        let mut new = task(&owners[(n % 100) as usize], &format!("job-{n}"));
        new.started_at_ms = 1_700_000_000_000 + n;
        creating.push(tokio::spawn(
            async move { store.create(&new).await.unwrap() },
        ));
        if creating.len() == 200 {
            for c in creating.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in creating {
        c.await.unwrap();
    }
    assert_eq!(store.recent_indexed().await.unwrap(), 10_000);
    let mut took = Vec::new();
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let listed = store.list_recent(200).await.unwrap();
        took.push(started.elapsed());
        assert_eq!(listed.len(), 200);
        assert_eq!(listed[0].started_at_ms, 1_700_000_009_999);
    }
    took.sort();
    println!(
        "list_recent(200) of 10,000 tasks in Redis: median {:?}, p90 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() * 9 / 10],
        took[took.len() - 1]
    );
    store.delete_all().await.unwrap();
}

const RECENT_KEPT_FOR_COST: usize = 10_000;
