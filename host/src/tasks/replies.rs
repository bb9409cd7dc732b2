//! A worker's reply to a detached task, written to the store: what every host does with a
//! message from the shared task-reply queue before it acks it (at least once into the
//! store; the store drops a chunk it has, and keeps only the first outcome).
//!
//! The checks are those of the gateway's relay (protocol §3.3): a chunk whose body is not
//! JSON is dropped, a result that is not JSON or a malformed error ends the task
//! `WORKER_ERROR`, a body over `max_reply_bytes` ends it `WORKER_ERROR` too.

use std::sync::Arc;

use serde_json::value::RawValue;
use taskgate_protocol::{ErrorBody, ErrorCode, ReplyKind, WorkerErrorBody};
use uuid::Uuid;

use super::{Outcome, StoreError, TaskState, TaskStore};
use crate::broker::{reply_json, IncomingReply};
use crate::error::RequestError;

/// What became of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// A new chunk.
    Chunk,
    /// The task's outcome: the caller tells workers to stop when it is an error the host
    /// decided (`cancel` says so).
    Ended { cancel: bool },
    /// Nothing kept: a duplicate, a reply to an ended or unknown task, or a bad reply.
    Dropped(&'static str),
}

/// Writes `reply` to the store. An error means the store could not be reached: the reply
/// must not be acked (it comes again).
pub async fn keep(
    store: &dyn TaskStore,
    reply: IncomingReply,
    max_reply_bytes: usize,
) -> Result<Kept, StoreError> {
    let Some(correlation_id) = reply
        .correlation_id
        .as_deref()
        .and_then(|c| Uuid::parse_str(c).ok())
    else {
        return Ok(Kept::Dropped("no valid correlation id"));
    };
    let Some(kind) = reply.kind.as_deref().and_then(ReplyKind::parse) else {
        return Ok(Kept::Dropped("an unknown `type`"));
    };
    let size = reply.body.len();
    if size > max_reply_bytes {
        let error = RequestError::ReplyTooLarge {
            size,
            limit: max_reply_bytes,
        }
        .to_body();
        return end(store, correlation_id, failed(&error), true).await;
    }
    match kind {
        ReplyKind::Chunk => {
            let Some(data) = reply_json(reply.body) else {
                return Ok(Kept::Dropped("a chunk whose body is not JSON"));
            };
            let seq = match reply.seq.and_then(|s| u64::try_from(s).ok()) {
                Some(seq) => seq,
                // Without `x-seq` (allowed by §2.3), the next after what the store has.
                None => match store.record(correlation_id).await? {
                    Some(record) => record.last_seq.map_or(0, |last| last + 1),
                    None => return Ok(Kept::Dropped("a reply to an unknown task")),
                },
            };
            Ok(if store.append(correlation_id, seq, &data).await? {
                Kept::Chunk
            } else {
                Kept::Dropped("a chunk the task has, or a task that ended or is unknown")
            })
        }
        ReplyKind::Result => match reply_json(reply.body) {
            Some(data) => {
                let outcome = Outcome {
                    state: TaskState::Succeeded,
                    response: Arc::from(data),
                };
                end(store, correlation_id, outcome, false).await
            }
            None => {
                let error = ErrorBody::new(
                    ErrorCode::WorkerError,
                    "the worker's result was not valid JSON",
                );
                end(store, correlation_id, failed(&error), false).await
            }
        },
        ReplyKind::Error => {
            let error = match serde_json::from_slice::<WorkerErrorBody>(&reply.body) {
                Ok(body) => body.into_error_body(),
                Err(_) => ErrorBody::new(
                    ErrorCode::WorkerError,
                    "the worker reported an error in a malformed reply",
                ),
            };
            end(store, correlation_id, failed(&error), false).await
        }
    }
}

/// An error outcome: `cancelled` when the error says so, `failed` otherwise; the response
/// is the error object the client gets.
pub fn failed(error: &ErrorBody) -> Outcome {
    let state = if error.code == ErrorCode::Cancelled.as_str() {
        TaskState::Cancelled
    } else {
        TaskState::Failed
    };
    let text = serde_json::to_string(error).unwrap_or_else(|_| "{}".to_owned());
    let response = RawValue::from_string(text)
        .map(Arc::from)
        .unwrap_or_else(|_| Arc::from(RawValue::NULL.to_owned()));
    Outcome { state, response }
}

async fn end(
    store: &dyn TaskStore,
    correlation_id: Uuid,
    outcome: Outcome,
    cancel: bool,
) -> Result<Kept, StoreError> {
    Ok(if store.finish(correlation_id, &outcome).await? {
        Kept::Ended { cancel }
    } else {
        Kept::Dropped("an outcome for a task that has one, or is unknown")
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;
    use crate::resume::{Owner, SessionId};
    use crate::tasks::{Created, MemoryTaskStore, NewTask, OwnerKey, StoreLimits};

    async fn store_with_task() -> (MemoryTaskStore, Uuid) {
        let store = MemoryTaskStore::new(StoreLimits {
            task_bytes: 1 << 20,
            result_ttl: Duration::from_secs(60),
            max_tasks: 10,
        });
        let task = NewTask {
            owner: OwnerKey::of(&Owner::Session(SessionId::new())),
            client_id: "job".into(),
            correlation_id: Uuid::new_v4(),
            request_type: "t".into(),
            started_at_ms: 0,
            timeout: Duration::from_secs(60),
        };
        assert_eq!(store.create(&task).await.unwrap(), Created::New);
        (store, task.correlation_id)
    }

    fn reply(id: Uuid, kind: &str, seq: Option<i64>, body: &str) -> IncomingReply {
        IncomingReply {
            correlation_id: Some(id.to_string()),
            kind: Some(kind.to_owned()),
            seq,
            body: body.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn chunks_then_the_first_outcome_are_kept() {
        let (store, id) = store_with_task().await;
        let keep = |r| keep(&store, r, 1000);
        assert_eq!(
            keep(reply(id, "chunk", Some(0), "1")).await.unwrap(),
            Kept::Chunk
        );
        assert!(matches!(
            keep(reply(id, "chunk", Some(0), "1")).await.unwrap(),
            Kept::Dropped(_)
        ));
        assert_eq!(
            keep(reply(id, "chunk", None, " 2 ")).await.unwrap(),
            Kept::Chunk
        );
        assert!(matches!(
            keep(reply(id, "chunk", Some(5), "not json")).await.unwrap(),
            Kept::Dropped(_)
        ));
        assert_eq!(
            keep(reply(id, "result", None, "{\"ok\":1}")).await.unwrap(),
            Kept::Ended { cancel: false }
        );
        assert!(matches!(
            keep(reply(id, "error", None, "{\"message\":\"late\"}"))
                .await
                .unwrap(),
            Kept::Dropped(_)
        ));
        let backlog = store.read(id, -1).await.unwrap().unwrap();
        let seqs: Vec<u64> = backlog.chunks.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![0, 1]);
        let outcome = backlog.outcome.unwrap();
        assert_eq!(
            (outcome.state, outcome.response.get()),
            (TaskState::Succeeded, "{\"ok\":1}")
        );
    }

    #[tokio::test]
    async fn errors_oversized_and_unknown_replies() {
        let (store, id) = store_with_task().await;
        assert!(matches!(
            keep(&store, reply(Uuid::new_v4(), "chunk", Some(0), "1"), 100)
                .await
                .unwrap(),
            Kept::Dropped(_)
        ));
        assert!(matches!(
            keep(&store, reply(id, "nonsense", None, "1"), 100)
                .await
                .unwrap(),
            Kept::Dropped(_)
        ));
        let huge = format!("\"{}\"", "x".repeat(200));
        assert_eq!(
            keep(&store, reply(id, "chunk", Some(0), &huge), 100)
                .await
                .unwrap(),
            Kept::Ended { cancel: true },
            "too large: the task fails and workers are told to stop"
        );
        let outcome = store.read(id, -1).await.unwrap().unwrap().outcome.unwrap();
        assert_eq!(outcome.state, TaskState::Failed);
        assert!(
            outcome.response.get().contains("WORKER_ERROR"),
            "{}",
            outcome.response.get()
        );

        let (store, id) = store_with_task().await;
        let cancelled = "{\"code\":\"CANCELLED\",\"message\":\"stopped\"}";
        keep(&store, reply(id, "error", None, cancelled), 100)
            .await
            .unwrap();
        let outcome = store.read(id, -1).await.unwrap().unwrap().outcome.unwrap();
        assert_eq!(outcome.state, TaskState::Cancelled);
    }
}
