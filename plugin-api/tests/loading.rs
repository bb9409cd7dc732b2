//! The plugin boundary, through real plugin libraries: they load side by side, validate
//! across the ABI, survive their own panics, and broken files are refused with one line.
//! Needs `scripts/build-plugins` to have run (scripts/test does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use taskgate_plugin_api::host::{LoadError, LoadedPlugin, Validation};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn built(dir: &str, name: &str) -> PathBuf {
    let path = repo()
        .join("build")
        .join(dir)
        .join(format!("lib{name}.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-plugins first",
        path.display()
    );
    path
}

fn example(name: &str) -> PathBuf {
    built("plugins", &format!("taskgate_plugin_{name}"))
}

fn fixture(name: &str) -> PathBuf {
    built("test-plugins", &format!("taskgate_fixture_{name}"))
}

fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskgate-loading-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_one_line_naming(err: &LoadError, path: &Path) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(
        text.contains(&path.display().to_string()),
        "does not name the file: {text}"
    );
}

#[test]
fn the_example_plugins_load_side_by_side_each_with_its_own_manifest() {
    let loaded: Vec<LoadedPlugin> = ["echo", "wordcount", "countdown"]
        .iter()
        .map(|name| LoadedPlugin::load(&example(name)).unwrap())
        .collect();
    let names: Vec<(&str, &str)> = loaded
        .iter()
        .map(|p| {
            (
                p.manifest().name.as_str(),
                p.manifest().request_types[0].name.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("echo", "echo"),
            ("wordcount", "text.wordcount"),
            ("countdown", "demo.countdown")
        ]
    );
    // Loading again returns the same plugin, not the first one loaded.
    assert_eq!(
        LoadedPlugin::load(&example("countdown"))
            .unwrap()
            .manifest()
            .name,
        "countdown"
    );
}

#[test]
fn validation_crosses_the_boundary() {
    let wordcount = LoadedPlugin::load(&example("wordcount")).unwrap();
    assert_eq!(
        wordcount.validate("text.wordcount", r#"{ "text" : "a b" }"#),
        Validation::Valid(r#"{"text":"a b"}"#.to_owned())
    );
    match wordcount.validate("text.wordcount", r#"{"text": 5}"#) {
        Validation::Invalid(problems) => assert_eq!(problems[0].pointer, "/text"),
        other => panic!("expected problems, got {other:?}"),
    }
    let countdown = LoadedPlugin::load(&example("countdown")).unwrap();
    match countdown.validate("demo.countdown", r#"{"from": 0}"#) {
        Validation::Invalid(problems) => assert_eq!(problems[0].pointer, "/from"),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn a_panic_inside_a_plugin_is_a_failure_and_the_plugin_keeps_working() {
    let panicky = LoadedPlugin::load(&fixture("panicky")).unwrap();
    match panicky.validate("test.panic", r#"{"panic": true}"#) {
        Validation::Failed(reason) => assert!(reason.contains("asked to panic"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        panicky.validate("test.panic", "{}"),
        Validation::Valid(r#"{"panic":false}"#.to_owned())
    );
}

#[test]
fn files_that_are_not_plugins_are_refused_with_one_line_naming_them() {
    let garbage = scratch_file(
        "libgarbage.so",
        &[0x7f, b'E', b'L', b'F', 1, 2, 3, 4, 5, 6, 7, 8],
    );
    let empty = scratch_file("libempty.so", b"");
    let real = std::fs::read(example("echo")).unwrap();
    let truncated = scratch_file("libtruncated.so", &real[..real.len() / 2]);
    for path in [&garbage, &empty, &truncated] {
        let err = LoadedPlugin::load(path).unwrap_err();
        assert!(
            matches!(err, LoadError::NotALibrary { .. }),
            "{path:?}: {err:?}"
        );
        assert_one_line_naming(&err, path);
    }
    let missing = repo().join("build/plugins/libnothing-here.so");
    assert_one_line_naming(&LoadedPlugin::load(&missing).unwrap_err(), &missing);
}

#[test]
fn a_library_that_is_not_a_taskgate_plugin_is_refused() {
    // Any shared library without our root module: the C library will do.
    let libc = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if let Some(libm) = libc {
        let err = LoadedPlugin::load(&libm).unwrap_err();
        assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err:?}");
        assert_one_line_naming(&err, &libm);
    }
}

#[test]
fn a_plugin_built_against_an_incompatible_api_is_refused() {
    let path = fixture("incompatible");
    let err = LoadedPlugin::load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::IncompatibleVersion { .. } | LoadError::AbiMismatch { .. }
        ),
        "{err:?}"
    );
    assert_one_line_naming(&err, &path);
    let text = err.to_string();
    assert!(
        text.contains("expected `PluginMod` (taskgate-plugin-api version 0.1.0)"),
        "{text}"
    );
    assert!(text.contains("found `FutureMod`"), "{text}");
}

/// Collects the host-side log lines, to see the plugins' own log lines arrive.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_plugin_log_line_reaches_the_host_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // A private copy of the library, so this test sees the plugin's init run (a library
    // already loaded by another test of this process would not be initialised again).
    let copy = scratch_file(
        "libtaskgate_plugin_wordcount_logcopy.so",
        &std::fs::read(example("wordcount")).unwrap(),
    );
    tracing::subscriber::with_default(subscriber, || {
        LoadedPlugin::load(&copy).unwrap();
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("wordcount plugin ready"), "log was: {log}");
    assert!(log.contains("taskgate_plugin_wordcount"), "log was: {log}");
}
