//! One event, one line: the text log escapes line breaks and other control characters
//! inside an event, so that what a client chooses — a request id, a request type, an
//! origin — cannot forge whole log lines for whoever reads them (security review, issue
//! 20 #5). It works on the formatted event, so every log line of the host is covered,
//! including ones written later; JSON lines need nothing (JSON escapes them already).
//!
//! `tracing_subscriber`'s formatter hands its writer each event whole, ending in `\n`.
//! Escape sequences (`ESC`) are left alone: the formatter colours a terminal with them, and
//! it escapes those that come from field values itself.

use std::io::{self, Write};

/// Writes each event as one line.
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (event, end) = match buf.strip_suffix(b"\n") {
            Some(event) => (event, true),
            None => (buf, false),
        };
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &byte in event {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                b'\t' | 0x1b => line.push(byte),
                0..=0x1f | 0x7f => line.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
                _ => line.push(byte),
            }
        }
        if end {
            line.push(b'\n');
        }
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Standard error, one line per event (`tracing_subscriber::fmt().with_writer(stderr)`).
pub fn stderr() -> OneLine<io::Stderr> {
    OneLine(io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_line(input: &[u8]) -> String {
        let mut out = OneLine(Vec::new());
        assert_eq!(out.write(input).unwrap(), input.len());
        String::from_utf8(out.0).unwrap()
    }

    #[test]
    fn line_breaks_inside_an_event_are_escaped_and_its_end_is_kept() {
        assert_eq!(
            one_line(b"INFO cancelled client_id=x\nERROR forged\r\n"),
            "INFO cancelled client_id=x\\nERROR forged\\r\n"
        );
        assert_eq!(one_line(b"no end"), "no end");
        assert_eq!(one_line(b"\n"), "\n");
    }

    #[test]
    fn other_controls_are_escaped_but_tabs_colours_and_text_are_not() {
        assert_eq!(one_line(b"a\x00b\x07c\x7f\n"), "a\\x00b\\x07c\\x7f\n");
        assert_eq!(
            one_line("\x1b[32m INFO\x1b[0m \tünïcødé ✓\n".as_bytes()),
            "\x1b[32m INFO\x1b[0m \tünïcødé ✓\n"
        );
    }
}
