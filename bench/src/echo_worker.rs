//! `taskgate-bench echo-worker`: the echo worker of the streaming case, written with the
//! project's Rust worker SDK (`taskgate-worker`), run as its own process.
//!
//! It answers like the example worker's `echo` (the result is the payload), and streams
//! `"chunks": n` chunks first — but each chunk is `{"index":i,"pad":"aaa…"}` padded to
//! `"chunkBytes"` bytes, so the benchmark can stream chunks of a realistic size (the
//! example worker's chunks are a fixed `{"index":i}`). The chunk body is built once per
//! request, so the worker spends its time on AMQP, not on JSON.

use serde_json::value::RawValue;
use serde_json::Value;
use taskgate_worker::{Context, TaskError, Worker};

/// At most this many chunks per request, and this many bytes per chunk.
const MAX_CHUNKS: u64 = 100_000;
const MAX_CHUNK_BYTES: u64 = 16 * 1024 * 1024;

/// Serves `queue` until SIGINT/SIGTERM (the benchmark stops it); logs `worker ready`.
pub async fn serve(amqp_url: String, queue: String, prefetch: u16) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info,lapin=warn"))
        .with_writer(std::io::stderr)
        .try_init();
    Worker::builder()
        .amqp_url(amqp_url)
        .prefetch(prefetch)
        .handle(queue, echo)
        .build()
        .run(shutdown_signal())
        .await?;
    Ok(())
}

async fn echo(payload: Value, ctx: Context) -> Result<Value, TaskError> {
    let field = |name: &str, max: u64| -> Result<u64, TaskError> {
        match payload.get(name) {
            None => Ok(0),
            Some(v) => v.as_u64().filter(|n| *n <= max).ok_or_else(|| {
                TaskError::invalid_payload(format!("/{name} must be an integer from 0 to {max}"))
            }),
        }
    };
    let chunks = field("chunks", MAX_CHUNKS)?;
    let chunk_bytes = field("chunkBytes", MAX_CHUNK_BYTES)?;
    for index in 0..chunks {
        let chunk = chunk_of_size(index, chunk_bytes as usize);
        ctx.chunk(&chunk).await?;
    }
    Ok(payload)
}

/// `{"index":i,"pad":"aaa…"}` of `bytes` bytes (or the smallest such object).
pub fn chunk_of_size(index: u64, bytes: usize) -> Box<RawValue> {
    let empty = format!(r#"{{"index":{index},"pad":""}}"#);
    let pad = "a".repeat(bytes.saturating_sub(empty.len()));
    let text = format!(r#"{{"index":{index},"pad":"{pad}"}}"#);
    // Digits and `a`s only: always valid JSON.
    RawValue::from_string(text).unwrap_or_default()
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use taskgate_worker::testing::TestRequest;

    #[test]
    fn chunks_have_the_requested_size() {
        for (index, size) in [(0, 100), (7, 0), (12345, 1000)] {
            let chunk = chunk_of_size(index, size);
            assert_eq!(chunk.get().len(), size.max(chunk.get().len()));
            let v: Value = serde_json::from_str(chunk.get()).unwrap();
            assert_eq!(v["index"], index);
        }
        assert_eq!(chunk_of_size(3, 100).get().len(), 100);
    }

    #[tokio::test]
    async fn streams_padded_chunks_then_echoes_the_payload() {
        let payload = serde_json::json!({"chunks": 3, "chunkBytes": 50, "pad": "x"});
        let replies = TestRequest::new(&payload).run(echo).await;
        assert_eq!(replies.chunks.len(), 3);
        for (i, chunk) in replies.chunks.iter().enumerate() {
            assert_eq!(chunk["index"], i);
            assert_eq!(chunk.to_string().len(), 50);
        }
        assert_eq!(replies.result.unwrap(), payload);
    }

    #[tokio::test]
    async fn out_of_range_steering_is_an_invalid_payload() {
        let replies = TestRequest::new(serde_json::json!({"chunks": -1}))
            .run(echo)
            .await;
        assert_eq!(replies.chunks.len(), 0);
        assert!(replies.result.is_err());
    }
}
