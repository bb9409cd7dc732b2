//! Property tests of the two parsers of Socket.IO framing the host exposes to clients
//! (issue 20, "Also"): the host's own engine.io/Socket.IO packet parser of the WebSocket
//! transport (`websocket::packet`), and the long-polling transport's body splitter, which
//! is socketioxide's and is driven here through the host's socketioxide layer in-process.
//! Neither may panic on any input; what the host encodes parses back to what it encoded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use taskgate_host::websocket::packet::{self, EventName, Incoming, DEFAULT_NAMESPACE};
use tower::ServiceExt;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Frames that look like the protocol (type digits, namespaces, ack ids, JSON) as well as
/// garbage, so both the deep and the shallow paths are exercised.
fn frame() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just(String::new()),
        "[0-9]{1,3}",
        "4[0-9]",
        "4[56][0-9]{0,3}-?",
    ];
    let namespace = prop_oneof![Just(String::new()), "/[a-z/]{0,8},?"];
    let ack = prop_oneof![Just(String::new()), "[0-9]{1,25}"];
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        (".{0,12}", json_value()).prop_map(|(n, v)| json!([n, v]).to_string()),
        ".{0,60}",
        prop::collection::vec(any::<u8>(), 0..60)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    prop_oneof![
        (prefix, namespace, ack, body).prop_map(|(p, n, a, b)| format!("{p}{n}{a}{b}")),
        ".{0,80}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_frame_makes_the_packet_parser_panic(frame in frame()) {
        if let Ok(Incoming::Event { data, .. } | Incoming::BinaryEvent { data, .. }) = packet::parse(&frame) {
            let _ = packet::parse_event(data);
        }
    }

    #[test]
    fn an_event_the_host_encodes_parses_back_to_its_name_and_argument(
        name in prop_oneof![Just("request".to_owned()), Just("cancel".to_owned()), ".{0,20}"],
        data in json_value(),
    ) {
        let frame = packet::event(&name, &data, 0).unwrap();
        let Ok(Incoming::Event { namespace, ack, data: array }) = packet::parse(&frame) else {
            return Err(TestCaseError::fail(format!("not an event: {frame}")));
        };
        prop_assert_eq!(namespace, DEFAULT_NAMESPACE);
        prop_assert_eq!(ack, None);
        let event = packet::parse_event(array).unwrap();
        let expected = match name.as_str() {
            "request" => EventName::Request,
            "cancel" => EventName::Cancel,
            "attach" => EventName::Attach,
            "tasks" => EventName::Tasks,
            _ => EventName::Other,
        };
        prop_assert_eq!(event.name, expected);
        // Byte for byte: the argument is relayed as the text it was sent as.
        prop_assert_eq!(event.arg.unwrap().get(), data.to_string());
    }

    #[test]
    fn connect_and_acked_events_keep_their_namespace_ack_id_and_data(
        ns in prop_oneof![Just(String::new()), "/[a-z]{1,8}"],
        id in any::<u64>(),
        data in json_value(),
    ) {
        let auth = data.to_string();
        let sep = if ns.is_empty() { "" } else { "," };
        let frame = format!("40{ns}{sep}{auth}");
        let expected_ns = if ns.is_empty() { DEFAULT_NAMESPACE } else { ns.as_str() };
        prop_assert_eq!(
            packet::parse(&frame),
            Ok(Incoming::Connect { namespace: expected_ns, auth: Some(auth.as_str()) })
        );
        let array = json!(["request", data]).to_string();
        let frame = format!("42{ns}{sep}{id}{array}");
        prop_assert_eq!(
            packet::parse(&frame),
            Ok(Incoming::Event { namespace: expected_ns, ack: Some(id), data: array.as_str() })
        );
    }
}

// ---- the long-polling body splitter (socketioxide, through the host's layer) -------------

/// A polling body: engine.io packets separated by the record separator (0x1e), made of
/// protocol-like packets and garbage.
fn polling_body() -> impl Strategy<Value = Vec<u8>> {
    let packet = prop_oneof![
        frame().prop_map(String::into_bytes),
        Just(b"4".to_vec()),
        Just(b"40".to_vec()),
        Just(b"b".to_vec()),
        "b[A-Za-z0-9+/=]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(packet, 0..12).prop_map(|packets| packets.join(&0x1e_u8))
}

fn layer() -> axum::Router {
    let (layer, io) = socketioxide::SocketIo::builder()
        .max_payload(64 * 1024)
        .build_layer();
    io.ns("/", |_: socketioxide::extract::SocketRef| async {});
    axum::Router::new().layer(layer)
}

async fn open_session(router: &axum::Router) -> String {
    let response = router
        .clone()
        .oneshot(
            Request::get("/socket.io/?EIO=4&transport=polling")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let open: Value = serde_json::from_slice(&body[1..]).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_polling_body_makes_the_transport_panic(bodies in prop::collection::vec(polling_body(), 1..4)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let router = layer();
            let sid = open_session(&router).await;
            for body in bodies {
                let response = router
                    .clone()
                    .oneshot(
                        Request::post(format!("/socket.io/?EIO=4&transport=polling&sid={sid}"))
                            .header("content-type", "text/plain;charset=UTF-8")
                            .body(Body::from(body))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                // An answer, whatever it says: a bad body closes that session, nothing more.
                prop_assert!(response.status() == StatusCode::OK || response.status().is_client_error(), "{}", response.status());
            }
            // The layer still serves new sessions.
            let _ = open_session(&router).await;
            Ok(())
        })?;
    }
}
