//! Messages between hosts (protocol §4.5) on the real RabbitMQ: a claim reaches every host's
//! reply queue through the `taskgate.tasks` fanout, and messages sent to another host's reply
//! queue arrive in order, read back exactly as sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use taskgate_host::broker::amqp::AmqpBroker;
use taskgate_host::broker::{Broker, HostMessage, IncomingReply};
use taskgate_protocol::amqp as names;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{TestDeadLetters, URL};

type Received = Arc<Mutex<Vec<IncomingReply>>>;

/// A host's broker side, running, with every message of its reply queue collected.
async fn host(stop: &CancellationToken, dead_letters: &TestDeadLetters) -> (AmqpBroker, Received) {
    let broker = dead_letters.broker(URL, vec![]);
    let received: Received = Arc::default();
    {
        let broker = broker.clone();
        let received = received.clone();
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            broker
                .run(move |r| received.lock().unwrap().push(r), stopped)
                .await
        });
    }
    for _ in 0..100 {
        if broker.is_connected() {
            return (broker, received);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not connect within 5 s");
}

/// The messages `received` got with `correlation_id` (other hosts on this broker may claim too).
async fn wait_for(received: &Received, correlation_id: Uuid, count: usize) -> Vec<IncomingReply> {
    let id = correlation_id.to_string();
    for _ in 0..100 {
        let got: Vec<IncomingReply> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.correlation_id.as_deref() == Some(id.as_str()))
            .cloned()
            .collect();
        if got.len() >= count {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} messages for {correlation_id} did not arrive");
}

#[tokio::test]
async fn a_claim_reaches_every_host_and_hand_offs_arrive_in_order_as_sent() {
    let stop = CancellationToken::new();
    // The hosts of one cluster share a dead-letter topology.
    let dead_letters = TestDeadLetters::new();
    let (a, a_received) = host(&stop, &dead_letters).await;
    let (b, b_received) = host(&stop, &dead_letters).await;
    let b_queue = b.own_queue().unwrap();
    assert!(b_queue.starts_with(names::REPLY_QUEUE_PREFIX));

    let claim = HostMessage {
        correlation_id: Uuid::new_v4(),
        kind: names::CLAIM_TYPE.into(),
        seq: None,
        body: br#"{"claim":1}"#.to_vec(),
    };
    a.publish_claim(claim.clone()).await.unwrap();
    let expected = claim.clone().into_reply();
    assert_eq!(
        wait_for(&b_received, claim.correlation_id, 1).await,
        vec![expected.clone()]
    );
    assert_eq!(
        wait_for(&a_received, claim.correlation_id, 1).await,
        vec![expected],
        "the sender gets its own claim too (and ignores it)"
    );

    // A message for a queue that is gone is not an error for the sender: nothing waits.
    let request = Uuid::new_v4();
    let gone: Arc<str> = format!("{}{}", names::REPLY_QUEUE_PREFIX, Uuid::new_v4()).into();
    let lost = HostMessage {
        correlation_id: request,
        kind: "chunk".into(),
        seq: Some(0),
        body: b"0".to_vec(),
    };
    a.send_to_host(gone, lost).await.unwrap();

    let queue: Arc<str> = b_queue.into();
    let mut sent = vec![HostMessage {
        correlation_id: request,
        kind: names::HANDOFF_TYPE.into(),
        seq: None,
        body: br#"{"handoff":true}"#.to_vec(),
    }];
    for seq in 0..200 {
        sent.push(HostMessage {
            correlation_id: request,
            kind: "chunk".into(),
            seq: Some(seq),
            body: seq.to_string().into_bytes(),
        });
    }
    sent.push(HostMessage {
        correlation_id: request,
        kind: "result".into(),
        seq: None,
        body: b"\"done\"".to_vec(),
    });
    for message in sent.clone() {
        a.send_to_host(queue.clone(), message).await.unwrap();
    }
    let got = wait_for(&b_received, request, sent.len()).await;
    let expected: Vec<IncomingReply> = sent.into_iter().map(HostMessage::into_reply).collect();
    assert_eq!(got, expected, "in order, as sent");
    stop.cancel();
}
