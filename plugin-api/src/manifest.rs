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
    /// JSON Schema of the payload (documentation and TypeScript types; the plugin's own
    /// validation is authoritative when `validates` is true).
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
        }
        Ok(())
    }
}
