//! Detached tasks in a task store the hosts of a cluster share (`[resume] store =
//! "redis://…"`; protocol §4.3). Such a task does not live in this host's maps: it is
//! created in the store, published with `reply_to` = the shared task-reply queue (so its
//! replies outlive this host, and any host writes them to the store), and every client
//! that wants it — the one that started it, or one back after a reload, on any host — gets
//! it from the store through an [`Attachment`] relayed to its connection. `tasks`,
//! `attach`, an idempotent resend and `cancel` are all answered from the store.
//!
//! The deadline: the taking host's timer writes `TIMEOUT`; when that host died, whichever
//! host reads the running task past its deadline writes it. The store keeps the first
//! outcome only, so a late reply and a timeout never both win; the winner of a timeout or a
//! cancel tells workers to stop.
//!
//! Without a shared store (the default), detached tasks stay in the gateway's own maps
//! (`resume.rs`), as on one host they always did.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use taskgate_protocol::ErrorBody;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::envelope::{self, Caller, Refusal, RequestEnvelope};
use super::Gateway;
use crate::broker::{Broker, OutgoingRequest, PublishError};
use crate::error::{RateLimit, RequestError, UnavailableCause};
use crate::serving::WhenNoWorkers;
use crate::session::Session;
use crate::sink::{ClientSink, EmitError, ResponseEvent};
use crate::tasks::replies::failed;
use crate::tasks::{
    Attachment, Created, Entry, NewTask, Outcome, OwnerKey, StoreError, TaskRecord, TaskState,
    TaskStore,
};

/// How the first answer of a relay is given.
enum Answer<A> {
    /// `attach`'s ack: `{ ok, state, firstSeq }`.
    Attach(A),
    /// A `request`'s ack: `{ ok: true }` (a new task, or a resend).
    Request(A),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn store_down(error: &StoreError) -> RequestError {
    RequestError::Unavailable(UnavailableCause::TaskStore(error.to_string()))
}

/// The `tasks` entry of a record.
fn listed(record: &TaskRecord) -> Value {
    let mut entry = json!({
        "id": &*record.client_id,
        "requestType": &*record.request_type,
        "state": record.state.as_str(),
        "startedAt": record.started_at_ms,
    });
    if let Some(map) = entry.as_object_mut() {
        if let Some(ended) = record.ended_at_ms {
            map.insert("endedAt".into(), json!(ended));
        }
        if let Some(seq) = record.last_seq {
            map.insert("lastSeq".into(), json!(seq));
        }
        if let Some(chunk) = &record.last_chunk {
            let value = serde_json::from_str::<Value>(chunk.get()).unwrap_or(Value::Null);
            map.insert("lastChunk".into(), value);
        }
    }
    entry
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// Keeps detached tasks in `store`, shared with the other hosts of a cluster.
    /// Their workers reply to `reply_queue`, which every host of the cluster consumes.
    pub fn with_task_store(mut self, store: Arc<dyn TaskStore>, reply_queue: &str) -> Self {
        self.store = Some(store);
        self.task_reply_queue = reply_queue.into();
        self
    }

    /// The shared store, when there is one and the connection may use it: its owner.
    fn shared_owner(&self, conn: S::Conn) -> Option<(Arc<dyn TaskStore>, OwnerKey)> {
        let store = self.store.clone()?;
        let session = self.sessions.get(&conn)?;
        let owner = session.owner()?;
        Some((store, OwnerKey::of(owner)))
    }

    /// A `request` with `detach: true` while the store is shared: admitted here (the
    /// gates and checks of any request), then created in the store and published in the
    /// background. Returns false when it is not such a request.
    pub(super) fn submit_shared(
        self: &Arc<Self>,
        conn: S::Conn,
        envelope: &mut Option<Result<RequestEnvelope, String>>,
        ack: &mut Option<S::Ack>,
    ) -> bool {
        let Some(store) = self.store.clone() else {
            return false;
        };
        let detached = matches!(
            envelope,
            Some(Ok(RequestEnvelope {
                detach: Some(Value::Bool(true)),
                ..
            }))
        );
        if !detached {
            return false;
        }
        let (Some(taken), Some(ack)) = (envelope.take(), ack.take()) else {
            return false;
        };
        let session = self.sessions.get(&conn).map(|s| s.value().clone());
        if let Err(error) = self.gate(session.as_deref()) {
            self.refuse(conn, ack, None, &error, None);
            return true;
        }
        let caller = Caller {
            session: session.as_deref(),
            in_flight: None,
        };
        let request = match envelope::check(taken, &self.routes.load(), &caller) {
            Ok(request) => request,
            Err(Refusal { error, spec }) => {
                let known_type = spec.as_ref().map(|spec| spec.name.as_str());
                self.refuse(conn, ack, known_type, &error, None);
                return true;
            }
        };
        let Some(owner) = session.as_deref().and_then(Session::owner) else {
            let error = RequestError::BadRequest(
                "`detach` needs a session: connect with auth.session (protocol §4)".to_owned(),
            );
            self.refuse(conn, ack, Some(&request.spec.name), &error, None);
            return true;
        };
        let task = NewTask {
            owner: OwnerKey::of(owner),
            client_id: request.client_id.as_str().into(),
            correlation_id: Uuid::new_v4(),
            request_type: request.spec.name.as_str().into(),
            started_at_ms: unix_ms(),
            timeout: request.spec.timeout,
        };
        let outgoing = OutgoingRequest {
            correlation_id: task.correlation_id,
            request_type: task.request_type.clone(),
            queue: request.spec.queue.as_str().into(),
            body: request.body,
            streams: request.spec.streams,
            timeout: request.spec.timeout,
            deadline_ms: task.started_at_ms.saturating_add(
                u64::try_from(request.spec.timeout.as_millis()).unwrap_or(u64::MAX),
            ),
            identity: session
                .as_deref()
                .and_then(|s| s.identity_header().cloned()),
            traceparent: crate::trace::for_request(request.client_trace, task.correlation_id),
            reply_to: Some(self.task_reply_queue.clone()),
            retry: request.spec.retry.clone(),
        };
        let when_no_workers = request.spec.when_no_workers;
        let gateway = self.clone();
        tokio::spawn(async move {
            gateway
                .start_shared(conn, store, task, (outgoing, when_no_workers), ack)
                .await
        });
        true
    }

    async fn start_shared(
        self: Arc<Self>,
        conn: S::Conn,
        store: Arc<dyn TaskStore>,
        task: NewTask,
        (request, when_no_workers): (OutgoingRequest, WhenNoWorkers),
        ack: S::Ack,
    ) {
        let correlation_id = task.correlation_id;
        let trace = request.traceparent;
        let refuse = |conn, ack, error: &RequestError| {
            self.refuse(
                conn,
                ack,
                Some(&task.request_type),
                error,
                Some((correlation_id, &trace)),
            );
        };
        // A task nobody would run is not created (`serving`).
        if let Err(error) = self
            .serving
            .check(
                self.broker.as_ref(),
                &request.request_type,
                &request.queue,
                when_no_workers,
            )
            .await
        {
            debug!(%correlation_id, %error, "detached task refused: no worker");
            return refuse(conn, ack, &error);
        }
        let created = match store.create(&task).await {
            Ok(created) => created,
            Err(error) => {
                warn!(%correlation_id, %error, "a detached task could not be created in the task store");
                return refuse(conn, ack, &store_down(&error));
            }
        };
        match created {
            Created::TooMany { max } => {
                let error = RequestError::RateLimited(RateLimit::Tasks { max });
                refuse(conn, ack, &error)
            }
            Created::Existing(existing) => {
                info!(correlation_id = %existing, client_id = %task.client_id, "a request resent with the id of one its owner has: attached, not run again");
                self.relay(
                    conn,
                    store,
                    task.client_id,
                    existing,
                    -1,
                    Answer::Request(ack),
                )
                .await
            }
            Created::New => {
                let wait = self.options.publish_timeout.min(request.timeout);
                let timeout = request.timeout;
                let published = match tokio::time::timeout(wait, self.broker.publish(request)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(PublishError::ConfirmTimeout(wait)),
                };
                if let Err(error) = published {
                    warn!(%correlation_id, %error, "publishing a detached task failed");
                    let refusal = RequestError::Unavailable(UnavailableCause::PublishFailed(error));
                    let _ = store
                        .finish(correlation_id, &failed(&refusal.to_body()))
                        .await;
                    self.spawn_cancel(correlation_id);
                    return refuse(conn, ack, &refusal);
                }
                debug!(%correlation_id, client_id = %task.client_id, "detached task published; its replies go to the shared queue");
                crate::tasks::record_started();
                self.watch_shared_deadline(store.clone(), correlation_id, timeout);
                self.relay(
                    conn,
                    store,
                    task.client_id,
                    correlation_id,
                    -1,
                    Answer::Request(ack),
                )
                .await
            }
        }
    }

    /// The taking host's timer: `TIMEOUT` at the deadline, unless the task ended before.
    fn watch_shared_deadline(
        self: &Arc<Self>,
        store: Arc<dyn TaskStore>,
        correlation_id: Uuid,
        timeout: std::time::Duration,
    ) {
        let gateway = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let error = RequestError::Timeout(ms).to_body();
            if let Ok(true) = store.finish(correlation_id, &failed(&error)).await {
                info!(%correlation_id, "a detached task timed out");
                if let Some(gateway) = gateway.upgrade() {
                    gateway.spawn_cancel(correlation_id);
                }
            }
        });
    }

    /// A running task read past its deadline: its host is gone, whoever reads it writes
    /// `TIMEOUT` (the first outcome wins) and tells workers to stop.
    async fn expire_overdue(&self, store: &dyn TaskStore, record: &mut TaskRecord) {
        if record.state != TaskState::Running || unix_ms() <= record.deadline_ms {
            return;
        }
        let ms = record.deadline_ms.saturating_sub(record.started_at_ms);
        let error = RequestError::Timeout(ms).to_body();
        if let Ok(true) = store.finish(record.correlation_id, &failed(&error)).await {
            info!(correlation_id = %record.correlation_id, "a detached task past its deadline, its host gone: timed out");
            self.spawn_cancel(record.correlation_id);
        }
        if let Ok(Some(now)) = store.record(record.correlation_id).await {
            *record = now;
        }
    }

    /// Answers `how`, then sends the task's entries after `after_seq` to `conn` until the
    /// outcome, or until the connection goes.
    async fn relay(
        self: &Arc<Self>,
        conn: S::Conn,
        store: Arc<dyn TaskStore>,
        client_id: Arc<str>,
        correlation_id: Uuid,
        after_seq: i64,
        how: Answer<S::Ack>,
    ) {
        let record = match store.record(correlation_id).await {
            Ok(Some(mut record)) => {
                self.expire_overdue(store.as_ref(), &mut record).await;
                Some(record)
            }
            _ => None,
        };
        let attachment = match Attachment::open(store.clone(), correlation_id, after_seq).await {
            Ok(Some(attachment)) => attachment,
            Ok(None) => {
                let (Answer::Attach(ack) | Answer::Request(ack)) = how;
                return self.refuse_attach(conn, ack, &RequestError::TaskNotFound);
            }
            Err(error) => {
                let (Answer::Attach(ack) | Answer::Request(ack)) = how;
                return self.send_refusal(conn, ack, &store_down(&error));
            }
        };
        let acked = match how {
            Answer::Attach(ack) => {
                let body = json!({ "ok": true, "state": attachment.state.as_str(), "firstSeq": attachment.first_seq });
                self.sink.ack_json(ack, &body)
            }
            Answer::Request(ack) => self.sink.ack(ack, Ok(())),
        };
        if acked.is_err() {
            self.sink.disconnect(conn);
            return;
        }
        let gateway = self.clone();
        let relay = tokio::spawn(async move {
            gateway
                .forward(conn, client_id, attachment, store, record)
                .await;
        });
        let mut relays = self.relays.entry(conn).or_default();
        // Relays that ended (their task did) go as new ones come: the list stays short.
        relays.retain(|handle| !handle.is_finished());
        relays.push(relay.abort_handle());
        drop(relays);
        // A connection that went meanwhile took its relays' handles with it.
        if !self.conns.contains_key(&conn) {
            self.stop_relays(conn);
        }
    }

    /// Relays until the outcome. Should the task's deadline pass with no outcome (its host
    /// died, and with it the timer), this relay writes the `TIMEOUT` itself.
    async fn forward(
        &self,
        conn: S::Conn,
        client_id: Arc<str>,
        mut attachment: Attachment,
        store: Arc<dyn TaskStore>,
        mut record: Option<TaskRecord>,
    ) {
        let overdue = record.as_ref().map_or(std::time::Duration::MAX, |r| {
            std::time::Duration::from_millis(r.deadline_ms.saturating_sub(unix_ms()) + 1)
        });
        let deadline =
            tokio::time::sleep(overdue.min(std::time::Duration::from_secs(365 * 24 * 3600)));
        tokio::pin!(deadline);
        loop {
            let next = tokio::select! {
                next = attachment.next() => next,
                () = &mut deadline, if record.is_some() => {
                    if let Some(mut overdue) = record.take() {
                        self.expire_overdue(store.as_ref(), &mut overdue).await;
                    }
                    continue;
                }
            };
            let entry = match next {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(error) => {
                    warn!(?conn, %client_id, %error, "the task store failed while relaying a task; the client attaches again");
                    self.sink.disconnect(conn);
                    return;
                }
            };
            let sent = match &entry {
                Entry::Chunk { seq, data } => self
                    .sink
                    .emit(conn, &ResponseEvent::chunk(&client_id, *seq, data)),
                Entry::End(outcome) => self.emit_outcome(conn, &client_id, outcome),
            };
            match sent {
                Ok(()) | Err(EmitError::Encode) => {}
                Err(EmitError::Gone) => return,
                Err(EmitError::Full) => {
                    warn!(
                        ?conn,
                        "client is not reading its responses (send buffer full); disconnecting it"
                    );
                    self.sink.disconnect(conn);
                    return;
                }
            }
            if matches!(entry, Entry::End(_)) {
                return;
            }
        }
    }

    fn emit_outcome(
        &self,
        conn: S::Conn,
        client_id: &str,
        outcome: &Outcome,
    ) -> Result<(), EmitError> {
        if outcome.state == TaskState::Succeeded {
            return self
                .sink
                .emit(conn, &ResponseEvent::result(client_id, &outcome.response));
        }
        let error =
            serde_json::from_str::<ErrorBody>(outcome.response.get()).unwrap_or_else(|_| {
                ErrorBody::new(
                    taskgate_protocol::ErrorCode::WorkerError,
                    "the task failed (its error could not be read back)",
                )
            });
        self.sink
            .emit(conn, &ResponseEvent::error(client_id, &error))
    }

    /// Stops relaying to a connection that is gone.
    pub(super) fn stop_relays(&self, conn: S::Conn) {
        if let Some((_, relays)) = self.relays.remove(&conn) {
            relays.iter().for_each(AbortHandle::abort);
        }
    }

    /// `attach` for a task this host does not hold: from the shared store; not there, it is
    /// claimed from the other hosts. `Err` when there is no shared store (or no owner: then
    /// it is not found anyway).
    pub(super) fn attach_shared(
        self: &Arc<Self>,
        conn: S::Conn,
        client_id: &str,
        after_seq: i64,
        ack: S::Ack,
    ) -> Result<(), S::Ack> {
        let Some((store, owner)) = self.shared_owner(conn) else {
            return Err(ack);
        };
        let gateway = self.clone();
        let client_id: Arc<str> = client_id.into();
        tokio::spawn(async move {
            match store.find(&owner, &client_id).await {
                Ok(Some(correlation_id)) => {
                    info!(%correlation_id, %client_id, after_seq, "a task attached from the shared store");
                    gateway
                        .relay(
                            conn,
                            store,
                            client_id,
                            correlation_id,
                            after_seq,
                            Answer::Attach(ack),
                        )
                        .await
                }
                // Not a task: perhaps a request parked on another host (`handoff`).
                Ok(None) => gateway.claim(conn, &client_id, after_seq, ack),
                Err(error) => gateway.refuse_attach(conn, ack, &store_down(&error)),
            }
        });
        Ok(())
    }

    /// `tasks` from the shared store; false when there is none.
    pub(super) fn tasks_shared(self: &Arc<Self>, conn: S::Conn, ack: S::Ack) -> Result<(), S::Ack> {
        let Some(store) = self.store.clone() else {
            return Err(ack);
        };
        let owner = self.shared_owner(conn).map(|(_, owner)| owner);
        let gateway = self.clone();
        tokio::spawn(async move {
            let records = match owner {
                Some(owner) => store.list(&owner).await,
                None => Ok(Vec::new()),
            };
            let mut records = match records {
                Ok(records) => records,
                Err(error) => return gateway.refuse_attach(conn, ack, &store_down(&error)),
            };
            for record in &mut records {
                gateway.expire_overdue(store.as_ref(), record).await;
            }
            let tasks: Vec<Value> = records.iter().map(listed).collect();
            if let Err(EmitError::Full) = gateway
                .sink
                .ack_json(ack, &json!({ "ok": true, "tasks": tasks }))
            {
                gateway.sink.disconnect(conn);
            }
        });
        Ok(())
    }

    /// `cancel` of a task this host does not hold: `CANCELLED` in the shared store (if it
    /// still runs), and workers told.
    pub(super) fn cancel_shared(self: &Arc<Self>, conn: S::Conn, client_id: &str) {
        let Some((store, owner)) = self.shared_owner(conn) else {
            return;
        };
        let gateway = self.clone();
        let client_id = client_id.to_owned();
        tokio::spawn(async move {
            let Ok(Some(correlation_id)) = store.find(&owner, &client_id).await else {
                debug!(?conn, %client_id, "cancel for a task the owner does not have ignored");
                return;
            };
            let _ = store.request_cancel(correlation_id).await;
            let cancelled = failed(&RequestError::Cancelled.to_body());
            if let Ok(true) = store.finish(correlation_id, &cancelled).await {
                info!(%correlation_id, %client_id, "a detached task cancelled by its owner");
                gateway.spawn_cancel(correlation_id);
            }
        });
    }
}
