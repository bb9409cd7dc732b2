//! Where detached tasks live (issue 14 phase 2; protocol §4.3): what a task needs kept so
//! that any host of a cluster can list it, attach to it, resend into it or cancel it, and so
//! that it outlives the host that took it.
//!
//! One trait, [`TaskStore`], with two engines: [`MemoryTaskStore`] (the embedded default:
//! one host, no extra service) and [`RedisTaskStore`] (shared by the hosts of a cluster).
//! Both run through one test suite (`tests.rs`). The engine was chosen by measurement
//! (docs/performance.md, "Task store engine").
//!
//! A task's data is keyed by its correlation id (random, never shown to clients: the reply
//! path has only that); its owner reaches it through an index keyed by a hash of the owner,
//! so another owner's lookup of the same client id finds nothing, and no key names a subject.

mod memory;
mod redis_store;
pub mod replies;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::broker::amqp_url::redact_url;
use crate::resume::{Owner, ResumeSettings};

pub use memory::MemoryTaskStore;
pub use redis_store::RedisTaskStore;

/// Counts a detached task started through this host (`taskgate_tasks_started_total`).
pub fn record_started() {
    metrics::counter!(crate::metrics::TASKS_STARTED).increment(1);
}

/// Counts an outcome this host wrote (`taskgate_tasks_ended_total`): by every store's
/// `finish` that won, and by the gateway for the tasks it holds itself.
pub fn record_ended(state: &'static str) {
    metrics::counter!(crate::metrics::TASKS_ENDED, "state" => state).increment(1);
}

/// Live entries a subscriber may fall behind by before it re-reads the store instead.
pub const SUBSCRIPTION_BUFFER: usize = 256;
/// How long an attachment waits on a quiet feed before it looks at the store itself: a
/// shared store's connection may drop published entries while it reconnects.
pub const LIVE_CHECK: Duration = Duration::from_secs(5);

/// An owner as the store knows it: a hash, so that key names and logs hold no subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey(String);

impl OwnerKey {
    pub fn of(owner: &Owner) -> Self {
        let mut hasher = Sha256::new();
        match owner {
            Owner::Subject(subject) => {
                hasher.update(b"subject\0");
                hasher.update(subject.as_bytes());
            }
            Owner::Session(session) => {
                hasher.update(b"session\0");
                hasher.update(session.to_string().as_bytes());
            }
        }
        OwnerKey(hex::encode(&hasher.finalize()[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }
}

/// A task to start.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub owner: OwnerKey,
    pub client_id: Arc<str>,
    pub correlation_id: Uuid,
    pub request_type: Arc<str>,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// How long it may run: its record lives at least this long, plus `result_ttl`.
    pub timeout: Duration,
}

/// What [`TaskStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new task, with this correlation id.
    New,
    /// The owner already has a task with this client id (an idempotent resend): that one.
    Existing(Uuid),
    /// The owner has `max_tasks` tasks (running or kept).
    TooMany { max: usize },
}

/// How a task ended: its state and what the client gets — the result's data, or the error
/// object.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: TaskState,
    pub response: Arc<RawValue>,
}

impl Outcome {
    /// The error code a failed or cancelled task ended with (`None` for a result, or an
    /// error body without a readable code).
    pub fn error_code(&self) -> Option<Arc<str>> {
        #[derive(serde::Deserialize)]
        struct Coded {
            code: String,
        }
        if self.state == TaskState::Succeeded {
            return None;
        }
        serde_json::from_str::<Coded>(self.response.get())
            .ok()
            .map(|c| c.code.into())
    }
}

impl PartialEq for Outcome {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state && self.response.get() == other.response.get()
    }
}

/// One entry of a task, in order: its chunks, then at most one outcome.
#[derive(Debug, Clone)]
pub enum Entry {
    Chunk { seq: u64, data: Arc<RawValue> },
    End(Outcome),
}

/// A task as `tasks` lists it and the host acts on it.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub owner: OwnerKey,
    pub client_id: Arc<str>,
    pub correlation_id: Uuid,
    pub request_type: Arc<str>,
    pub started_at_ms: u64,
    /// Unix milliseconds after which a running task has timed out.
    pub deadline_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub state: TaskState,
    pub last_seq: Option<u64>,
    pub last_chunk: Option<Arc<RawValue>>,
    pub cancel_requested: bool,
    /// The error code it ended with, when it failed or was cancelled.
    pub error_code: Option<Arc<str>>,
}

impl PartialEq for TaskRecord {
    fn eq(&self, other: &Self) -> bool {
        let chunk = |r: &TaskRecord| r.last_chunk.as_ref().map(|c| c.get().to_owned());
        (
            &self.owner,
            &self.client_id,
            self.correlation_id,
            &self.request_type,
            self.started_at_ms,
            self.deadline_ms,
            self.ended_at_ms,
            self.state,
            self.last_seq,
            self.cancel_requested,
            &self.error_code,
        ) == (
            &other.owner,
            &other.client_id,
            other.correlation_id,
            &other.request_type,
            other.started_at_ms,
            other.deadline_ms,
            other.ended_at_ms,
            other.state,
            other.last_seq,
            other.cancel_requested,
            &other.error_code,
        ) && chunk(self) == chunk(other)
    }
}

/// What a task holds after some `seq`: the chunks still kept and, once ended, its outcome.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// The `seq` of the first chunk returned, or of the next to come; greater than
    /// `after_seq + 1` when chunks between were dropped by the byte bound.
    pub first_seq: u64,
    pub chunks: Vec<(u64, Arc<RawValue>)>,
    pub outcome: Option<Outcome>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the task store is unreachable: {0}")]
    Unreachable(String),
    #[error("the task store answered something unexpected: {0}")]
    Corrupt(String),
}

/// The limits every engine applies, from `[resume]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreLimits {
    /// Chunk bytes kept per task (the oldest go first).
    pub task_bytes: usize,
    /// How long an outcome stays after the task ends.
    pub result_ttl: Duration,
    /// Tasks one owner may have, running or kept.
    pub max_tasks: usize,
}

impl From<&ResumeSettings> for StoreLimits {
    fn from(settings: &ResumeSettings) -> Self {
        StoreLimits {
            task_bytes: settings.request_bytes,
            result_ttl: settings.result_ttl,
            max_tasks: settings.max_tasks,
        }
    }
}

/// A live feed of a task's new entries, from the moment it was taken. It may lag (then the
/// reader re-reads the store: see [`Attachment`]); it never reorders.
pub struct Subscription {
    pub(crate) receiver: broadcast::Receiver<Entry>,
    /// Unsubscribes when dropped.
    pub(crate) _guard: Box<dyn Send + Sync>,
}

/// What a detached task needs kept, shared by the hosts that use the same store.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Starts a task, or finds the owner's task with the same client id, or refuses past
    /// the owner's `max_tasks`.
    async fn create(&self, task: &NewTask) -> Result<Created, StoreError>;

    /// The owner's task with this client id, running or kept.
    async fn find(&self, owner: &OwnerKey, client_id: &str) -> Result<Option<Uuid>, StoreError>;

    async fn record(&self, correlation_id: Uuid) -> Result<Option<TaskRecord>, StoreError>;

    /// The owner's tasks, running or kept, newest first.
    async fn list(&self, owner: &OwnerKey) -> Result<Vec<TaskRecord>, StoreError>;

    /// The most recent tasks of every owner, running or kept, newest first (by start), at
    /// most `limit`, without their last chunk: for the operator console, which shows the
    /// latest few hundred. Bounded work, whatever the store holds: never a walk of it.
    async fn list_recent(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError>;

    /// Keeps chunk `seq`. False when the task is unknown, has ended, or has had this `seq`
    /// already (replies come at least once).
    async fn append(
        &self,
        correlation_id: Uuid,
        seq: u64,
        data: &RawValue,
    ) -> Result<bool, StoreError>;

    /// Ends the task, once: false when it has an outcome already (the first writer wins —
    /// a worker's reply racing a timeout) or is unknown. The record then lives `result_ttl`.
    async fn finish(&self, correlation_id: Uuid, outcome: &Outcome) -> Result<bool, StoreError>;

    /// The chunks after `after_seq` still kept, and the outcome if any.
    async fn read(
        &self,
        correlation_id: Uuid,
        after_seq: i64,
    ) -> Result<Option<Backlog>, StoreError>;

    /// Live entries of the task from now on.
    async fn subscribe(&self, correlation_id: Uuid) -> Result<Subscription, StoreError>;

    /// Marks a running task as asked to cancel; false when unknown or ended.
    async fn request_cancel(&self, correlation_id: Uuid) -> Result<bool, StoreError>;
}

/// Reads a task from `after_seq` to its end with no gap and no duplicate: it subscribes
/// first, then reads what is kept, then yields live entries it has not yielded yet. A live
/// entry past the next expected `seq` (the feed lagged, or the store's connection dropped
/// messages) sends it back to the store for what lies between.
pub struct Attachment {
    store: Arc<dyn TaskStore>,
    correlation_id: Uuid,
    pub first_seq: u64,
    pub state: TaskState,
    pending: VecDeque<Entry>,
    live: Subscription,
    /// The `seq` after the last chunk yielded.
    next_seq: u64,
    ended: bool,
}

impl Attachment {
    /// `None` when the task is not there.
    pub async fn open(
        store: Arc<dyn TaskStore>,
        correlation_id: Uuid,
        after_seq: i64,
    ) -> Result<Option<Self>, StoreError> {
        let live = store.subscribe(correlation_id).await?;
        let Some(backlog) = store.read(correlation_id, after_seq).await? else {
            return Ok(None);
        };
        let state = backlog
            .outcome
            .as_ref()
            .map_or(TaskState::Running, |o| o.state);
        let mut attachment = Attachment {
            store,
            correlation_id,
            first_seq: backlog.first_seq,
            state,
            pending: VecDeque::new(),
            live,
            next_seq: backlog.first_seq,
            ended: false,
        };
        attachment.take(backlog);
        Ok(Some(attachment))
    }

    fn take(&mut self, backlog: Backlog) {
        for (seq, data) in backlog.chunks {
            if seq >= self.next_seq {
                self.next_seq = seq + 1;
                self.pending.push_back(Entry::Chunk { seq, data });
            }
        }
        self.next_seq = self.next_seq.max(backlog.first_seq);
        if let Some(outcome) = backlog.outcome {
            self.pending.push_back(Entry::End(outcome));
            self.ended = true;
        }
    }

    /// The next entry; `None` after the outcome, or when the store dropped the task.
    pub async fn next(&mut self) -> Result<Option<Entry>, StoreError> {
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Ok(Some(entry));
            }
            if self.ended {
                return Ok(None);
            }
            let entry = match tokio::time::timeout(LIVE_CHECK, self.live.receiver.recv()).await {
                Ok(Ok(entry)) => entry,
                Err(_quiet) => {
                    self.refill().await?;
                    continue;
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    self.refill().await?;
                    continue;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
            };
            match entry {
                Entry::Chunk { seq, .. } if seq < self.next_seq => {}
                Entry::Chunk { seq, data } if seq == self.next_seq => {
                    self.next_seq = seq + 1;
                    return Ok(Some(Entry::Chunk { seq, data }));
                }
                Entry::Chunk { .. } => self.refill().await?,
                Entry::End(outcome) => {
                    // Chunks are published before their task's outcome; a gap before it
                    // (a lagging feed) is filled from the store, which has them all.
                    self.refill().await?;
                    if !self.ended {
                        self.pending.push_back(Entry::End(outcome));
                        self.ended = true;
                    }
                }
            }
        }
    }

    async fn refill(&mut self) -> Result<(), StoreError> {
        let after = i64::try_from(self.next_seq).unwrap_or(i64::MAX) - 1;
        match self.store.read(self.correlation_id, after).await? {
            Some(backlog) => self.take(backlog),
            None => self.ended = true,
        }
        Ok(())
    }
}

/// Keys of the shared store start with this unless `[resume] store_prefix` says otherwise.
pub const DEFAULT_STORE_PREFIX: &str = "taskgate:";

/// `[resume] store`: where detached tasks live.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// In this host's memory (the default: one host, no extra service).
    #[default]
    Memory,
    /// In Redis, shared by the hosts of a cluster: the URL, and the prefix of every key.
    Redis { url: String, prefix: String },
}

/// Never prints a password (the URL may hold one, like `amqp_url`).
impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl StoreChoice {
    /// `"memory"` or a `redis://` URL; `prefix` for the keys of a shared store.
    pub fn parse(text: &str, prefix: Option<&str>) -> Result<Self, String> {
        if text == "memory" {
            return Ok(StoreChoice::Memory);
        }
        if !text.starts_with("redis://") {
            return Err(format!(
                "[resume] store: expected \"memory\" or a redis:// URL, e.g. \"redis://127.0.0.1:6379/\" (got `{}`)",
                redact_url(text)
            ));
        }
        let prefix = prefix.unwrap_or(DEFAULT_STORE_PREFIX);
        if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(
                "[resume] store_prefix: expected a non-empty prefix without spaces, e.g. \"taskgate:\""
                    .to_owned(),
            );
        }
        Ok(StoreChoice::Redis {
            url: text.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// As logs may show it: the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            StoreChoice::Memory => "memory".to_owned(),
            StoreChoice::Redis { url, prefix } => {
                format!("{} (keys {prefix}*)", redact_url(url))
            }
        }
    }

    /// The shared reply queue of detached tasks (protocol §4.3): `taskgate.task-replies`,
    /// or, for a store with a prefix of its own, `taskgate.task-replies.{prefix}` — clusters
    /// that share one RabbitMQ and one Redis are told apart by their prefix, and a reply must
    /// reach a host of its own cluster. `None` for the embedded store.
    pub fn task_reply_queue(&self) -> Option<String> {
        let StoreChoice::Redis { prefix, .. } = self else {
            return None;
        };
        let queue = taskgate_protocol::amqp::TASK_REPLY_QUEUE;
        if prefix == DEFAULT_STORE_PREFIX {
            return Some(queue.to_owned());
        }
        let own: String = prefix
            .trim_end_matches(':')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Some(format!("{queue}.{own}"))
    }

    /// Opens the store: a shared one must be reachable.
    pub async fn open(&self, limits: StoreLimits) -> Result<Arc<dyn TaskStore>, StoreError> {
        match self {
            StoreChoice::Memory => Ok(Arc::new(MemoryTaskStore::new(limits))),
            StoreChoice::Redis { url, prefix } => Ok(Arc::new(
                RedisTaskStore::connect(url, prefix, limits).await?,
            )),
        }
    }
}
