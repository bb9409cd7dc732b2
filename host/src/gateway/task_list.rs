//! A read-only look at this host's detached tasks (protocol §4.3) for the operator console:
//! the running ones (in flight) and those whose outcome is kept. Walks the maps, so it is
//! for an operator's request, never for the request path.

use serde::Serialize;

use super::Gateway;
use crate::broker::Broker;
use crate::resume::Owner;
use crate::sink::ClientSink;

/// Where a detached task lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// In this host's maps (`[resume] store = "memory"`).
    Host,
    /// In the task store the hosts of a cluster share.
    Store,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Host => "host",
            Location::Store => "store",
        }
    }
}

/// One detached task as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub correlation_id: String,
    pub client_id: String,
    pub request_type: String,
    /// `subject <name>`, or `a session` (a session id is a secret); for a task of the shared
    /// store, `owner <hash prefix>` (the store keeps a hash of the owner only).
    pub owner: String,
    /// `running`, `parked` (its client is away; this host's tasks only), `succeeded`, or the
    /// error code it ended with.
    pub state: String,
    /// Milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// `host` or `store`.
    #[serde(rename = "where")]
    pub location: Location,
}

fn owner_text(owner: &Owner) -> String {
    match owner {
        Owner::Subject(subject) => format!("subject {subject}"),
        Owner::Session(_) => "a session".to_owned(),
    }
}

impl<B: Broker, S: ClientSink> Gateway<B, S> {
    /// This host's detached tasks, newest first.
    pub fn detached_tasks(&self) -> Vec<TaskSummary> {
        let mut tasks: Vec<TaskSummary> = self
            .inflight
            .iter()
            .filter_map(|entry| {
                let request = entry.value();
                let resume = request.resume.as_deref().filter(|r| r.detached)?;
                Some(TaskSummary {
                    correlation_id: entry.key().to_string(),
                    client_id: request.client_id.to_string(),
                    request_type: request.request_type.to_string(),
                    owner: owner_text(&resume.owner),
                    state: if resume.parked_until.is_some() {
                        "parked"
                    } else {
                        "running"
                    }
                    .to_owned(),
                    started_at_ms: resume.started_at_ms,
                    location: Location::Host,
                })
            })
            .collect();
        tasks.extend(
            self.kept
                .iter()
                .filter(|e| e.value().detached)
                .map(|entry| {
                    let kept = entry.value();
                    TaskSummary {
                        correlation_id: entry.key().to_string(),
                        client_id: kept.client_id.to_string(),
                        request_type: kept.request_type.to_string(),
                        owner: owner_text(&kept.owner),
                        state: kept
                            .outcome
                            .error
                            .as_ref()
                            .map_or_else(|| "succeeded".to_owned(), |e| e.code.clone()),
                        started_at_ms: kept.started_at_ms,
                        location: Location::Host,
                    }
                }),
        );
        tasks.sort_by_key(|t| std::cmp::Reverse(t.started_at_ms));
        tasks
    }
}
