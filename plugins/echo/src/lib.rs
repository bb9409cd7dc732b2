//! The `echo` plugin: request type `echo` on queue `taskgate.echo`. Any JSON payload is
//! accepted and forwarded byte for byte (the host never calls into this plugin per
//! request); workers may stream. The example workers' conventions for it (`chunks`,
//! `delayMs`, `fail`) are documented in `workers/rust`.

use taskgate_plugin_api::{export_plugin, Plugin, RequestType};

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
        let t = &manifest.request_types[0];
        assert_eq!(
            (t.name.as_str(), t.queue.as_str()),
            ("echo", "taskgate.echo")
        );
        assert!(t.streams);
        assert!(!t.validates);
    }

    #[test]
    fn any_json_is_accepted_unchanged() {
        assert_eq!(
            plugin().validate("echo", r#"{"a": [1, null]}"#).unwrap(),
            r#"{"a": [1, null]}"#
        );
    }
}
