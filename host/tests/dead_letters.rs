//! Dead letters on the real RabbitMQ (protocol §3.11), at the broker layer: a request its
//! worker gives back once too often is dead-lettered into its own topology, its client is
//! told, and nothing of it leaks into another topology — the isolation the other tests rely
//! on when they each name their own (`support::TestDeadLetters`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions};
use serde_json::{json, Value};
use taskgate_host::broker::amqp::{dead_letters, AmqpBroker, QueueDecl};
use taskgate_host::broker::{Broker, IncomingReply};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{delete_queue, request, stop_broker, TestDeadLetters, URL};

type Received = Arc<Mutex<Vec<IncomingReply>>>;

fn run(broker: &AmqpBroker, stop: &CancellationToken) -> (Received, tokio::task::JoinHandle<()>) {
    let received: Received = Arc::default();
    let task = {
        let broker = broker.clone();
        let received = received.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            broker
                .run(move |r| received.lock().unwrap().push(r), stopped)
                .await
        })
    };
    (received, task)
}

async fn wait_connected(broker: &AmqpBroker) {
    for _ in 0..200 {
        if broker.is_connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not connect within 10 s");
}

#[tokio::test]
async fn a_dead_letter_stays_in_its_own_topology_and_its_client_is_told() {
    let ours = TestDeadLetters::new();
    let theirs = TestDeadLetters::new();
    let queue = format!("taskgate-test.poison.{}", Uuid::new_v4());
    // What the host declares for a request type with `delivery_limit = 1`.
    let arguments = json!({
        "x-queue-type": "quorum",
        "x-delivery-limit": 0,
        "x-dead-letter-exchange": ours.names.exchange,
    });
    let decl = QueueDecl {
        name: queue.clone(),
        arguments: arguments.as_object().unwrap().clone(),
        delivery_limit: Some(1),
    };
    let stop = CancellationToken::new();
    let host = ours.broker(URL, vec![decl]);
    let (replies, host_task) = run(&host, &stop);
    // Another host (another test, another cluster) with a topology of its own.
    let other = theirs.broker(URL, vec![]);
    let (other_replies, other_task) = run(&other, &stop);
    wait_connected(&host).await;
    wait_connected(&other).await;

    let sent = request(&queue);
    host.publish(sent.clone()).await.unwrap();
    // A worker that gives the request back, as one that dies with it would.
    let connection = lapin::Connection::connect(URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "taskgate-test-doomed".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // The client's host gets the final error, as from a worker.
    let id = sent.correlation_id.to_string();
    let mut error = None;
    for _ in 0..200 {
        error = replies
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.correlation_id.as_deref() == Some(id.as_str()))
            .cloned();
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error = error.expect("the client's host is told within 10 s");
    assert_eq!(error.kind.as_deref(), Some("error"));
    let body: Value = serde_json::from_slice(&error.body).unwrap();
    assert_eq!(body["code"], "WORKER_ERROR");
    assert_eq!(
        body["details"],
        json!({"reason": "deliveryLimit", "deliveries": 1, "deadLetterQueue": ours.names.queue, "deadLetterId": id})
    );
    assert!(other_replies.lock().unwrap().is_empty());

    // Only our topology holds it: the other's purge cannot take it.
    assert!(dead_letters::list(URL, &theirs.names)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(dead_letters::purge(URL, &theirs.names).await.unwrap(), 0);
    let listed = dead_letters::list(URL, &ours.names).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].queue.as_deref(), Some(queue.as_str()));
    assert_eq!(dead_letters::purge(URL, &ours.names).await.unwrap(), 1);

    stop_broker(stop.clone(), host_task).await;
    stop_broker(stop, other_task).await;
    delete_queue(&queue).await;
}
