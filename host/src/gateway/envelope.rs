//! The `request` and `cancel` event bodies, and the half of admission that needs no state
//! of the gateway: [`check`] reads a request envelope, finds its type in the routing table,
//! and checks roles, the connection's in-flight cap and the payload, in the order of
//! protocol §3.1. What it needs of the connection is read beforehand into a [`Caller`].

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use taskgate_protocol::MAX_CLIENT_ID_LEN;

use crate::error::{RateLimit, RequestError};
use crate::routes::{Checked, RequestTypeSpec, RoutingTable};
use crate::session::Session;
use crate::trace::ClientTrace;

/// The `request` event body as received. Fields are loosely typed so that a wrong type is
/// answered with a precise `BAD_REQUEST` instead of a generic parse error.
#[derive(Debug, Deserialize)]
pub struct RequestEnvelope {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default, rename = "requestType")]
    pub request_type: Option<Value>,
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Optional W3C trace context (protocol §3.10); an invalid one is ignored.
    #[serde(default)]
    pub traceparent: Option<Value>,
    /// `true`: a task that outlives its connection (protocol §4.3).
    #[serde(default)]
    pub detach: Option<Value>,
}

/// The `cancel` event body.
#[derive(Debug, Deserialize)]
pub struct CancelEnvelope {
    #[serde(default)]
    pub id: Option<Value>,
}

/// The `attach` event body (protocol §4.2).
#[derive(Debug, Deserialize)]
pub struct AttachEnvelope {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default, rename = "afterSeq")]
    pub after_seq: Option<Value>,
}

/// A well-formed `attach`: the client id, and the last chunk `seq` the client has (-1: none).
pub(super) fn check_attach(
    envelope: Result<AttachEnvelope, String>,
) -> Result<(String, i64), RequestError> {
    let envelope = envelope.map_err(RequestError::bad_request)?;
    let id = client_id(envelope.id)?;
    let after_seq = match envelope.after_seq {
        None | Some(Value::Null) => -1,
        Some(Value::Number(n)) => n.as_i64().filter(|n| *n >= -1).ok_or_else(|| {
            RequestError::BadRequest("`afterSeq` must be an integer of -1 or more".to_owned())
        })?,
        Some(_) => {
            return Err(RequestError::BadRequest(
                "`afterSeq` must be an integer of -1 or more".to_owned(),
            ))
        }
    };
    Ok((id, after_seq))
}

/// What the check needs to know of the connection that sent the request.
#[derive(Debug, Default)]
pub(super) struct Caller<'a> {
    /// Who it is. `None` (a connection the gateway does not know, or is forgetting) may
    /// call only request types that require no role.
    pub session: Option<&'a Session>,
    /// Its cap on requests in flight, if it has one, and how many it has now.
    pub in_flight: Option<InFlightCount>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct InFlightCount {
    pub now: usize,
    pub max: usize,
}

/// A request that passed every check that needs no state: what the reservation step takes.
#[derive(Debug)]
pub(super) struct ValidRequest {
    pub client_id: String,
    pub spec: Arc<RequestTypeSpec>,
    /// The payload as published: the client's text, or the plugin's normalised JSON.
    pub body: Box<str>,
    pub client_trace: ClientTrace,
    /// A detached task (protocol §4.3); whether the caller may detach is the gateway's check.
    pub detach: bool,
    /// `body` is the client's payload, not validated yet: the plugin's validation runs off
    /// the I/O thread, in the publish step ([`RequestTypeSpec::validates_off_thread`]).
    pub validate_off_thread: bool,
}

/// Why a request was refused, with its request type once that was known (a refusal after
/// the type lookup counts against the type in the metrics).
#[derive(Debug)]
pub(super) struct Refusal {
    pub error: RequestError,
    pub spec: Option<Arc<RequestTypeSpec>>,
}

impl From<RequestError> for Refusal {
    fn from(error: RequestError) -> Self {
        Refusal { error, spec: None }
    }
}

/// Checks a request envelope against the routing table and what is known of the caller:
/// envelope (`BAD_REQUEST`), request type (`UNKNOWN_REQUEST_TYPE`), roles (`FORBIDDEN`),
/// requests in flight (`RATE_LIMITED`), size and payload (`PAYLOAD_TOO_LARGE`,
/// `INVALID_PAYLOAD`). Changes nothing: the rate before it and the id reservation after
/// it are the gateway's.
pub(super) fn check(
    envelope: Result<RequestEnvelope, String>,
    routes: &RoutingTable,
    caller: &Caller<'_>,
) -> Result<ValidRequest, Refusal> {
    let envelope = envelope.map_err(RequestError::bad_request)?;
    let id = client_id(envelope.id)?;
    let detach = match envelope.detach {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(RequestError::BadRequest("`detach` must be a boolean".to_owned()).into())
        }
    };
    let request_type = required_string(envelope.request_type, "requestType")?;
    let spec = routes
        .get(&request_type)
        .cloned()
        .ok_or_else(|| RequestError::unknown_request_type(request_type))?;
    match check_for_type(&spec, caller, envelope.payload) {
        Ok((body, validate_off_thread)) => Ok(ValidRequest {
            client_id: id,
            spec,
            body,
            client_trace: ClientTrace::from_envelope(envelope.traceparent.as_ref()),
            detach,
            validate_off_thread,
        }),
        Err(error) => Err(Refusal {
            error,
            spec: Some(spec),
        }),
    }
}

/// The checks of a request whose type is known; returns the body to publish, and whether
/// the plugin's validation of it is still due (off the I/O thread).
fn check_for_type(
    spec: &RequestTypeSpec,
    caller: &Caller<'_>,
    payload: Option<Box<RawValue>>,
) -> Result<(Box<str>, bool), RequestError> {
    let allowed = caller.session.map_or(spec.required_roles.is_empty(), |s| {
        s.may_call(&spec.required_roles)
    });
    if !allowed {
        return Err(RequestError::Forbidden(spec.name.clone()));
    }
    if let Some(InFlightCount { now, max }) = caller.in_flight {
        if now >= max {
            return Err(RequestError::RateLimited(RateLimit::InFlight { max }));
        }
    }
    let payload = payload.unwrap_or_default();
    if spec.validates_off_thread(payload.get().len()) {
        spec.check_size(&payload)?;
        return Ok((payload.into(), true));
    }
    Ok((checked_body(spec.check_inline(&payload)?, payload), false))
}

/// The body to publish once `payload` passed its check.
pub(super) fn checked_body(checked: Checked, payload: Box<RawValue>) -> Box<str> {
    match checked {
        Checked::Unchanged => payload.into(),
        Checked::Normalised(json) => json.into_boxed_str(),
    }
}

/// A client's request id: a string of 1 to 128 characters.
fn client_id(value: Option<Value>) -> Result<String, RequestError> {
    let id = required_string(value, "id")?;
    let len = id.chars().count();
    if len == 0 || len > MAX_CLIENT_ID_LEN {
        return Err(RequestError::BadRequest(format!(
            "`id` must be 1 to {MAX_CLIENT_ID_LEN} characters long (got {len})"
        )));
    }
    Ok(id)
}

fn required_string(value: Option<Value>, field: &str) -> Result<String, RequestError> {
    match value {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(RequestError::BadRequest(format!(
            "`{field}` must be a string"
        ))),
        None => Err(RequestError::BadRequest(format!("missing `{field}`"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::RequestRate;
    use crate::routes::testing::parts;
    use serde_json::json;
    use taskgate_protocol::{ErrorCode, Identity};

    /// `open` needs no role and takes at most 10 bytes; `admin` needs the role `admin`.
    fn routes() -> RoutingTable {
        let mut open = parts("open");
        open.max_payload_bytes = 10;
        let mut admin = parts("admin");
        admin.required_roles = vec!["admin".into()];
        RoutingTable::new([
            RequestTypeSpec::new(open, None).unwrap(),
            RequestTypeSpec::new(admin, None).unwrap(),
        ])
    }

    fn envelope(v: Value) -> Result<RequestEnvelope, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    /// The error code of checking `v` as `caller`, or `OK`.
    fn outcome(v: Value, caller: &Caller<'_>) -> &'static str {
        match check(envelope(v), &routes(), caller) {
            Ok(_) => "OK",
            Err(refusal) => refusal.error.code().as_str(),
        }
    }

    #[test]
    fn a_valid_request_is_described_for_the_reservation() {
        let v = json!({"id": "a", "requestType": "open", "payload": {"x": 1},
                       "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"});
        let request = check(envelope(v), &routes(), &Caller::default()).unwrap();
        assert_eq!(request.client_id, "a");
        assert_eq!(request.spec.name, "open");
        assert_eq!(&*request.body, r#"{"x":1}"#);
        assert!(matches!(request.client_trace, ClientTrace::Valid(_)));
        let no_payload = json!({"id": "b", "requestType": "open"});
        let request = check(envelope(no_payload), &routes(), &Caller::default()).unwrap();
        assert_eq!(&*request.body, "null", "a missing payload is null");
    }

    #[test]
    fn envelope_faults_are_bad_requests_named_by_field() {
        let anyone = Caller::default();
        for (v, message) in [
            (json!({"requestType": "open"}), "missing `id`"),
            (
                json!({"id": 1, "requestType": "open"}),
                "`id` must be a string",
            ),
            (
                json!({"id": "", "requestType": "open"}),
                "1 to 128 characters",
            ),
            (json!({"id": "a"}), "missing `requestType`"),
            (
                json!({"id": "a", "requestType": []}),
                "`requestType` must be",
            ),
        ] {
            let refusal = check(envelope(v), &routes(), &anyone).unwrap_err();
            assert_eq!(refusal.error.code(), ErrorCode::BadRequest);
            assert!(
                refusal.error.to_string().contains(message),
                "{}",
                refusal.error
            );
            assert!(refusal.spec.is_none(), "no type known yet");
        }
        let long_id = "é".repeat(MAX_CLIENT_ID_LEN);
        assert_eq!(
            outcome(json!({"id": long_id, "requestType": "open"}), &anyone),
            "OK"
        );
    }

    #[test]
    fn a_refusal_after_the_type_lookup_names_the_type() {
        let refusal = check(
            envelope(json!({"id": "a", "requestType": "nope"})),
            &routes(),
            &Caller::default(),
        )
        .unwrap_err();
        assert_eq!(refusal.error.code(), ErrorCode::UnknownRequestType);
        assert!(refusal.spec.is_none());
        let too_large = json!({"id": "a", "requestType": "open", "payload": "0123456789"});
        let refusal = check(envelope(too_large), &routes(), &Caller::default()).unwrap_err();
        assert_eq!(refusal.error.code(), ErrorCode::PayloadTooLarge);
        assert_eq!(refusal.spec.unwrap().name, "open");
    }

    #[test]
    fn checks_run_in_protocol_order_roles_then_in_flight_then_size() {
        let alice = Session::new(
            Some(Identity::new("alice", ["admin"])),
            RequestRate::unlimited(),
            None,
        );
        let full = Some(InFlightCount { now: 2, max: 2 });
        let big = json!("0123456789");
        let stranger = Caller {
            session: None,
            in_flight: full,
        };
        // Roles before the in-flight cap: a caller without the role is FORBIDDEN.
        assert_eq!(
            outcome(json!({"id": "a", "requestType": "admin"}), &stranger),
            "FORBIDDEN"
        );
        // The cap before the size: a full connection is RATE_LIMITED even with a big payload.
        let open_big = json!({"id": "a", "requestType": "open", "payload": big});
        assert_eq!(outcome(open_big.clone(), &stranger), "RATE_LIMITED");
        let room = Caller {
            session: Some(&alice),
            in_flight: Some(InFlightCount { now: 1, max: 2 }),
        };
        assert_eq!(outcome(open_big, &room), "PAYLOAD_TOO_LARGE");
        assert_eq!(
            outcome(json!({"id": "a", "requestType": "admin"}), &room),
            "OK"
        );
    }
}
