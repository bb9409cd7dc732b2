//! The example workers for the example plugins: `echo`, `text.wordcount` and
//! `demo.countdown`.
//!
//! ```sh
//! taskgate-example-workers [--amqp-url URL] [--queue TYPE=QUEUE]... [--only TYPE]... [--prefetch N]
//! ```
//!
//! `echo` conventions (the Python and Node example workers follow them too): the result is
//! the payload; if the payload is an object with `"chunks": n` (0..=10000) it first streams
//! n chunks `{ "index": i }`; with `"delayMs": n` it waits n ms first (cancellable); with
//! `"fail": { "code"?: string, "message": string }` it replies with that error instead.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use taskgate_worker::{Context, TaskError, Worker};

/// Example workers for taskgate's example plugins.
#[derive(Debug, Parser)]
#[command(name = "taskgate-example-workers", version, about)]
struct Cli {
    /// RabbitMQ URL.
    #[arg(long, env = "TASKGATE_AMQP_URL", default_value = taskgate_worker::amqp::DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// Consume TYPE's requests from QUEUE instead of its default queue (repeatable).
    #[arg(long = "queue", value_name = "TYPE=QUEUE", value_parser = parse_queue)]
    queues: Vec<(String, String)>,
    /// Serve only these request types (repeatable; default: all three).
    #[arg(long = "only", value_name = "TYPE")]
    only: Vec<String>,
    /// Requests handled at once.
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
}

fn parse_queue(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((t, q)) if !t.is_empty() && !q.is_empty() => Ok((t.to_owned(), q.to_owned())),
        _ => Err(format!("expected TYPE=QUEUE, got `{text}`")),
    }
}

const TYPES: [(&str, &str); 3] = [
    ("echo", "taskgate.echo"),
    ("text.wordcount", "taskgate.text.wordcount"),
    ("demo.countdown", "taskgate.demo.countdown"),
];

async fn echo(payload: Value, ctx: Context) -> Result<Value, TaskError> {
    if let Some(delay) = payload.get("delayMs").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(delay.min(3_600_000))).await;
    }
    if let Some(fail) = payload.get("fail") {
        let message = fail
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("echo was asked to fail");
        return Err(match fail.get("code").and_then(Value::as_str) {
            Some(code) => TaskError::with_code(code, message),
            None => TaskError::new(message),
        });
    }
    let chunks = payload
        .get("chunks")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(10_000);
    for index in 0..chunks {
        ctx.chunk(json!({ "index": index })).await?;
    }
    Ok(payload)
}

/// Counts words (whitespace-separated), lines (as `str::lines` does) and characters
/// (Unicode scalar values).
fn count(text: &str) -> Value {
    json!({
        "words": text.split_whitespace().count(),
        "lines": text.lines().count(),
        "chars": text.chars().count(),
    })
}

async fn wordcount(payload: Value, _ctx: Context) -> Result<Value, TaskError> {
    let text = payload
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| TaskError::invalid_payload("`text` must be a string"))?;
    Ok(count(text))
}

async fn countdown(payload: Value, ctx: Context) -> Result<Value, TaskError> {
    let from = payload
        .get("from")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(10_000);
    let interval = Duration::from_millis(
        payload
            .get("intervalMs")
            .and_then(Value::as_u64)
            .unwrap_or(1000)
            .min(60_000),
    );
    for remaining in (0..from).rev() {
        tokio::time::sleep(interval).await;
        ctx.chunk(json!({ "remaining": remaining })).await?;
    }
    Ok(json!({ "done": true }))
}

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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TASKGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

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
    use super::*;

    #[test]
    fn counts_unicode_words_lines_and_chars() {
        assert_eq!(
            count("héllo wörld\nsecond line  here"),
            json!({"words": 5, "lines": 2, "chars": 29})
        );
        assert_eq!(count(""), json!({"words": 0, "lines": 0, "chars": 0}));
        assert_eq!(
            count("日本語 テキスト"),
            json!({"words": 2, "lines": 1, "chars": 8})
        );
    }

    #[test]
    fn queue_overrides_parse() {
        assert_eq!(
            parse_queue("echo=q.1").unwrap(),
            ("echo".to_owned(), "q.1".to_owned())
        );
        assert!(parse_queue("echo").is_err());
        assert!(parse_queue("=q").is_err());
    }
}
