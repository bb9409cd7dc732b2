//! The WebSocket transport end to end in memory: a tungstenite client on one side of a
//! duplex pipe, a connection task on the other, the gateway on the in-memory broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::*;
use crate::admission::Admission;
use crate::broker::memory::MemoryBroker;
use crate::broker::IncomingReply;
use crate::gateway::{Gateway, GatewayOptions};
use crate::routes::testing::parts;
use crate::routes::{RequestTypeSpec, RoutingTable};
use crate::sink::{ClientDropped, DropReporter};
use crate::transport::SlowClientPolicy;

type Client = WebSocketStream<DuplexStream>;

struct Harness {
    broker: Arc<MemoryBroker>,
    gateway: Arc<Gateway<MemoryBroker, Hub>>,
    hub: Arc<Hub>,
    task: JoinHandle<()>,
    client: Client,
}

async fn start(settings: WsSettings, backlog_limit: usize) -> Harness {
    let mut echo = parts("echo");
    echo.streams = true;
    let routes = RoutingTable::new([RequestTypeSpec::new(echo, None).unwrap()]);
    let broker = Arc::new(MemoryBroker::new());
    let policy = SlowClientPolicy {
        backlog_bytes: backlog_limit,
        stall: Duration::from_secs(5),
    };
    let mut hub = None;
    let gateway = Arc::new_cyclic(|gateway: &Weak<Gateway<MemoryBroker, Hub>>| {
        let dropped: Weak<dyn ClientDropped<WsConnId>> = gateway.clone();
        let made = hub.insert(Arc::new(Hub::new(policy, DropReporter::new(dropped))));
        Gateway::new(
            broker.clone(),
            made.clone(),
            routes,
            GatewayOptions::default(),
        )
    });
    let hub = hub.expect("made with the gateway");
    let endpoint = Arc::new(Endpoint {
        gateway: gateway.clone(),
        hub: hub.clone(),
        admission: Arc::new(Admission::open()),
        settings,
    });
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(async move {
        let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
        endpoint.serve(ws).await
    });
    let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    Harness {
        broker,
        gateway,
        hub,
        task,
        client,
    }
}

fn fast() -> WsSettings {
    WsSettings {
        ping_interval: Duration::from_secs(60),
        ping_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(5),
        max_message_bytes: 1 << 20,
        chunk_linger: Duration::from_millis(2),
    }
}

/// A connection with one streaming request acked, and its correlation id.
async fn streaming(chunk_linger: Duration) -> (Harness, uuid::Uuid) {
    let mut h = start(
        WsSettings {
            chunk_linger,
            ..fast()
        },
        1 << 20,
    )
    .await;
    h.connect().await;
    h.send(r#"421["request",{"id":"s","requestType":"echo"}]"#)
        .await;
    assert_eq!(h.recv().await.unwrap(), r#"431[{"ok":true}]"#);
    let correlation_id = h.broker.published()[0].correlation_id;
    (h, correlation_id)
}

impl Harness {
    async fn send(&mut self, text: &str) {
        self.client.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame, or `None` once the host closed the socket.
    async fn recv(&mut self) -> Option<String> {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), self.client.next())
                .await
                .expect("a frame within 5 s");
            match next {
                Some(Ok(Message::Text(t))) => return Some(t.to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads the open packet and connects the default namespace.
    async fn connect(&mut self) -> Value {
        let open = self.recv().await.unwrap();
        assert!(open.starts_with("0{"), "{open}");
        self.send("40").await;
        let connected = self.recv().await.unwrap();
        assert!(connected.starts_with("40{"), "{connected}");
        serde_json::from_str(&open[1..]).unwrap()
    }

    async fn closed(mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(frame) = self.recv().await {
            rest.push(frame);
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the connection task ends")
            .unwrap();
        rest
    }
}

fn reply(correlation_id: uuid::Uuid, kind: &str, body: &str) -> IncomingReply {
    IncomingReply {
        correlation_id: Some(correlation_id.to_string()),
        kind: Some(kind.to_owned()),
        seq: None,
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn a_request_is_acked_and_its_chunk_and_result_relayed_as_socket_io_frames() {
    let mut h = start(fast(), 1 << 20).await;
    let open = h.connect().await;
    assert_eq!(open["upgrades"], json!([]));
    assert_eq!(open["pingInterval"], json!(60_000));
    assert_eq!(open["maxPayload"], json!(1 << 20));
    assert_eq!(h.gateway.connections(), 1);

    h.send(r#"427["request",{"id":"r1","requestType":"echo","payload":{"n":1}}]"#)
        .await;
    assert_eq!(h.recv().await.unwrap(), r#"437[{"ok":true}]"#);
    let published = h.broker.published();
    assert_eq!(published.len(), 1);
    assert_eq!(&*published[0].body, r#"{"n":1}"#);
    let correlation_id = published[0].correlation_id;
    h.gateway
        .on_reply(reply(correlation_id, "chunk", r#"{"part":1}"#));
    h.gateway
        .on_reply(reply(correlation_id, "result", r#"{"done":true}"#));
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"r1","type":"chunk","seq":0,"data":{"part":1}}]"#
    );
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"r1","type":"result","data":{"done":true}}]"#
    );
    assert_eq!(h.gateway.in_flight(), 0);

    // A client that disconnects leaves nothing behind.
    h.send("41").await;
    let gateway = h.gateway.clone();
    let hub = h.hub.clone();
    h.closed().await;
    assert_eq!(gateway.connections(), 0);
    assert!(hub.is_empty());
}

#[tokio::test]
async fn large_results_written_past_tungstenites_buffer_arrive_whole_and_in_order() {
    let mut h = start(fast(), 8 << 20).await;
    h.connect().await;
    // Small, direct (16-bit length), small, direct (64-bit length): in one write turn.
    let sizes = [10usize, 40_000, 20, 1_000_000];
    for i in 0..sizes.len() {
        h.send(&format!(
            r#"42{i}["request",{{"id":"r{i}","requestType":"echo","payload":{{}}}}]"#
        ))
        .await;
        assert_eq!(h.recv().await.unwrap(), format!(r#"43{i}[{{"ok":true}}]"#));
    }
    let published = h.broker.published();
    assert_eq!(published.len(), sizes.len());
    for (i, size) in sizes.iter().enumerate() {
        let body = format!(r#"{{"s":"{}"}}"#, "é".repeat(size / 2));
        h.gateway
            .on_reply(reply(published[i].correlation_id, "result", &body));
    }
    for (i, size) in sizes.iter().enumerate() {
        let expected = format!(
            r#"42["response",{{"id":"r{i}","type":"result","data":{{"s":"{}"}}}}]"#,
            "é".repeat(size / 2)
        );
        assert_eq!(h.recv().await.unwrap(), expected, "response {i}");
    }
    // The connection goes on: tungstenite's frames after the direct ones are intact.
    h.send(r#"429["request",{"id":"after","requestType":"echo","payload":{}}]"#)
        .await;
    assert_eq!(h.recv().await.unwrap(), r#"439[{"ok":true}]"#);
    let correlation_id = h.broker.published()[sizes.len()].correlation_id;
    h.gateway.on_reply(reply(correlation_id, "result", "1"));
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"after","type":"result","data":1}]"#
    );
}

#[tokio::test]
async fn a_malformed_envelope_is_a_bad_request_and_unknown_events_are_ignored() {
    let mut h = start(fast(), 1 << 20).await;
    h.connect().await;
    h.send(r#"42["hello",1]"#).await;
    h.send(r#"421["request",5]"#).await;
    let ack = h.recv().await.unwrap();
    assert!(
        ack.starts_with(r#"431[{"ok":false,"error":{"code":"BAD_REQUEST""#),
        "{ack}"
    );
    h.send(r#"422["request"]"#).await;
    let ack = h.recv().await.unwrap();
    assert!(
        ack.starts_with(r#"432[{"ok":false,"error":{"code":"BAD_REQUEST""#),
        "{ack}"
    );
    assert!(h.broker.published().is_empty());
}

#[tokio::test]
async fn an_event_before_connect_closes_the_connection_and_keeps_nothing() {
    let mut h = start(fast(), 1 << 20).await;
    let _open = h.recv().await.unwrap();
    h.send(r#"421["request",{"id":"a","requestType":"echo"}]"#)
        .await;
    let broker = h.broker.clone();
    let hub = h.hub.clone();
    assert!(h.closed().await.is_empty());
    assert!(broker.published().is_empty());
    assert!(hub.is_empty());
}

#[tokio::test]
async fn broken_frames_close_the_connection() {
    for frame in [
        Message::text("42[\"request\",{]"),
        Message::text("9"),
        Message::binary(vec![1, 2, 3]),
    ] {
        let mut h = start(fast(), 1 << 20).await;
        h.connect().await;
        h.client.send(frame.clone()).await.unwrap();
        let gateway = h.gateway.clone();
        h.closed().await;
        assert_eq!(gateway.connections(), 0, "after {frame:?}");
    }
}

#[tokio::test]
async fn binary_attachments_are_dropped_and_their_event_handled_with_placeholders() {
    let mut h = start(fast(), 1 << 20).await;
    h.connect().await;
    h.send(r#"451-4["request",{"id":"b","requestType":"echo","payload":{"_placeholder":true,"num":0}}]"#)
        .await;
    h.client.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(h.recv().await.unwrap(), r#"434[{"ok":true}]"#);
    assert_eq!(
        &*h.broker.published()[0].body,
        r#"{"_placeholder":true,"num":0}"#
    );
    // A text frame where an attachment is due breaks the protocol.
    h.send(r#"451-5["request",{"id":"c","requestType":"echo"}]"#)
        .await;
    h.send("3").await;
    h.closed().await;
}

#[tokio::test]
async fn other_namespaces_are_refused_and_the_default_one_still_connects() {
    let mut h = start(fast(), 1 << 20).await;
    let _open = h.recv().await.unwrap();
    h.send("40/admin,").await;
    assert_eq!(
        h.recv().await.unwrap(),
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    h.send("40").await;
    assert!(h.recv().await.unwrap().starts_with("40{"));
}

#[tokio::test]
async fn no_connect_in_time_closes_the_socket() {
    let settings = WsSettings {
        handshake_timeout: Duration::from_millis(100),
        ..fast()
    };
    let mut h = start(settings, 1 << 20).await;
    let _open = h.recv().await.unwrap();
    assert!(h.closed().await.is_empty());
}

#[tokio::test]
async fn the_host_pings_and_closes_a_client_that_does_not_answer() {
    let settings = WsSettings {
        ping_interval: Duration::from_millis(50),
        ping_timeout: Duration::from_millis(50),
        ..fast()
    };
    let mut h = start(settings, 1 << 20).await;
    h.connect().await;
    // Answered pings keep the connection alive.
    for _ in 0..3 {
        assert_eq!(h.recv().await.unwrap(), "2");
        h.send("3").await;
    }
    assert_eq!(h.recv().await.unwrap(), "2");
    let gateway = h.gateway.clone();
    assert!(h.closed().await.is_empty(), "no pong: closed");
    assert_eq!(gateway.connections(), 0);
}

#[tokio::test]
async fn a_client_over_its_backlog_is_told_to_go_and_its_requests_are_forgotten() {
    // Room for one chunk only: a second one queued before the task writes is over.
    let mut h = start(fast(), 64).await;
    h.connect().await;
    h.send(r#"421["request",{"id":"a","requestType":"echo"}]"#)
        .await;
    assert_eq!(h.recv().await.unwrap(), r#"431[{"ok":true}]"#);
    let correlation_id = h.broker.published()[0].correlation_id;
    for _ in 0..3 {
        h.gateway.on_reply(reply(
            correlation_id,
            "chunk",
            r#""a chunk of some length""#,
        ));
    }
    let gateway = h.gateway.clone();
    let frames = h.closed().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames[0].starts_with(r#"42["response""#), "{frames:?}");
    assert_eq!(frames[1], "41");
    assert_eq!(gateway.in_flight(), 0);
    assert_eq!(gateway.connections(), 0);
}

#[tokio::test]
async fn shutdown_closes_every_connection_without_a_disconnect_so_clients_reconnect() {
    let mut h = start(fast(), 1 << 20).await;
    h.connect().await;
    h.hub.close_all();
    let hub = h.hub.clone();
    // No Socket.IO DISCONNECT: a client told it was disconnected does not reconnect.
    assert_eq!(h.closed().await, Vec::<String>::new());
    assert!(hub.is_empty());
}

#[tokio::test]
async fn a_pong_that_waited_while_the_host_was_writing_still_counts() {
    let settings = WsSettings {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(100),
        ..fast()
    };
    for _ in 0..5 {
        let mut h = start(settings.clone(), 1 << 24).await;
        h.connect().await;
        h.send(r#"421["request",{"id":"big","requestType":"echo"}]"#)
            .await;
        assert_eq!(h.recv().await.unwrap(), r#"431[{"ok":true}]"#);
        assert_eq!(h.recv().await.unwrap(), "2");
        // A result far larger than the pipe: the host's task is stuck writing it until the
        // client reads again, long after the pong deadline.
        let correlation_id = h.broker.published()[0].correlation_id;
        let big = format!("\"{}\"", "x".repeat(1 << 20));
        h.gateway.on_reply(reply(correlation_id, "result", &big));
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.send("3").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let result = h.recv().await.unwrap();
        assert!(result.starts_with(r#"42["response",{"id":"big","type":"result""#));
        // Still connected: the next pings come and are answered.
        for _ in 0..2 {
            assert_eq!(h.recv().await.as_deref(), Some("2"));
            h.send("3").await;
        }
        assert_eq!(h.gateway.connections(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn chunks_wait_for_the_linger_and_then_leave_together() {
    let linger = Duration::from_millis(50);
    let (mut h, correlation_id) = streaming(linger).await;
    let first = tokio::time::Instant::now();
    h.gateway.on_reply(reply(correlation_id, "chunk", "1"));
    h.gateway.on_reply(reply(correlation_id, "chunk", "2"));
    assert!(
        tokio::time::timeout(Duration::from_millis(10), h.client.next())
            .await
            .is_err(),
        "a chunk left before the linger was over"
    );
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"s","type":"chunk","seq":0,"data":1}]"#
    );
    assert!(first.elapsed() >= linger, "{:?}", first.elapsed());
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"s","type":"chunk","seq":1,"data":2}]"#
    );
    // The next chunk waits again.
    h.gateway.on_reply(reply(correlation_id, "chunk", "3"));
    let third = tokio::time::Instant::now();
    assert!(h.recv().await.unwrap().contains(r#""seq":2"#));
    assert!(third.elapsed() >= linger, "{:?}", third.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_result_takes_the_waiting_chunks_with_it_at_once() {
    // A linger far longer than the client waits: only the result can release the chunk.
    let (mut h, correlation_id) = streaming(Duration::from_secs(30)).await;
    let start = tokio::time::Instant::now();
    h.gateway.on_reply(reply(correlation_id, "chunk", "1"));
    h.gateway.on_reply(reply(correlation_id, "result", "2"));
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"s","type":"chunk","seq":0,"data":1}]"#
    );
    assert_eq!(
        h.recv().await.unwrap(),
        r#"42["response",{"id":"s","type":"result","data":2}]"#
    );
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn acks_and_errors_never_wait_behind_a_lingering_chunk() {
    let (mut h, correlation_id) = streaming(Duration::from_secs(30)).await;
    let start = tokio::time::Instant::now();
    h.gateway.on_reply(reply(correlation_id, "chunk", "1"));
    // A second request's ack releases the chunk queued before it, in order.
    h.send(r#"422["request",{"id":"t","requestType":"echo"}]"#)
        .await;
    assert!(h.recv().await.unwrap().contains(r#""seq":0"#));
    assert_eq!(h.recv().await.unwrap(), r#"432[{"ok":true}]"#);
    h.gateway.on_reply(reply(
        correlation_id,
        "error",
        r#"{"code":"WORKER_ERROR","message":"no"}"#,
    ));
    assert!(h.recv().await.unwrap().contains(r#""type":"error""#));
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn chunks_worth_a_full_write_do_not_wait() {
    let (mut h, correlation_id) = streaming(Duration::from_secs(30)).await;
    let start = tokio::time::Instant::now();
    let big = format!("\"{}\"", "x".repeat(super::hub::LINGER_MAX_BYTES));
    h.gateway.on_reply(reply(correlation_id, "chunk", &big));
    assert!(h.recv().await.unwrap().contains(r#""seq":0"#));
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn without_a_linger_every_chunk_leaves_at_once() {
    let (mut h, correlation_id) = streaming(Duration::ZERO).await;
    let start = tokio::time::Instant::now();
    h.gateway.on_reply(reply(correlation_id, "chunk", "1"));
    assert!(h.recv().await.unwrap().contains(r#""seq":0"#));
    assert_eq!(start.elapsed(), Duration::ZERO);
}
