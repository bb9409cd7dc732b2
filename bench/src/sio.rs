//! A minimal Socket.IO v5 (engine.io v4) client over WebSocket, just enough for the
//! benchmark: connect to the default namespace, emit `request` events with an ack id, and
//! recognise acks, `response` events and engine.io pings.
//!
//! Why not a full client crate: the benchmark must measure the host, not the client, so the
//! client does the least work possible per packet (one `format!` to encode, one small serde
//! parse to decode) and runs many connections on a couple of cores.

use std::net::{IpAddr, SocketAddr};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use taskgate_protocol::ReplyKind;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// A Socket.IO connection after the namespace handshake.
pub type SioStream = WebSocketStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty packet")]
    Empty,
    #[error("unknown engine.io packet type `{0}`")]
    EngineType(char),
    #[error("unknown socket.io packet type `{0}`")]
    SocketType(char),
    #[error("ack packet without an ack id")]
    MissingAckId,
    #[error("malformed packet body: {0}")]
    Body(#[from] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp connect to {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("connection closed during the Socket.IO handshake")]
    Closed,
    #[error("namespace connect refused: {0}")]
    Refused(String),
    #[error("unexpected packet during the handshake: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One decoded incoming text frame.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// engine.io `0{...}`: the transport is open.
    Open,
    /// engine.io `2`: the server pings; answer [`PONG`].
    Ping,
    /// engine.io `3` or `6` (noop): nothing to do.
    Ignored,
    /// socket.io `40{...}`: the namespace is connected.
    Connected,
    /// socket.io `44{...}`: the namespace connect was refused; the message.
    ConnectError(String),
    /// socket.io `43<ackId>[{"ok":bool,...}]`.
    Ack { ack_id: u64, ok: bool },
    /// socket.io `42["response",{"id","type",...}]`.
    Response { id: String, kind: ReplyKind },
    /// Any other event, by name.
    OtherEvent(String),
}

/// The engine.io pong frame, sent in answer to a ping.
pub const PONG: &str = "3";
/// Connect to the default namespace (no auth payload).
pub const CONNECT_DEFAULT_NAMESPACE: &str = "40";
/// Connect to the default namespace asking for a session (protocol §4.1), as the browser
/// client does by default; the host then emits a `session` event, which the benchmark ignores.
pub const CONNECT_WITH_SESSION: &str = r#"40{"session":true}"#;

#[derive(Deserialize)]
struct AckBody {
    ok: bool,
}

#[derive(Deserialize)]
struct ResponseBody {
    id: String,
    #[serde(rename = "type")]
    kind: ReplyKind,
}

#[derive(Deserialize)]
struct ConnectErrorBody {
    #[serde(default)]
    message: String,
}

/// Encodes `42<ackId>["request",{"id":..,"requestType":..,"payload":<payload_json>}]`.
///
/// `payload_json` must already be valid JSON (it is inserted verbatim, so the benchmark
/// serialises its payload once, not per request); `id` and `request_type` are escaped.
pub fn encode_request(ack_id: u64, id: &str, request_type: &str, payload_json: &str) -> String {
    let id = serde_json::Value::from(id);
    let request_type = serde_json::Value::from(request_type);
    format!(
        "42{ack_id}[\"{event}\",{{\"id\":{id},\"requestType\":{request_type},\"payload\":{payload_json}}}]",
        event = taskgate_protocol::events::REQUEST,
    )
}

/// Decodes one engine.io text frame (default namespace only).
pub fn decode(frame: &str) -> Result<Incoming, DecodeError> {
    let mut chars = frame.chars();
    let engine = chars.next().ok_or(DecodeError::Empty)?;
    match engine {
        '0' => return Ok(Incoming::Open),
        '2' => return Ok(Incoming::Ping),
        '3' | '6' => return Ok(Incoming::Ignored),
        '4' => {}
        other => return Err(DecodeError::EngineType(other)),
    }
    let socket = chars.next().ok_or(DecodeError::Empty)?;
    let rest = &frame[1 + socket.len_utf8()..];
    match socket {
        '0' => Ok(Incoming::Connected),
        '4' => {
            let body: ConnectErrorBody = serde_json::from_str(rest)?;
            Ok(Incoming::ConnectError(body.message))
        }
        '3' => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let ack_id = rest[..digits]
                .parse()
                .map_err(|_| DecodeError::MissingAckId)?;
            let (body,): (AckBody,) = serde_json::from_str(&rest[digits..])?;
            Ok(Incoming::Ack {
                ack_id,
                ok: body.ok,
            })
        }
        '2' => {
            // An event from the server carries no ack id in this protocol, but skip one if present.
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let body = &rest[digits..];
            if body.starts_with("[\"response\",") {
                let (_, response): (serde::de::IgnoredAny, ResponseBody) =
                    serde_json::from_str(body)?;
                Ok(Incoming::Response {
                    id: response.id,
                    kind: response.kind,
                })
            } else {
                let (name, _): (String, serde::de::IgnoredAny) = serde_json::from_str(body)?;
                Ok(Incoming::OtherEvent(name))
            }
        }
        other => Err(DecodeError::SocketType(other)),
    }
}

/// Opens a WebSocket to `ws://addr/socket.io/?EIO=4&transport=websocket` (TCP_NODELAY set)
/// and connects to the default namespace, with `session` asking for a session.
pub async fn connect(addr: SocketAddr, session: bool) -> Result<SioStream, ConnectError> {
    connect_from(addr, None, session, None).await
}

/// Buffers for a client that holds a connection and reads little more than pings: the
/// defaults (128 KiB each) would cost a client process 25 GiB of address space per 100,000
/// connections.
pub fn idle_client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// [`connect`] from the local address `source` (any port; bound before connecting, so that
/// connections spread over several source addresses and their ephemeral ports), with the
/// WebSocket `config` (tungstenite's defaults without).
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    session: bool,
    config: Option<WebSocketConfig>,
) -> Result<SioStream, ConnectError> {
    let tcp_error = |source| ConnectError::Tcp { addr, source };
    let tcp = match source {
        None => TcpStream::connect(addr).await.map_err(tcp_error)?,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(tcp_error)?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| ConnectError::Tcp {
                    addr,
                    source: std::io::Error::new(e.kind(), format!("binding to {ip}: {e}")),
                })?;
            socket.connect(addr).await.map_err(tcp_error)?
        }
    };
    tcp.set_nodelay(true).map_err(tcp_error)?;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _response) = tokio_tungstenite::client_async_with_config(url, tcp, config).await?;
    match next_text(&mut ws).await? {
        Incoming::Open => {}
        other => return Err(ConnectError::Unexpected(format!("{other:?}"))),
    }
    let connect = if session {
        CONNECT_WITH_SESSION
    } else {
        CONNECT_DEFAULT_NAMESPACE
    };
    ws.send(Message::text(connect)).await?;
    loop {
        match next_text(&mut ws).await? {
            Incoming::Connected => return Ok(ws),
            Incoming::ConnectError(message) => return Err(ConnectError::Refused(message)),
            Incoming::Ping => ws.send(Message::text(PONG)).await?,
            Incoming::Ignored => {}
            other => return Err(ConnectError::Unexpected(format!("{other:?}"))),
        }
    }
}

async fn next_text(ws: &mut SioStream) -> Result<Incoming, ConnectError> {
    loop {
        match ws.next().await {
            None => return Err(ConnectError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => return Ok(decode(text.as_str())?),
            Some(Ok(Message::Close(_))) => return Err(ConnectError::Closed),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_request_event_with_its_ack_id() {
        let frame = encode_request(7, "7", "echo", r#"{"pad":"xx"}"#);
        assert_eq!(
            frame,
            r#"427["request",{"id":"7","requestType":"echo","payload":{"pad":"xx"}}]"#
        );
        // The part after `42<ackId>` is valid JSON.
        let value: serde_json::Value = serde_json::from_str(&frame[3..]).unwrap();
        assert_eq!(value[1]["payload"]["pad"], "xx");
    }

    #[test]
    fn escapes_ids_and_request_types() {
        let frame = encode_request(0, "a\"b", "x\\y", "null");
        let value: serde_json::Value = serde_json::from_str(&frame[3..]).unwrap();
        assert_eq!(value[1]["id"], "a\"b");
        assert_eq!(value[1]["requestType"], "x\\y");
    }

    #[test]
    fn decodes_engine_io_packets() {
        assert_eq!(
            decode(r#"0{"sid":"abc","pingInterval":25000}"#).unwrap(),
            Incoming::Open
        );
        assert_eq!(decode("2").unwrap(), Incoming::Ping);
        assert_eq!(decode("3").unwrap(), Incoming::Ignored);
        assert_eq!(decode("6").unwrap(), Incoming::Ignored);
    }

    #[test]
    fn decodes_namespace_connect_and_refusal() {
        assert_eq!(decode(r#"40{"sid":"xyz"}"#).unwrap(), Incoming::Connected);
        assert_eq!(
            decode(r#"44{"message":"unauthorized"}"#).unwrap(),
            Incoming::ConnectError("unauthorized".into())
        );
    }

    #[test]
    fn decodes_acks() {
        assert_eq!(
            decode(r#"4312[{"ok":true}]"#).unwrap(),
            Incoming::Ack {
                ack_id: 12,
                ok: true
            }
        );
        assert_eq!(
            decode(r#"430[{"ok":false,"error":{"code":"RATE_LIMITED","message":"m"}}]"#).unwrap(),
            Incoming::Ack {
                ack_id: 0,
                ok: false
            }
        );
        assert!(matches!(
            decode(r#"43[{"ok":true}]"#),
            Err(DecodeError::MissingAckId)
        ));
    }

    #[test]
    fn decodes_responses_of_every_kind() {
        assert_eq!(
            decode(r#"42["response",{"id":"5","type":"result","data":{"pad":"x"}}]"#).unwrap(),
            Incoming::Response {
                id: "5".into(),
                kind: ReplyKind::Result
            }
        );
        assert_eq!(
            decode(r#"42["response",{"id":"6","type":"error","error":{"code":"TIMEOUT","message":"m"}}]"#)
                .unwrap(),
            Incoming::Response {
                id: "6".into(),
                kind: ReplyKind::Error
            }
        );
        assert_eq!(
            decode(r#"42["response",{"id":"6","type":"chunk","seq":0,"data":1}]"#).unwrap(),
            Incoming::Response {
                id: "6".into(),
                kind: ReplyKind::Chunk
            }
        );
        assert_eq!(
            decode(r#"42["other",1]"#).unwrap(),
            Incoming::OtherEvent("other".into())
        );
    }

    #[test]
    fn asks_for_a_session_and_sees_the_session_event_as_another_event() {
        let auth: serde_json::Value = serde_json::from_str(&CONNECT_WITH_SESSION[2..]).unwrap();
        assert_eq!(auth["session"], true);
        assert_eq!(
            decode(r#"42["session",{"token":"t","resumeWindowMs":60000,"resultTtlMs":0}]"#)
                .unwrap(),
            Incoming::OtherEvent("session".into())
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for frame in [
            "",
            "4",
            "9",
            "47",
            "42[",
            "42[\"response\",{}]",
            "43x",
            "44",
            "42",
            "4é",
            "é",
        ] {
            assert!(decode(frame).is_err(), "{frame:?} should not decode");
        }
    }
}
