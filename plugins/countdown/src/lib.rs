//! The `countdown` plugin: request type `demo.countdown` on queue
//! `taskgate.demo.countdown`, which streams. Payload `{ "from": 1..=10000, "intervalMs":
//! 0..=60000 }` (`intervalMs` defaults to 1000); chunks `{ "remaining": n }` from
//! `from - 1` down to 0, then the result `{ "done": true }`.
//!
//! `intervalMs` has a default so the smallest request is `{"from": 3}`; the normalised
//! payload workers receive always carries it. Unknown fields are refused (a misspelt
//! `interval_ms` would otherwise be silently ignored).

use serde::{Deserialize, Serialize};
use taskgate_plugin_api::prelude::*;

pub const MIN_FROM: u32 = 1;
pub const MAX_FROM: u32 = 10_000;
pub const MAX_INTERVAL_MS: u32 = 60_000;
pub const DEFAULT_INTERVAL_MS: u32 = 1000;

/// Count down from `from`, one step every `intervalMs`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CountdownRequest {
    #[schemars(range(min = MIN_FROM, max = MAX_FROM))]
    pub from: u32,
    #[serde(default = "default_interval")]
    #[schemars(range(min = 0, max = MAX_INTERVAL_MS))]
    pub interval_ms: u32,
}

fn default_interval() -> u32 {
    DEFAULT_INTERVAL_MS
}

/// One step of the countdown.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct CountdownChunk {
    pub remaining: u32,
}

/// The end of the countdown.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct CountdownResult {
    pub done: bool,
}

fn check(request: &CountdownRequest) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !(MIN_FROM..=MAX_FROM).contains(&request.from) {
        problems.push(Problem::new(
            "/from",
            format!("must be between {MIN_FROM} and {MAX_FROM}"),
        ));
    }
    if request.interval_ms > MAX_INTERVAL_MS {
        problems.push(Problem::new(
            "/intervalMs",
            format!("must be between 0 and {MAX_INTERVAL_MS}"),
        ));
    }
    problems
}

pub fn plugin() -> Plugin {
    tracing::info!("countdown plugin ready");
    Plugin::new("countdown", env!("CARGO_PKG_VERSION")).request_type(
        RequestType::typed::<CountdownRequest>("demo.countdown")
            .queue("taskgate.demo.countdown")
            .streams(true)
            .max_payload_bytes(1024)
            .check(check)
            .chunk_schema::<CountdownChunk>()
            .result_schema::<CountdownResult>()
            .description("Streams a countdown: one chunk per step, then done."),
    )
}

export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use taskgate_plugin_api::serde_json::json;

    #[test]
    fn declares_a_streaming_type_with_ranges_in_its_schema() {
        let manifest = plugin().manifest();
        let t = &manifest.request_types[0];
        assert_eq!(
            (t.name.as_str(), t.queue.as_str()),
            ("demo.countdown", "taskgate.demo.countdown")
        );
        assert!(t.streams);
        assert_eq!(manifest.check(), Ok(()));
        let properties = &t.payload_schema["properties"];
        assert_eq!(properties["from"]["minimum"], 1);
        assert_eq!(properties["from"]["maximum"], 10000);
        assert_eq!(properties["intervalMs"]["minimum"], 0);
        assert_eq!(properties["intervalMs"]["maximum"], 60000);
        assert_eq!(properties["intervalMs"]["default"], 1000);
        assert_eq!(t.payload_schema["required"], json!(["from"]));
        let chunk = t.chunk_schema.as_ref().unwrap();
        assert_eq!(chunk["properties"]["remaining"]["type"], "integer");
        let result = t.result_schema.as_ref().unwrap();
        assert_eq!(result["properties"]["done"]["type"], "boolean");
    }

    #[test]
    fn valid_payloads_are_normalised_with_the_default_interval() {
        let p = plugin();
        assert_eq!(
            p.validate("demo.countdown", r#"{"from": 3}"#).unwrap(),
            r#"{"from":3,"intervalMs":1000}"#
        );
        assert!(p
            .validate("demo.countdown", r#"{"from": 10000, "intervalMs": 0}"#)
            .is_ok());
        assert!(p
            .validate("demo.countdown", r#"{"from": 1, "intervalMs": 60000}"#)
            .is_ok());
    }

    #[test]
    fn out_of_range_values_point_at_their_field() {
        let p = plugin();
        for (payload, pointer) in [
            (r#"{"from": 0}"#, "/from"),
            (r#"{"from": 10001}"#, "/from"),
            (r#"{"from": -1}"#, "/from"),
            (r#"{"from": 5, "intervalMs": 60001}"#, "/intervalMs"),
            (r#"{"from": "5"}"#, "/from"),
            (r#"{"intervalMs": 5}"#, "/from"),
            (r#"{"from": 5, "intervalMs": 1.5}"#, "/intervalMs"),
            (r#"{"from": 5, "intervalMs": null}"#, "/intervalMs"),
            (r#"{"from": 4294967296}"#, "/from"),
            ("[5]", ""),
        ] {
            let problems = p.validate("demo.countdown", payload).unwrap_err();
            assert_eq!(problems[0].pointer, pointer, "{payload}");
        }
    }

    #[test]
    fn both_ranges_are_reported_at_once() {
        let problems = plugin()
            .validate("demo.countdown", r#"{"from": 0, "intervalMs": 60001}"#)
            .unwrap_err();
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        assert_eq!(pointers, ["/from", "/intervalMs"]);
    }

    #[test]
    fn a_misspelt_field_is_refused() {
        let problems = plugin()
            .validate("demo.countdown", r#"{"from": 3, "interval_ms": 10}"#)
            .unwrap_err();
        assert!(problems[0].message.contains("interval_ms"), "{problems:?}");
    }
}
