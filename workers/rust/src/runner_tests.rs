//! The request lifecycle through an in-memory transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use serde_json::json;

use super::*;

/// Records every reply, and the ack, into one ordered log.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<String>>,
    replies: Mutex<Vec<Reply>>,
    fail_publish: Mutex<bool>,
}

impl Log {
    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }
    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
    fn replies(&self) -> Vec<Reply> {
        self.replies.lock().unwrap().clone()
    }
}

struct MemoryTransport(Arc<Log>);

impl Transport for MemoryTransport {
    fn publish(&self, reply: Reply) -> BoxFuture<'_, Result<PendingConfirm, String>> {
        Box::pin(async move {
            if *self.0.fail_publish.lock().unwrap() {
                return Err("connection lost".to_owned());
            }
            self.0.push(format!("publish {}", reply.kind.as_str()));
            self.0.replies.lock().unwrap().push(reply);
            let log = self.0.clone();
            Ok(Box::pin(async move {
                log.push("confirm".to_owned());
                Ok(())
            }) as PendingConfirm)
        })
    }
}

fn delivery(body: &str) -> Delivery {
    Delivery {
        correlation_id: Some("c-1".into()),
        reply_to: Some("taskgate.reply.h".into()),
        request_type: Some("t".into()),
        deadline_ms: Some(now_ms() + 60_000),
        streams: true,
        redelivered: false,
        body: body.as_bytes().to_vec(),
    }
}

async fn run(delivery: Delivery, handler: impl Handler) -> (Outcome, Arc<Log>) {
    run_with(delivery, handler, &Cancellations::default()).await
}

async fn run_with(
    delivery: Delivery,
    handler: impl Handler,
    cancellations: &Cancellations,
) -> (Outcome, Arc<Log>) {
    let log = Arc::new(Log::default());
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport(log.clone()));
    let ack_log = log.clone();
    let outcome = process(
        delivery,
        Arc::new(handler),
        transport,
        cancellations,
        || async move {
            ack_log.push("ack".to_owned());
            Ok(())
        },
    )
    .await;
    (outcome, log)
}

fn body(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap()
}

#[tokio::test]
async fn a_result_is_replied_then_acked() {
    let (outcome, log) = run(
        delivery(r#"{"x":1}"#),
        |p: Value, _ctx: Context| async move { Ok(json!({ "got": p })) },
    )
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    assert_eq!(log.events(), vec!["publish result", "confirm", "ack"]);
    let reply = &log.replies()[0];
    assert_eq!(reply.reply_to, "taskgate.reply.h");
    assert_eq!(reply.correlation_id, "c-1");
    assert_eq!(body(reply), json!({"got": {"x": 1}}));
}

#[tokio::test]
async fn chunks_carry_seq_in_order_and_are_confirmed_before_the_ack() {
    let (outcome, log) = run(delivery("3"), |p: Value, ctx: Context| async move {
        for i in 0..p.as_u64().unwrap() {
            ctx.chunk(json!({ "i": i })).await?;
        }
        Ok(json!("done"))
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    let replies = log.replies();
    let seqs: Vec<Option<u64>> = replies.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![Some(0), Some(1), Some(2), None]);
    assert_eq!(body(&replies[1]), json!({"i": 1}));
    let events = log.events();
    assert_eq!(events.last().unwrap(), "ack");
    assert_eq!(events.iter().filter(|e| *e == "confirm").count(), 4);
}

#[tokio::test]
async fn task_errors_become_error_replies_with_their_code() {
    let (_, log) = run(delivery("1"), |_: Value, _: Context| async move {
        Err(TaskError::with_code("NOT_FOUND", "no such thing").details(json!({"id": 7})))
    })
    .await;
    assert_eq!(log.replies()[0].kind, ReplyKind::Error);
    assert_eq!(
        body(&log.replies()[0]),
        json!({"code": "NOT_FOUND", "message": "no such thing", "details": {"id": 7}})
    );
    let (_, log) = run(delivery("1"), |_: Value, _: Context| async move {
        Err(TaskError::new("boom"))
    })
    .await;
    assert_eq!(body(&log.replies()[0])["code"], json!("WORKER_ERROR"));
}

#[tokio::test]
async fn a_panicking_handler_is_a_worker_error_without_its_message() {
    let (outcome, log) = run(delivery("1"), |_: Value, _: Context| async move {
        if true {
            panic!("secret internals");
        }
        Ok(json!(1))
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    let error = body(&log.replies()[0]);
    assert_eq!(error["code"], json!("WORKER_ERROR"));
    assert!(!error["message"].as_str().unwrap().contains("secret"));
    assert_eq!(log.events().last().unwrap(), "ack");
}

#[tokio::test]
async fn invalid_json_is_an_error_reply_and_acked() {
    let (outcome, log) = run(delivery("{not json"), |_: Value, _: Context| async move {
        panic!("must not run")
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(body(&log.replies()[0])["code"], json!("INVALID_PAYLOAD"));
}

#[tokio::test]
async fn an_expired_request_is_acked_without_running() {
    let mut expired = delivery("1");
    expired.deadline_ms = Some(now_ms() - 1);
    let (outcome, log) = run(expired, |_: Value, _: Context| async move {
        panic!("must not run")
    })
    .await;
    assert_eq!(outcome, Outcome::Expired);
    assert_eq!(log.events(), vec!["ack"]);
}

#[tokio::test]
async fn a_request_without_reply_to_is_acked_and_dropped() {
    let mut orphan = delivery("1");
    orphan.reply_to = None;
    let (outcome, log) = run(orphan, |_: Value, _: Context| async move {
        panic!("must not run")
    })
    .await;
    assert_eq!(outcome, Outcome::Unanswerable);
    assert_eq!(log.events(), vec!["ack"]);
}

#[tokio::test]
async fn cancellation_stops_the_handler_and_replies_cancelled() {
    let cancellations = Arc::new(Cancellations::default());
    let c = cancellations.clone();
    let canceller = tokio::spawn(async move {
        while c.running() == 0 {
            tokio::task::yield_now().await;
        }
        c.cancel("c-1");
    });
    let (outcome, log) = run_with(
        delivery("1"),
        |_: Value, ctx: Context| async move {
            ctx.chunk(json!(0)).await?;
            std::future::pending::<()>().await;
            Ok(json!("never"))
        },
        &cancellations,
    )
    .await;
    canceller.await.unwrap();
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    let last = log.replies().pop().unwrap();
    assert_eq!(body(&last)["code"], json!("CANCELLED"));
    assert_eq!(cancellations.running(), 0);
}

#[tokio::test]
async fn a_cancellation_that_arrives_first_stops_the_request_before_it_runs() {
    let cancellations = Cancellations::default();
    cancellations.cancel("c-1");
    let (_, log) = run_with(
        delivery("1"),
        |_: Value, _: Context| async move { panic!("must not run") },
        &cancellations,
    )
    .await;
    assert_eq!(body(&log.replies()[0])["code"], json!("CANCELLED"));
}

#[tokio::test]
async fn chunks_after_cancellation_fail_with_cancelled() {
    let cancellations = Cancellations::default();
    let (_, log) = run_with(
        delivery("1"),
        |_: Value, ctx: Context| async move {
            assert!(!ctx.is_cancelled());
            assert_eq!(ctx.request_type(), "t");
            assert!(ctx.streams());
            assert!(ctx.remaining().unwrap() > std::time::Duration::from_secs(50));
            Ok(json!(ctx.redelivered()))
        },
        &cancellations,
    )
    .await;
    assert_eq!(body(&log.replies()[0]), json!(false));
}

#[tokio::test]
async fn a_final_reply_that_cannot_be_published_leaves_the_request_unacked() {
    let log = Arc::new(Log::default());
    *log.fail_publish.lock().unwrap() = true;
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport(log.clone()));
    let ack_log = log.clone();
    let handler: Arc<dyn Handler> = Arc::new(|_: Value, _: Context| async move { Ok(json!(1)) });
    let outcome = process(
        delivery("1"),
        handler,
        transport,
        &Cancellations::default(),
        || async move {
            ack_log.push("ack".to_owned());
            Ok(())
        },
    )
    .await;
    assert!(matches!(outcome, Outcome::NotAcked(_)));
    assert!(log.events().is_empty());
}
