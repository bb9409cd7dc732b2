//! `taskgate schemas` against the real example plugins (built by `scripts/build-plugins` into
//! build/plugins): the JSON the client's codegen reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn prints_the_schemas_of_the_enabled_example_plugins() {
    let plugins_dir = workspace_root().join("build/plugins");
    assert!(
        plugins_dir.is_dir(),
        "{} is missing: run scripts/build-plugins first",
        plugins_dir.display()
    );
    let config =
        std::env::temp_dir().join(format!("taskgate-schemas-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &config,
        "[plugins.wordcount]\nenabled = true\n[plugins.countdown]\nenabled = true\n[plugins.echo]\nenabled = false\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_taskgate"))
        .arg("schemas")
        .arg("--config")
        .arg(&config)
        .arg("--plugins-dir")
        .arg(&plugins_dir)
        .env("TASKGATE_LOG", "error")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(doc["protocol"], 1);
    let types = doc["requestTypes"].as_object().unwrap();
    assert_eq!(
        types.keys().collect::<Vec<_>>(),
        vec!["demo.countdown", "text.wordcount"],
        "echo is disabled"
    );
    let wordcount = &types["text.wordcount"];
    assert_eq!(wordcount["plugin"], "wordcount");
    assert_eq!(wordcount["streams"], false);
    assert_eq!(wordcount["payload"]["properties"]["text"]["type"], "string");
    assert_eq!(wordcount["payload"]["required"][0], "text");
    let result_fields = wordcount["result"]["properties"].as_object().unwrap();
    for field in ["words", "lines", "chars"] {
        assert!(result_fields.contains_key(field), "{field} in {wordcount}");
    }
    let countdown = &types["demo.countdown"];
    assert_eq!(countdown["streams"], true);
    assert!(countdown["chunk"]["properties"].is_object(), "{countdown}");
}
