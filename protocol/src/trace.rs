//! W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/), the v1-compatible
//! addition of docs/protocol.md §3.10: a client may send one in its `request` envelope, the
//! host forwards one to workers in the AMQP header `traceparent`, and every party puts it
//! on its log lines, so one request can be followed browser → host → worker.
//!
//! Only the parsing and formatting live here (no I/O, no randomness): the host decides
//! which ids to use.

use std::fmt;

/// The envelope field of a `request` event that carries the client's trace context.
pub const ENVELOPE_FIELD: &str = "traceparent";

/// A parsed `traceparent`: `{version}-{trace-id}-{parent-id}-{trace-flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: u128,
    /// The id of the caller's span (8 bytes, never all zero).
    pub parent_id: u64,
    /// Bit 0: sampled.
    pub flags: u8,
}

/// The length of a version-00 `traceparent`.
const LEN: usize = 55;

impl TraceParent {
    /// A trace context with these ids; `None` if either is zero (invalid by the spec).
    pub fn new(trace_id: u128, parent_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Parses a header value by the rules of the spec (§3.2): lowercase hex only, version
    /// `ff` and all-zero ids are invalid, version `00` is exactly 55 characters, a later
    /// version may carry more fields after a `-` (only the first four are read).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        // ASCII first, so that the slices below fall on character boundaries.
        if bytes.len() < LEN
            || !bytes[..LEN].is_ascii()
            || bytes[2] != b'-'
            || bytes[35] != b'-'
            || bytes[52] != b'-'
        {
            return None;
        }
        let version = hex_u8(&text[0..2])?;
        match version {
            0xff => return None,
            0x00 if bytes.len() != LEN => return None,
            _ if bytes.len() > LEN && bytes[LEN] != b'-' => return None,
            _ => {}
        }
        let trace_id = u128::from_str_radix(lower_hex(&text[3..35])?, 16).ok()?;
        let parent_id = u64::from_str_radix(lower_hex(&text[36..52])?, 16).ok()?;
        let flags = hex_u8(&text[53..55])?;
        TraceParent::new(trace_id, parent_id, flags)
    }

    /// The same trace, continued by a span of our own (the parent of the next hop).
    pub fn child(self, span_id: u64) -> Self {
        TraceParent {
            parent_id: if span_id == 0 {
                self.parent_id
            } else {
                span_id
            },
            ..self
        }
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// Formats as a version-00 header value (what the host forwards, whatever version it read).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// `text` if it is lowercase hex digits only (`from_str_radix` also takes uppercase and a sign).
fn lower_hex(text: &str) -> Option<&str> {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then_some(text)
}

fn hex_u8(text: &str) -> Option<u8> {
    u8::from_str_radix(lower_hex(text)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_header_round_trips() {
        let tp = TraceParent::parse(VALID);
        assert_eq!(
            tp,
            Some(TraceParent {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                parent_id: 0x00f067aa0ba902b7,
                flags: 1,
            })
        );
        assert_eq!(tp.map(|t| t.to_string()).as_deref(), Some(VALID));
        assert_eq!(
            tp.map(|t| t.trace_id_hex()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let upper = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let version_ff = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let v00_longer = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x";
        let signed = "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let separators = "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01";
        let non_ascii = "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b-01";
        for bad in [
            "",
            "garbage",
            &VALID[..54],
            zero_trace,
            zero_parent,
            upper,
            version_ff,
            v00_longer,
            signed,
            separators,
            non_ascii,
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_four_fields_and_forwarded_as_00() {
        let v01 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let tp = TraceParent::parse(v01);
        assert_eq!(tp.map(|t| t.to_string()).as_deref(), Some(VALID));
        let glued = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x";
        assert_eq!(TraceParent::parse(glued), None);
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_and_takes_a_new_parent() {
        let tp = TraceParent::parse(VALID).map(|t| t.child(0xabc));
        assert_eq!(
            tp.map(|t| t.to_string()).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01")
        );
        assert_eq!(TraceParent::new(0, 1, 0), None);
        assert_eq!(TraceParent::new(1, 0, 0), None);
    }
}
