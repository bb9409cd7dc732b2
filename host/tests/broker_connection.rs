//! The broker connection against the real RabbitMQ on 127.0.0.1:5672: connects, retries,
//! and reports an unreachable or refusing broker clearly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use taskgate_host::broker::amqp::{connect, AmqpBroker, ConnectError, QueueDecl};
use taskgate_host::broker::{Broker, PublishError};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{delete_queue, request, stop_broker, TestDeadLetters, URL};

async fn wait_connected(broker: &AmqpBroker) {
    for _ in 0..100 {
        if broker.is_connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not connect within 5 s");
}

#[tokio::test]
async fn connects_to_the_broker() {
    let connection = connect(URL).await.unwrap();
    assert!(connection.is_open());
}

#[tokio::test]
async fn an_unreachable_broker_is_reported_clearly() {
    let Err(err) = connect("amqp://guest:guest@127.0.0.1:1/%2f").await else {
        panic!("connected to port 1");
    };
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("cannot reach the broker at amqp://guest:***@127.0.0.1:1"),
        "{text}"
    );
    assert!(
        !text.contains("guest@"),
        "password must not be logged: {text}"
    );
}

#[tokio::test]
async fn a_refusing_broker_is_reported_clearly() {
    let Err(err) = connect("amqp://guest:wrong-password@127.0.0.1:5672/%2f").await else {
        panic!("connected with a wrong password");
    };
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Refused { .. }), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");
}

#[tokio::test]
async fn while_the_broker_is_unreachable_publishes_fail_at_once_and_it_keeps_retrying() {
    let broker = AmqpBroker::new("amqp://guest:guest@127.0.0.1:1/%2f", Uuid::new_v4(), vec![]);
    let stop = CancellationToken::new();
    let task = {
        let broker = broker.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move { broker.run(|_| {}, stopped).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!broker.is_connected());
    let started = std::time::Instant::now();
    let err = broker.publish(request("nowhere")).await.unwrap_err();
    assert_eq!(err, PublishError::NotConnected);
    assert!(started.elapsed() < Duration::from_millis(100));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn publishes_are_confirmed_and_unroutable_ones_refused() {
    let queue = format!("taskgate-test.{}", Uuid::new_v4());
    let dead_letters = TestDeadLetters::new();
    let broker = dead_letters.broker(
        URL,
        vec![QueueDecl {
            name: queue.clone(),
            arguments: Default::default(),
            delivery_limit: None,
        }],
    );
    let stop = CancellationToken::new();
    let replies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let broker = broker.clone();
        let replies = replies.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            broker
                .run(move |r| replies.lock().unwrap().push(r), stopped)
                .await
        })
    };
    wait_connected(&broker).await;
    broker.publish(request(&queue)).await.unwrap();
    let err = broker
        .publish(request(&format!(
            "taskgate-test.missing.{}",
            Uuid::new_v4()
        )))
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Unroutable(_)), "{err:?}");
    broker.publish_cancel(Uuid::new_v4()).await.unwrap();

    let deleted = delete_queue(&queue).await;
    assert_eq!(deleted, 1, "the published request was in the queue");
    stop_broker(stop, task).await;
    assert!(!broker.is_connected());
}

#[tokio::test]
async fn a_queue_that_exists_with_other_arguments_does_not_take_the_session_down() {
    // The queue exists as a quorum queue; the host is configured to declare it classic.
    let conflicting = format!("taskgate-test.conflict.{}", Uuid::new_v4());
    let fine = format!("taskgate-test.{}", Uuid::new_v4());
    let connection = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut quorum = lapin::types::FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            conflicting.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum,
        )
        .await
        .unwrap();

    let decl = |name: &str| QueueDecl {
        name: name.to_owned(),
        arguments: Default::default(),
        delivery_limit: None,
    };
    let dead_letters = TestDeadLetters::new();
    let broker = dead_letters.broker(URL, vec![decl(&conflicting), decl(&fine)]);
    let stop = CancellationToken::new();
    let task = {
        let broker = broker.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move { broker.run(|_| {}, stopped).await })
    };
    wait_connected(&broker).await;
    // Declared again at run time (hot reload does this), still on its own channel.
    broker
        .declare_queues(vec![decl(&conflicting), decl(&fine)])
        .await;
    // Both queues take messages, and the session is the first one: nothing reconnected.
    broker.publish(request(&fine)).await.unwrap();
    broker.publish(request(&conflicting)).await.unwrap();
    assert_eq!(broker.status().sessions, 1);
    assert!(broker.is_connected());

    for queue in [&conflicting, &fine] {
        let deleted = delete_queue(queue).await;
        assert_eq!(deleted, 1, "{queue} holds its request");
    }
    stop_broker(stop, task).await;
}
