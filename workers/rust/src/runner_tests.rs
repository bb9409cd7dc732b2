//! The request lifecycle through an in-memory transport: what is published, in which
//! order, and when the request is acked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::*;
use crate::handler::{erase, Handler};
use crate::testing::{MemoryLog, MemoryTransport};
use crate::transport::Reply;

const GRACE: Duration = Duration::from_millis(200);

fn delivery(body: &str) -> Delivery {
    Delivery {
        correlation_id: Some("c-1".into()),
        reply_to: Some("taskgate.reply.h".into()),
        request_type: Some("t".into()),
        deadline_ms: Some(now_ms() + 60_000),
        streams: true,
        redelivered: false,
        identity: None,
        traceparent: None,
        body: body.as_bytes().to_vec(),
        attempt: 1,
        retry: None,
    }
}

fn runner(log: &Arc<MemoryLog>, cancellations: Arc<Cancellations>) -> Runner {
    Runner {
        transport: Arc::new(MemoryTransport(log.clone())),
        cancellations,
        cancel_grace: GRACE,
    }
}

async fn run<P, H>(delivery: Delivery, handler: H) -> (Outcome, Arc<MemoryLog>)
where
    P: DeserializeOwned + Send + 'static,
    H: Handler<P>,
{
    run_with(delivery, handler, Arc::new(Cancellations::default())).await
}

async fn run_with<P, H>(
    delivery: Delivery,
    handler: H,
    cancellations: Arc<Cancellations>,
) -> (Outcome, Arc<MemoryLog>)
where
    P: DeserializeOwned + Send + 'static,
    H: Handler<P>,
{
    let log = Arc::new(MemoryLog::default());
    let ack_log = log.clone();
    let outcome = runner(&log, cancellations)
        .process(delivery, &erase(handler), |settlement| async move {
            ack_log.push(settled(settlement));
            Ok(())
        })
        .await;
    (outcome, log)
}

fn settled(settlement: Settlement) -> String {
    match settlement {
        Settlement::Ack => "ack".to_owned(),
        Settlement::Requeue => "requeue".to_owned(),
        Settlement::Retry { attempt, delay_ms } => format!("retry {attempt} in {delay_ms} ms"),
    }
}

fn body(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap()
}

fn last_body(log: &MemoryLog) -> Value {
    body(log.replies().last().unwrap())
}

/// Cancels `c-1` as soon as it runs.
fn cancel_when_running(cancellations: &Arc<Cancellations>) -> tokio::task::JoinHandle<()> {
    let c = cancellations.clone();
    tokio::spawn(async move {
        while c.running() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.cancel("c-1");
    })
}

#[tokio::test]
async fn a_result_is_published_to_reply_to_then_confirmed_then_acked() {
    let (outcome, log) = run(
        delivery(r#"{"x":1}"#),
        |p: Value, _ctx: Context| async move { Ok(json!({ "got": p })) },
    )
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    assert_eq!(log.events(), ["publish result", "confirm result", "ack"]);
    let reply = &log.replies()[0];
    assert_eq!(reply.reply_to, "taskgate.reply.h");
    assert_eq!(reply.correlation_id, "c-1");
    assert_eq!(reply.seq, None);
    assert_eq!(body(reply), json!({"got": {"x": 1}}));
}

#[tokio::test]
async fn chunks_carry_seq_in_order_and_everything_is_confirmed_before_the_ack() {
    let (outcome, log) = run(delivery("3"), |n: u64, ctx: Context| async move {
        for i in 0..n {
            ctx.chunk(json!({ "i": i })).await?;
        }
        Ok("done")
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    assert_eq!(
        log.events(),
        [
            "publish chunk 0",
            "publish chunk 1",
            "publish chunk 2",
            "publish result",
            "confirm chunk 0",
            "confirm chunk 1",
            "confirm chunk 2",
            "confirm result",
            "ack"
        ]
    );
    let replies = log.replies();
    assert_eq!(body(&replies[1]), json!({"i": 1}));
    assert_eq!(body(&replies[3]), json!("done"));
}

#[tokio::test]
async fn chunks_from_several_tasks_get_seq_in_publish_order() {
    let (_, log) = run(delivery("null"), |_: Value, ctx: Context| async move {
        let senders: Vec<_> = (0..8)
            .map(|t| {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        ctx.chunk(json!([t, i])).await.unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.await.unwrap();
        }
        Ok(Value::Null)
    })
    .await;
    let seqs: Vec<u64> = log.replies().iter().filter_map(|r| r.seq).collect();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    // Each task's chunks keep their own order too.
    let mut next: HashMap<u64, u64> = HashMap::new();
    for reply in log.replies().iter().filter(|r| r.seq.is_some()) {
        let [t, i] = serde_json::from_slice::<[u64; 2]>(&reply.body).unwrap();
        assert_eq!(*next.entry(t).or_default(), i);
        next.insert(t, i + 1);
    }
}

#[tokio::test]
async fn nothing_is_published_after_the_final_reply() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let (_, log) = run(delivery("null"), move |_: Value, ctx: Context| {
        let tx = tx.lock().unwrap().take().unwrap();
        async move {
            // A chunk sent from a task that outlives the handler.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = tx.send(ctx.chunk(1).await);
            });
            Ok(Value::Null)
        }
    })
    .await;
    let late = rx.await.unwrap().unwrap_err();
    assert_eq!(late.code, "WORKER_ERROR");
    assert!(late.message.contains("already answered"));
    assert_eq!(log.events(), ["publish result", "confirm result", "ack"]);
}

#[tokio::test]
async fn task_errors_become_error_replies_with_their_code_message_and_details() {
    let (outcome, log) = run(delivery("1"), |_: Value, _: Context| async move {
        Err::<Value, _>(
            TaskError::with_code("NOT_FOUND", "no such thing").with_details(json!({"id": 7})),
        )
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(log.events(), ["publish error", "confirm error", "ack"]);
    assert_eq!(
        last_body(&log),
        json!({"code": "NOT_FOUND", "message": "no such thing", "details": {"id": 7}})
    );
}

#[tokio::test]
async fn the_default_error_code_is_worker_error() {
    let (_, log) = run(delivery("1"), |_: Value, _: Context| async move {
        Err::<Value, _>(TaskError::new("boom"))
    })
    .await;
    assert_eq!(
        last_body(&log),
        json!({"code": "WORKER_ERROR", "message": "boom"})
    );
}

#[tokio::test]
async fn a_panicking_handler_is_a_worker_error_without_its_message_and_the_runner_goes_on() {
    let log = Arc::new(MemoryLog::default());
    let runner = runner(&log, Arc::new(Cancellations::default()));
    let handler = erase(|n: u64, _: Context| async move {
        if n == 1 {
            panic!("secret internals");
        }
        Ok(n)
    });
    let outcome = runner
        .process(delivery("1"), &handler, |_| async { Ok(()) })
        .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    let error = last_body(&log);
    assert_eq!(error["code"], json!("WORKER_ERROR"));
    assert!(!error["message"].as_str().unwrap().contains("secret"));
    let outcome = runner
        .process(delivery("2"), &handler, |_| async { Ok(()) })
        .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    assert_eq!(last_body(&log), json!(2));
}

#[tokio::test]
async fn invalid_json_is_an_invalid_payload_error_and_acked_without_running() {
    let (outcome, log) = run(delivery("{not json"), |_: Value, _: Context| async move {
        panic!("must not run");
        #[allow(unreachable_code)]
        Ok(Value::Null)
    })
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(last_body(&log)["code"], json!("INVALID_PAYLOAD"));
    assert_eq!(log.events().last().unwrap(), "ack");
}

#[tokio::test]
async fn a_payload_that_does_not_fit_the_handlers_type_is_invalid_payload_with_a_pointer() {
    #[derive(serde::Deserialize)]
    struct Countdown {
        from: u32,
    }
    let (_, log) = run(
        delivery(r#"{"from":"ten"}"#),
        |p: Countdown, _: Context| async move { Ok(p.from) },
    )
    .await;
    let error = last_body(&log);
    assert_eq!(error["code"], json!("INVALID_PAYLOAD"));
    assert_eq!(error["details"]["problems"][0]["pointer"], json!("/from"));
}

#[tokio::test]
async fn a_result_that_does_not_serialise_is_a_worker_error() {
    let (_, log) = run(delivery("1"), |_: Value, _: Context| async move {
        // JSON object keys must be strings.
        Ok(HashMap::from([((1, 2), 3)]))
    })
    .await;
    let error = last_body(&log);
    assert_eq!(error["code"], json!("WORKER_ERROR"));
    assert!(error["message"].as_str().unwrap().contains("serialised"));
}

#[tokio::test]
async fn an_expired_request_is_acked_without_running() {
    let mut expired = delivery("1");
    expired.deadline_ms = Some(now_ms() - 1);
    let (outcome, log) = run(expired, |_: Value, _: Context| async move {
        panic!("must not run");
        #[allow(unreachable_code)]
        Ok(Value::Null)
    })
    .await;
    assert_eq!(outcome, Outcome::Expired);
    assert_eq!(log.events(), ["ack"]);
}

#[tokio::test]
async fn a_request_without_reply_to_or_correlation_id_is_acked_and_dropped() {
    let mut no_reply_to = delivery("1");
    no_reply_to.reply_to = None;
    let mut no_correlation_id = delivery("1");
    no_correlation_id.correlation_id = None;
    for orphan in [no_reply_to, no_correlation_id] {
        let (outcome, log) = run(orphan, |_: Value, _: Context| async move {
            panic!("must not run");
            #[allow(unreachable_code)]
            Ok(Value::Null)
        })
        .await;
        assert_eq!(outcome, Outcome::Unanswerable);
        assert_eq!(log.events(), ["ack"]);
    }
}

#[tokio::test]
async fn a_handler_that_ignores_cancellation_is_dropped_after_the_grace_and_cancelled_is_replied() {
    let cancellations = Arc::new(Cancellations::default());
    let canceller = cancel_when_running(&cancellations);
    let started = Instant::now();
    let (outcome, log) = run_with(
        delivery("1"),
        |_: Value, ctx: Context| async move {
            ctx.chunk(0).await?;
            std::future::pending::<()>().await;
            Ok(Value::Null)
        },
        cancellations.clone(),
    )
    .await;
    canceller.await.unwrap();
    assert!(started.elapsed() >= GRACE);
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(last_body(&log)["code"], json!("CANCELLED"));
    assert_eq!(log.events().last().unwrap(), "ack");
    assert_eq!(cancellations.running(), 0);
}

#[tokio::test]
async fn a_cooperative_handler_may_clean_up_after_cancellation_and_cancelled_is_replied() {
    let cancellations = Arc::new(Cancellations::default());
    let canceller = cancel_when_running(&cancellations);
    let cleaned = Arc::new(AtomicBoolFlag::default());
    let flag = cleaned.clone();
    let started = Instant::now();
    let (_, log) = run_with(
        delivery("1"),
        move |_: Value, ctx: Context| {
            let flag = flag.clone();
            async move {
                ctx.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await; // async clean-up
                flag.set();
                Err::<Value, _>(TaskError::new("stopped"))
            }
        },
        cancellations,
    )
    .await;
    canceller.await.unwrap();
    assert!(cleaned.get());
    assert!(started.elapsed() < GRACE);
    assert_eq!(last_body(&log)["code"], json!("CANCELLED"));
}

#[derive(Default)]
struct AtomicBoolFlag(std::sync::atomic::AtomicBool);
impl AtomicBoolFlag {
    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn chunks_after_cancellation_fail_with_cancelled() {
    let cancellations = Arc::new(Cancellations::default());
    let canceller = cancel_when_running(&cancellations);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let (_, log) = run_with(
        delivery("1"),
        move |_: Value, ctx: Context| {
            let tx = tx.lock().unwrap().take().unwrap();
            async move {
                ctx.cancelled().await;
                let _ = tx.send(ctx.chunk(1).await);
                Ok(Value::Null)
            }
        },
        cancellations,
    )
    .await;
    canceller.await.unwrap();
    assert_eq!(rx.await.unwrap(), Err(TaskError::cancelled()));
    // It chose to return a result anyway: that is its answer.
    assert_eq!(log.events(), ["publish result", "confirm result", "ack"]);
}

#[tokio::test]
async fn until_cancelled_stops_waiting_at_the_cancellation() {
    let cancellations = Arc::new(Cancellations::default());
    let canceller = cancel_when_running(&cancellations);
    let (_, log) = run_with(
        delivery("1"),
        |_: Value, ctx: Context| async move {
            ctx.until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                .await?;
            Ok("slept")
        },
        cancellations,
    )
    .await;
    canceller.await.unwrap();
    assert_eq!(last_body(&log)["code"], json!("CANCELLED"));
}

#[tokio::test]
async fn a_cancellation_that_arrives_first_stops_the_request_before_it_runs() {
    let cancellations = Arc::new(Cancellations::default());
    cancellations.cancel("c-1");
    let (_, log) = run_with(
        delivery("1"),
        |_: Value, _: Context| async move {
            panic!("must not run");
            #[allow(unreachable_code)]
            Ok(Value::Null)
        },
        cancellations,
    )
    .await;
    assert_eq!(log.events(), ["publish error", "confirm error", "ack"]);
    assert_eq!(last_body(&log)["code"], json!("CANCELLED"));
}

#[tokio::test]
async fn the_handler_sees_the_requests_metadata() {
    let mut d = delivery("1");
    d.redelivered = true;
    let (_, log) = run(d, |_: Value, ctx: Context| async move {
        assert!(!ctx.is_cancelled());
        assert!(ctx.remaining().unwrap() > Duration::from_secs(50));
        Ok(json!({
            "type": ctx.request_type(),
            "id": ctx.correlation_id(),
            "streams": ctx.streams(),
            "redelivered": ctx.redelivered(),
        }))
    })
    .await;
    assert_eq!(
        last_body(&log),
        json!({"type": "t", "id": "c-1", "streams": true, "redelivered": true})
    );
}

#[tokio::test]
async fn a_final_reply_that_cannot_be_published_sends_the_request_back_to_the_queue() {
    let log = Arc::new(MemoryLog::default());
    log.fail_publish.store(true, Ordering::SeqCst);
    let ack_log = log.clone();
    let outcome = runner(&log, Arc::new(Cancellations::default()))
        .process(
            delivery("1"),
            &erase(|_: Value, _: Context| async move { Ok(1) }),
            |settlement| async move {
                ack_log.push(settled(settlement));
                Ok(())
            },
        )
        .await;
    assert!(matches!(outcome, Outcome::NotAcked(_)));
    assert_eq!(log.events(), ["requeue"]);
}

#[tokio::test]
async fn a_negative_confirm_sends_the_request_back_to_the_queue() {
    let log = Arc::new(MemoryLog::default());
    log.nack.store(true, Ordering::SeqCst);
    let ack_log = log.clone();
    let outcome = runner(&log, Arc::new(Cancellations::default()))
        .process(
            delivery("1"),
            &erase(|_: Value, ctx: Context| async move {
                ctx.chunk(0).await?;
                Ok(1)
            }),
            |settlement| async move {
                ack_log.push(settled(settlement));
                Ok(())
            },
        )
        .await;
    assert!(matches!(outcome, Outcome::NotAcked(_)));
    assert_eq!(
        log.events(),
        ["publish chunk 0", "publish result", "requeue"]
    );
}

#[tokio::test]
async fn a_lost_chunk_sends_the_request_back_to_the_queue_even_if_the_final_reply_goes_out() {
    let log = Arc::new(MemoryLog::default());
    let switch = log.clone();
    let ack_log = log.clone();
    let outcome = runner(&log, Arc::new(Cancellations::default()))
        .process(
            delivery("1"),
            &erase(move |_: Value, ctx: Context| {
                let switch = switch.clone();
                async move {
                    switch.fail_publish.store(true, Ordering::SeqCst);
                    let lost = ctx.chunk(0).await;
                    switch.fail_publish.store(false, Ordering::SeqCst);
                    assert_eq!(lost.unwrap_err().code, "WORKER_ERROR");
                    Ok(1) // ignores the failure
                }
            }),
            |settlement| async move {
                ack_log.push(settled(settlement));
                Ok(())
            },
        )
        .await;
    assert!(matches!(outcome, Outcome::NotAcked(_)));
    assert_eq!(log.events(), ["requeue"]);
}

#[tokio::test]
async fn a_failed_ack_is_reported() {
    let log = Arc::new(MemoryLog::default());
    let outcome = runner(&log, Arc::new(Cancellations::default()))
        .process(
            delivery("1"),
            &erase(|_: Value, _: Context| async move { Ok(1) }),
            |_| async { Err(TransportError("channel closed".into())) },
        )
        .await;
    assert_eq!(
        outcome,
        Outcome::NotAcked(TransportError("channel closed".into()))
    );
}

#[test]
fn early_cancellations_are_bounded() {
    let cancellations = Cancellations::default();
    for i in 0..(EARLY_CANCEL_MAX + 10) {
        cancellations.cancel(&format!("other-{i}"));
    }
    assert!(cancellations.early.len() <= EARLY_CANCEL_MAX);
}

/// A log line written by the handler (and the SDK's own lines) names the request and its
/// trace: the host logs the same `traceparent`, so one request can be followed across.
#[tokio::test]
async fn log_lines_of_a_request_carry_its_correlation_id_and_traceparent() {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // Thread-local: the test's runtime is single-threaded, so the handler logs here too.
    let _default = tracing::subscriber::set_default(subscriber);
    // Other tests run the SDK's log lines in parallel threads without a subscriber; a
    // callsite first seen there may have cached "never enabled" while this subscriber was
    // being registered (the test failed now and then). Recompute those caches now.
    tracing::callsite::rebuild_interest_cache();
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // The SDK's own callsites are shared with the tests running on other threads, which
    // may register one while the caches above are rebuilt (the race seen in CI): a run
    // whose SDK line is missing is run again after another rebuild. What is asserted below
    // holds for every line that is written.
    let mut text = String::new();
    for _attempt in 0..3 {
        buffer.0.lock().unwrap().clear();
        let traced = Delivery {
            traceparent: Some(TRACEPARENT.into()),
            ..delivery("1")
        };
        let (outcome, _) = run(traced, |_: Value, ctx: Context| async move {
            assert_eq!(ctx.traceparent(), Some(TRACEPARENT));
            tracing::info!("handler says hello");
            Ok(json!(1))
        })
        .await;
        assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
        text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        if text.contains("final reply") {
            break;
        }
        tracing::callsite::rebuild_interest_cache();
    }
    let line = text
        .lines()
        .find(|l| l.contains("handler says hello"))
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    assert!(line.contains("correlation_id=c-1"), "{line}");
    assert!(
        line.contains(&format!("traceparent={TRACEPARENT}")),
        "{line}"
    );
    assert!(line.contains("request_type=t"), "{line}");
    let sdk_line = text.lines().find(|l| l.contains("final reply")).unwrap();
    assert!(sdk_line.contains(TRACEPARENT), "{sdk_line}");
}

// Retries (protocol §3.12): the broker does the waiting (a wait queue's TTL), so no clock is
// involved; the runner only decides, and settles with `Retry` instead of replying.

fn retrying(attempt: u32, policy: &str) -> Delivery {
    Delivery {
        attempt,
        retry: crate::retry::RetryPolicy::parse(policy),
        ..delivery("null")
    }
}

const EXPONENTIAL: &str = r#"{"attempts":3,"backoff":"exponential","delayMs":100}"#;

async fn flaky(_: Value, ctx: Context) -> Result<Value, TaskError> {
    if ctx.attempt() < 3 {
        return Err(
            TaskError::with_code("UPSTREAM", format!("attempt {} failed", ctx.attempt()))
                .retryable(),
        );
    }
    Ok(json!({ "attempt": ctx.attempt() }))
}

#[tokio::test]
async fn a_retryable_failure_schedules_the_next_attempt_without_a_reply_and_the_third_succeeds() {
    let (outcome, log) = run(retrying(1, EXPONENTIAL), flaky).await;
    assert_eq!(
        outcome,
        Outcome::Retried {
            attempt: 2,
            delay_ms: 100
        }
    );
    assert_eq!(log.events(), ["retry 2 in 100 ms"]);
    let (outcome, log) = run(retrying(2, EXPONENTIAL), flaky).await;
    assert_eq!(
        outcome,
        Outcome::Retried {
            attempt: 3,
            delay_ms: 200
        }
    );
    assert_eq!(log.events(), ["retry 3 in 200 ms"]);
    let (outcome, log) = run(retrying(3, EXPONENTIAL), flaky).await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Result));
    assert_eq!(last_body(&log), json!({"attempt": 3}));
}

#[tokio::test]
async fn the_last_attempt_and_a_failure_without_a_policy_are_replied() {
    let (outcome, log) = run(retrying(2, r#"{"attempts":2,"delayMs":5}"#), flaky).await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(last_body(&log)["code"], "UPSTREAM");
    let (outcome, _) = run(delivery("null"), flaky).await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
}

#[tokio::test]
async fn no_attempt_starts_after_the_deadline() {
    let late = Delivery {
        deadline_ms: Some(now_ms() + 50),
        ..retrying(1, r#"{"attempts":5,"delayMs":1000}"#)
    };
    let (outcome, log) = run(late, flaky).await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert_eq!(last_body(&log)["code"], "UPSTREAM");
}

#[tokio::test]
async fn a_failure_after_a_chunk_is_final() {
    let (outcome, log) = run(
        retrying(1, EXPONENTIAL),
        |_: Value, ctx: Context| async move {
            ctx.chunk(json!({"step": 1})).await?;
            Err::<Value, _>(TaskError::with_code("UPSTREAM", "503").retryable())
        },
    )
    .await;
    assert_eq!(outcome, Outcome::Replied(ReplyKind::Error));
    assert!(
        !log.events().iter().any(|e| e.starts_with("retry")),
        "{:?}",
        log.events()
    );
}
