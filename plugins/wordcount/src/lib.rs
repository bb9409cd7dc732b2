//! The `wordcount` plugin: request type `text.wordcount` on queue
//! `taskgate.text.wordcount`. Payload `{ "text": string }` (required, at most 1 MiB);
//! result `{ "words", "lines", "chars" }`.

use serde::{Deserialize, Serialize};
use taskgate_plugin_api::{export_plugin, JsonSchema, Plugin, RequestType};

/// Text to count.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WordCountRequest {
    /// The text (any Unicode).
    pub text: String,
}

/// What the worker answers.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
pub struct WordCountResult {
    /// Whitespace-separated words.
    pub words: u64,
    /// Lines, as `str::lines` counts them.
    pub lines: u64,
    /// Unicode scalar values.
    pub chars: u64,
}

pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;

pub fn plugin() -> Plugin {
    tracing::info!("wordcount plugin ready");
    Plugin::new("wordcount", env!("CARGO_PKG_VERSION")).request_type(
        RequestType::typed::<WordCountRequest>("text.wordcount")
            .queue("taskgate.text.wordcount")
            .max_payload_bytes(MAX_PAYLOAD_BYTES)
            .result_schema::<WordCountResult>()
            .description("Counts the words, lines and characters of a text."),
    )
}

export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_text_wordcount() {
        let manifest = plugin().manifest();
        assert_eq!(manifest.name, "wordcount");
        let t = &manifest.request_types[0];
        assert_eq!(t.name, "text.wordcount");
        assert_eq!(t.queue, "taskgate.text.wordcount");
        assert_eq!(t.max_payload_bytes, 1 << 20);
        assert!(!t.streams);
        assert_eq!(t.payload_schema["required"], taskgate_plugin_api::serde_json::json!(["text"]));
        assert!(t.result_schema.is_some());
    }

    #[test]
    fn text_is_required_and_must_be_a_string() {
        let p = plugin();
        assert_eq!(
            p.validate("text.wordcount", r#"{"text": "héllo wörld"}"#)
                .unwrap(),
            r#"{"text":"héllo wörld"}"#
        );
        assert_eq!(
            p.validate("text.wordcount", "{}").unwrap_err()[0].pointer,
            "/text"
        );
        assert_eq!(
            p.validate("text.wordcount", r#"{"text": 5}"#).unwrap_err()[0].pointer,
            "/text"
        );
        assert!(p
            .validate("text.wordcount", r#"{"text": "a", "other": 1}"#)
            .is_err());
        assert!(p.validate("text.wordcount", r#""text""#).is_err());
    }
}
