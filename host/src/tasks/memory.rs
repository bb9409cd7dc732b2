//! The embedded task store: one host, no extra service. Everything in one map behind one
//! lock (no `.await` while it is held); expired tasks go at the next write, in the order
//! they expire. Time follows tokio's clock, so a paused test clock drives expiry too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Backlog, Created, Entry, NewTask, Outcome, OwnerKey, StoreError, StoreLimits, Subscription,
    TaskRecord, TaskState, TaskStore, SUBSCRIPTION_BUFFER,
};
use crate::resume::Replay;

struct Task {
    record: TaskRecord,
    chunks: Replay,
    outcome: Option<Outcome>,
    expires_at_ms: u64,
}

#[derive(Default)]
struct State {
    tasks: HashMap<Uuid, Task>,
    owners: HashMap<OwnerKey, HashMap<Arc<str>, Uuid>>,
    expiries: BTreeSet<(u64, Uuid)>,
    feeds: HashMap<Uuid, broadcast::Sender<Entry>>,
}

impl State {
    fn sweep(&mut self, now_ms: u64) {
        while let Some(&(at, correlation_id)) = self.expiries.first() {
            if at > now_ms {
                break;
            }
            self.expiries.pop_first();
            if let Some(task) = self.tasks.remove(&correlation_id) {
                let owner = &task.record.owner;
                if let Some(ids) = self.owners.get_mut(owner) {
                    ids.remove(&task.record.client_id);
                    if ids.is_empty() {
                        self.owners.remove(owner);
                    }
                }
            }
        }
    }

    fn expire_at(&mut self, correlation_id: Uuid, at_ms: u64) {
        if let Some(task) = self.tasks.get_mut(&correlation_id) {
            self.expiries.remove(&(task.expires_at_ms, correlation_id));
            task.expires_at_ms = at_ms;
            self.expiries.insert((at_ms, correlation_id));
        }
    }

    fn publish(&self, correlation_id: Uuid, entry: Entry) {
        if let Some(feed) = self.feeds.get(&correlation_id) {
            // No receiver left: nobody is attached, nothing to tell.
            let _ = feed.send(entry);
        }
    }
}

pub struct MemoryTaskStore {
    state: Arc<Mutex<State>>,
    limits: StoreLimits,
    /// Unix milliseconds at `started`: wall time that follows tokio's clock from there.
    epoch_ms: u64,
    started: Instant,
}

impl MemoryTaskStore {
    pub fn new(limits: StoreLimits) -> Self {
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, millis);
        MemoryTaskStore {
            state: Arc::default(),
            limits,
            epoch_ms,
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch_ms + millis(self.started.elapsed())
    }

    /// The state, with what has expired gone.
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves plain data behind: still consistent enough to serve.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.sweep(self.now_ms());
        state
    }

    /// Tasks held (tests and metrics).
    pub fn len(&self) -> usize {
        self.state().tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl TaskStore for MemoryTaskStore {
    async fn create(&self, task: &NewTask) -> Result<Created, StoreError> {
        let now = self.now_ms();
        let mut state = self.state();
        let ids = state.owners.entry(task.owner.clone()).or_default();
        if let Some(existing) = ids.get(&task.client_id) {
            return Ok(Created::Existing(*existing));
        }
        if ids.len() >= self.limits.max_tasks {
            let empty = ids.is_empty();
            if empty {
                state.owners.remove(&task.owner);
            }
            return Ok(Created::TooMany {
                max: self.limits.max_tasks,
            });
        }
        ids.insert(task.client_id.clone(), task.correlation_id);
        let deadline_ms = now.saturating_add(millis(task.timeout));
        let expires_at_ms = deadline_ms.saturating_add(millis(self.limits.result_ttl));
        state.tasks.insert(
            task.correlation_id,
            Task {
                record: TaskRecord {
                    owner: task.owner.clone(),
                    client_id: task.client_id.clone(),
                    correlation_id: task.correlation_id,
                    request_type: task.request_type.clone(),
                    started_at_ms: task.started_at_ms,
                    deadline_ms,
                    ended_at_ms: None,
                    state: TaskState::Running,
                    last_seq: None,
                    last_chunk: None,
                    cancel_requested: false,
                    error_code: None,
                },
                chunks: Replay::new(self.limits.task_bytes),
                outcome: None,
                expires_at_ms,
            },
        );
        state.expiries.insert((expires_at_ms, task.correlation_id));
        Ok(Created::New)
    }

    async fn find(&self, owner: &OwnerKey, client_id: &str) -> Result<Option<Uuid>, StoreError> {
        let state = self.state();
        Ok(state
            .owners
            .get(owner)
            .and_then(|ids| ids.get(client_id))
            .copied())
    }

    async fn record(&self, correlation_id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .state()
            .tasks
            .get(&correlation_id)
            .map(|t| t.record.clone()))
    }

    async fn list(&self, owner: &OwnerKey) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.state();
        let mut records: Vec<TaskRecord> = state
            .owners
            .get(owner)
            .into_iter()
            .flat_map(|ids| ids.values())
            .filter_map(|id| state.tasks.get(id))
            .map(|t| t.record.clone())
            .collect();
        records
            .sort_by(|a, b| (b.started_at_ms, &b.client_id).cmp(&(a.started_at_ms, &a.client_id)));
        Ok(records)
    }

    async fn list_recent(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.state();
        let mut newest: Vec<&TaskRecord> = state.tasks.values().map(|t| &t.record).collect();
        let order = |r: &&TaskRecord| std::cmp::Reverse((r.started_at_ms, r.correlation_id));
        if newest.len() > limit {
            newest.select_nth_unstable_by_key(limit, order);
            newest.truncate(limit);
        }
        newest.sort_unstable_by_key(order);
        Ok(newest
            .into_iter()
            .map(|r| TaskRecord {
                last_chunk: None,
                ..r.clone()
            })
            .collect())
    }

    async fn append(
        &self,
        correlation_id: Uuid,
        seq: u64,
        data: &RawValue,
    ) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&correlation_id) else {
            return Ok(false);
        };
        let fresh = task.record.last_seq.is_none_or(|last| seq > last);
        if task.outcome.is_some() || !fresh {
            return Ok(false);
        }
        task.chunks.push(seq, data.to_owned());
        let data: Arc<RawValue> = Arc::from(data.to_owned());
        task.record.last_seq = Some(seq);
        task.record.last_chunk = Some(data.clone());
        state.publish(correlation_id, Entry::Chunk { seq, data });
        Ok(true)
    }

    async fn finish(&self, correlation_id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let mut state = self.state();
        let Some(task) = state.tasks.get_mut(&correlation_id) else {
            return Ok(false);
        };
        if task.outcome.is_some() {
            return Ok(false);
        }
        task.outcome = Some(outcome.clone());
        task.record.state = outcome.state;
        task.record.ended_at_ms = Some(now);
        task.record.error_code = outcome.error_code();
        state.expire_at(
            correlation_id,
            now.saturating_add(millis(self.limits.result_ttl)),
        );
        state.publish(correlation_id, Entry::End(outcome.clone()));
        super::record_ended(outcome.state.as_str());
        Ok(true)
    }

    async fn read(
        &self,
        correlation_id: Uuid,
        after_seq: i64,
    ) -> Result<Option<Backlog>, StoreError> {
        let state = self.state();
        Ok(state.tasks.get(&correlation_id).map(|task| {
            let (first_seq, chunks) = task.chunks.after(after_seq);
            Backlog {
                first_seq,
                chunks: chunks
                    .map(|(seq, data)| (seq, Arc::from(data.to_owned())))
                    .collect(),
                outcome: task.outcome.clone(),
            }
        }))
    }

    async fn subscribe(&self, correlation_id: Uuid) -> Result<Subscription, StoreError> {
        let mut state = self.state();
        let receiver = state
            .feeds
            .entry(correlation_id)
            .or_insert_with(|| broadcast::channel(SUBSCRIPTION_BUFFER).0)
            .subscribe();
        Ok(Subscription {
            receiver,
            _guard: Box::new(Unsubscribe {
                state: Arc::downgrade(&self.state),
                correlation_id,
            }),
        })
    }

    async fn request_cancel(&self, correlation_id: Uuid) -> Result<bool, StoreError> {
        let mut state = self.state();
        match state.tasks.get_mut(&correlation_id) {
            Some(task) if task.outcome.is_none() => {
                task.record.cancel_requested = true;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Drops a task's feed with its last subscriber (the receiver is dropped first).
struct Unsubscribe {
    state: std::sync::Weak<Mutex<State>>,
    correlation_id: Uuid,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        let unused = state
            .feeds
            .get(&self.correlation_id)
            .is_some_and(|feed| feed.receiver_count() == 0);
        if unused {
            state.feeds.remove(&self.correlation_id);
        }
    }
}
