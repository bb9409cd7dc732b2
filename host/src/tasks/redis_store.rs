//! The task store the hosts of a cluster share, on Redis (the choice and its numbers:
//! docs/performance.md, "Task store engine").
//!
//! Per task (keys under a configurable prefix, so that clusters and tests can share one
//! Redis): a hash `t:{correlation id}` (the record and the outcome) and a stream
//! `c:{correlation id}` (the chunks, entry id `0-{seq + 1}`, so Redis itself refuses a chunk
//! twice and `XRANGE` starts after any `seq`). Per owner (by hash, never by subject): a hash
//! `o:{owner}` (client id → correlation id) and a sorted set `oz:{owner}` (client id → when
//! it expires), which counts the owner's tasks. Store-wide, a sorted set `recent` (correlation
//! id → when it started) that the console's listing reads newest first: kept by the script
//! that creates a task, trimmed of tasks whose hash has expired as it is read and at each
//! create (its oldest entries), and never longer than [`RECENT_KEPT`] — so that listing the
//! latest tasks never walks the keyspace. Every write that must be atomic — create
//! within `max_tasks`, append within the byte bound, the first outcome only — is one Lua
//! script. Live entries go out with `PUBLISH` on `e:{correlation id}` from the same script,
//! and come in as RESP3 pushes on the one multiplexed connection, dispatched to local
//! subscribers. Expiry is Redis's own (`PEXPIREAT`), on Redis's clock, so hosts whose
//! clocks differ agree. One Redis, not Redis Cluster: a task's keys and its owner's keys
//! live in different slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    AsyncCommands, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value,
};
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{
    Backlog, Created, Entry, NewTask, Outcome, OwnerKey, StoreError, StoreLimits, Subscription,
    TaskRecord, TaskState, TaskStore, SUBSCRIPTION_BUFFER,
};
use crate::broker::amqp_url::redact_url;

/// What one chunk costs beyond its bytes, as in the memory store (`resume::Replay`).
const CHUNK_OVERHEAD: usize = 32;

/// The most entries the store-wide index keeps: the console shows the latest few hundred,
/// so older ones beyond this go, even while their tasks live on.
pub const RECENT_KEPT: usize = 10_000;

/// How many index entries one listing looks at, per task it may return: the expired ones
/// it meets on the way are removed, so the next listing does not meet them again.
const RECENT_LOOK_AHEAD: usize = 4;

/// The fields a listing reads: everything a record has but its last chunk and its outcome
/// (either may be large). `state` first: the script tells a live task by it.
const LISTED_FIELDS: [&str; 10] = [
    "state", "owner", "id", "type", "started", "deadline", "ended", "last_seq", "cancel", "code",
];

/// Redis's clock, in unix milliseconds (effects replication makes this safe in scripts).
const NOW: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// KEYS: task hash, owner hash, owner set, the store-wide index. ARGV: correlation id,
/// client id, request type, started at, timeout ms, result ttl ms, max tasks, owner, prefix,
/// index bound. Returns {0} new, {1, id} existing, {2} too many.
const CREATE: &str = r"
local now = now_ms()
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[3], gone)
  redis.call('HDEL', KEYS[2], gone)
end
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then return {1, existing} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then return {2, ''} end
local deadline = now + tonumber(ARGV[5])
local expires = deadline + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'owner', ARGV[8], 'id', ARGV[2], 'type', ARGV[3],
  'started', ARGV[4], 'deadline', deadline, 'state', 'running', 'next_seq', 0, 'bytes', 0)
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], expires, ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
for i = 2, 4 do
  if redis.call('PEXPIRETIME', KEYS[i]) < expires then redis.call('PEXPIREAT', KEYS[i], expires) end
end
-- The index forgets the oldest tasks that have expired (two a create keeps up with one a
-- create), and keeps at most its bound.
for _, old in ipairs(redis.call('ZRANGE', KEYS[4], 0, 1)) do
  if redis.call('EXISTS', ARGV[9] .. 't:' .. old) == 0 then redis.call('ZREM', KEYS[4], old) end
end
local over = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[10])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[4], 0, over - 1) end
return {0, ''}
";

/// KEYS: task hash, chunk stream. ARGV: seq, data, byte limit, chunk overhead, channel.
const APPEND: &str = r"
local s = redis.call('HMGET', KEYS[1], 'state', 'next_seq')
if s[1] ~= 'running' then return 0 end
local seq = tonumber(ARGV[1])
if seq < tonumber(s[2]) then return 0 end
local overhead = tonumber(ARGV[4])
local limit = tonumber(ARGV[3])
local cost = string.len(ARGV[2]) + overhead
redis.call('HSET', KEYS[1], 'next_seq', seq + 1, 'last_seq', seq, 'last_chunk', ARGV[2])
if cost > limit then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'bytes', 0)
else
  redis.call('XADD', KEYS[2], '0-' .. (seq + 1), 'd', ARGV[2])
  local bytes = redis.call('HINCRBY', KEYS[1], 'bytes', cost)
  while bytes > limit do
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #oldest == 0 then break end
    redis.call('XDEL', KEYS[2], oldest[1][1])
    bytes = bytes - (string.len(oldest[1][2][2]) + overhead)
  end
  redis.call('HSET', KEYS[1], 'bytes', bytes)
  redis.call('PEXPIRE', KEYS[2], redis.call('PTTL', KEYS[1]))
end
redis.call('PUBLISH', ARGV[5], 'c' .. seq .. ':' .. ARGV[2])
return 1
";

/// KEYS: task hash, chunk stream. ARGV: state, response, result ttl ms, channel, prefix,
/// error code (empty for none). The owner's set is named from the record (its owner is only
/// known there).
const FINISH: &str = r"
local s = redis.call('HMGET', KEYS[1], 'state', 'owner', 'id')
if s[1] ~= 'running' then return 0 end
local now = now_ms()
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'outcome', ARGV[2], 'ended', now)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'code', ARGV[6]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', ARGV[5] .. 'oz:' .. s[2], 'XX', now + ttl, s[3])
redis.call('PUBLISH', ARGV[4], 'e' .. ARGV[1] .. ':' .. ARGV[2])
return 1
";

/// KEYS: owner hash, owner set. ARGV: client id. The correlation id, or nil.
const FIND: &str = r"
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
local until_ms = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not until_ms or tonumber(until_ms) <= now_ms() then return false end
return id
";

/// KEYS: owner hash, owner set. The correlation ids of the owner's live tasks.
const LIST: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now_ms(), '+inf')
if #ids == 0 then return {} end
local found = redis.call('HMGET', KEYS[1], unpack(ids))
local out = {}
for _, id in ipairs(found) do
  if id then table.insert(out, id) end
end
return out
";

/// KEYS: the store-wide index. ARGV: limit, prefix, how many entries to look at at most,
/// then the fields to read. Newest first, up to `limit` live tasks, each as its correlation
/// id then its fields; the entries of expired tasks met on the way are removed.
const LIST_RECENT: &str = r"
local limit = tonumber(ARGV[1])
local budget = tonumber(ARGV[3])
local fields = {}
for i = 4, #ARGV do table.insert(fields, ARGV[i]) end
local out = {}
local found = 0
local start = 0
while found < limit and budget > 0 do
  local batch = redis.call('ZREVRANGE', KEYS[1], start, start + math.min(limit, budget) - 1)
  if #batch == 0 then break end
  budget = budget - #batch
  local gone = 0
  for _, id in ipairs(batch) do
    local values = redis.call('HMGET', ARGV[2] .. 't:' .. id, unpack(fields))
    if values[1] then
      if found < limit then
        found = found + 1
        table.insert(out, id)
        for _, v in ipairs(values) do table.insert(out, v) end
      end
    else
      redis.call('ZREM', KEYS[1], id)
      gone = gone + 1
    end
  end
  start = start + #batch - gone
end
return out
";

/// KEYS: task hash. 1 when a running task is now marked.
const CANCEL: &str = r"
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
";

struct Scripts {
    create: Script,
    append: Script,
    finish: Script,
    find: Script,
    list: Script,
    list_recent: Script,
    cancel: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_clock = |body: &str| Script::new(&format!("{NOW}{body}"));
        Scripts {
            create: with_clock(CREATE),
            append: Script::new(APPEND),
            finish: with_clock(FINISH),
            find: with_clock(FIND),
            list: with_clock(LIST),
            list_recent: Script::new(LIST_RECENT),
            cancel: Script::new(CANCEL),
        }
    }
}

/// The local subscribers of each task's channel.
type Feeds = Arc<Mutex<HashMap<Vec<u8>, broadcast::Sender<Entry>>>>;

pub struct RedisTaskStore {
    connection: ConnectionManager,
    prefix: String,
    limits: StoreLimits,
    scripts: Arc<Scripts>,
    /// The bound of the store-wide index ([`RECENT_KEPT`]; tests make it small).
    recent_kept: usize,
    feeds: Feeds,
    /// Taken while a channel is (un)subscribed: a subscriber returns only once its
    /// `SUBSCRIBE` is in effect, so that what it reads next cannot miss an entry.
    subscribing: Arc<tokio::sync::Mutex<()>>,
}

fn unreachable(url: &str, error: &redis::RedisError) -> StoreError {
    StoreError::Unreachable(format!("{}: {error}", redact_url(url)))
}

fn failed(error: redis::RedisError) -> StoreError {
    StoreError::Unreachable(error.to_string())
}

impl RedisTaskStore {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/`); keys start with `prefix`.
    pub async fn connect(url: &str, prefix: &str, limits: StoreLimits) -> Result<Self, StoreError> {
        let info = url
            .into_connection_info()
            .map_err(|e| unreachable(url, &e))?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|e| unreachable(url, &e))?;
        let feeds: Feeds = Arc::default();
        let dispatch = feeds.clone();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(3)
            .set_automatic_resubscription()
            .set_push_sender(move |push: PushInfo| {
                deliver(&dispatch, push);
                Ok::<(), std::convert::Infallible>(())
            });
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| unreachable(url, &e))?;
        Ok(RedisTaskStore {
            connection,
            prefix: prefix.to_owned(),
            limits,
            scripts: Arc::new(Scripts::new()),
            recent_kept: RECENT_KEPT,
            feeds,
            subscribing: Arc::default(),
        })
    }

    /// Keeps at most `kept` tasks in the store-wide index instead of [`RECENT_KEPT`].
    pub fn with_recent_kept(mut self, kept: usize) -> Self {
        self.recent_kept = kept;
        self
    }

    /// How many entries the store-wide index holds now (tests).
    pub async fn recent_indexed(&self) -> Result<usize, StoreError> {
        self.connection
            .clone()
            .zcard(self.recent_key())
            .await
            .map_err(failed)
    }

    fn task_key(&self, id: Uuid) -> String {
        format!("{}t:{id}", self.prefix)
    }

    fn chunks_key(&self, id: Uuid) -> String {
        format!("{}c:{id}", self.prefix)
    }

    fn channel(&self, id: Uuid) -> String {
        format!("{}e:{id}", self.prefix)
    }

    fn recent_key(&self) -> String {
        format!("{}recent", self.prefix)
    }

    fn owner_keys(&self, owner: &OwnerKey) -> (String, String) {
        let owner = owner.as_str();
        (
            format!("{}o:{owner}", self.prefix),
            format!("{}oz:{owner}", self.prefix),
        )
    }

    /// Every key under the prefix (tests clean up with it).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = connection
                .scan_match(format!("{}*", self.prefix))
                .await
                .map_err(failed)?;
            let mut keys = Vec::new();
            while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
                keys.push(key.map_err(failed)?);
            }
            keys
        };
        if !keys.is_empty() {
            let _: () = connection.del(keys).await.map_err(failed)?;
        }
        Ok(())
    }
}

/// A pushed `message` to the local subscribers of its channel.
fn deliver(feeds: &Feeds, push: PushInfo) {
    if push.kind != PushKind::Message {
        return;
    }
    let [Value::BulkString(channel), Value::BulkString(payload)] = push.data.as_slice() else {
        return;
    };
    let feeds = feeds.lock().unwrap_or_else(|e| e.into_inner());
    let Some(feed) = feeds.get(channel) else {
        return;
    };
    if let Some(entry) = parse_entry(payload) {
        // No receiver left: nobody is attached, nothing to tell.
        let _ = feed.send(entry);
    }
}

/// `c{seq}:{data}` or `e{state}:{response}`, as the scripts publish them.
pub(super) fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let text = std::str::from_utf8(payload).ok()?;
    let (head, body) = text.split_once(':')?;
    let raw: Arc<RawValue> = Arc::from(RawValue::from_string(body.to_owned()).ok()?);
    if let Some(seq) = head.strip_prefix('c') {
        return Some(Entry::Chunk {
            seq: seq.parse().ok()?,
            data: raw,
        });
    }
    let state = TaskState::parse(head.strip_prefix('e')?)?;
    Some(Entry::End(Outcome {
        state,
        response: raw,
    }))
}

fn raw(text: String) -> Result<Arc<RawValue>, StoreError> {
    RawValue::from_string(text)
        .map(Arc::from)
        .map_err(|e| StoreError::Corrupt(format!("a kept JSON value does not parse: {e}")))
}

fn number(fields: &HashMap<String, String>, name: &str) -> Result<Option<u64>, StoreError> {
    fields
        .get(name)
        .map(|text| {
            text.parse()
                .map_err(|_| StoreError::Corrupt(format!("task field `{name}` is not a number")))
        })
        .transpose()
}

/// A task's hash as a record; `None` when the hash is gone (expired).
fn record_of(
    correlation_id: Uuid,
    mut fields: HashMap<String, String>,
) -> Result<Option<TaskRecord>, StoreError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |fields: &mut HashMap<String, String>, name: &str| {
        fields
            .remove(name)
            .ok_or_else(|| StoreError::Corrupt(format!("task field `{name}` is missing")))
    };
    let state = text(&mut fields, "state")?;
    let state = TaskState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown task state `{state}`")))?;
    Ok(Some(TaskRecord {
        owner: OwnerKey(text(&mut fields, "owner")?),
        client_id: text(&mut fields, "id")?.into(),
        correlation_id,
        request_type: text(&mut fields, "type")?.into(),
        started_at_ms: number(&fields, "started")?.unwrap_or(0),
        deadline_ms: number(&fields, "deadline")?.unwrap_or(0),
        ended_at_ms: number(&fields, "ended")?,
        state,
        last_seq: number(&fields, "last_seq")?,
        last_chunk: fields.remove("last_chunk").map(raw).transpose()?,
        cancel_requested: fields.contains_key("cancel"),
        error_code: fields.remove("code").map(Into::into),
    }))
}

fn outcome_of(fields: &mut HashMap<String, String>) -> Result<Option<Outcome>, StoreError> {
    let Some(response) = fields.remove("outcome") else {
        return Ok(None);
    };
    let state = fields
        .get("state")
        .and_then(|s| TaskState::parse(s))
        .ok_or_else(|| StoreError::Corrupt("an ended task without a state".into()))?;
    Ok(Some(Outcome {
        state,
        response: raw(response)?,
    }))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl TaskStore for RedisTaskStore {
    async fn create(&self, task: &NewTask) -> Result<Created, StoreError> {
        let (owner_hash, owner_set) = self.owner_keys(&task.owner);
        let (code, existing): (u8, String) = self
            .scripts
            .create
            .key(self.task_key(task.correlation_id))
            .key(owner_hash)
            .key(owner_set)
            .key(self.recent_key())
            .arg(task.correlation_id.to_string())
            .arg(&*task.client_id)
            .arg(&*task.request_type)
            .arg(task.started_at_ms)
            .arg(millis(task.timeout))
            .arg(millis(self.limits.result_ttl))
            .arg(self.limits.max_tasks)
            .arg(task.owner.as_str())
            .arg(&self.prefix)
            .arg(self.recent_kept)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        match code {
            0 => Ok(Created::New),
            1 => Uuid::parse_str(&existing)
                .map(Created::Existing)
                .map_err(|_| StoreError::Corrupt("an owner's task id is not a uuid".into())),
            _ => Ok(Created::TooMany {
                max: self.limits.max_tasks,
            }),
        }
    }

    async fn find(&self, owner: &OwnerKey, client_id: &str) -> Result<Option<Uuid>, StoreError> {
        let (owner_hash, owner_set) = self.owner_keys(owner);
        let found: Option<String> = self
            .scripts
            .find
            .key(owner_hash)
            .key(owner_set)
            .arg(client_id)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        Ok(found.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn record(&self, correlation_id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        let fields: HashMap<String, String> = self
            .connection
            .clone()
            .hgetall(self.task_key(correlation_id))
            .await
            .map_err(failed)?;
        record_of(correlation_id, fields)
    }

    async fn list(&self, owner: &OwnerKey) -> Result<Vec<TaskRecord>, StoreError> {
        let (owner_hash, owner_set) = self.owner_keys(owner);
        let mut connection = self.connection.clone();
        let ids: Vec<String> = self
            .scripts
            .list
            .key(owner_hash)
            .key(owner_set)
            .invoke_async(&mut connection)
            .await
            .map_err(failed)?;
        let ids: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.task_key(*id));
        }
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut connection).await.map_err(failed)?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, fields) in ids.into_iter().zip(all) {
            if let Some(record) = record_of(id, fields)? {
                // The index is the owner's; the record says so too (defence in depth).
                if &record.owner == owner {
                    records.push(record);
                }
            }
        }
        records
            .sort_by(|a, b| (b.started_at_ms, &b.client_id).cmp(&(a.started_at_ms, &a.client_id)));
        Ok(records)
    }

    async fn list_recent(&self, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.list_recent.key(self.recent_key());
        invocation
            .arg(limit)
            .arg(&self.prefix)
            .arg(limit.saturating_mul(RECENT_LOOK_AHEAD).saturating_add(100));
        for field in LISTED_FIELDS {
            invocation.arg(field);
        }
        let flat: Vec<Option<String>> = invocation
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        let mut records = Vec::with_capacity(flat.len() / (LISTED_FIELDS.len() + 1));
        for row in flat.chunks(LISTED_FIELDS.len() + 1) {
            let [Some(id), values @ ..] = row else {
                return Err(StoreError::Corrupt("a listing row without its id".into()));
            };
            let correlation_id = Uuid::parse_str(id)
                .map_err(|_| StoreError::Corrupt("an indexed task id is not a uuid".into()))?;
            let fields: HashMap<String, String> = LISTED_FIELDS
                .iter()
                .zip(values)
                .filter_map(|(name, value)| Some(((*name).to_owned(), value.clone()?)))
                .collect();
            if let Some(record) = record_of(correlation_id, fields)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn append(
        &self,
        correlation_id: Uuid,
        seq: u64,
        data: &RawValue,
    ) -> Result<bool, StoreError> {
        let appended: u8 = self
            .scripts
            .append
            .key(self.task_key(correlation_id))
            .key(self.chunks_key(correlation_id))
            .arg(seq)
            .arg(data.get())
            .arg(self.limits.task_bytes)
            .arg(CHUNK_OVERHEAD)
            .arg(self.channel(correlation_id))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        Ok(appended == 1)
    }

    async fn finish(&self, correlation_id: Uuid, outcome: &Outcome) -> Result<bool, StoreError> {
        let finished: u8 = self
            .scripts
            .finish
            .key(self.task_key(correlation_id))
            .key(self.chunks_key(correlation_id))
            .arg(outcome.state.as_str())
            .arg(outcome.response.get())
            .arg(millis(self.limits.result_ttl).max(1))
            .arg(self.channel(correlation_id))
            .arg(&self.prefix)
            .arg(outcome.error_code().as_deref().unwrap_or(""))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        if finished == 1 {
            super::record_ended(outcome.state.as_str());
        }
        Ok(finished == 1)
    }

    async fn read(
        &self,
        correlation_id: Uuid,
        after_seq: i64,
    ) -> Result<Option<Backlog>, StoreError> {
        let wanted = u64::try_from(after_seq.saturating_add(1)).unwrap_or(0);
        // Stream ids are `0-{seq + 1}`: everything after `0-{wanted}`, exclusive.
        let (mut fields, chunks): (
            HashMap<String, String>,
            Vec<(String, Vec<(String, String)>)>,
        ) = redis::pipe()
            .atomic()
            .hgetall(self.task_key(correlation_id))
            .xrange(self.chunks_key(correlation_id), format!("(0-{wanted}"), "+")
            .query_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut kept = Vec::with_capacity(chunks.len());
        for (id, mut values) in chunks {
            let seq = id
                .strip_prefix("0-")
                .and_then(|n| n.parse::<u64>().ok())
                .and_then(|n| n.checked_sub(1))
                .ok_or_else(|| StoreError::Corrupt(format!("a chunk id `{id}`")))?;
            let data = values
                .pop()
                .ok_or_else(|| StoreError::Corrupt("a chunk without data".into()))?
                .1;
            kept.push((seq, raw(data)?));
        }
        let next_seq = number(&fields, "next_seq")?.unwrap_or(0);
        let first_seq = kept.first().map_or(next_seq.max(wanted), |(seq, _)| *seq);
        Ok(Some(Backlog {
            first_seq,
            chunks: kept,
            outcome: outcome_of(&mut fields)?,
        }))
    }

    async fn subscribe(&self, correlation_id: Uuid) -> Result<Subscription, StoreError> {
        let channel = self.channel(correlation_id);
        let _serial = self.subscribing.lock().await;
        let (receiver, new) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            match feeds.get(channel.as_bytes()) {
                Some(feed) => (feed.subscribe(), false),
                None => {
                    let (feed, receiver) = broadcast::channel(SUBSCRIPTION_BUFFER);
                    feeds.insert(channel.clone().into_bytes(), feed);
                    (receiver, true)
                }
            }
        };
        if new {
            if let Err(error) = self.connection.clone().subscribe(&channel).await {
                let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
                feeds.remove(channel.as_bytes());
                return Err(failed(error));
            }
        }
        Ok(Subscription {
            receiver,
            _guard: Box::new(Unsubscribe {
                channel: channel.into_bytes(),
                feeds: self.feeds.clone(),
                connection: self.connection.clone(),
                subscribing: self.subscribing.clone(),
            }),
        })
    }

    async fn request_cancel(&self, correlation_id: Uuid) -> Result<bool, StoreError> {
        let marked: u8 = self
            .scripts
            .cancel
            .key(self.task_key(correlation_id))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(failed)?;
        Ok(marked == 1)
    }
}

/// Unsubscribes the channel with its last local subscriber (the receiver is dropped first).
struct Unsubscribe {
    channel: Vec<u8>,
    feeds: Feeds,
    connection: ConnectionManager,
    subscribing: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let channel = std::mem::take(&mut self.channel);
        let feeds = self.feeds.clone();
        let mut connection = self.connection.clone();
        let subscribing = self.subscribing.clone();
        runtime.spawn(async move {
            // Under the subscribe lock, and only if nobody subscribed again meanwhile.
            let _serial = subscribing.lock().await;
            let unused = {
                let mut feeds = feeds.lock().unwrap_or_else(|e| e.into_inner());
                let unused = feeds
                    .get(&channel)
                    .is_some_and(|feed| feed.receiver_count() == 0);
                if unused {
                    feeds.remove(&channel);
                }
                unused
            };
            if unused {
                if let Err(error) = connection.unsubscribe(&channel).await {
                    tracing::debug!(%error, "unsubscribing a task channel failed");
                }
            }
        });
    }
}
