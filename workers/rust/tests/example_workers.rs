//! The `taskgate-example-workers` binary against the real RabbitMQ: its CLI, the three
//! request types as the host would send them, cancellation, and SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_taskgate-example-workers");

/// The binary, with its stderr lines.
struct Workers {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Workers {
    fn spawn(args: &[&str]) -> Workers {
        let mut child = Command::new(BIN)
            .args(args)
            .env("TASKGATE_LOG", "info,lapin=warn")
            .env_remove("TASKGATE_AMQP_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the binary runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[workers] {line}");
                let _ = tx.send(line);
            }
        });
        Workers {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    async fn wait_for_line(&mut self, needle: &str) -> String {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("stderr ended without `{needle}`: {:#?}", self.seen);
        })
        .await
        .unwrap_or_else(|_| panic!("no `{needle}` in time: {:#?}", self.seen))
    }

    async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_echo_wordcount_and_countdown_and_stops_on_sigterm() {
    let mut host = Host::connect().await;
    let (echo, wordcount, countdown) = (unique("echo"), unique("wordcount"), unique("countdown"));
    for queue in [&echo, &wordcount, &countdown] {
        host.declare_queue(queue, &[]).await;
    }
    let mut workers = Workers::spawn(&[
        "--amqp-url",
        AMQP_URL,
        "--queue",
        &format!("echo={echo}"),
        "--queue",
        &format!("text.wordcount={wordcount}"),
        "--queue",
        &format!("demo.countdown={countdown}"),
        "--prefetch",
        "4",
    ]);
    let ready = workers.wait_for_line("worker ready").await;
    assert!(ready.contains("prefetch=4"), "{ready}");

    // echo: chunks, then the payload unchanged.
    let id = host
        .request(&echo, "echo", br#"{"chunks":2,"note":"hi"}"#)
        .await;
    let mut others = Vec::new();
    let replies = host.replies_of(&id, &mut others).await;
    let bodies: Vec<_> = replies.iter().map(|r| (kind(r), seq(r), json(r))).collect();
    assert_eq!(
        bodies,
        vec![
            ("chunk".to_owned(), Some(0), json!({"index": 0})),
            ("chunk".to_owned(), Some(1), json!({"index": 1})),
            (
                "result".to_owned(),
                None,
                json!({"chunks": 2, "note": "hi"})
            ),
        ]
    );

    // echo: asked to fail.
    let id = host
        .request(
            &echo,
            "echo",
            br#"{"fail":{"code":"E_TEAPOT","message":"short and stout"}}"#,
        )
        .await;
    let reply = host.final_reply(&id).await;
    assert_eq!(
        (kind(&reply), json(&reply)),
        (
            "error".to_owned(),
            json!({"code": "E_TEAPOT", "message": "short and stout"})
        )
    );

    // text.wordcount
    let id = host
        .request(
            &wordcount,
            "text.wordcount",
            "{\"text\":\"héllo wörld\\nbye\"}".as_bytes(),
        )
        .await;
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply), json!({"words": 3, "lines": 2, "chars": 15}));

    // demo.countdown
    let id = host
        .request(
            &countdown,
            "demo.countdown",
            br#"{"from":3,"intervalMs":10}"#,
        )
        .await;
    let replies = host.replies_of(&id, &mut others).await;
    let bodies: Vec<_> = replies.iter().map(json).collect();
    assert_eq!(
        bodies,
        vec![
            json!({"remaining": 2}),
            json!({"remaining": 1}),
            json!({"remaining": 0}),
            json!({"done": true})
        ]
    );

    // A cancellation ends a long echo delay at once.
    let id = host.request(&echo, "echo", br#"{"delayMs":60000}"#).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    host.cancel(&id).await;
    let reply = host.final_reply(&id).await;
    assert_eq!(json(&reply)["code"], json!("CANCELLED"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(others.is_empty());

    let status = workers.terminate().await;
    assert!(status.success(), "{status}");
    workers.wait_for_line("worker stopped").await;
    for queue in [&echo, &wordcount, &countdown] {
        assert_eq!(host.queue_state(queue).await, Some((0, 0)), "{queue}");
        host.delete_queue(queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_serves_the_types_asked_for() {
    let mut host = Host::connect().await;
    let (echo, wordcount) = (unique("only-echo"), unique("only-wordcount"));
    for queue in [&echo, &wordcount] {
        host.declare_queue(queue, &[]).await;
    }
    let mut workers = Workers::spawn(&[
        "--amqp-url",
        AMQP_URL,
        "--only",
        "text.wordcount",
        "--queue",
        &format!("echo={echo}"),
        "--queue",
        &format!("text.wordcount={wordcount}"),
    ]);
    workers.wait_for_line("worker ready").await;
    let id = host
        .request(&wordcount, "text.wordcount", br#"{"text":"a b"}"#)
        .await;
    assert_eq!(json(&host.final_reply(&id).await)["words"], json!(2));
    assert_eq!(
        host.queue_state(&echo).await,
        Some((0, 0)),
        "nobody consumes echo"
    );
    assert_eq!(host.queue_state(&wordcount).await.map(|s| s.1), Some(1));
    assert!(workers.terminate().await.success());
    for queue in [&echo, &wordcount] {
        host.delete_queue(queue).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_with_a_clear_message() {
    for (args, exit_code, needle) in [
        (
            vec!["--amqp-url", "http://127.0.0.1"],
            1,
            "invalid AMQP URL",
        ),
        (
            vec!["--amqp-url", "amqp://guest:nope@127.0.0.1:5672/%2f"],
            1,
            "ACCESS_REFUSED",
        ),
        (vec!["--only", "nope"], 2, "unknown request type `nope`"),
        (vec!["--queue", "echo"], 2, "expected TYPE=QUEUE"),
        (vec!["--prefetch", "0"], 2, "--prefetch"),
    ] {
        let output = tokio::time::timeout(
            WAIT,
            Command::new(BIN)
                .args(&args)
                .env_remove("TASKGATE_AMQP_URL")
                .output(),
        )
        .await
        .expect("exits at once")
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(exit_code), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
