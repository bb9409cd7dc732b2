//! The `wordcount` plugin: request type `text.wordcount` on queue
//! `taskgate.text.wordcount`. Payload `{ "text": string }` (required, at most 1 MiB of
//! text, no other fields); result `{ "words", "lines", "chars" }`.

use serde::{Deserialize, Serialize};
use taskgate_plugin_api::prelude::*;

/// Largest payload, in bytes of JSON.
pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;
/// Longest text, in characters (JSON Schema's `maxLength` counts characters).
pub const MAX_TEXT_CHARS: usize = 1024 * 1024;

/// Text to count.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WordCountRequest {
    /// The text (any Unicode).
    #[schemars(length(max = MAX_TEXT_CHARS))]
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

fn check(request: &WordCountRequest) -> Vec<Problem> {
    // Bytes bound characters from above: count characters only for long texts.
    let too_long =
        request.text.len() > MAX_TEXT_CHARS && request.text.chars().count() > MAX_TEXT_CHARS;
    if too_long {
        vec![Problem::new(
            "/text",
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        )]
    } else {
        Vec::new()
    }
}

pub fn plugin() -> Plugin {
    tracing::info!("wordcount plugin ready");
    Plugin::new("wordcount", env!("CARGO_PKG_VERSION")).request_type(
        RequestType::typed::<WordCountRequest>("text.wordcount")
            .queue("taskgate.text.wordcount")
            .max_payload_bytes(MAX_PAYLOAD_BYTES)
            .check(check)
            .result_schema::<WordCountResult>()
            .description("Counts the words, lines and characters of a text."),
    )
}

export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use taskgate_plugin_api::serde_json::json;

    #[test]
    fn declares_text_wordcount() {
        let manifest = plugin().manifest();
        assert_eq!(manifest.name, "wordcount");
        assert_eq!(manifest.check(), Ok(()));
        let t = &manifest.request_types[0];
        assert_eq!(t.name, "text.wordcount");
        assert_eq!(t.queue, "taskgate.text.wordcount");
        assert_eq!(t.max_payload_bytes, 1 << 20);
        assert!(!t.streams);
        assert!(t.validates);
        assert_eq!(t.payload_schema["required"], json!(["text"]));
        assert_eq!(
            t.payload_schema["properties"]["text"]["maxLength"],
            json!(MAX_TEXT_CHARS)
        );
        assert_eq!(t.payload_schema["additionalProperties"], json!(false));
        let result = t.result_schema.as_ref().unwrap();
        for field in ["words", "lines", "chars"] {
            assert_eq!(result["properties"][field]["type"], "integer", "{field}");
        }
    }

    #[test]
    fn a_text_is_accepted_and_normalised() {
        let p = plugin();
        assert_eq!(
            p.validate("text.wordcount", r#"{ "text" : "héllo wörld" }"#)
                .unwrap(),
            r#"{"text":"héllo wörld"}"#
        );
        assert!(p.validate("text.wordcount", r#"{"text": ""}"#).is_ok());
    }

    #[test]
    fn each_bad_payload_points_at_its_problem() {
        let p = plugin();
        for (payload, pointer) in [
            ("{}", "/text"),
            (r#"{"text": 5}"#, "/text"),
            (r#"{"text": null}"#, "/text"),
            (r#"{"text": "a", "other": 1}"#, "/other"),
            (r#""text""#, ""),
            ("[]", ""),
            ("not json", ""),
        ] {
            let problems = p.validate("text.wordcount", payload).unwrap_err();
            assert_eq!(problems[0].pointer, pointer, "{payload}: {problems:?}");
        }
        let unknown = p
            .validate("text.wordcount", r#"{"text": "a", "other": 1}"#)
            .unwrap_err();
        assert!(unknown[0].message.contains("other"), "{unknown:?}");
    }

    #[test]
    fn the_text_limit_counts_characters_not_bytes() {
        let p = plugin();
        let at_limit = "é".repeat(MAX_TEXT_CHARS); // 2 MiB of UTF-8
        let payload = json!({ "text": at_limit }).to_string();
        assert!(p.validate("text.wordcount", &payload).is_ok());
        let over = json!({ "text": "a".repeat(MAX_TEXT_CHARS + 1) }).to_string();
        assert_eq!(
            p.validate("text.wordcount", &over).unwrap_err()[0].pointer,
            "/text"
        );
    }
}
