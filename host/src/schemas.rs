//! `taskgate schemas`: the JSON Schemas of every enabled request type — payload, result and
//! chunk — as one JSON document. The client package's codegen turns it into TypeScript types,
//! so a React app's `makeBackendRequest("text.wordcount", …)` is typed from the plugins.
//!
//! Which request types appear follows the same rules as the routing table: only enabled
//! plugins, the first file to declare a plugin name wins, and the first plugin to declare a
//! request type owns it.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use taskgate_plugin_api::PluginManifest;

use crate::config::Settings;
use crate::plugins::PluginFile;

/// The document `taskgate schemas` prints. Field names are camelCase because its reader is
/// TypeScript.
#[derive(Debug, Serialize, PartialEq)]
pub struct SchemaDocument {
    /// The wire protocol these request types speak.
    pub protocol: u32,
    /// Request type → its schemas, sorted by name so the output is stable.
    #[serde(rename = "requestTypes")]
    pub request_types: BTreeMap<String, RequestTypeSchemas>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestTypeSchemas {
    pub plugin: String,
    pub plugin_version: String,
    pub streams: bool,
    pub description: Option<String>,
    pub payload: Value,
    /// `null` when the plugin does not declare it: the result is then `unknown` to clients.
    pub result: Option<Value>,
    /// `null` when the plugin does not declare it (or the type does not stream).
    pub chunk: Option<Value>,
}

/// The schemas of the request types that the enabled plugins among `manifests` serve.
pub fn collect<'a>(
    manifests: impl IntoIterator<Item = &'a PluginManifest>,
    settings: &Settings,
) -> SchemaDocument {
    let mut seen_plugins = HashSet::new();
    let mut request_types = BTreeMap::new();
    for manifest in manifests {
        if !seen_plugins.insert(manifest.name.as_str()) || !settings.is_enabled(&manifest.name) {
            continue;
        }
        for declared in &manifest.request_types {
            request_types
                .entry(declared.name.clone())
                .or_insert_with(|| RequestTypeSchemas {
                    plugin: manifest.name.clone(),
                    plugin_version: manifest.version.clone(),
                    streams: declared.streams,
                    description: declared.description.clone(),
                    payload: declared.payload_schema.clone(),
                    result: declared.result_schema.clone(),
                    chunk: declared.chunk_schema.clone(),
                });
        }
    }
    SchemaDocument {
        protocol: taskgate_protocol::PROTOCOL_VERSION,
        request_types,
    }
}

/// The schemas of the enabled plugins among the scanned files (refused files are skipped;
/// `taskgate plugins` says why).
pub fn from_files(files: &[PluginFile], settings: &Settings) -> SchemaDocument {
    collect(
        files
            .iter()
            .filter_map(|f| f.outcome.as_ref().ok())
            .map(|p| &*p.manifest),
        settings,
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::{FileConfig, Overrides};

    fn manifest(name: &str, version: &str, types: Value) -> PluginManifest {
        serde_json::from_value(json!({
            "name": name,
            "version": version,
            "request_types": types,
        }))
        .unwrap()
    }

    fn request_type(name: &str, extra: Value) -> Value {
        let mut t = json!({
            "name": name,
            "queue": format!("q.{name}"),
            "timeout_ms": 1000,
            "max_payload_bytes": 100,
            "payload_schema": {"type": "object"},
        });
        if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
            t.extend(extra.clone());
        }
        t
    }

    fn settings(toml: &str) -> Settings {
        let file: FileConfig = toml::from_str(toml).unwrap();
        Settings::resolve(file, None, Overrides::default()).unwrap()
    }

    #[test]
    fn lists_payload_result_and_chunk_schemas_of_enabled_plugins_only() {
        let counted = manifest(
            "count",
            "1.2.0",
            json!([request_type(
                "demo.count",
                json!({
                    "streams": true,
                    "description": "Counts down.",
                    "result_schema": {"type": "object", "required": ["done"]},
                    "chunk_schema": {"type": "object", "required": ["remaining"]},
                })
            )]),
        );
        let off = manifest(
            "off",
            "0.1.0",
            json!([request_type("off.thing", json!({}))]),
        );
        let doc = collect(
            [&counted, &off],
            &settings("[plugins.count]\nenabled = true\n[plugins.off]\nenabled = false\n"),
        );
        let printed = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            printed,
            json!({
                "protocol": 1,
                "requestTypes": {
                    "demo.count": {
                        "plugin": "count",
                        "pluginVersion": "1.2.0",
                        "streams": true,
                        "description": "Counts down.",
                        "payload": {"type": "object"},
                        "result": {"type": "object", "required": ["done"]},
                        "chunk": {"type": "object", "required": ["remaining"]},
                    }
                }
            })
        );
    }

    #[test]
    fn undeclared_result_and_chunk_schemas_are_null() {
        let plain = manifest("plain", "1.0.0", json!([request_type("p.t", json!({}))]));
        let doc = collect([&plain], &settings("[plugins.plain]\nenabled = true\n"));
        let t = &doc.request_types["p.t"];
        assert_eq!((t.result.as_ref(), t.chunk.as_ref()), (None, None));
        let printed = serde_json::to_value(&doc).unwrap();
        assert_eq!(printed["requestTypes"]["p.t"]["result"], Value::Null);
    }

    #[test]
    fn the_first_declaration_wins_as_in_the_routing_table() {
        let first = manifest("a", "1.0.0", json!([request_type("shared.t", json!({}))]));
        let again = manifest("a", "2.0.0", json!([request_type("other.t", json!({}))]));
        let rival = manifest(
            "b",
            "1.0.0",
            json!([request_type("shared.t", json!({"payload_schema": false}))]),
        );
        let doc = collect(
            [&first, &again, &rival],
            &settings("[plugins.a]\nenabled = true\n[plugins.b]\nenabled = true\n"),
        );
        assert_eq!(
            doc.request_types.keys().collect::<Vec<_>>(),
            vec!["shared.t"]
        );
        assert_eq!(doc.request_types["shared.t"].plugin, "a");
        assert_eq!(doc.request_types["shared.t"].plugin_version, "1.0.0");
    }
}
