//! The dead letters (protocol §3.11) in the console: list, requeue one, purge all — the
//! same operations as `taskgate dead-letters`, through a trait so that the API's tests run
//! without a broker. Read on an operator's request only, never pushed: listing reads the
//! whole queue.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::access::Operator;
use super::Console;
use crate::dead_letters::{DeadLetter, DeadLetterNames};

/// The most dead letters one listing returns (the total is given too).
pub const MAX_LISTED: usize = 200;
/// How much of a payload the listing shows.
const PAYLOAD_PREVIEW_CHARS: usize = 200;

/// Where the dead letters are and what can be done with them.
#[async_trait]
pub trait DeadLetterShelf: Send + Sync + 'static {
    /// Every dead letter, oldest first.
    async fn list(&self) -> Result<Vec<DeadLetter>, String>;
    /// Sends dead letter `id` back to its queue; returns the queue.
    async fn requeue(&self, id: &str) -> Result<String, String>;
    /// Deletes every dead letter; returns how many there were.
    async fn purge(&self) -> Result<u32, String>;
}

/// The dead-letter queue on the broker.
pub struct AmqpShelf {
    pub url: String,
    pub names: DeadLetterNames,
}

#[async_trait]
impl DeadLetterShelf for AmqpShelf {
    async fn list(&self) -> Result<Vec<DeadLetter>, String> {
        crate::broker::amqp::dead_letters::list(&self.url, &self.names)
            .await
            .map_err(|e| e.to_string())
    }

    async fn requeue(&self, id: &str) -> Result<String, String> {
        crate::broker::amqp::dead_letters::requeue(&self.url, &self.names, id)
            .await
            .map_err(|e| e.to_string())
    }

    async fn purge(&self) -> Result<u32, String> {
        crate::broker::amqp::dead_letters::purge(&self.url, &self.names)
            .await
            .map_err(|e| e.to_string())
    }
}

/// One dead letter as the console lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    id: String,
    request_type: Option<String>,
    queue: Option<String>,
    reason: Option<String>,
    deliveries: Option<u32>,
    /// Unix seconds.
    died_at: Option<u64>,
    bytes: usize,
    /// The payload's first characters (UTF-8, lossy).
    payload: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    total: usize,
    dead_letters: Vec<Listed>,
}

fn unavailable(error: String) -> Response {
    (
        StatusCode::BAD_GATEWAY,
        Json(serde_json::json!({ "error": error })),
    )
        .into_response()
}

fn shelf(console: &Console) -> Result<&Arc<dyn DeadLetterShelf>, Box<Response>> {
    console.dead_letters.as_ref().ok_or_else(|| {
        Box::new(
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "this host has no dead-letter queue to show" })),
            )
                .into_response(),
        )
    })
}

pub(super) async fn list(State(console): State<Arc<Console>>) -> Response {
    let shelf = match shelf(&console) {
        Ok(shelf) => shelf,
        Err(response) => return *response,
    };
    match shelf.list().await {
        Ok(letters) => {
            let total = letters.len();
            let dead_letters = letters
                .into_iter()
                .take(MAX_LISTED)
                .map(|d| Listed {
                    payload: String::from_utf8_lossy(&d.body)
                        .chars()
                        .take(PAYLOAD_PREVIEW_CHARS)
                        .collect(),
                    bytes: d.body.len(),
                    id: d.id,
                    request_type: d.request_type,
                    queue: d.queue,
                    reason: d.reason,
                    deliveries: d.deliveries,
                    died_at: d.died_at,
                })
                .collect();
            Json(Listing {
                total,
                dead_letters,
            })
            .into_response()
        }
        Err(error) => unavailable(error),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequeueBody {
    id: String,
}

pub(super) async fn requeue(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
    body: Result<Json<RequeueBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(RequeueBody { id }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = format!(
                "the body must be {{\"id\": \"<dead letter id>\"}} (Content-Type: application/json): {}",
                rejection.body_text()
            );
            return (
                rejection.status(),
                Json(serde_json::json!({ "error": message })),
            )
                .into_response();
        }
    };
    let shelf = match shelf(&console) {
        Ok(shelf) => shelf,
        Err(response) => return *response,
    };
    match shelf.requeue(&id).await {
        Ok(queue) => {
            info!(operator = %operator.0, correlation_id = %id, %queue, "console: a dead letter sent back to its queue");
            Json(serde_json::json!({ "requeued": id, "queue": queue })).into_response()
        }
        Err(error) => {
            warn!(operator = %operator.0, correlation_id = %id, %error, "console: a dead letter could not be sent back");
            unavailable(error)
        }
    }
}

pub(super) async fn purge(
    State(console): State<Arc<Console>>,
    Extension(operator): Extension<Operator>,
) -> Response {
    let shelf = match shelf(&console) {
        Ok(shelf) => shelf,
        Err(response) => return *response,
    };
    match shelf.purge().await {
        Ok(purged) => {
            info!(operator = %operator.0, purged, "console: the dead letters purged");
            Json(serde_json::json!({ "purged": purged })).into_response()
        }
        Err(error) => unavailable(error),
    }
}
