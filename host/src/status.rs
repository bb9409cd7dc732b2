//! `taskgate status --url URL [--token T] [--json]`: the operator console's overview from a
//! terminal — hosts, request types, queues and their workers as tables — with an exit code
//! scripts and health checks can use: non-zero when a request type's queue has no consumers.
//!
//! It reads `GET /console/api/overview` of a running host (`[console] enabled`). Plain HTTP
//! only, on purpose: the console is meant to be reached on loopback, through an SSH tunnel or
//! a proxy on the same machine, so the binary carries no HTTPS client for it.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("`{0}` is not an http:// URL of a host (e.g. http://127.0.0.1:8080)")]
    BadUrl(String),
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} did not answer with the console's overview: {reason}")]
    NotAnOverview { url: String, reason: String },
}

/// Reads the overview of the host at `base` (e.g. `http://127.0.0.1:8080`).
pub async fn fetch(base: &str, token: Option<&str>) -> Result<Value, StatusError> {
    let url = url::Url::parse(base).map_err(|_| StatusError::BadUrl(base.to_owned()))?;
    if url.scheme() != "http" {
        return Err(StatusError::BadUrl(base.to_owned()));
    }
    let host = url
        .host_str()
        .ok_or_else(|| StatusError::BadUrl(base.to_owned()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let path = format!("{}/console/api/overview", url.path().trim_end_matches('/'));
    let unreachable = |reason: String| StatusError::Unreachable {
        url: base.to_owned(),
        reason,
    };
    let exchange = async {
        let mut stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let authorization = token
            .map(|t| format!("Authorization: Bearer {}\r\n", t.trim()))
            .unwrap_or_default();
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{authorization}Accept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok::<_, StatusError>(response)
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
    parse_response(base, &response)
}

fn parse_response(url: &str, response: &[u8]) -> Result<Value, StatusError> {
    let not_overview = |reason: &str| StatusError::NotAnOverview {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| not_overview("no HTTP response"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| not_overview("no HTTP status"))?;
    let json: Option<Value> = serde_json::from_str(body).ok();
    if status != 200 {
        let message =
            json.as_ref()
                .and_then(|j| j.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| match status {
                    404 => "no console here: is [console] enabled = true in its plugins.toml?"
                        .to_owned(),
                    _ => body.chars().take(200).collect(),
                });
        return Err(StatusError::Refused {
            url: url.to_owned(),
            status,
            message,
        });
    }
    json.filter(|j| j.get("host").is_some())
        .ok_or_else(|| not_overview("the body is not the overview's JSON"))
}

/// The request types whose queue was seen without consumers.
pub fn without_workers(overview: &Value) -> Vec<String> {
    let queues = overview["queues"].as_array().cloned().unwrap_or_default();
    let types = overview["host"]["requestTypes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    types
        .iter()
        .filter(|t| {
            queues
                .iter()
                .any(|q| q["queue"] == t["queue"] && q["consumers"].as_u64() == Some(0))
        })
        .filter_map(|t| t["name"].as_str().map(printable))
        .collect()
}

/// The overview as tables: hosts, request types, queues.
pub fn render(overview: &Value) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let number = |v: &Value, digits: usize| match v.as_f64() {
        Some(n) => format!("{n:.digits$}"),
        None => "-".to_owned(),
    };
    let mut out = String::new();

    let mut hosts = vec![row(&[
        "HOST",
        "VERSION",
        "LISTEN",
        "UPTIME",
        "SOCKETS",
        "IN FLIGHT",
        "BROKER",
        "STATE",
    ])];
    let list = overview["hosts"].as_array().cloned().unwrap_or_default();
    let list = if list.is_empty() {
        vec![overview["host"].clone()]
    } else {
        list
    };
    for host in &list {
        let state = if host["gone"] == Value::Bool(true) {
            "GONE"
        } else if host["shuttingDown"] == Value::Bool(true) {
            "shutting down"
        } else if host["draining"] == Value::Bool(true) {
            "draining"
        } else {
            "up"
        };
        hosts.push(vec![
            text(&host["id"]).chars().take(8).collect(),
            text(&host["version"]),
            text(&host["listen"]),
            format!("{}s", text(&host["uptimeSeconds"])),
            text(&host["sockets"]),
            text(&host["inFlight"]),
            if host["brokerConnected"] == Value::Bool(true) {
                "connected".to_owned()
            } else {
                "DISCONNECTED".to_owned()
            },
            state.to_owned(),
        ]);
    }
    out.push_str(&table(&hosts));
    out.push('\n');

    let stats = overview["requestTypes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let queues = overview["queues"].as_array().cloned().unwrap_or_default();
    let mut types = vec![row(&[
        "REQUEST TYPE",
        "QUEUE",
        "REQ/S",
        "P50 MS",
        "P99 MS",
        "ERRORS (15 MIN)",
    ])];
    for t in overview["host"]["requestTypes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let s = stats
            .iter()
            .find(|s| s["name"] == t["name"])
            .cloned()
            .unwrap_or(Value::Null);
        let errors = s["errors"]
            .as_object()
            .map(|e| {
                e.iter()
                    .map(|(code, n)| format!("{code}:{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "-".to_owned());
        types.push(vec![
            text(&t["name"]),
            text(&t["queue"]),
            number(&s["requestsPerSecond"], 1),
            number(&s["p50Ms"], 1),
            number(&s["p99Ms"], 1),
            errors,
        ]);
    }
    out.push_str(&table(&types));
    out.push('\n');

    let mut rows = vec![row(&["QUEUE", "READY", "UNACKED", "WORKERS", "STATE"])];
    for q in &queues {
        let state = if let Some(error) = q["error"].as_str() {
            format!("ERROR: {error}")
        } else if q["consumers"].as_u64() == Some(0) {
            "NO WORKERS".to_owned()
        } else if q["growing"] == Value::Bool(true) {
            "FALLING BEHIND".to_owned()
        } else if q["saturated"] == Value::Bool(true) {
            "FALLING BEHIND (ALL WORKERS BUSY)".to_owned()
        } else {
            "ok".to_owned()
        };
        rows.push(vec![
            text(&q["queue"]),
            text(&q["ready"]),
            // `-`: the management API could not be read (the overview's `management` says why).
            text(&q["unacked"]),
            text(&q["consumers"]),
            state,
        ]);
    }
    out.push_str(&table(&rows));

    let failures = overview["failures"].as_array().cloned().unwrap_or_default();
    if !failures.is_empty() {
        out.push('\n');
        let mut rows = vec![row(&[
            "FAILED (LAST 10)",
            "HOST",
            "CODE",
            "CORRELATION ID",
            "MESSAGE",
        ])];
        for f in failures.iter().take(SHOWN_FAILURES) {
            rows.push(vec![
                text(&f["requestType"]),
                text(&f["host"]).chars().take(8).collect(),
                text(&f["code"]),
                text(&f["correlationId"]),
                text(&f["message"])
                    .chars()
                    .take(SHOWN_MESSAGE_CHARS)
                    .collect(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// The failures `taskgate status` prints (the console and `--json` have them all).
const SHOWN_FAILURES: usize = 10;
/// A failure's message is cut to this for a terminal line.
const SHOWN_MESSAGE_CHARS: usize = 60;

/// Control characters (an escape sequence in a plugin's name) become `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Left-aligned columns, two spaces apart. Cells are reduced to one printable line, so a
/// name from a plugin cannot move the terminal's cursor.
fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn overview() -> Value {
        json!({
            "host": {
                "id": "0f1e2d3c-aaaa-bbbb-cccc-000000000000", "version": "0.1.0",
                "listen": "127.0.0.1:8080", "uptimeSeconds": 12, "sockets": 3, "inFlight": 1,
                "brokerConnected": true, "draining": false, "shuttingDown": false, "plugins": [],
                "requestTypes": [
                    {"name": "text.echo", "plugin": "text", "queue": "q.echo", "streams": false},
                    {"name": "text.count\u{1b}[2J", "plugin": "text", "queue": "q.count", "streams": false}
                ]
            },
            "hosts": [],
            "queues": [
                {"queue": "q.echo", "ready": 0, "consumers": 2, "growing": false, "alarm": false, "error": null},
                {"queue": "q.count", "ready": 40, "consumers": 0, "growing": true, "alarm": true, "error": null}
            ],
            "requestTypes": [
                {"name": "text.echo", "requestsPerSecond": 12.5, "p50Ms": 3.2, "p99Ms": 9.9,
                 "errors": {"timeout": 2}, "series": []}
            ],
            "sampleEveryMs": 5000,
            "failures": [
                {"requestType": "text.echo", "code": "TIMEOUT", "message": "no answer\u{1b}[31m in 30 s",
                 "correlationId": "c0ffee00-0000-0000-0000-000000000000", "traceparent": "00-x-y-01",
                 "host": "0f1e2d3c-aaaa-bbbb-cccc-000000000000", "atMs": 1}
            ]
        })
    }

    #[test]
    fn the_tables_show_hosts_types_and_queues_with_workers_and_no_control_characters() {
        let text = render(&overview());
        assert!(text.contains("0f1e2d3c  0.1.0"), "{text}");
        assert!(text.contains("text.echo"), "{text}");
        assert!(text.contains("12.5"), "{text}");
        assert!(text.contains("timeout:2"), "{text}");
        assert!(text.contains("NO WORKERS"), "{text}");
        assert!(text.contains("UNACKED"), "{text}");
        assert!(
            text.contains("c0ffee00-0000-0000-0000-000000000000"),
            "{text}"
        );
        assert!(text.contains("no answer?[31m in 30 s"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn a_type_whose_queue_has_no_consumers_is_named() {
        assert_eq!(without_workers(&overview()), vec!["text.count?[2J"]);
        let mut fine = overview();
        fine["queues"][1]["consumers"] = json!(1);
        assert!(without_workers(&fine).is_empty());
    }

    #[test]
    fn refusals_and_strangers_read_clearly() {
        let refused = parse_response(
            "http://h",
            b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n\r\n{\"error\":\"needs the role\"}",
        )
        .unwrap_err();
        assert!(
            refused.to_string().contains("403: needs the role"),
            "{refused}"
        );
        let missing = parse_response("http://h", b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert!(
            missing.to_string().contains("[console] enabled"),
            "{missing}"
        );
        let odd = parse_response("http://h", b"HTTP/1.1 200 OK\r\n\r\n[]").unwrap_err();
        assert!(odd.to_string().contains("not the overview"), "{odd}");
        assert!(matches!(
            futures_util::FutureExt::now_or_never(fetch("https://h", None)),
            Some(Err(StatusError::BadUrl(_)))
        ));
    }
}
