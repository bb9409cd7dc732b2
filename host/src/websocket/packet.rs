//! The engine.io v4 / Socket.IO v5 frames of a WebSocket-only connection, as the host
//! reads and writes them (protocol §1). Only what taskgate's clients send is understood:
//! the default namespace, text frames, JSON events. Everything else is a protocol error
//! that ends the connection — socketioxide does the same for frames out of place.
//!
//! One engine.io packet per WebSocket text frame: a type digit, then its data. A
//! Socket.IO packet travels in an engine.io `4` (message): a type digit, an optional
//! namespace (`/ns,`), an optional ack id (digits), then JSON.

use std::fmt;
use std::io::Write as _;

use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::sink::ResponseEvent;

/// A text frame from the client.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    /// engine.io `3`: the answer to the host's ping.
    Pong,
    /// engine.io `2` (clients of v4 do not ping, but answering costs nothing).
    Ping(&'a str),
    /// engine.io `1`: the client closes the transport.
    Close,
    /// engine.io `6`: nothing (used around transport upgrades).
    Noop,
    /// Socket.IO CONNECT (`40`), with the auth JSON if any.
    Connect {
        namespace: &'a str,
        auth: Option<&'a str>,
    },
    /// Socket.IO DISCONNECT (`41`).
    Disconnect,
    /// Socket.IO EVENT (`42`): `data` is the JSON array `["name", …args]`.
    Event {
        namespace: &'a str,
        ack: Option<u64>,
        data: &'a str,
    },
    /// Socket.IO ACK (`43`): the client acknowledging an event of the host. The host asks
    /// for none, so it is ignored.
    Ack,
    /// Socket.IO BINARY_EVENT (`45<n>-…`): an event whose `attachments` binary frames
    /// follow. taskgate's protocol is JSON: the attachments are read and dropped, and the
    /// event is handled with its placeholders (`{"_placeholder":true,"num":0}`) in place.
    BinaryEvent {
        namespace: &'a str,
        ack: Option<u64>,
        attachments: usize,
        data: &'a str,
    },
    /// Socket.IO BINARY_ACK (`46<n>-…`): ignored like an ACK, its attachments dropped.
    BinaryAck { attachments: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("an empty frame")]
    Empty,
    #[error("unknown engine.io packet type {0:?}")]
    EngineType(char),
    #[error("unknown or unsupported Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("a namespace without its closing comma")]
    Namespace,
    #[error("an ack id that is not a number")]
    AckId,
    #[error("a binary packet without its attachment count")]
    Attachments,
    #[error("an event that is not a JSON array starting with its name: {0}")]
    Event(String),
}

/// The default namespace, as the client names it in packets.
pub const DEFAULT_NAMESPACE: &str = "/";

/// Parses one text frame.
pub fn parse(frame: &str) -> Result<Incoming<'_>, PacketError> {
    let mut chars = frame.chars();
    let kind = chars.next().ok_or(PacketError::Empty)?;
    let rest = chars.as_str();
    match kind {
        '1' => Ok(Incoming::Close),
        '2' => Ok(Incoming::Ping(rest)),
        '3' => Ok(Incoming::Pong),
        '4' => parse_socket_io(rest),
        '6' => Ok(Incoming::Noop),
        other => Err(PacketError::EngineType(other)),
    }
}

fn parse_socket_io(packet: &str) -> Result<Incoming<'_>, PacketError> {
    let mut chars = packet.chars();
    let kind = chars.next().ok_or(PacketError::Empty)?;
    let mut rest = chars.as_str();
    let mut attachments = 0;
    if matches!(kind, '5' | '6') {
        let (count, after) = rest.split_once('-').ok_or(PacketError::Attachments)?;
        attachments = count.parse().map_err(|_| PacketError::Attachments)?;
        rest = after;
    }
    let namespace = match rest.strip_prefix('/') {
        Some(_) => {
            let comma = rest.find(',');
            match comma {
                Some(end) => {
                    let ns = &rest[..end];
                    rest = &rest[end + 1..];
                    ns
                }
                // `40/admin` without data ends at the namespace.
                None if matches!(kind, '0' | '1') => std::mem::take(&mut rest),
                None => return Err(PacketError::Namespace),
            }
        }
        None => DEFAULT_NAMESPACE,
    };
    match kind {
        '0' => Ok(Incoming::Connect {
            namespace,
            auth: (!rest.is_empty()).then_some(rest),
        }),
        '1' => Ok(Incoming::Disconnect),
        '2' | '5' => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let ack = match digits {
                0 => None,
                _ => Some(rest[..digits].parse().map_err(|_| PacketError::AckId)?),
            };
            let data = &rest[digits..];
            Ok(match kind {
                '2' => Incoming::Event {
                    namespace,
                    ack,
                    data,
                },
                _ => Incoming::BinaryEvent {
                    namespace,
                    ack,
                    attachments,
                    data,
                },
            })
        }
        '3' => Ok(Incoming::Ack),
        '6' => Ok(Incoming::BinaryAck { attachments }),
        other => Err(PacketError::SocketType(other)),
    }
}

/// The events protocol §1 defines from client to host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventName {
    Request,
    Cancel,
    /// Protocol §4.2.
    Attach,
    /// Protocol §4.3.
    Tasks,
    /// Any other name: ignored, as a Socket.IO server ignores events without a handler.
    Other,
}

/// An event's name and its first argument, borrowed from the frame.
#[derive(Debug)]
pub struct Event<'a> {
    pub name: EventName,
    /// `None` when the event has no argument.
    pub arg: Option<&'a RawValue>,
}

/// Reads `["name", arg, …]`: the name, and the first argument without parsing it into
/// values (it is deserialised once, by whoever handles the event). Further arguments are
/// skipped.
pub fn parse_event(data: &str) -> Result<Event<'_>, PacketError> {
    let mut de = serde_json::Deserializer::from_str(data);
    let event = de
        .deserialize_seq(EventVisitor)
        .and_then(|event| de.end().map(|()| event))
        .map_err(|e| PacketError::Event(e.to_string()))?;
    Ok(event)
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of an event name and its arguments")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Event<'de>, A::Error> {
        let name = seq
            .next_element_seed(NameSeed)?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let arg = seq.next_element::<&'de RawValue>()?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Event { name, arg })
    }
}

/// The common `request` event, `["request",{…}]` exactly as socket.io-client writes it, read
/// in one pass: the envelope straight from the frame, where [`parse_event`] and then the
/// envelope's own parse scan the frame twice (for a 1 MB payload, a millisecond each).
/// `None` for anything else — another event, other spacing, more arguments, an envelope of
/// the wrong shape, not JSON —: those take the two-step path and its precise messages.
pub fn parse_request_fast<T: de::DeserializeOwned>(data: &str) -> Option<T> {
    let prefix = data
        .strip_prefix("[\"")?
        .strip_prefix(taskgate_protocol::events::REQUEST)?;
    if !prefix.starts_with("\",{") {
        return None;
    }
    serde_json::from_str::<(IgnoredAny, T)>(data)
        .ok()
        .map(|(_, envelope)| envelope)
}

/// Deserialises the name without allocating it: only a few names matter.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = EventName;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventName, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for NameSeed {
    type Value = EventName;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> Result<EventName, E> {
        Ok(match name {
            taskgate_protocol::events::REQUEST => EventName::Request,
            taskgate_protocol::events::CANCEL => EventName::Cancel,
            taskgate_protocol::events::ATTACH => EventName::Attach,
            taskgate_protocol::events::TASKS => EventName::Tasks,
            _ => EventName::Other,
        })
    }
}

/// engine.io open packet settings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Open<'a> {
    pub sid: &'a str,
    pub upgrades: [&'a str; 0],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

/// engine.io OPEN (`0{…}`).
pub fn open(open: &Open<'_>) -> String {
    let mut frame = String::from("0");
    push_json(&mut frame, open);
    frame
}

/// engine.io PING.
pub const PING: &str = "2";

/// engine.io PONG, echoing the ping's data.
pub fn pong(data: &str) -> String {
    format!("3{data}")
}
/// Socket.IO DISCONNECT of the default namespace: the host ends the session.
pub const DISCONNECT: &str = "41";

/// Socket.IO CONNECT answer (`40{"sid":…}`).
pub fn connected(sid: &str) -> String {
    let mut frame = String::from("40");
    push_json(&mut frame, &serde_json::json!({ "sid": sid }));
    frame
}

/// Socket.IO CONNECT_ERROR (`44{"message":…}`) for `namespace`.
pub fn connect_error(namespace: &str, message: &str) -> String {
    let mut frame = String::from("44");
    if namespace != DEFAULT_NAMESPACE {
        frame.push_str(namespace);
        frame.push(',');
    }
    push_json(&mut frame, &serde_json::json!({ "message": message }));
    frame
}

/// Socket.IO EVENT (`42["name",data]`), data serialised straight into the frame.
/// `size_hint`: about how many bytes `data` takes, so the frame is allocated once.
pub fn event(
    name: &str,
    data: &impl Serialize,
    size_hint: usize,
) -> Result<String, serde_json::Error> {
    let mut frame = Vec::with_capacity(8 + name.len() + size_hint);
    frame.extend_from_slice(b"42[");
    serde_json::to_writer(&mut frame, name)?;
    frame.push(b',');
    serde_json::to_writer(&mut frame, data)?;
    frame.push(b']');
    Ok(into_string(frame))
}

/// The `response` event (`42["response",{…}]`, protocol §1) of a chunk, result or error,
/// written as text: the worker's data is copied into the frame once, and, unlike
/// [`event`], the frame is not validated as UTF-8 again — every piece already is a `str`
/// (for a 1 MB result that second validation was half a million instructions). The same
/// bytes as [`event`] with the event's `Serialize`, which the socketioxide path still uses.
/// `size_hint`: about how many bytes the event takes.
pub fn response(event: &ResponseEvent<'_>, size_hint: usize) -> Result<String, serde_json::Error> {
    let mut frame = String::with_capacity(32 + size_hint);
    frame.push_str("42[");
    frame.push_str(&serde_json::to_string(taskgate_protocol::events::RESPONSE)?);
    frame.push_str(",{\"id\":");
    frame.push_str(&serde_json::to_string(event.id)?);
    frame.push_str(",\"type\":");
    frame.push_str(&serde_json::to_string(&event.kind)?);
    if let Some(seq) = event.seq {
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut frame, format_args!(",\"seq\":{seq}"));
    }
    if let Some(data) = event.data {
        frame.push_str(",\"data\":");
        frame.push_str(data.get());
    }
    if let Some(error) = event.error {
        frame.push_str(",\"error\":");
        frame.push_str(&serde_json::to_string(error)?);
    }
    frame.push_str("}]");
    Ok(frame)
}

/// Socket.IO ACK (`43<id>[data]`).
pub fn ack(id: u64, data: &impl Serialize) -> Result<String, serde_json::Error> {
    let mut frame = Vec::with_capacity(48);
    frame.extend_from_slice(b"43");
    // Writing into a Vec cannot fail.
    let _ = write!(frame, "{id}");
    frame.push(b'[');
    serde_json::to_writer(&mut frame, data)?;
    frame.push(b']');
    Ok(into_string(frame))
}

fn push_json(frame: &mut String, value: &impl Serialize) {
    // Serialising these small, fixed structures cannot fail.
    if let Ok(json) = serde_json::to_string(value) {
        frame.push_str(&json);
    }
}

/// serde_json writes UTF-8 only; the prefix is ASCII.
fn into_string(frame: Vec<u8>) -> String {
    String::from_utf8(frame).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_frame_is_byte_for_byte_the_serialised_event() {
        use taskgate_protocol::{ErrorBody, ErrorCode};
        let data =
            RawValue::from_string(r#"{"text":"é \" \\u00e9","n":[1,2.5,null]}"#.into()).unwrap();
        let mut error = ErrorBody::new(ErrorCode::WorkerError, "bad \"input\"\n é");
        error.details = Some(serde_json::json!({"field": "x", "at": [1, 2]}));
        for id in ["a", "id with \"quotes\" and \\ and é and \u{1}", ""] {
            for e in [
                ResponseEvent::chunk(id, 0, &data),
                ResponseEvent::chunk(id, u64::MAX, &data),
                ResponseEvent::result(id, &data),
                ResponseEvent::error(id, &error),
            ] {
                let expected = event(taskgate_protocol::events::RESPONSE, &e, 0).unwrap();
                assert_eq!(response(&e, 0).unwrap(), expected);
            }
        }
    }

    #[test]
    fn a_request_event_is_read_in_one_pass_when_it_has_the_usual_shape() {
        #[derive(Debug, serde::Deserialize)]
        struct Envelope {
            id: String,
            payload: Box<RawValue>,
        }
        let got: Envelope =
            parse_request_fast(r#"["request",{"id":"a","payload":{"text":"x y"}}]"#).unwrap();
        assert_eq!(got.id, "a");
        assert_eq!(got.payload.get(), r#"{"text":"x y"}"#);
        // Everything else takes the two-step path (None here).
        for other in [
            r#"["cancel",{"id":"a"}]"#,
            r#"[ "request",{"id":"a","payload":1}]"#,
            r#"["request", {"id":"a","payload":1}]"#,
            r#"["request",5]"#,
            r#"["request",{"id":"a","payload":1},"more"]"#,
            r#"["request",{"id":5,"payload":1}]"#,
            r#"["request",{"id":"a","payload":1}"#,
            r#"["requests",{"id":"a","payload":1}]"#,
            "",
        ] {
            assert!(parse_request_fast::<Envelope>(other).is_none(), "{other}");
        }
    }

    #[test]
    fn engine_io_packets() {
        assert_eq!(parse("3"), Ok(Incoming::Pong));
        assert_eq!(parse("2probe"), Ok(Incoming::Ping("probe")));
        assert_eq!(parse("1"), Ok(Incoming::Close));
        assert_eq!(parse("6"), Ok(Incoming::Noop));
        assert_eq!(parse(""), Err(PacketError::Empty));
        assert_eq!(parse("9"), Err(PacketError::EngineType('9')));
        assert_eq!(parse("é"), Err(PacketError::EngineType('é')));
    }

    #[test]
    fn connect_with_and_without_auth_and_namespace() {
        assert_eq!(
            parse("40"),
            Ok(Incoming::Connect {
                namespace: "/",
                auth: None
            })
        );
        assert_eq!(
            parse(r#"40{"token":"t"}"#),
            Ok(Incoming::Connect {
                namespace: "/",
                auth: Some(r#"{"token":"t"}"#)
            })
        );
        assert_eq!(
            parse("40/admin,"),
            Ok(Incoming::Connect {
                namespace: "/admin",
                auth: None
            })
        );
        assert_eq!(
            parse("40/admin"),
            Ok(Incoming::Connect {
                namespace: "/admin",
                auth: None
            })
        );
        assert_eq!(parse("41"), Ok(Incoming::Disconnect));
    }

    #[test]
    fn events_with_and_without_ack_ids() {
        for (frame, namespace, ack, data) in [
            (r#"42["request",{}]"#, "/", None, r#"["request",{}]"#),
            (r#"4217["request",{}]"#, "/", Some(17), r#"["request",{}]"#),
            (r#"42/x,3["a"]"#, "/x", Some(3), r#"["a"]"#),
        ] {
            assert_eq!(
                parse(frame),
                Ok(Incoming::Event {
                    namespace,
                    ack,
                    data
                })
            );
        }
        assert_eq!(parse("4299999999999999999999[]"), Err(PacketError::AckId));
        assert_eq!(parse(r#"42/x["a"]"#), Err(PacketError::Namespace));
        assert_eq!(parse("431[]"), Ok(Incoming::Ack));
    }

    #[test]
    fn binary_packets_announce_their_attachments() {
        assert_eq!(
            parse(r#"451-3["request",{"_placeholder":true,"num":0}]"#),
            Ok(Incoming::BinaryEvent {
                namespace: "/",
                ack: Some(3),
                attachments: 1,
                data: r#"["request",{"_placeholder":true,"num":0}]"#
            })
        );
        assert_eq!(
            parse("462-/x,5[]"),
            Ok(Incoming::BinaryAck { attachments: 2 })
        );
        assert_eq!(parse(r#"45["request"]"#), Err(PacketError::Attachments));
        assert_eq!(parse(r#"45x-["request"]"#), Err(PacketError::Attachments));
    }

    #[test]
    fn unknown_socket_io_packets_are_refused() {
        assert_eq!(parse("4"), Err(PacketError::Empty));
        assert_eq!(parse("47"), Err(PacketError::SocketType('7')));
    }

    #[test]
    fn event_name_and_first_argument() {
        let e = parse_event(r#"["request",{"id":"a","payload":[1,2]},"extra",{}]"#).unwrap();
        assert_eq!(e.name, EventName::Request);
        assert_eq!(e.arg.unwrap().get(), r#"{"id":"a","payload":[1,2]}"#);
        let e = parse_event(r#"["cancel"]"#).unwrap();
        assert_eq!(e.name, EventName::Cancel);
        assert!(e.arg.is_none());
        // An escaped name is still recognised.
        let e = parse_event(r#"["req\u0075est", 5]"#).unwrap();
        assert_eq!(e.name, EventName::Request);
        assert_eq!(
            parse_event(r#"["hello",1]"#).unwrap().name,
            EventName::Other
        );
    }

    #[test]
    fn malformed_events_are_errors() {
        for bad in [
            "",
            "[]",
            "{}",
            "[1]",
            r#"["request",{]"#,
            r#"["request"] x"#,
            "[\"request\"",
        ] {
            assert!(parse_event(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn frames_the_host_writes() {
        let data =
            RawValue::from_string(r#"{"id":"a","type":"result","data":{"n":1}}"#.into()).unwrap();
        assert_eq!(
            event("response", &data, 0).unwrap(),
            r#"42["response",{"id":"a","type":"result","data":{"n":1}}]"#
        );
        assert_eq!(
            ack(12, &serde_json::json!({"ok": true})).unwrap(),
            r#"4312[{"ok":true}]"#
        );
        assert_eq!(connected("abc"), r#"40{"sid":"abc"}"#);
        assert_eq!(
            connect_error("/", "unauthorized"),
            r#"44{"message":"unauthorized"}"#
        );
        assert_eq!(
            connect_error("/admin", "Invalid namespace"),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        let open = open(&Open {
            sid: "s",
            upgrades: [],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 100,
        });
        assert_eq!(
            open,
            r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":100}"#
        );
        // What we write, we read back.
        assert!(matches!(
            parse(&connected("abc")),
            Ok(Incoming::Connect { .. })
        ));
    }
}
