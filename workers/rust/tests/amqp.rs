//! The SDK against the real RabbitMQ (127.0.0.1:5672): the test publishes requests exactly
//! as the host does (protocol §2.2) and checks the replies (§2.3), the ack, cancellation
//! through the fanout exchange (§2.4), redelivery, queue handling and shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{json, Value};
use support::*;
use taskgate_worker::{Context, TaskError, WorkerError};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_and_result_carry_the_protocols_properties_then_the_request_is_acked() {
    let mut host = Host::connect().await;
    let queue = unique("props");
    host.declare_queue(&queue, &[]).await;
    let worker = RunningWorker::start(builder().handle(
        &queue,
        |p: Value, ctx: Context| async move {
            for i in 0..3 {
                ctx.chunk(json!({ "i": i })).await?;
            }
            Ok(json!({
                "payload": p,
                "type": ctx.request_type(),
                "streams": ctx.streams(),
                "redelivered": ctx.redelivered(),
                "deadline": ctx.deadline_ms().is_some(),
                "correlationId": ctx.correlation_id(),
            }))
        },
    ));
    host.wait_for_consumer(&queue).await;

    let id = host.request(&queue, "test.props", br#"{"n":1}"#).await;
    let mut others = Vec::new();
    let replies = host.replies_of(&id, &mut others).await;
    assert!(others.is_empty());
    assert_eq!(replies.len(), 4);
    for (i, chunk) in replies[..3].iter().enumerate() {
        assert_eq!(kind(chunk), "chunk");
        assert_eq!(seq(chunk), Some(i as i64));
        assert_eq!(json(chunk), json!({ "i": i }));
    }
    let result = &replies[3];
    assert_eq!(kind(result), "result");
    assert_eq!(seq(result), None);
    assert_eq!(
        json(result),
        json!({"payload": {"n": 1}, "type": "test.props", "streams": true, "redelivered": false,
               "deadline": true, "correlationId": id})
    );
    for reply in &replies {
        assert_eq!(correlation(reply), id);
        assert_eq!(
            reply.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        // Through the default exchange, routed by the request's reply_to.
        assert_eq!(reply.exchange.as_str(), "");
        assert_eq!(reply.routing_key.as_str(), host.reply_queue);
    }

    worker.stop().await.unwrap();
    // Acked: after the worker's connection closed, nothing came back to the queue.
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_bad_payloads_and_panics_are_answered_and_acked_and_the_worker_goes_on() {
    let mut host = Host::connect().await;
    let queue = unique("errors");
    host.declare_queue(&queue, &[]).await;
    let worker =
        RunningWorker::start(builder().handle(&queue, |p: Value, _: Context| async move {
            match p["do"].as_str() {
                Some("fail") => {
                    Err(TaskError::with_code("E_OWN", "own failure").with_details(json!({"k": 1})))
                }
                Some("fail-default") => Err(TaskError::new("plain failure")),
                Some("panic") => panic!("secret detail"),
                _ => Ok(p),
            }
        }));
    host.wait_for_consumer(&queue).await;

    let cases: Vec<(&[u8], Value)> = vec![
        (
            br#"{"do":"fail"}"#,
            json!({"code": "E_OWN", "message": "own failure", "details": {"k": 1}}),
        ),
        (
            br#"{"do":"fail-default"}"#,
            json!({"code": "WORKER_ERROR", "message": "plain failure"}),
        ),
        (
            br#"{"do":"panic"}"#,
            json!({"code": "WORKER_ERROR", "message": "the worker failed while handling the request"}),
        ),
    ];
    for (body, expected) in cases {
        let id = host.request(&queue, "t", body).await;
        let reply = host.final_reply(&id).await;
        assert_eq!(kind(&reply), "error");
        assert_eq!(json(&reply), expected);
    }
    let id = host.request(&queue, "t", b"{not json").await;
    let reply = host.final_reply(&id).await;
    assert_eq!(kind(&reply), "error");
    assert_eq!(json(&reply)["code"], json!("INVALID_PAYLOAD"));
    // Still serving after all that.
    let id = host.request(&queue, "t", br#"{"do":"echo"}"#).await;
    assert_eq!(json(&host.final_reply(&id).await), json!({"do": "echo"}));

    worker.stop().await.unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_and_requests_without_reply_to_are_acked_without_running() {
    let mut host = Host::connect().await;
    let queue = unique("expired");
    host.declare_queue(&queue, &[]).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let worker = RunningWorker::start(builder().prefetch(1).handle(
        &queue,
        move |p: Value, _: Context| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok(p) }
        },
    ));
    host.wait_for_consumer(&queue).await;

    // Deadline passed (but not expired in RabbitMQ: no `expiration`).
    let expired =
        request("expired-1", &host.reply_queue, "t", -1000).with_expiration("60000".into());
    host.publish(&queue, expired, b"1").await;
    let mut no_reply_to = request("orphan-1", &host.reply_queue, "t", 30_000);
    no_reply_to = no_reply_to_of(no_reply_to);
    host.publish(&queue, no_reply_to, b"2").await;
    // With prefetch 1 the requests are handled one after the other: once this one is
    // answered, the two before it were dealt with.
    let id = host.request(&queue, "t", b"3").await;
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply), json!(3));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    host.assert_no_reply(Duration::from_millis(200)).await;

    worker.stop().await.unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

/// The request properties without `reply_to`.
fn no_reply_to_of(p: lapin::BasicProperties) -> lapin::BasicProperties {
    let mut stripped = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_correlation_id(p.correlation_id().clone().unwrap());
    if let Some(headers) = p.headers().clone() {
        stripped = stripped.with_headers(headers);
    }
    stripped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_on_the_fanout_exchange_reaches_the_handler_which_answers_cancelled() {
    let mut host = Host::connect().await;
    let queue = unique("cancel");
    host.declare_queue(&queue, &[]).await;
    let (events, mut seen) = mpsc::unbounded_channel::<&'static str>();
    let worker = RunningWorker::start(builder().handle(&queue, move |_: Value, ctx: Context| {
        let events = events.clone();
        async move {
            ctx.chunk("started").await?;
            events.send("started").unwrap();
            ctx.cancelled().await;
            events.send("cancelled").unwrap();
            // A chunk now fails, so `?` ends the handler with CANCELLED.
            ctx.chunk("too late").await?;
            Ok("not reached")
        }
    }));
    host.wait_for_consumer(&queue).await;

    let id = host.request(&queue, "t", b"{}").await;
    let chunk = host.next_reply().await;
    assert_eq!(
        (kind(&chunk), json(&chunk)),
        ("chunk".to_owned(), json!("started"))
    );
    assert_eq!(seen.recv().await, Some("started"));
    let started = Instant::now();
    host.cancel(&id).await;
    let reply = host.final_reply(&id).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cancelled at once, not after the grace"
    );
    assert_eq!(seen.recv().await, Some("cancelled"));
    assert_eq!(kind(&reply), "error");
    assert_eq!(json(&reply)["code"], json!("CANCELLED"));

    worker.stop().await.unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redelivered_flag_reaches_the_handler() {
    let mut host = Host::connect().await;
    let queue = unique("redelivered");
    host.declare_queue(&queue, &[]).await;
    let id = host.request(&queue, "t", b"{}").await;
    // Another "worker" takes the request and gives it back without answering.
    let taken = host
        .channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the request is in the queue");
    assert!(!taken.delivery.redelivered);
    taken
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    let worker = RunningWorker::start(
        builder().handle(&queue, |_: Value, ctx: Context| async move {
            Ok(json!({ "redelivered": ctx.redelivered() }))
        }),
    );
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply), json!({"redelivered": true}));

    worker.stop().await.unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_requests_run_at_once() {
    let mut host = Host::connect().await;
    let queue = unique("prefetch");
    host.declare_queue(&queue, &[]).await;
    const PREFETCH: usize = 4;
    // Each handler waits until all PREFETCH of them run: only concurrency ends it.
    let barrier = Arc::new(tokio::sync::Barrier::new(PREFETCH));
    let worker = RunningWorker::start(builder().prefetch(PREFETCH as u16).handle(
        &queue,
        move |n: u64, _: Context| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok(n)
            }
        },
    ));
    host.wait_for_consumer(&queue).await;
    let mut ids = Vec::new();
    for n in 0..PREFETCH {
        ids.push(host.request(&queue, "t", n.to_string().as_bytes()).await);
    }
    let mut answered = Vec::new();
    for _ in 0..PREFETCH {
        let reply = host.next_reply().await;
        assert_eq!(kind(&reply), "result");
        answered.push(correlation(&reply));
    }
    answered.sort();
    ids.sort();
    assert_eq!(answered, ids);

    worker.stop().await.unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_consuming_and_lets_requests_in_progress_finish() {
    let mut host = Host::connect().await;
    let queue = unique("shutdown");
    host.declare_queue(&queue, &[]).await;
    let (events, mut seen) = mpsc::unbounded_channel::<()>();
    let worker = RunningWorker::start(builder().handle(&queue, move |_: Value, _: Context| {
        let events = events.clone();
        async move {
            events.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok("finished")
        }
    }));
    host.wait_for_consumer(&queue).await;
    let id = host.request(&queue, "t", b"{}").await;
    seen.recv().await.unwrap();
    let stopping = tokio::spawn(worker.stop());
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply), json!("finished"));
    stopping.await.unwrap().unwrap();
    // Nothing consumes any more: a new request stays in the queue.
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.request(&queue, "t", b"{}").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(host.queue_state(&queue).await, Some((1, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_queue_is_used_as_it_is_and_a_missing_one_is_declared() {
    let mut host = Host::connect().await;
    // The host made it a quorum queue; the worker has no arguments, or other ones.
    let quorum = unique("quorum");
    host.declare_queue(
        &quorum,
        &[("x-queue-type", AMQPValue::LongString("quorum".into()))],
    )
    .await;
    let missing = unique("missing");
    let worker = RunningWorker::start(
        builder()
            .handle(&quorum, |p: Value, _: Context| async move { Ok(p) })
            .handle_with_arguments(
                &missing,
                json!({"x-expires": QUEUE_EXPIRES_MS, "x-max-length": 100}),
                |p: Value, _: Context| async move { Ok(p) },
            ),
    );
    host.wait_for_consumer(&quorum).await;
    host.wait_for_consumer(&missing).await;
    for queue in [&quorum, &missing] {
        let id = host.request(queue, "t", b"7").await;
        assert_eq!(json(&host.final_reply(&id).await), json!(7));
    }
    worker.stop().await.unwrap();

    // Declared by the worker with its arguments: a declaration with other ones is refused.
    let probe = host.connection.create_channel().await.unwrap();
    let other = probe
        .queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        other.is_err(),
        "the worker declared {missing} with its arguments"
    );

    // Other arguments than the existing queue's: a warning, and it serves anyway.
    let worker = RunningWorker::start(builder().handle_with_arguments(
        &quorum,
        json!({"x-queue-type": "classic"}),
        |p: Value, _: Context| async move { Ok(p) },
    ));
    host.wait_for_consumer(&quorum).await;
    let id = host.request(&quorum, "t", b"8").await;
    assert_eq!(json(&host.final_reply(&id).await), json!(8));
    worker.stop().await.unwrap();

    host.delete_queue(&quorum).await;
    host.delete_queue(&missing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_the_host_waits_for_the_hosts_queue() {
    let mut host = Host::connect().await;
    let queue = unique("late");
    let worker =
        RunningWorker::start(builder().handle(&queue, |p: Value, _: Context| async move { Ok(p) }));
    // The host comes up a while later and declares the queue with its arguments: had the
    // worker declared it meanwhile (classic, without them), this declaration would fail.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        host.queue_state(&queue).await,
        None,
        "the worker declared the queue"
    );
    host.declare_queue(
        &queue,
        &[("x-queue-type", AMQPValue::LongString("quorum".into()))],
    )
    .await;
    host.wait_for_consumer(&queue).await;
    let id = host.request(&queue, "t", b"9").await;
    assert_eq!(json(&host.final_reply(&id).await), json!(9));
    worker.stop().await.unwrap();
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_the_worker_may_not_use_stops_it_with_a_clear_error() {
    let host = Host::connect().await;
    let queue = unique("locked");
    // Exclusive to the test's connection.
    host.channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let worker =
        RunningWorker::start(builder().handle(&queue, |p: Value, _: Context| async move { Ok(p) }));
    let error = tokio::time::timeout(WAIT, worker.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, WorkerError::Queue { queue: q, .. } if *q == queue),
        "{error}"
    );
    assert!(
        error.to_string().contains("RESOURCE_LOCKED")
            || error.to_string().contains("RESOURCE-LOCKED"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_stop_the_worker_and_an_unreachable_broker_is_retried() {
    support::init_logs();
    let handler = |p: Value, _: Context| async move { Ok(p) };
    let started = Instant::now();
    let error = tokio::time::timeout(
        WAIT,
        taskgate_worker::Worker::builder()
            .amqp_url("amqp://guest:wrong-password@127.0.0.1:5672/%2f")
            .handle("q", handler)
            .build()
            .run(std::future::pending::<()>()),
    )
    .await
    .expect("refused at once, not retried")
    .unwrap_err();
    assert!(matches!(error, WorkerError::Refused(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let error = taskgate_worker::Worker::builder()
        .amqp_url("amqp://guest:guest@127.0.0.1:5672/no-such-vhost")
        .handle("q", handler)
        .build()
        .run(std::future::pending::<()>())
        .await
        .unwrap_err();
    assert!(matches!(error, WorkerError::Refused(_)), "{error}");

    // Nothing listens on port 1: it keeps trying until told to stop.
    let outcome = tokio::time::timeout(
        WAIT,
        taskgate_worker::Worker::builder()
            .amqp_url("amqp://guest:guest@127.0.0.1:1/%2f")
            .handle("q", handler)
            .build()
            .run(tokio::time::sleep(Duration::from_millis(700))),
    )
    .await
    .expect("stops when told to");
    assert!(outcome.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_outage_the_worker_reconnects_and_the_interrupted_request_is_redelivered() {
    let mut host = Host::connect().await;
    let queue = unique("outage");
    host.declare_queue(&queue, &[]).await;
    let mut proxy = Proxy::start().await;
    let (events, mut seen) = mpsc::unbounded_channel::<bool>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = taskgate_worker::Worker::builder()
        .amqp_url(proxy.url())
        .handle(&queue, move |_: Value, ctx: Context| {
            let events = events.clone();
            async move {
                events.send(ctx.redelivered()).unwrap();
                if !ctx.redelivered() {
                    // The first attempt never finishes: the outage interrupts it.
                    std::future::pending::<()>().await;
                }
                Ok(json!({ "redelivered": ctx.redelivered() }))
            }
        })
        .build();
    let running = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    host.wait_for_consumer(&queue).await;

    let id = host.request(&queue, "t", b"{}").await;
    assert_eq!(seen.recv().await, Some(false));
    proxy.kill().await;
    // Down for a while: the worker retries (and is refused) meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restart().await;
    assert_eq!(
        tokio::time::timeout(WAIT, seen.recv()).await.unwrap(),
        Some(true)
    );
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply), json!({"redelivered": true}));

    // And it serves new requests on the new connection.
    let id = host.request(&queue, "t", b"{}").await;
    assert_eq!(seen.recv().await, Some(false));
    host.cancel(&id).await;
    assert_eq!(
        json(&host.final_reply(&id).await)["code"],
        json!("CANCELLED")
    );

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(host.queue_state(&queue).await, Some((0, 0)));
    host.delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_queue_is_declared_again_and_served() {
    let mut host = Host::connect().await;
    let queue = unique("deleted");
    let other = unique("other");
    host.declare_queue(&queue, &[]).await;
    host.declare_queue(&other, &[]).await;
    // Two queues: the loss of one consumer must be noticed while the other goes on.
    let worker = RunningWorker::start(
        builder()
            .handle(&queue, |p: Value, _: Context| async move { Ok(p) })
            .handle(&other, |p: Value, _: Context| async move { Ok(p) }),
    );
    host.wait_for_consumer(&queue).await;
    host.delete_queue(&queue).await;
    // The broker cancels the consumer; the worker starts a new session, which declares
    // the queue again.
    host.wait_for_consumer(&queue).await;
    let id = host.request(&queue, "t", b"5").await;
    assert_eq!(json(&host.final_reply(&id).await), json!(5));
    let id = host.request(&other, "t", b"6").await;
    assert_eq!(json(&host.final_reply(&id).await), json!(6));
    worker.stop().await.unwrap();
    host.delete_queue(&queue).await;
    host.delete_queue(&other).await;
}
