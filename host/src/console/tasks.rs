//! Detached tasks in the console (issue 15; protocol §4.3): `GET /console/api/tasks` and
//! `POST /console/api/cancel`.
//!
//! A task lives in this host's gateway maps (`[resume] store = "memory"`) or in the task
//! store the hosts of a cluster share (`redis://…`). The listing gives this host's tasks and,
//! with a shared store, the store's latest [`LISTED`] (any host's console shows the whole
//! cluster's), each saying where it lives. The store is read through [`StoredTasks`], a
//! trait so that the API's tests run on the in-memory store, and within [`STORE_WAIT`]: a
//! store that cannot be reached leaves the host's tasks listed and says so, it never holds
//! the answer up. The console only asks the store for its bounded index of recent tasks; it
//! never walks the store's keyspace.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

use super::access::Operator;
use super::Console;
use crate::error::RequestError;
use crate::gateway::task_list::{Location, TaskSummary};
use crate::tasks::replies::failed;
use crate::tasks::{TaskRecord, TaskState, TaskStore};

/// How many of the shared store's tasks a listing shows: the most recent.
pub const LISTED: usize = 200;
/// How long the console waits for the shared store.
pub const STORE_WAIT: Duration = Duration::from_secs(2);

/// The shared task store, as the console reads and acts on it.
#[async_trait]
pub trait StoredTasks: Send + Sync + 'static {
    /// The store's most recent tasks, newest first, at most `limit`.
    async fn recent(&self, limit: usize) -> Result<Vec<TaskSummary>, String>;
    /// Ends a running task `CANCELLED` in the store (every host's attached client gets it);
    /// the caller tells workers to stop.
    async fn cancel(&self, correlation_id: Uuid, operator: &str) -> Result<StoreCancel, String>;
}

/// What a cancel found in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCancel {
    /// It was running: now it has ended `CANCELLED`.
    Cancelled,
    /// It had ended already (its outcome stays).
    Ended,
    /// The store has no such task.
    Absent,
}

/// [`StoredTasks`] on a [`TaskStore`].
pub struct SharedStore(pub Arc<dyn TaskStore>);

/// The store keeps a hash of the owner, never its subject or session id: the console shows
/// the hash's first characters, enough to tell one owner's tasks from another's.
fn owner_text(record: &TaskRecord) -> String {
    let hash = record.owner.as_str();
    format!("owner {}", hash.get(..8).unwrap_or(hash))
}

/// `running`, `succeeded`, or the error code it ended with (`CANCELLED`, `TIMEOUT`, …), as
/// for this host's tasks.
///
/// A running task past its deadline is `overdue`: the host that ran it would have written
/// `TIMEOUT` at the deadline, so it is gone; the next `attach` (or a cancel) ends it.
fn state_text(record: &TaskRecord, now_ms: u64) -> String {
    match (record.state, &record.error_code) {
        (TaskState::Failed | TaskState::Cancelled, Some(code)) => code.to_string(),
        (TaskState::Running, _) if now_ms > record.deadline_ms => "overdue".to_owned(),
        (state, _) => state.as_str().to_owned(),
    }
}

fn summary(record: &TaskRecord, now_ms: u64) -> TaskSummary {
    TaskSummary {
        correlation_id: record.correlation_id.to_string(),
        client_id: record.client_id.to_string(),
        request_type: record.request_type.to_string(),
        owner: owner_text(record),
        state: state_text(record, now_ms),
        started_at_ms: record.started_at_ms,
        location: Location::Store,
    }
}

#[async_trait]
impl StoredTasks for SharedStore {
    async fn recent(&self, limit: usize) -> Result<Vec<TaskSummary>, String> {
        let records = self.0.list_recent(limit).await.map_err(|e| e.to_string())?;
        let now_ms = super::now_ms();
        Ok(records.iter().map(|r| summary(r, now_ms)).collect())
    }

    /// As the owner's `cancel` does (`gateway::shared_tasks`): marked, then `CANCELLED` if
    /// it still runs (the first outcome wins, so a result racing it is not overwritten).
    async fn cancel(&self, correlation_id: Uuid, operator: &str) -> Result<StoreCancel, String> {
        let store = &self.0;
        let Some(record) = store
            .record(correlation_id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(StoreCancel::Absent);
        };
        store
            .request_cancel(correlation_id)
            .await
            .map_err(|e| e.to_string())?;
        let cancelled = failed(&RequestError::Cancelled.to_body());
        if store
            .finish(correlation_id, &cancelled)
            .await
            .map_err(|e| e.to_string())?
        {
            info!(%correlation_id, client_id = %record.client_id, %operator, "console: a detached task in the shared store cancelled by an operator");
            Ok(StoreCancel::Cancelled)
        } else {
            info!(%correlation_id, client_id = %record.client_id, %operator, "console: an operator cancels a task of the shared store that has ended already");
            Ok(StoreCancel::Ended)
        }
    }
}

/// `?q=TEXT`: those whose id, client id, type, owner, state or place contains it.
#[derive(Debug, Deserialize)]
pub(super) struct TaskFilter {
    q: Option<String>,
}

/// The body of `GET /console/api/tasks`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    tasks: Vec<TaskSummary>,
    /// `none` (tasks live in the hosts), `read`, or `unreadable` (see `store_error`).
    shared_store: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<String>,
}

/// The store's answer within [`STORE_WAIT`], or why there is none.
async fn within_wait<T>(
    answer: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(STORE_WAIT, answer)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the task store did not answer within {} s",
                STORE_WAIT.as_secs()
            ))
        })
}

pub(super) async fn list(
    State(console): State<Arc<Console>>,
    Query(filter): Query<TaskFilter>,
) -> Response {
    let mut tasks = console.control.tasks();
    let (shared_store, store_error) = match &console.stored_tasks {
        None => ("none", None),
        Some(store) => match within_wait(store.recent(LISTED)).await {
            Ok(stored) => {
                // A task this host lists itself is shown once, from here.
                let here: std::collections::HashSet<String> =
                    tasks.iter().map(|t| t.correlation_id.clone()).collect();
                tasks.extend(
                    stored
                        .into_iter()
                        .filter(|t| !here.contains(&t.correlation_id)),
                );
                ("read", None)
            }
            Err(error) => {
                warn!(%error, "console: the shared task store could not be read; listing this host's tasks only");
                ("unreadable", Some(error))
            }
        },
    };
    if let Some(q) = filter.q.map(|q| q.to_lowercase()).filter(|q| !q.is_empty()) {
        tasks.retain(|t| {
            [
                t.correlation_id.as_str(),
                t.client_id.as_str(),
                t.request_type.as_str(),
                t.owner.as_str(),
                t.state.as_str(),
                t.location.as_str(),
            ]
            .iter()
            .any(|field| field.to_lowercase().contains(&q))
        });
    }
    // Both lists are newest first; a stable sort keeps each one's order among equals.
    tasks.sort_by_key(|t| std::cmp::Reverse(t.started_at_ms));
    Json(Listing {
        tasks,
        shared_store,
        store_error,
    })
    .into_response()
}

/// The body of `POST /console/api/cancel`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CancelBody {
    correlation_id: Uuid,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cancelled {
    correlation_id: Uuid,
    /// This host held the request and ended it `CANCELLED`; workers are told either way.
    held_here: bool,
    /// With a shared store: whether it has the task…
    #[serde(skip_serializing_if = "Option::is_none")]
    found_in_store: Option<bool>,
    /// …and whether it was running there and has now ended `CANCELLED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_in_store: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<String>,
}

pub(super) async fn cancel(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
    body: Result<Json<CancelBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(CancelBody { correlation_id }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = format!(
                "the body must be {{\"correlationId\": \"<uuid>\"}} (Content-Type: application/json): {}",
                rejection.body_text()
            );
            return (
                rejection.status(),
                Json(serde_json::json!({ "error": message })),
            )
                .into_response();
        }
    };
    let mut answer = Cancelled {
        correlation_id,
        held_here: false,
        found_in_store: None,
        cancelled_in_store: None,
        store_error: None,
    };
    // The store's outcome first, then workers told (below): a worker that stops and
    // reports finds the task ended already.
    if let Some(store) = &console.stored_tasks {
        match within_wait(store.cancel(correlation_id, &operator.0)).await {
            Ok(found) => {
                answer.found_in_store = Some(found != StoreCancel::Absent);
                answer.cancelled_in_store = Some(found == StoreCancel::Cancelled);
            }
            Err(error) => {
                warn!(%correlation_id, operator = %operator.0, %error, "console: a cancel could not reach the shared task store; workers are told all the same");
                answer.store_error = Some(error);
            }
        }
    }
    answer.held_here = console.control.cancel(correlation_id, &operator.0);
    Json(answer).into_response()
}
