//! The plugin boundary, through real plugin libraries: they load side by side, validate
//! across the ABI, survive their own panics, and broken files are refused with one line.
//! Needs `scripts/build-plugins` to have run (scripts/test does).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use taskgate_plugin_api::host::{LoadError, LoadedPlugin, Validation};

fn repo() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_owned()
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

/// A file written by a test, removed (with its directory, once empty) when dropped.
/// Removing a library after loading it is safe: the mapping stays.
#[derive(Debug)]
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Each scratch file gets a directory of its own: tests run in parallel, and one test's
/// `Drop` removing a shared (momentarily empty) directory made another's write fail.
fn scratch_file(name: &str, bytes: &[u8]) -> Scratch {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("taskgate-loading-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Scratch(path)
}

fn assert_one_line_naming(err: &LoadError, path: &Path) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(
        text.contains(&path.display().to_string()),
        "does not name the file: {text}"
    );
    eprintln!("refused as expected: {text}");
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
    assert_eq!(panicky.manifest().name, "panicky");
    assert_eq!(panicky.manifest().request_types[0].name, "test.panic");
    assert_eq!(
        panicky.manifest().request_types[0].queue,
        "taskgate.test.panic"
    );
    let (outcome, log) = capturing_logs(|| panicky.validate("test.panic", r#"{"panic": true}"#));
    match outcome {
        Validation::Failed(reason) => {
            assert_eq!(reason, "plugin panicked: asked to panic")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // The plugin's panic message went to the host's log, not to stderr.
    assert!(log.contains("ERROR"), "log was: {log}");
    assert!(log.contains("asked to panic"), "log was: {log}");
    for _ in 0..3 {
        assert_eq!(
            panicky.validate("test.panic", "{}"),
            Validation::Valid("{}".to_owned())
        );
        assert!(matches!(
            panicky.validate("test.panic", r#"{"panic": true}"#),
            Validation::Failed(_)
        ));
    }
}

/// Bytes that look like nothing in particular (xorshift; no dependency needed).
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn files_that_are_not_plugins_are_refused_with_one_line_naming_them() {
    let real = std::fs::read(example("echo")).unwrap();
    let files = [
        scratch_file("libnoise.so", &noise(64 * 1024)),
        scratch_file("libtext.so", b"not a plugin\n"),
        scratch_file("libempty.so", b""),
        // An ELF magic number and nothing sensible after it.
        scratch_file(
            "libelfish.so",
            &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 9, 9, 9, 9],
        ),
        // A real plugin cut in half: it would map, then crash the process when touched.
        scratch_file("libtruncated.so", &real[..real.len() / 2]),
        // Only the headers of a real plugin.
        scratch_file("libheaders.so", &real[..4096]),
    ];
    for path in &files {
        let err = LoadedPlugin::load(path).unwrap_err();
        assert!(
            matches!(err, LoadError::NotALibrary { .. }),
            "{path:?}: {err:?}"
        );
        assert_one_line_naming(&err, path);
    }
    let missing = repo().join("build/plugins/libnothing-here.so");
    let err = LoadedPlugin::load(&missing).unwrap_err();
    assert_one_line_naming(&err, &missing);
    // The process is still fine: a real plugin loads after all that.
    assert_eq!(
        LoadedPlugin::load(&example("echo"))
            .unwrap()
            .manifest()
            .name,
        "echo"
    );
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
    assert!(
        text.contains(&format!(
            "rebuild it against taskgate-plugin-api {}",
            taskgate_plugin_api::API_VERSION
        )),
        "{text}"
    );
}

#[test]
fn a_plugin_built_against_an_older_api_is_refused_for_its_version() {
    let path = fixture("outdated");
    let err = LoadedPlugin::load(&path).unwrap_err();
    assert!(
        matches!(err, LoadError::IncompatibleVersion { .. }),
        "{err:?}"
    );
    assert_one_line_naming(&err, &path);
    assert!(
        err.to_string().contains(&format!(
            "built against taskgate-plugin-api 0.0.1, this host has {v}: rebuild it against taskgate-plugin-api {v} ",
            v = taskgate_plugin_api::API_VERSION
        )),
        "{err}"
    );
}

#[test]
fn a_loaded_plugin_can_be_shared_between_threads() {
    fn shareable<T: Clone + Send + Sync + std::fmt::Debug + 'static>(_: &T) {}
    let wordcount = LoadedPlugin::load(&example("wordcount")).unwrap();
    shareable(&wordcount);
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let plugin = wordcount.clone();
            std::thread::spawn(move || {
                let payload = format!(r#"{{"text": "thread {i}"}}"#);
                for _ in 0..200 {
                    assert!(matches!(
                        plugin.validate("text.wordcount", &payload),
                        Validation::Valid(_)
                    ));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(format!("{wordcount:?}").contains("wordcount"));
    assert_eq!(wordcount.path(), example("wordcount"));
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

/// Runs `f` with a subscriber that records the host-side log, and returns that log.
fn capturing_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, f);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (outcome, log)
}

#[test]
fn a_plugin_log_line_reaches_the_host_log() {
    // A private copy of the library, so this test sees the plugin's init run (a library
    // already loaded by another test of this process would not be initialised again).
    let copy = scratch_file(
        "libtaskgate_plugin_wordcount_logcopy.so",
        &std::fs::read(example("wordcount")).unwrap(),
    );
    let (loaded, log) = capturing_logs(|| LoadedPlugin::load(&copy));
    loaded.unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("wordcount plugin ready"))
        .unwrap_or_else(|| panic!("no plugin line in the log: {log}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("plugin=\"taskgate_plugin_wordcount\""),
        "{line}"
    );
}

/// Not a benchmark with thresholds: prints what one validation through the boundary costs.
/// Meaningful with release plugins: `scripts/build-plugins --release && cargo test
/// --release -p taskgate-plugin-api --features host --test loading validation_cost --
/// --nocapture`.
#[test]
fn validation_cost() {
    let wordcount = LoadedPlugin::load(&example("wordcount")).unwrap();
    let echo = LoadedPlugin::load(&example("echo")).unwrap();
    let text = "lorem ipsum dolor sit amet ".repeat(38); // ≈ 1 KB
    let payload = format!(r#"{{"text": "{}"}}"#, text.trim_end());
    let mut report = Vec::new();
    for (label, plugin, request_type) in [
        (
            "wordcount (serde + check + re-serialise)",
            &wordcount,
            "text.wordcount",
        ),
        ("echo (the boundary and string copies only)", &echo, "echo"),
    ] {
        let calls = 20_000u32;
        for _ in 0..1000 {
            std::hint::black_box(plugin.validate(request_type, &payload));
        }
        let start = std::time::Instant::now();
        for _ in 0..calls {
            std::hint::black_box(plugin.validate(request_type, std::hint::black_box(&payload)));
        }
        let per_call = start.elapsed() / calls;
        report.push(format!(
            "{label}: {} ns/call for a {}-byte payload",
            per_call.as_nanos(),
            payload.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_private_copy_loads_as_a_new_library_and_is_named_for_the_operators_file() {
    // The copy of a library already loaded by this process: the dynamic loader knows it by
    // the copy's path, so its init runs again (a log line proves it is new code).
    let source = example("wordcount");
    let copy = scratch_file(
        "libtaskgate_plugin_wordcount-0123abcd.so",
        &std::fs::read(&source).unwrap(),
    );
    LoadedPlugin::load(&source).unwrap();
    let (loaded, log) = capturing_logs(|| LoadedPlugin::load_copy(&copy, &source));
    let loaded = loaded.unwrap();
    assert_eq!(loaded.path(), source);
    assert!(
        log.contains("wordcount plugin ready"),
        "not initialised again: {log}"
    );
    // Deleting the copy after loading is safe: the mapping stays.
    drop(copy);
    assert!(matches!(
        loaded.validate("text.wordcount", r#"{"text": "a b"}"#),
        Validation::Valid(_)
    ));

    // Refusals name the operator's file, never the private copy.
    let real = std::fs::read(example("echo")).unwrap();
    let source = repo().join("build/plugins/libtaskgate_plugin_echo.so");
    for (name, bytes) in [
        ("libhalf-1.so", &real[..real.len() / 2]),
        ("libtext-1.so", &b"not a plugin"[..]),
    ] {
        let copy = scratch_file(name, bytes);
        let err = LoadedPlugin::load_copy(&copy, &source).unwrap_err();
        assert_one_line_naming(&err, &source);
        assert!(!err.to_string().contains(name), "{err}");
    }
    let incompatible = std::fs::read(fixture("incompatible")).unwrap();
    let copy = scratch_file("libincompatible-1.so", &incompatible);
    let err = LoadedPlugin::load_copy(&copy, &source).unwrap_err();
    assert_one_line_naming(&err, &source);
    assert!(!err.to_string().contains("libincompatible-1"), "{err}");
}
