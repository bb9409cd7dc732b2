//! The trace context of a request (docs/protocol.md §3.10): the W3C `traceparent` the client
//! sent in its envelope, continued by a span of the host's own, or a new trace when the
//! client sent none (or one that is not valid — ignored, never refused).
//!
//! No extra randomness is drawn: the ids come from the request's correlation id (a random
//! UUID v4). A trace the host starts has the correlation id as its trace id (32 hex digits,
//! the UUID without dashes), so logs can be joined on either; the host's span id is the
//! correlation id's upper 64 bits (never zero: they hold the UUID version).

use serde_json::Value;
use taskgate_protocol::trace::TraceParent;
use uuid::Uuid;

/// What the client's envelope said about tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTrace {
    Absent,
    Valid(TraceParent),
    /// Present but not a valid `traceparent` (or not a string): ignored.
    Invalid,
}

impl ClientTrace {
    /// Reads the envelope's `traceparent` field.
    pub fn from_envelope(value: Option<&Value>) -> Self {
        match value {
            None | Some(Value::Null) => ClientTrace::Absent,
            Some(Value::String(text)) => match TraceParent::parse(text) {
                Some(trace) => ClientTrace::Valid(trace),
                None => ClientTrace::Invalid,
            },
            Some(_) => ClientTrace::Invalid,
        }
    }
}

/// Sampled: a trace the host starts is one somebody may want to see.
const SAMPLED: u8 = 0x01;

/// The `traceparent` forwarded to workers for the request `correlation_id`.
pub fn for_request(client: ClientTrace, correlation_id: Uuid) -> TraceParent {
    let id = correlation_id.as_u128();
    let span_id = (id >> 64) as u64;
    let started = TraceParent {
        trace_id: id,
        parent_id: span_id,
        flags: SAMPLED,
    };
    match client {
        ClientTrace::Valid(trace) => trace.child(span_id),
        ClientTrace::Absent | ClientTrace::Invalid => started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

    #[test]
    fn a_valid_client_trace_is_continued_with_a_span_of_the_host() {
        let correlation_id = Uuid::new_v4();
        let client = ClientTrace::from_envelope(Some(&json!(CLIENT)));
        assert!(matches!(client, ClientTrace::Valid(_)));
        let forwarded = for_request(client, correlation_id).to_string();
        assert!(
            forwarded.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{forwarded}"
        );
        assert!(
            forwarded.ends_with("-00"),
            "the client's flags are kept: {forwarded}"
        );
        let host_span = &correlation_id.simple().to_string()[..16];
        assert_eq!(&forwarded[36..52], host_span);
    }

    #[test]
    fn without_a_valid_client_trace_the_correlation_id_starts_one() {
        let correlation_id = Uuid::new_v4();
        for envelope in [
            None,
            Some(json!(null)),
            Some(json!("nonsense")),
            Some(json!(42)),
        ] {
            let client = ClientTrace::from_envelope(envelope.as_ref());
            let forwarded = for_request(client, correlation_id);
            assert_eq!(
                forwarded.trace_id_hex(),
                correlation_id.simple().to_string()
            );
            assert_eq!(forwarded.flags, SAMPLED);
            assert_ne!(forwarded.parent_id, 0);
            assert!(TraceParent::parse(&forwarded.to_string()).is_some());
        }
        assert_eq!(
            ClientTrace::from_envelope(Some(&json!({"x": 1}))),
            ClientTrace::Invalid
        );
        assert_eq!(ClientTrace::from_envelope(None), ClientTrace::Absent);
    }
}
