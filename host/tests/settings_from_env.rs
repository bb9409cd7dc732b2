//! Loading settings from `TASKGATE_*` environment variables. Its own test binary (its own
//! process), because it changes the process environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::Parser;
use taskgate_host::cli::Cli;

#[test]
fn environment_variables_override_the_file_and_flags_override_both() {
    let dir = std::env::temp_dir().join(format!("taskgate-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("plugins.toml");
    std::fs::write(
        &config,
        "[host]\nlisten = \"127.0.0.1:1111\"\namqp_url = \"amqp://file@h/%2f\"\nplugins_dir = \"from-file\"\n",
    )
    .unwrap();

    // SAFETY of set_var: this test binary has exactly one test, so no other thread reads
    // the environment concurrently.
    std::env::set_var("TASKGATE_CONFIG", &config);
    std::env::set_var("TASKGATE_LISTEN", "127.0.0.1:2222");
    std::env::set_var("TASKGATE_AMQP_URL", "amqp://env@h/%2f");
    std::env::set_var("TASKGATE_PLUGINS_DIR", "/from/env");
    std::env::set_var("TASKGATE_SHUTDOWN_GRACE", "2s 500ms");
    std::env::set_var("TASKGATE_LOG_FORMAT", "json");

    let settings = Cli::try_parse_from(["taskgate"])
        .unwrap()
        .settings()
        .unwrap();
    assert_eq!(settings.listen.port(), 2222);
    assert_eq!(settings.amqp_url, "amqp://env@h/%2f");
    assert_eq!(settings.plugins_dir, PathBuf::from("/from/env"));
    assert_eq!(settings.config_path.as_deref(), Some(config.as_path()));
    assert_eq!(
        settings.shutdown_grace,
        std::time::Duration::from_millis(2500)
    );
    assert_eq!(
        Cli::try_parse_from(["taskgate"]).unwrap().log_format,
        taskgate_host::cli::LogFormat::Json
    );
    std::env::remove_var("TASKGATE_SHUTDOWN_GRACE");
    std::env::remove_var("TASKGATE_LOG_FORMAT");

    let settings = Cli::try_parse_from(["taskgate", "--listen", "127.0.0.1:3333"])
        .unwrap()
        .settings()
        .unwrap();
    assert_eq!(settings.listen.port(), 3333);

    std::env::remove_var("TASKGATE_LISTEN");
    std::env::remove_var("TASKGATE_AMQP_URL");
    std::env::remove_var("TASKGATE_PLUGINS_DIR");
    let settings = Cli::try_parse_from(["taskgate"])
        .unwrap()
        .settings()
        .unwrap();
    assert_eq!(
        settings.listen.port(),
        1111,
        "the file applies when no variable is set"
    );
    assert_eq!(settings.plugins_dir, dir.join("from-file"));

    std::env::set_var("TASKGATE_CONFIG", dir.join("missing.toml"));
    let err = Cli::try_parse_from(["taskgate"])
        .unwrap()
        .settings()
        .unwrap_err();
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
