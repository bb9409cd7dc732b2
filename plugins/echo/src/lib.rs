//! The `echo` plugin: request type `echo` on queue `taskgate.echo`. Any JSON payload is
//! accepted and forwarded byte for byte (the manifest says `validates: false`, so the host
//! never calls into this plugin per request); workers may stream. The example workers'
//! conventions for it (`chunks`, `delayMs`, `fail`) are documented in `workers/rust`.

use taskgate_plugin_api::prelude::*;

pub fn plugin() -> Plugin {
    tracing::info!("echo plugin ready");
    Plugin::new("echo", env!("CARGO_PKG_VERSION")).request_type(
        RequestType::any("echo")
            .queue("taskgate.echo")
            .streams(true)
            .description("Answers with its payload; optionally streams chunks first."),
    )
}

export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declares_echo_on_its_queue_without_validation() {
        let manifest = plugin().manifest();
        assert_eq!(manifest.name, "echo");
        assert_eq!(manifest.check(), Ok(()));
        let t = &manifest.request_types[0];
        assert_eq!(
            (t.name.as_str(), t.queue.as_str()),
            ("echo", "taskgate.echo")
        );
        assert!(t.streams);
        assert!(!t.validates);
        assert_eq!(
            t.payload_schema,
            taskgate_plugin_api::serde_json::json!(true)
        );
        assert_eq!(t.timeout_ms, 30_000);
        assert_eq!(t.max_payload_bytes, 1 << 20);
    }

    #[test]
    fn any_json_is_accepted_unchanged() {
        for payload in [r#"{"a": [1, null]}"#, "null", "\"text\"", "[ ]"] {
            assert_eq!(plugin().validate("echo", payload).unwrap(), payload);
        }
    }
}
