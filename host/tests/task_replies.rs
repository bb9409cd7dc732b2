//! The shared task-reply queue against the real RabbitMQ and Redis: replies published to it
//! end up in the shared store in the order the worker sent them, acked only once stored — a
//! reply the store could not take is tried again before the ones behind it — and a reply
//! waits in the queue for the next consumer when there is none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use taskgate_host::broker::amqp::consume_task_replies;
use taskgate_host::resume::{Owner, SessionId};
use taskgate_host::tasks::replies::{keep, Kept};
use taskgate_host::tasks::{
    Created, NewTask, OwnerKey, RedisTaskStore, StoreLimits, TaskState, TaskStore,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{delete_queue, publish_reply, URL};

const REDIS: &str = "redis://127.0.0.1:6379/";

async fn publish(queue: &str, correlation_id: Uuid, kind: &str, seq: Option<u32>, body: &str) {
    let connection = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let id = correlation_id.to_string();
    publish_reply(
        &channel,
        queue,
        &id,
        kind,
        seq.map(i64::from),
        body.as_bytes(),
    )
    .await;
    let _ = connection.close(200, "done".into()).await;
}

async fn messages_in(queue: &str) -> u32 {
    let connection = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    declared.message_count()
}

#[tokio::test]
async fn replies_reach_the_store_and_are_acked_only_once_stored() {
    let prefix = format!("taskgate-test:{}:", Uuid::new_v4().simple());
    let limits = StoreLimits {
        task_bytes: 1 << 20,
        result_ttl: Duration::from_secs(60),
        max_tasks: 10,
    };
    let store: Arc<RedisTaskStore> = Arc::new(
        RedisTaskStore::connect(REDIS, &prefix, limits)
            .await
            .expect("these tests need Redis on 127.0.0.1:6379 (scripts/ensure-deps starts it)"),
    );
    let task = NewTask {
        owner: OwnerKey::of(&Owner::Session(SessionId::new())),
        client_id: "job".into(),
        correlation_id: Uuid::new_v4(),
        request_type: "t".into(),
        started_at_ms: 0,
        timeout: Duration::from_secs(60),
    };
    assert_eq!(store.create(&task).await.unwrap(), Created::New);
    let id = task.correlation_id;
    let queue = format!("taskgate-test.task-replies.{}", Uuid::new_v4().simple());

    // The store "fails" the first time it sees chunk 1: it must be tried again, before 2.
    let refused_once = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let consumer = {
        let (store, refused_once, stop, queue) = (
            store.clone(),
            refused_once.clone(),
            stop.clone(),
            queue.clone(),
        );
        tokio::spawn(async move {
            consume_task_replies(
                URL,
                "taskgate-test task replies",
                &queue,
                move |reply| {
                    let store = store.clone();
                    let refused_once = refused_once.clone();
                    async move {
                        if reply.seq == Some(1) && refused_once.fetch_add(1, Ordering::SeqCst) == 0
                        {
                            return false;
                        }
                        matches!(
                            keep(store.as_ref(), reply, 1 << 20).await,
                            Ok(Kept::Chunk | Kept::Ended { .. } | Kept::Dropped(_))
                        )
                    }
                },
                stop.cancelled_owned(),
            )
            .await;
        })
    };
    // The consumer declares the queue; publish once it exists.
    for _ in 0..100 {
        if lapin::Connection::connect(URL, Default::default())
            .await
            .unwrap()
            .create_channel()
            .await
            .unwrap()
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for seq in 0..3 {
        publish(&queue, id, "chunk", Some(seq), &format!("{{\"n\":{seq}}}")).await;
    }
    publish(&queue, id, "result", None, "\"done\"").await;

    let mut ended = false;
    for _ in 0..100 {
        if store.record(id).await.unwrap().unwrap().state == TaskState::Succeeded {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ended, "the result reached the store");
    let backlog = store.read(id, -1).await.unwrap().unwrap();
    let seqs: Vec<u64> = backlog.chunks.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![0, 1, 2], "chunk 1 was tried again, in its place");
    assert!(refused_once.load(Ordering::SeqCst) >= 2);

    // Stopped, the consumer takes nothing; what is published waits in the queue for the
    // next host, and nothing was left unacked.
    stop.cancel();
    consumer.await.unwrap();
    publish(&queue, id, "chunk", Some(3), "3").await;
    assert_eq!(messages_in(&queue).await, 1);
    assert_eq!(delete_queue(&queue).await, 1);
    store.delete_all().await.unwrap();
}
