//! A flood of replies against the real RabbitMQ: a host that hands replies on more slowly
//! than the broker sends them holds at most its reply window; the rest of the backlog waits
//! on the broker, not in the host's memory, and every reply is still handed on exactly
//! once, in the order sent.
//!
//! This is what the acks on the reply channel buy, and what reading replies without acks
//! would give up (docs/performance.md, "Replies without acks: measured, not taken").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};
use taskgate_host::broker::amqp::{AmqpBroker, REPLY_PREFETCH};
use taskgate_host::broker::Broker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod support;

use support::{publish_reply, URL};

/// Four windows' worth: the broker has to hold most of them.
const FLOOD: usize = 4 * REPLY_PREFETCH as usize;

/// The host's work on one reply, as CPU: a busy host's thread is busy, not asleep.
fn busy(for_how_long: Duration) {
    let start = Instant::now();
    while start.elapsed() < for_how_long {
        std::hint::spin_loop();
    }
}

#[tokio::test]
async fn a_reply_flood_waits_on_the_broker_and_every_reply_arrives_once_in_order() {
    let broker = AmqpBroker::new(URL, Uuid::new_v4(), vec![]);
    let seen: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop = CancellationToken::new();
    // The session on a thread of its own, as the host runs on one core: while it works on a
    // reply, amqprs reads nothing either.
    let host = {
        let (broker, seen, stop) = (broker.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(broker.run(
                move |reply| {
                    busy(Duration::from_millis(2));
                    seen.lock().unwrap().push(reply.seq.unwrap_or(-1));
                },
                stop.cancelled_owned(),
            ));
        })
    };
    for _ in 0..100 {
        if broker.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queue = broker.reply_queue().expect("the broker session started");

    let connection = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let id = Uuid::new_v4().to_string();
    let body = vec![b'7'; 512];
    for seq in 0..FLOOD {
        publish_reply(&channel, &queue, &id, "chunk", Some(seq as i64), &body).await;
    }

    // The most replies the broker held at once while the host worked through them (a
    // passive declare on the host's own connection: the queue is exclusive to it).
    let mut most_waiting = 0;
    for _ in 0..1500 {
        if seen.lock().unwrap().len() >= FLOOD {
            break;
        }
        if let Ok((ready, _)) = broker.look(&queue).await {
            most_waiting = most_waiting.max(ready as usize);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sessions = broker.status().sessions;
    stop.cancel();
    tokio::task::spawn_blocking(move || host.join().unwrap())
        .await
        .unwrap();
    let _ = connection.close(0, "done".into()).await;

    let seen = seen.lock().unwrap().clone();
    let expected: Vec<i64> = (0..FLOOD as i64).collect();
    assert_eq!(seen.len(), FLOOD, "every reply handed on exactly once");
    assert_eq!(seen, expected, "in the order the broker received them");
    assert_eq!(sessions, 1, "a flood does not end the session");
    // Without acks the broker would hold none (it hands every reply over at once); with the
    // window it holds all but the window and what the host got through while the flood was
    // being sent (about 1 in 2 ms): a quarter leaves room for a slow, busy CI machine.
    assert!(
        most_waiting >= FLOOD / 4,
        "the backlog waited on the broker: at most {most_waiting} of {FLOOD} did at once"
    );
}
