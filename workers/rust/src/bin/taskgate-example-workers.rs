//! The example workers for the example plugins: `echo`, `text.wordcount` and
//! `demo.countdown`, written with the SDK as a worker author would.
//!
//! ```sh
//! taskgate-example-workers [--amqp-url URL] [--queue TYPE=QUEUE]... [--only TYPE]... [--prefetch N]
//! ```
//!
//! Logs go to stderr (`TASKGATE_LOG`, else `RUST_LOG`, default
//! `info,lapin=warn,lapin::channel=off`: lapin logs every channel the broker closes at
//! ERROR under `lapin::channel`, including the SDK's look at a queue the host has not
//! declared yet; the SDK logs what such a close means itself); the line `worker ready`
//! appears once it consumes. SIGTERM or SIGINT stops it gracefully.
//!
//! # The request types
//!
//! `echo` (queue `taskgate.echo`) answers with its payload, unchanged. A payload that is
//! an object may steer it (the Python and Node example workers follow the same rules):
//! - `"delayMs": n` (integer 0..=600000): first waits n ms (a cancellation ends the wait);
//! - `"chunks": n` (integer 0..=10000): then streams n chunks `{ "index": 0 }` …
//!   `{ "index": n-1 }`;
//! - `"fail": { "code"?: string, "message": string, "details"?: any }`: then replies
//!   with that error instead of the result (`code` defaults to `WORKER_ERROR`).
//! - `"retryableFailures": n` (integer 0..=100; this worker only): attempts 1 to n fail
//!   with a retryable `FLAKY` error (protocol §3.12), before anything else; under the
//!   request type's retry policy attempt n + 1 then goes on as above.
//!
//! A steering field of the wrong type or out of range is answered `INVALID_PAYLOAD` before
//! anything else happens.
//!
//! `text.wordcount` (queue `taskgate.text.wordcount`): `{ "text": string }` →
//! `{ "words", "lines", "chars" }`: words are whitespace-separated, lines are counted as
//! Rust's `str::lines` counts them (a final line ending does not start a new line),
//! chars are Unicode scalar values.
//!
//! `demo.countdown` (queue `taskgate.demo.countdown`):
//! `{ "from": n (0..=10000), "intervalMs"?: ms (0..=60000, default 1000) }` → one chunk
//! every `intervalMs`: `{ "remaining": n-1 }` … `{ "remaining": 0 }`, then
//! `{ "done": true }`. A cancellation stops it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use taskgate_worker::amqp::DEFAULT_PREFETCH;
use taskgate_worker::{Context, TaskError, Worker, DEFAULT_AMQP_URL};

/// Example workers for taskgate's example plugins (echo, text.wordcount, demo.countdown).
#[derive(Debug, Parser)]
#[command(name = "taskgate-example-workers", version)]
struct Cli {
    /// RabbitMQ URL.
    #[arg(long, env = "TASKGATE_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// Consume TYPE's requests from QUEUE instead of its default queue (repeatable).
    #[arg(long = "queue", value_name = "TYPE=QUEUE", value_parser = parse_queue)]
    queues: Vec<(String, String)>,
    /// Serve only this request type (repeatable; default: all three).
    #[arg(long = "only", value_name = "TYPE", value_parser = parse_type)]
    only: Vec<String>,
    /// Requests of each type handled at once (the consumer prefetch).
    #[arg(long, default_value_t = DEFAULT_PREFETCH, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
}

/// The request types served, with their default queues.
const TYPES: [(&str, &str); 3] = [
    ("echo", "taskgate.echo"),
    ("text.wordcount", "taskgate.text.wordcount"),
    ("demo.countdown", "taskgate.demo.countdown"),
];

fn parse_type(text: &str) -> Result<String, String> {
    if TYPES.iter().any(|(t, _)| *t == text) {
        Ok(text.to_owned())
    } else {
        let known: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
        Err(format!(
            "unknown request type `{text}` (known: {})",
            known.join(", ")
        ))
    }
}

fn parse_queue(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((t, q)) if !q.is_empty() => Ok((parse_type(t)?, q.to_owned())),
        _ => Err(format!("expected TYPE=QUEUE, got `{text}`")),
    }
}

// ---------------------------------------------------------------------------------------
// echo

const MAX_ECHO_CHUNKS: u64 = 10_000;
const MAX_ECHO_DELAY_MS: u64 = 600_000;

/// What an echo payload asks for, checked before anything is done.
struct EchoSteering {
    delay: Option<Duration>,
    chunks: u64,
    fail: Option<TaskError>,
    retryable_failures: u64,
}

fn echo_steering(payload: &Value) -> Result<EchoSteering, TaskError> {
    let mut steering = EchoSteering {
        delay: None,
        chunks: 0,
        fail: None,
        retryable_failures: 0,
    };
    let Value::Object(fields) = payload else {
        return Ok(steering);
    };
    if let Some(delay) = fields.get("delayMs") {
        let ms = bounded_integer(delay, "/delayMs", MAX_ECHO_DELAY_MS)?;
        steering.delay = Some(Duration::from_millis(ms));
    }
    if let Some(chunks) = fields.get("chunks") {
        steering.chunks = bounded_integer(chunks, "/chunks", MAX_ECHO_CHUNKS)?;
    }
    if let Some(fail) = fields.get("fail") {
        steering.fail = Some(requested_failure(fail)?);
    }
    if let Some(failures) = fields.get("retryableFailures") {
        steering.retryable_failures = bounded_integer(failures, "/retryableFailures", 100)?;
    }
    Ok(steering)
}

fn bounded_integer(value: &Value, pointer: &str, max: u64) -> Result<u64, TaskError> {
    value
        .as_u64()
        .filter(|n| *n <= max)
        .ok_or_else(|| invalid(pointer, &format!("must be an integer from 0 to {max}")))
}

fn requested_failure(fail: &Value) -> Result<TaskError, TaskError> {
    let fail: &Map<String, Value> = fail
        .as_object()
        .ok_or_else(|| invalid("/fail", "must be an object { code?, message, details? }"))?;
    let message = fail
        .get("message")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("/fail/message", "must be a string"))?;
    let mut error = match fail.get("code") {
        None => TaskError::new(message),
        Some(Value::String(code)) => TaskError::with_code(code.as_str(), message),
        Some(_) => return Err(invalid("/fail/code", "must be a string")),
    };
    error.details = fail.get("details").cloned();
    Ok(error)
}

fn invalid(pointer: &str, message: &str) -> TaskError {
    TaskError::invalid_payload(format!("{pointer} {message}"))
        .with_details(json!({ "problems": [ { "pointer": pointer, "message": message } ] }))
}

async fn echo(payload: Value, ctx: Context) -> Result<Value, TaskError> {
    let steering = echo_steering(&payload)?;
    if u64::from(ctx.attempt()) <= steering.retryable_failures {
        return Err(TaskError::with_code(
            "FLAKY",
            format!("attempt {} fails, as asked", ctx.attempt()),
        )
        .retryable());
    }
    if let Some(delay) = steering.delay {
        ctx.until_cancelled(tokio::time::sleep(delay)).await?;
    }
    for index in 0..steering.chunks {
        ctx.chunk(json!({ "index": index })).await?;
    }
    match steering.fail {
        Some(error) => Err(error),
        None => Ok(payload),
    }
}

// ---------------------------------------------------------------------------------------
// text.wordcount

#[derive(Debug, Deserialize)]
struct WordcountRequest {
    text: String,
}

#[derive(Debug, PartialEq, Serialize)]
struct WordcountResult {
    words: usize,
    lines: usize,
    chars: usize,
}

fn count(text: &str) -> WordcountResult {
    WordcountResult {
        words: text.split_whitespace().count(),
        lines: text.lines().count(),
        chars: text.chars().count(),
    }
}

async fn wordcount(request: WordcountRequest, _ctx: Context) -> Result<WordcountResult, TaskError> {
    Ok(count(&request.text))
}

// ---------------------------------------------------------------------------------------
// demo.countdown

const MAX_COUNTDOWN_FROM: u32 = 10_000;
const MAX_COUNTDOWN_INTERVAL_MS: u32 = 60_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CountdownRequest {
    from: u32,
    #[serde(default = "default_interval_ms")]
    interval_ms: u32,
}

fn default_interval_ms() -> u32 {
    1000
}

async fn countdown(request: CountdownRequest, ctx: Context) -> Result<Value, TaskError> {
    if request.from > MAX_COUNTDOWN_FROM {
        return Err(invalid(
            "/from",
            &format!("must be from 0 to {MAX_COUNTDOWN_FROM}"),
        ));
    }
    if request.interval_ms > MAX_COUNTDOWN_INTERVAL_MS {
        return Err(invalid(
            "/intervalMs",
            &format!("must be from 0 to {MAX_COUNTDOWN_INTERVAL_MS}"),
        ));
    }
    let interval = Duration::from_millis(u64::from(request.interval_ms));
    for remaining in (0..request.from).rev() {
        ctx.until_cancelled(tokio::time::sleep(interval)).await?;
        ctx.chunk(json!({ "remaining": remaining })).await?;
    }
    Ok(json!({ "done": true }))
}

// ---------------------------------------------------------------------------------------

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TASKGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,lapin::channel=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

// One thread: the handlers are short and never block, and lapin does its socket I/O on a
// thread of its own. It cost less CPU per request than the multi-thread runtime, at equal
// or better throughput (docs/performance.md, "The Rust example workers' runtime").
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();

    let overrides: BTreeMap<String, String> = cli.queues.into_iter().collect();
    let mut builder = Worker::builder()
        .amqp_url(cli.amqp_url)
        .prefetch(cli.prefetch);
    for (request_type, default_queue) in TYPES {
        if !cli.only.is_empty() && !cli.only.iter().any(|t| t == request_type) {
            continue;
        }
        let queue = overrides
            .get(request_type)
            .cloned()
            .unwrap_or_else(|| default_queue.to_owned());
        tracing::debug!(request_type, queue, "serving");
        builder = match request_type {
            "echo" => builder.handle(queue, echo),
            "text.wordcount" => builder.handle(queue, wordcount),
            _ => builder.handle(queue, countdown),
        };
    }
    match builder.build().run(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskgate-example-workers: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Instant;
    use taskgate_worker::testing::TestRequest;

    #[test]
    fn counts_unicode_words_lines_and_chars() {
        assert_eq!(
            count("héllo wörld\nsecond line  here"),
            WordcountResult {
                words: 5,
                lines: 2,
                chars: 29
            }
        );
        assert_eq!(
            count(""),
            WordcountResult {
                words: 0,
                lines: 0,
                chars: 0
            }
        );
        assert_eq!(
            count("日本語 テキスト"),
            WordcountResult {
                words: 2,
                lines: 1,
                chars: 8
            }
        );
        assert_eq!(
            count("a\n\nb\n"),
            WordcountResult {
                words: 2,
                lines: 3,
                chars: 5
            }
        );
        assert_eq!(
            count("e\u{301}\r\n"),
            WordcountResult {
                words: 1,
                lines: 1,
                chars: 4
            }
        );
    }

    #[tokio::test]
    async fn wordcount_answers_and_refuses_a_payload_without_text() {
        let replies = TestRequest::new(json!({"text": "two words"}))
            .run(wordcount)
            .await;
        assert_eq!(
            replies.result,
            Ok(json!({"words": 2, "lines": 1, "chars": 9}))
        );
        let replies = TestRequest::new(json!({"text": 3})).run(wordcount).await;
        let error = replies.result.unwrap_err();
        assert_eq!(error.code, "INVALID_PAYLOAD");
        assert_eq!(
            error.details.unwrap()["problems"][0]["pointer"],
            json!("/text")
        );
    }

    #[tokio::test]
    async fn echo_returns_any_payload_unchanged() {
        for payload in [
            json!(null),
            json!("x"),
            json!([1, {"a": 2}]),
            json!({"chunks": 0, "k": "v"}),
        ] {
            let replies = TestRequest::new(payload.clone()).run(echo).await;
            assert_eq!(replies.result, Ok(payload));
            assert!(replies.chunks.is_empty());
        }
    }

    #[tokio::test]
    async fn echo_streams_the_chunks_asked_for_then_the_payload() {
        let payload = json!({"chunks": 3, "note": "x"});
        let replies = TestRequest::new(payload.clone()).run(echo).await;
        assert_eq!(
            replies.chunks,
            vec![
                json!({"index": 0}),
                json!({"index": 1}),
                json!({"index": 2})
            ]
        );
        assert_eq!(replies.result, Ok(payload));
    }

    #[tokio::test]
    async fn echo_fails_as_asked_after_its_chunks() {
        let replies = TestRequest::new(json!({
            "chunks": 1,
            "fail": {"code": "E_TEAPOT", "message": "short and stout", "details": [1]}
        }))
        .run(echo)
        .await;
        assert_eq!(replies.chunks.len(), 1);
        assert_eq!(
            replies.result,
            Err(TaskError::with_code("E_TEAPOT", "short and stout").with_details(json!([1])))
        );
        let replies = TestRequest::new(json!({"fail": {"message": "m"}}))
            .run(echo)
            .await;
        assert_eq!(replies.result.unwrap_err().code, "WORKER_ERROR");
    }

    #[tokio::test]
    async fn echo_refuses_steering_fields_out_of_range() {
        for (payload, pointer) in [
            (json!({"chunks": 10_001}), "/chunks"),
            (json!({"chunks": -1}), "/chunks"),
            (json!({"chunks": "3"}), "/chunks"),
            (json!({"delayMs": 1.5}), "/delayMs"),
            (json!({"fail": "x"}), "/fail"),
            (json!({"fail": {"code": "E"}}), "/fail/message"),
            (json!({"fail": {"code": 1, "message": "m"}}), "/fail/code"),
        ] {
            let replies = TestRequest::new(payload.clone()).run(echo).await;
            let error = replies.result.unwrap_err();
            assert_eq!(error.code, "INVALID_PAYLOAD", "{payload}");
            assert_eq!(
                error.details.unwrap()["problems"][0]["pointer"],
                json!(pointer)
            );
            assert!(replies.chunks.is_empty());
        }
    }

    #[tokio::test]
    async fn echo_waits_and_a_cancellation_ends_the_wait() {
        let started = Instant::now();
        let replies = TestRequest::new(json!({"delayMs": 50})).run(echo).await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(replies.result.is_ok());

        let started = Instant::now();
        let replies = TestRequest::new(json!({"delayMs": 60_000}))
            .cancel_after(Duration::from_millis(20))
            .run(echo)
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(replies.result.unwrap_err().code, "CANCELLED");
    }

    #[tokio::test]
    async fn countdown_streams_remaining_down_to_zero_then_done() {
        let started = Instant::now();
        let replies = TestRequest::new(json!({"from": 3, "intervalMs": 10}))
            .run(countdown)
            .await;
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(
            replies.chunks,
            vec![
                json!({"remaining": 2}),
                json!({"remaining": 1}),
                json!({"remaining": 0})
            ]
        );
        assert_eq!(replies.result, Ok(json!({"done": true})));
    }

    #[tokio::test]
    async fn countdown_stops_when_cancelled() {
        let started = Instant::now();
        let replies = TestRequest::new(json!({"from": 100, "intervalMs": 10}))
            .cancel_after(Duration::from_millis(35))
            .run(countdown)
            .await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(!replies.chunks.is_empty() && replies.chunks.len() < 10);
        assert_eq!(replies.result.unwrap_err().code, "CANCELLED");
    }

    #[tokio::test]
    async fn countdown_refuses_bad_payloads() {
        for (payload, pointer) in [
            (json!({"from": 10_001}), "/from"),
            (json!({"from": 1, "intervalMs": 60_001}), "/intervalMs"),
            (json!({"from": -1}), "/from"),
            (json!({}), ""),
        ] {
            let error = TestRequest::new(payload)
                .run(countdown)
                .await
                .result
                .unwrap_err();
            assert_eq!(error.code, "INVALID_PAYLOAD");
            assert_eq!(
                error.details.unwrap()["problems"][0]["pointer"],
                json!(pointer)
            );
        }
    }

    #[test]
    fn the_cli_checks_types_and_queue_overrides() {
        assert_eq!(
            parse_queue("echo=q.1").unwrap(),
            ("echo".to_owned(), "q.1".to_owned())
        );
        assert!(parse_queue("echo").is_err());
        assert!(parse_queue("echo=").is_err());
        assert!(parse_queue("=q")
            .unwrap_err()
            .contains("unknown request type"));
        assert!(parse_type("nope")
            .unwrap_err()
            .contains("known: echo, text.wordcount, demo.countdown"));
        let cli = Cli::try_parse_from([
            "w",
            "--queue",
            "echo=a",
            "--only",
            "echo",
            "--only",
            "demo.countdown",
            "--prefetch",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.only, ["echo", "demo.countdown"]);
        assert_eq!(cli.prefetch, 4);
        assert!(Cli::try_parse_from(["w", "--prefetch", "0"]).is_err());
        assert_eq!(Cli::try_parse_from(["w"]).unwrap().prefetch, 16);
    }
}
