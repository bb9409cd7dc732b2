//! The console's read-only listing of detached tasks.

use super::*;
use crate::resume::{Owner, ResumeSettings};
use crate::session::Session;

#[tokio::test]
async fn detached_tasks_are_listed_running_or_ended_and_plain_requests_are_not() {
    let h = harness_with(|g| {
        g.with_resume(ResumeSettings {
            window: Duration::from_secs(10),
            request_bytes: 1 << 20,
            ..ResumeSettings::default()
        })
    });
    h.gateway.disconnected(CONN);
    h.gateway.connected_as(
        CONN,
        Session::anonymous().with_owner(Owner::Subject("alice".into())),
    );
    let detached = |id: &str| {
        serde_json::from_value::<RequestEnvelope>(
            json!({ "id": id, "requestType": "echo", "payload": 1, "detach": true }),
        )
        .map_err(|e| e.to_string())
    };
    h.submit(1, detached("t1")).await;
    let running = h.last_correlation_id();
    h.submit(2, detached("t2")).await;
    let failed = h.last_correlation_id();
    h.submit(3, req("plain", "echo", json!(1))).await;
    h.gateway.on_reply(reply(
        failed,
        "error",
        r#"{"code":"NOT_FOUND","message":"no"}"#,
    ));
    let tasks = h.gateway.detached_tasks();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let by = |id: Uuid| {
        tasks
            .iter()
            .find(|t| t.correlation_id == id.to_string())
            .unwrap()
            .clone()
    };
    assert_eq!(by(running).state, "running");
    assert_eq!(by(running).client_id, "t1");
    assert_eq!(by(running).owner, "subject alice");
    assert_eq!(by(running).request_type, "echo");
    assert_eq!(by(failed).state, "NOT_FOUND");
    // An operator's cancel ends a listed task like any request.
    assert!(h.gateway.cancel_by_operator(running, "alice"));
    assert_eq!(
        h.gateway
            .detached_tasks()
            .iter()
            .find(|t| t.correlation_id == running.to_string())
            .map(|t| t.state.clone()),
        Some("CANCELLED".to_owned())
    );
}
