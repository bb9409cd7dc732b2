//! The plugin API version a plugin author needs is printed where they look: `taskgate
//! --version`, `taskgate plugins`, and the refusal of a plugin built against another one.
//! Needs `scripts/build-plugins` (the `outdated` fixture).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn taskgate(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_taskgate"))
        .args(args)
        .env("TASKGATE_LOG", "error")
        .env_remove("TASKGATE_CONFIG")
        .env_remove("TASKGATE_PLUGINS_DIR")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn taskgate_version_names_the_plugin_api() {
    let (ok, stdout, _) = taskgate(&["--version"]);
    assert!(ok);
    assert_eq!(
        stdout.trim(),
        format!(
            "taskgate {} (plugin API {})",
            env!("CARGO_PKG_VERSION"),
            taskgate_plugin_api::API_VERSION
        )
    );
}

#[test]
fn taskgate_plugins_names_the_plugin_api_and_tells_an_outdated_plugin_what_to_build_against() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("build/test-plugins/libtaskgate_fixture_outdated.so");
    assert!(
        fixture.exists(),
        "{} is missing: run scripts/build-plugins first",
        fixture.display()
    );
    let dir = std::env::temp_dir().join(format!("taskgate-api-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&fixture, dir.join("libold.so")).unwrap();
    let config = dir.join("plugins.toml");
    std::fs::write(&config, "").unwrap();
    let (ok, stdout, stderr) = taskgate(&[
        "plugins",
        "--config",
        config.to_str().unwrap(),
        "--plugins-dir",
        dir.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{stderr}");
    let v = taskgate_plugin_api::API_VERSION;
    assert!(
        stdout.contains(&format!(
            "plugin API: {v} (this host loads plugins built against taskgate-plugin-api 0."
        )),
        "{stdout}"
    );
    let refused = stdout
        .lines()
        .find(|l| l.contains("libold.so"))
        .unwrap_or_default();
    assert!(
        refused.contains("REFUSED")
            && refused.contains(&format!("rebuild it against taskgate-plugin-api {v}")),
        "{stdout}"
    );
}
