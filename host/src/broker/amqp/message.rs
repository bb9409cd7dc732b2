//! How the host's messages look on the wire: the properties and headers of a request
//! (protocol §2.2) and of a cancellation (§2.4), and a reply's properties read back into an
//! [`IncomingReply`] (§2.3).

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use amqprs::{
    BasicProperties, FieldName, FieldTable, FieldValue, LongStr, DELIVERY_MODE_PERSISTENT,
};
use taskgate_protocol::amqp as names;
use uuid::Uuid;

use crate::broker::{HostMessage, IncomingReply, OutgoingRequest};

/// The AMQP properties of a request message (protocol §2.2).
pub fn request_properties(request: &OutgoingRequest, reply_queue: &str) -> BasicProperties {
    let mut headers = FieldTable::new();
    let mut header = |name: &str, value: FieldValue| {
        if let Ok(name) = FieldName::try_from(name) {
            headers.insert(name, value);
        }
    };
    header(
        names::HEADER_DEADLINE_MS,
        FieldValue::l(i64::try_from(request.deadline_ms).unwrap_or(i64::MAX)),
    );
    header(names::HEADER_STREAM, FieldValue::t(request.streams));
    if let Some(identity) = request
        .identity
        .as_deref()
        .and_then(|i| long_string(i).ok())
    {
        header(names::HEADER_IDENTITY, FieldValue::S(identity));
    }
    if let Ok(traceparent) = long_string(&request.traceparent.to_string()) {
        header(names::HEADER_TRACEPARENT, FieldValue::S(traceparent));
    }
    if let Some(retry) = request.retry.as_deref().and_then(|r| long_string(r).ok()) {
        header(names::HEADER_RETRY, FieldValue::S(retry));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
        .with_correlation_id(&request.correlation_id.to_string())
        .with_reply_to(reply_queue)
        .with_message_type(&request.request_type)
        .with_timestamp(now.as_secs())
        .with_expiration(&request.timeout.as_millis().max(1).to_string())
        .with_headers(headers)
        .finish()
}

/// The AMQP properties of a cancellation: the request's correlation id, no body (§2.4).
pub(super) fn cancel_properties(correlation_id: Uuid) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_correlation_id(&correlation_id.to_string())
        .finish()
}

/// The AMQP properties of a message between hosts (§4.5): as a worker reply's — correlation
/// id, `type`, `x-seq` — so that a forwarded reply reads as the worker's own.
pub(super) fn host_message_properties(message: &HostMessage) -> BasicProperties {
    let mut properties = BasicProperties::default();
    properties
        .with_content_type(names::CONTENT_TYPE_JSON)
        .with_correlation_id(&message.correlation_id.to_string())
        .with_message_type(&message.kind);
    if let (Some(seq), Some(name)) = (message.seq, HEADER_SEQ.as_ref()) {
        let mut headers = FieldTable::new();
        headers.insert(name.clone(), FieldValue::l(seq));
        properties.with_headers(headers);
    }
    properties.finish()
}

static HEADER_SEQ: LazyLock<Option<FieldName>> =
    LazyLock::new(|| FieldName::try_from(names::HEADER_SEQ).ok());

pub(super) fn incoming_reply(
    properties: Option<BasicProperties>,
    body: Option<Vec<u8>>,
) -> IncomingReply {
    let properties = properties.unwrap_or_default();
    let seq = properties
        .headers()
        .zip(HEADER_SEQ.as_ref())
        .and_then(|(headers, name)| headers.get(name))
        .and_then(amqp_int);
    IncomingReply {
        correlation_id: properties.correlation_id().cloned(),
        kind: properties.message_type().cloned(),
        seq,
        body: body.unwrap_or_default(),
    }
}

fn amqp_int(value: &FieldValue) -> Option<i64> {
    match value {
        FieldValue::b(v) => Some(i64::from(*v)),
        FieldValue::B(v) => Some(i64::from(*v)),
        FieldValue::s(v) => Some(i64::from(*v)),
        FieldValue::u(v) => Some(i64::from(*v)),
        FieldValue::I(v) => Some(i64::from(*v)),
        FieldValue::i(v) => Some(i64::from(*v)),
        FieldValue::l(v) => Some(*v),
        FieldValue::T(v) => i64::try_from(*v).ok(),
        FieldValue::S(s) => s.as_ref().parse().ok(),
        _ => None,
    }
}

pub(super) fn long_string(s: &str) -> Result<LongStr, String> {
    LongStr::try_from(s).map_err(|_| "a header or argument value is over 4 GiB".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use taskgate_protocol::trace::TraceParent;

    fn get<'a>(table: &'a FieldTable, name: &str) -> Option<&'a FieldValue> {
        table.get(&FieldName::try_from(name).unwrap())
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn request_properties_carry_every_field_of_the_protocol() {
        let request = OutgoingRequest {
            correlation_id: Uuid::new_v4(),
            request_type: "text.wordcount".into(),
            queue: "taskgate.text.wordcount".into(),
            body: "{}".into(),
            streams: true,
            timeout: Duration::from_millis(1500),
            deadline_ms: 42,
            identity: None,
            retry: None,
            traceparent: TraceParent::parse(TRACEPARENT).unwrap(),
            reply_to: None,
        };
        let p = request_properties(&request, "taskgate.reply.x");
        assert_eq!(
            p.content_type().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(
            p.correlation_id().cloned(),
            Some(request.correlation_id.to_string())
        );
        assert_eq!(p.reply_to().map(|s| s.as_str()), Some("taskgate.reply.x"));
        assert_eq!(p.message_type().map(|s| s.as_str()), Some("text.wordcount"));
        assert_eq!(p.expiration().map(|s| s.as_str()), Some("1500"));
        assert!(p.timestamp().is_some());
        let headers = p.headers().unwrap();
        assert!(matches!(
            get(headers, "x-deadline-ms"),
            Some(FieldValue::l(42))
        ));
        assert!(matches!(
            get(headers, "x-stream"),
            Some(FieldValue::t(true))
        ));
        match get(headers, "traceparent") {
            Some(FieldValue::S(s)) => assert_eq!(s.as_ref(), TRACEPARENT),
            other => panic!("traceparent is {other:?}"),
        }
        assert!(
            get(headers, "x-identity").is_none(),
            "no identity, no header"
        );
    }

    #[test]
    fn the_identity_travels_as_a_json_string_header() {
        let request = OutgoingRequest {
            correlation_id: Uuid::new_v4(),
            request_type: "t".into(),
            queue: "q".into(),
            body: "{}".into(),
            streams: false,
            timeout: Duration::from_secs(1),
            deadline_ms: 1,
            identity: Some(r#"{"subject":"alice","roles":["admin"]}"#.into()),
            retry: Some(r#"{"attempts":3,"delayMs":10}"#.into()),
            traceparent: TraceParent::parse(TRACEPARENT).unwrap(),
            reply_to: None,
        };
        let p = request_properties(&request, "r");
        match get(p.headers().unwrap(), "x-identity") {
            Some(FieldValue::S(s)) => {
                assert_eq!(s.as_ref(), r#"{"subject":"alice","roles":["admin"]}"#)
            }
            other => panic!("x-identity is {other:?}"),
        }
        match get(p.headers().unwrap(), "x-retry") {
            Some(FieldValue::S(s)) => assert_eq!(s.as_ref(), r#"{"attempts":3,"delayMs":10}"#),
            other => panic!("x-retry is {other:?}"),
        }
    }

    #[test]
    fn reply_seq_is_read_from_any_integer_header() {
        for (value, seq) in [
            (FieldValue::I(3), Some(3)),
            (FieldValue::l(4), Some(4)),
            (FieldValue::u(5), Some(5)),
            (FieldValue::S("6".try_into().unwrap()), Some(6)),
            (FieldValue::t(true), None),
        ] {
            let mut headers = FieldTable::new();
            headers.insert(FieldName::try_from("x-seq").unwrap(), value);
            let p = BasicProperties::default()
                .with_headers(headers)
                .with_message_type("chunk")
                .with_correlation_id("c")
                .finish();
            let r = incoming_reply(Some(p), Some(b"1".to_vec()));
            assert_eq!(r.seq, seq);
            assert_eq!(r.kind.as_deref(), Some("chunk"));
            assert_eq!(r.correlation_id.as_deref(), Some("c"));
            assert_eq!(r.body, b"1");
        }
    }

    #[test]
    fn a_message_between_hosts_reads_back_as_it_was_sent() {
        let message = HostMessage {
            correlation_id: Uuid::new_v4(),
            kind: "chunk".into(),
            seq: Some(7),
            body: b"{}".to_vec(),
        };
        let p = host_message_properties(&message);
        let read = incoming_reply(Some(p), Some(message.body.clone()));
        assert_eq!(read, message.clone().into_reply());
        let claim = HostMessage {
            kind: names::CLAIM_TYPE.into(),
            seq: None,
            ..message
        };
        let read = incoming_reply(Some(host_message_properties(&claim)), None);
        assert_eq!(read.seq, None);
        assert_eq!(read.kind.as_deref(), Some(names::CLAIM_TYPE));
    }

    #[test]
    fn a_reply_without_properties_or_body_is_still_a_reply() {
        let r = incoming_reply(None, None);
        assert_eq!(r.correlation_id, None);
        assert!(r.body.is_empty());
    }
}
