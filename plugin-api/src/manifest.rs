//! The declaration of a plugin, as the host sees it: plain serde types that cross the ABI
//! boundary once, as JSON, when the plugin is loaded.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A plugin and the request types it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginManifest {
    /// How plugins.toml names the plugin (`[plugins.<name>]`), whatever its file is called.
    pub name: String,
    /// The plugin's own version, for operators (`taskgate plugins`, logs).
    pub version: String,
    pub request_types: Vec<RequestTypeManifest>,
}

/// One request type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTypeManifest {
    /// The `requestType` clients send, e.g. `text.wordcount`.
    pub name: String,
    /// The RabbitMQ queue its requests go to.
    pub queue: String,
    /// Arguments the queue is declared with, e.g. `{"x-queue-type": "quorum"}`.
    #[serde(default)]
    pub queue_arguments: Map<String, Value>,
    /// Whether workers stream chunks before the result.
    #[serde(default)]
    pub streams: bool,
    pub timeout_ms: u64,
    pub max_payload_bytes: u64,
    /// JSON Schema of the payload: documentation, TypeScript types, and the host's first
    /// check of every payload (then the plugin's own validation, when `validates` is true).
    pub payload_schema: Value,
    #[serde(default)]
    pub result_schema: Option<Value>,
    #[serde(default)]
    pub chunk_schema: Option<Value>,
    /// False: any payload is accepted and forwarded byte for byte, and the host never calls
    /// the plugin for it.
    #[serde(default)]
    pub validates: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Roles a client's identity must all have to call this type (none: anyone who may
    /// connect). Operators can override it in plugins.toml. Added after the first
    /// release: plugins built without it declare no roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_roles: Vec<String>,
    /// How many times a request may be delivered to workers without being answered before
    /// the host dead-letters it and tells its client (none: the host's default, 3).
    /// Operators can override it in plugins.toml. Added after the first release: plugins
    /// built without it get the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_limit: Option<u32>,
    /// How workers retry a request whose handler failed with a retryable error (none: they
    /// do not). Sent to workers with every request, as header `x-retry`. Added after the
    /// first release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// A request type's retry policy (protocol §3.12): how many attempts a request gets and how
/// long a worker waits between them. Its JSON (camelCase keys) is the `x-retry` header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1; 1: no retry).
    pub attempts: u32,
    /// The delay before each retry: the same every time, or doubling from `delay_ms`.
    #[serde(default)]
    pub backoff: Backoff,
    /// The delay before the first retry, in milliseconds (at least 1). (plugins.toml may
    /// spell the keys in snake_case: `delay_ms`, `max_delay_ms`, `retry_on`.)
    #[serde(alias = "delay_ms")]
    pub delay_ms: u64,
    /// The longest delay (exponential backoff); none: no cap.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        alias = "max_delay_ms"
    )]
    pub max_delay_ms: Option<u64>,
    /// Whether workers wait a random 50 % to 100 % of each delay, so that requests that
    /// failed together do not all come back together.
    #[serde(default)]
    pub jitter: bool,
    /// Error codes retried even when the handler did not mark the error retryable.
    #[serde(default, skip_serializing_if = "Vec::is_empty", alias = "retry_on")]
    pub retry_on: Vec<String>,
}

/// How a retry delay grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    #[default]
    Fixed,
    Exponential,
}

impl RetryPolicy {
    /// What workers accept: attempts 1 to 100, delays of 1 ms to a day, a cap not below the
    /// first delay.
    pub fn check(&self) -> Result<(), String> {
        const DAY_MS: u64 = 24 * 3600 * 1000;
        if !(1..=100).contains(&self.attempts) {
            return Err("attempts must be 1 to 100".to_owned());
        }
        if !(1..=DAY_MS).contains(&self.delay_ms) {
            return Err("delayMs must be 1 to 86400000".to_owned());
        }
        if let Some(max) = self.max_delay_ms {
            if max < self.delay_ms || max > DAY_MS {
                return Err("maxDelayMs must be at least delayMs and at most 86400000".to_owned());
            }
        }
        if self.retry_on.iter().any(|c| c.trim().is_empty()) {
            return Err("retryOn has an empty error code".to_owned());
        }
        Ok(())
    }
}

/// Why a payload was refused: where (a JSON Pointer into the payload) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub pointer: String,
    pub message: String,
}

impl Problem {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

impl PluginManifest {
    /// Checks what the host relies on: names present, request types unique, queue names
    /// that RabbitMQ accepts, schemas that are schemas.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("the plugin name is empty".to_owned());
        }
        if self.request_types.is_empty() {
            return Err("the plugin declares no request types".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.request_types {
            if t.name.trim().is_empty() {
                return Err("a request type has an empty name".to_owned());
            }
            // The name travels as the AMQP `type` property, a short string.
            if t.name.len() > 255 {
                return Err(format!(
                    "request type name `{}…` is longer than 255 bytes",
                    t.name.chars().take(32).collect::<String>()
                ));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(format!("request type `{}` is declared twice", t.name));
            }
            if t.queue.is_empty() || t.queue.len() > 255 {
                return Err(format!("queue of `{}` must be 1 to 255 bytes long", t.name));
            }
            if t.queue.starts_with("amq.") {
                return Err(format!(
                    "queue of `{}` may not start with `amq.` (reserved by RabbitMQ)",
                    t.name
                ));
            }
            if !(t.payload_schema.is_object() || t.payload_schema.is_boolean()) {
                return Err(format!(
                    "payload schema of `{}` is neither an object nor a boolean",
                    t.name
                ));
            }
            if t.timeout_ms == 0 {
                return Err(format!("timeout of `{}` is zero", t.name));
            }
            if t.max_payload_bytes == 0 {
                return Err(format!("max payload bytes of `{}` is zero", t.name));
            }
            if t.delivery_limit == Some(0) {
                return Err(format!(
                    "delivery limit of `{}` is zero (a request must be delivered at least once)",
                    t.name
                ));
            }
            if let Some(retry) = &t.retry {
                retry
                    .check()
                    .map_err(|e| format!("retry policy of `{}`: {e}", t.name))?;
            }
            if t.required_roles.iter().any(|r| r.trim().is_empty()) {
                return Err(format!("a required role of `{}` is empty", t.name));
            }
            // What an AMQP field table can carry without guessing a type.
            for (key, value) in &t.queue_arguments {
                let plain = value.is_string() || value.is_boolean() || value.is_i64();
                if !plain {
                    return Err(format!(
                        "queue argument `{key}` of `{}` must be a string, an integer or a boolean",
                        t.name
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> PluginManifest {
        PluginManifest {
            name: "p".to_owned(),
            version: "1.0.0".to_owned(),
            request_types: vec![RequestTypeManifest {
                name: "a.b".to_owned(),
                queue: "taskgate.a.b".to_owned(),
                queue_arguments: Map::new(),
                streams: false,
                timeout_ms: 1000,
                max_payload_bytes: 1024,
                payload_schema: json!({"type": "object"}),
                result_schema: None,
                chunk_schema: None,
                validates: true,
                description: None,
                required_roles: Vec::new(),
                delivery_limit: None,
                retry: None,
            }],
        }
    }

    /// Applies `change` to a good manifest and returns the refusal.
    fn refusal(change: impl FnOnce(&mut PluginManifest)) -> String {
        let mut m = manifest();
        change(&mut m);
        m.check().expect_err("should be refused")
    }

    #[test]
    fn a_retry_policy_is_camel_case_json() {
        let policy = RetryPolicy {
            attempts: 3,
            backoff: Backoff::Exponential,
            delay_ms: 100,
            max_delay_ms: Some(1000),
            jitter: true,
            retry_on: vec!["UPSTREAM".to_owned()],
        };
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            json!({"attempts": 3, "backoff": "exponential", "delayMs": 100, "maxDelayMs": 1000, "jitter": true, "retryOn": ["UPSTREAM"]})
        );
        let fixed: RetryPolicy =
            serde_json::from_value(json!({"attempts": 2, "delayMs": 5})).unwrap();
        assert_eq!(fixed.backoff, Backoff::Fixed);
        assert!(!fixed.jitter);
        assert_eq!(fixed.check(), Ok(()));
    }

    #[test]
    fn a_well_formed_manifest_passes() {
        let mut m = manifest();
        m.request_types[0]
            .queue_arguments
            .insert("x-queue-type".to_owned(), json!("quorum"));
        m.request_types[0]
            .queue_arguments
            .insert("x-max-length".to_owned(), json!(1000));
        m.request_types[0]
            .queue_arguments
            .insert("x-single-active-consumer".to_owned(), json!(true));
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn each_broken_rule_is_named() {
        assert!(refusal(|m| m.name = " ".to_owned()).contains("plugin name is empty"));
        assert!(refusal(|m| m.request_types.clear()).contains("no request types"));
        assert!(refusal(|m| m.request_types[0].name = String::new()).contains("empty name"));
        assert!(refusal(|m| m.request_types[0].name = "é".repeat(128)).contains("255 bytes"));
        assert!(refusal(|m| {
            let again = m.request_types[0].clone();
            m.request_types.push(again);
        })
        .contains("`a.b` is declared twice"));
        assert!(refusal(|m| m.request_types[0].queue = String::new()).contains("1 to 255"));
        assert!(refusal(|m| m.request_types[0].queue = "q".repeat(256)).contains("1 to 255"));
        assert!(refusal(|m| m.request_types[0].queue = "amq.x".to_owned()).contains("amq."));
        assert!(
            refusal(|m| m.request_types[0].payload_schema = json!("string"))
                .contains("payload schema")
        );
        assert!(refusal(|m| m.request_types[0].timeout_ms = 0).contains("timeout"));
        assert!(refusal(|m| m.request_types[0].delivery_limit = Some(0)).contains("delivery limit"));
        let policy = RetryPolicy {
            attempts: 3,
            backoff: Backoff::Exponential,
            delay_ms: 100,
            max_delay_ms: Some(50),
            jitter: true,
            retry_on: vec![],
        };
        assert!(refusal(|m| m.request_types[0].retry = Some(policy.clone()))
            .contains("retry policy of `a.b`: maxDelayMs"));
        assert!(refusal(|m| m.request_types[0].retry = Some(RetryPolicy {
            attempts: 0,
            ..policy.clone()
        }))
        .contains("attempts"));
        assert!(refusal(|m| m.request_types[0].max_payload_bytes = 0).contains("max payload"));
        assert!(
            refusal(|m| m.request_types[0].required_roles = vec![" ".to_owned()])
                .contains("required role of `a.b` is empty")
        );
        assert!(refusal(|m| {
            m.request_types[0]
                .queue_arguments
                .insert("x-ttl".to_owned(), json!(1.5));
        })
        .contains("queue argument `x-ttl`"));
    }

    #[test]
    fn the_largest_queue_name_rabbitmq_accepts_is_accepted() {
        let mut m = manifest();
        m.request_types[0].queue = "q".repeat(255);
        assert_eq!(m.check(), Ok(()));
    }

    #[test]
    fn older_manifests_without_the_optional_fields_still_parse() {
        let m: PluginManifest = serde_json::from_value(json!({
            "name": "p", "version": "1", "request_types": [{
                "name": "a", "queue": "q", "timeout_ms": 1, "max_payload_bytes": 1,
                "payload_schema": true
            }]
        }))
        .unwrap();
        assert!(!m.request_types[0].validates);
        assert!(m.request_types[0].queue_arguments.is_empty());
        assert!(m.request_types[0].required_roles.is_empty());
    }
}
