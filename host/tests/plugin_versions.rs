//! Hot reload with real plugin libraries (no broker): every new version of a file is
//! really loaded (new code runs), versions seen before are not loaded again, old versions
//! stay callable by the tables that hold them, broken versions keep the old one serving,
//! and the cap on mapped libraries holds. Prints what each loaded version costs in memory,
//! measured from /proc/self/smaps.
//!
//! Needs `scripts/build-plugins` to have run (scripts/test does). To measure another
//! library (e.g. a release build): `TASKGATE_MEASURE_PLUGIN=path/to/lib.so cargo test -p
//! taskgate-host --test plugin_versions -- --nocapture memory`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::value::RawValue;
use taskgate_host::config::{FileConfig, Overrides, Settings};
use taskgate_host::plugins::{ContentHash, LoadFailure, Loader, PrivateCopyLoader};
use taskgate_host::reload::{Event, Reloader};
use taskgate_host::routes::{Checked, RoutingTable};

fn repo() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_owned()
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

fn echo_fixture(version: u8) -> Vec<u8> {
    std::fs::read(built(
        "test-plugins",
        &format!("taskgate_fixture_echo_v{version}"),
    ))
    .unwrap()
}

/// A rebuilt library in miniature: the same code with a few bytes appended (ignored by
/// the dynamic loader) has another content hash, so it is another version to load.
fn rebuilt(library: &[u8], build: u32) -> Vec<u8> {
    let mut bytes = library.to_vec();
    bytes.extend_from_slice(format!("\0rebuild {build}\0").as_bytes());
    bytes
}

/// A plugins directory, its plugins.toml (echo enabled) and a runtime directory.
struct Scene {
    root: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let root = std::env::temp_dir().join(format!("taskgate-versions-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("plugins")).unwrap();
        std::fs::write(
            root.join("plugins.toml"),
            "[host]\nplugins_dir = \"plugins\"\n[plugins.echo]\nenabled = true\n",
        )
        .unwrap();
        Scene { root }
    }

    fn live_file(&self) -> PathBuf {
        self.root.join("plugins/libecho.so")
    }

    /// Replaces the live file the careful way (copy, then rename over it).
    fn install(&self, bytes: &[u8]) {
        let tmp = self.root.join("plugins/libecho.so.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, self.live_file()).unwrap();
    }

    fn reloader(&self, max_libraries: usize) -> Reloader<PrivateCopyLoader> {
        let path = self.root.join("plugins.toml");
        let settings = Settings::resolve(
            FileConfig::load(&path).unwrap(),
            Some(&path),
            Overrides::default(),
        )
        .unwrap();
        let loader = PrivateCopyLoader::new(&self.root, max_libraries).unwrap();
        Reloader::new(settings, loader)
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The `servedBy` stamp the echo plugin behind `routes` puts on a payload.
fn served_by(routes: &RoutingTable) -> String {
    let spec = routes.get("echo").expect("echo served");
    let payload = RawValue::from_string(r#"{"i":1}"#.to_owned()).unwrap();
    match spec.check(&payload).unwrap() {
        Checked::Normalised(json) => {
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            value["servedBy"].as_str().unwrap().to_owned()
        }
        Checked::Unchanged => panic!("the echo fixtures normalise"),
    }
}

#[test]
fn every_new_version_is_really_loaded_and_old_tables_keep_calling_their_own() {
    let scene = Scene::new();
    let (v2, v3) = (echo_fixture(2), echo_fixture(3));
    scene.install(&v2);
    let mut reloader = scene.reloader(64);
    let first = reloader.rescan();
    assert_eq!(served_by(&first.routes), "echo 2.0.0");

    let mut tables = vec![first.routes];
    for build in 1..=10u32 {
        let (library, expected) = if build % 2 == 1 {
            (&v3, "echo 3.0.0")
        } else {
            (&v2, "echo 2.0.0")
        };
        scene.install(&rebuilt(library, build));
        let rescan = reloader.rescan();
        assert!(
            matches!(rescan.events.as_slice(), [Event::Reloaded { .. }]),
            "build {build}: {:?}",
            rescan.events
        );
        assert_eq!(served_by(&rescan.routes), expected, "build {build}");
        tables.push(rescan.routes);
    }
    assert_eq!(reloader.loader().mapped_libraries(), 11);
    // Every table still calls the library it was built with (their copies are deleted).
    for (i, table) in tables.iter().enumerate() {
        let expected = if i % 2 == 1 {
            "echo 3.0.0"
        } else {
            "echo 2.0.0"
        };
        assert_eq!(served_by(table), expected, "table {i}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(reloader.loader().dir())
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "private copies left behind: {leftovers:?}"
    );

    // Going back to a version seen before maps nothing new.
    scene.install(&rebuilt(&v3, 1));
    let rescan = reloader.rescan();
    assert_eq!(served_by(&rescan.routes), "echo 3.0.0");
    assert_eq!(reloader.loader().mapped_libraries(), 11);
}

#[test]
fn broken_versions_keep_the_old_one_serving_and_say_why_in_one_line() {
    let scene = Scene::new();
    let v2 = echo_fixture(2);
    scene.install(&v2);
    let mut reloader = scene.reloader(64);
    reloader.rescan();
    let broken: [(&str, Vec<u8>); 4] = [
        ("half-copied", echo_fixture(3)[..v2.len() / 2].to_vec()),
        (
            "another plugin API",
            std::fs::read(built("test-plugins", "taskgate_fixture_incompatible")).unwrap(),
        ),
        (
            "an older plugin API",
            std::fs::read(built("test-plugins", "taskgate_fixture_outdated")).unwrap(),
        ),
        ("not a library", b"#!/bin/sh\necho hello\n".to_vec()),
    ];
    for (what, bytes) in broken {
        scene.install(&bytes);
        let rescan = reloader.rescan();
        match rescan.events.as_slice() {
            [Event::FileRefused {
                reason,
                keeping: Some((version, _)),
                ..
            }] => {
                assert!(!reason.contains('\n'), "{what}: {reason}");
                assert!(
                    reason.starts_with(&scene.live_file().display().to_string()),
                    "{what}: names the operator's file: {reason}"
                );
                assert!(!reason.contains("taskgate-plugins-"), "{what}: {reason}");
                assert_eq!(version, "2.0.0", "{what}");
                eprintln!("{what}: {reason}");
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        assert_eq!(served_by(&rescan.routes), "echo 2.0.0", "{what}");
    }
    scene.install(&echo_fixture(3));
    assert_eq!(served_by(&reloader.rescan().routes), "echo 3.0.0");
}

#[test]
fn the_cap_on_mapped_libraries_refuses_new_versions_with_a_clear_reason() {
    let scene = Scene::new();
    let mut loader = PrivateCopyLoader::new(&scene.root, 2).unwrap();
    let v2 = echo_fixture(2);
    let source = scene.live_file();
    for build in 0..2 {
        let bytes = rebuilt(&v2, build);
        scene.install(&bytes);
        loader
            .load(&source, &ContentHash::of(&bytes), &|_| true)
            .unwrap();
    }
    let bytes = rebuilt(&v2, 2);
    scene.install(&bytes);
    match loader.load(&source, &ContentHash::of(&bytes), &|_| true) {
        Err(LoadFailure::NotAttempted(reason)) => {
            assert!(reason.contains("max_plugin_libraries"), "{reason}");
            assert!(reason.contains("restart"), "{reason}");
        }
        other => panic!("expected the cap to refuse, got {other:?}"),
    }
    assert_eq!(loader.mapped_libraries(), 2);
    assert_eq!(
        loader.mapped_bytes(),
        (rebuilt(&v2, 0).len() + rebuilt(&v2, 1).len()) as u64
    );
}

#[test]
fn a_file_that_changed_since_it_was_hashed_is_not_loaded() {
    let scene = Scene::new();
    let mut loader = PrivateCopyLoader::new(&scene.root, 8).unwrap();
    let v2 = echo_fixture(2);
    scene.install(&v2);
    let stale = ContentHash::of(&echo_fixture(3));
    match loader.load(&scene.live_file(), &stale, &|_| true) {
        Err(LoadFailure::NotAttempted(reason)) => {
            assert!(reason.contains("changed while being copied"), "{reason}")
        }
        other => panic!("expected no load, got {other:?}"),
    }
    assert_eq!(loader.mapped_libraries(), 0);
    assert_eq!(
        std::fs::read_dir(loader.dir()).unwrap().count(),
        0,
        "no copy left"
    );
}

/// Kilobytes of the mappings whose path contains `needle`: (virtual size, resident).
fn mapped_kb(needle: &str) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (mut size, mut rss, mut inside) = (0, 0, false);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.contains(needle);
            continue;
        }
        if inside {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Size:" => size += kb,
                "Rss:" => rss += kb,
                _ => {}
            }
        }
    }
    (size, rss)
}

/// Not a benchmark with thresholds: prints what each loaded version costs, from the
/// kernel's own accounting of the mappings of the private copies.
#[test]
fn memory_cost_of_a_reload() {
    if !Path::new("/proc/self/smaps").exists() {
        eprintln!("no /proc/self/smaps: nothing to measure here");
        return;
    }
    let library = match std::env::var_os("TASKGATE_MEASURE_PLUGIN") {
        Some(path) => std::fs::read(path).unwrap(),
        None => echo_fixture(2),
    };
    let scene = Scene::new();
    let mut loader = PrivateCopyLoader::new(&scene.root, 64).unwrap();
    let dir = loader.dir().display().to_string();
    let source = scene.live_file();
    let versions = 10u32;
    for build in 0..versions {
        let bytes = rebuilt(&library, build);
        scene.install(&bytes);
        let loaded = loader
            .load(&source, &ContentHash::of(&bytes), &|_| true)
            .unwrap();
        // Serve one request through it, as a real reload would.
        let _ = loaded
            .validator
            .as_ref()
            .unwrap()
            .validate("echo", r#"{"i":1}"#);
    }
    let (size, rss) = mapped_kb(&dir);
    assert!(size > 0, "the libraries are mapped from {dir}");
    assert_eq!(loader.mapped_libraries(), versions as usize);
    // The process's RSS would also count this test's own 10 copies of the file in memory:
    // the mappings are what stays for the life of a host.
    eprintln!(
        "{versions} versions of a {} KiB library: their mappings take {} KiB virtual, {} KiB resident \
         ({} KiB virtual, {} KiB resident per version)",
        library.len() / 1024,
        size,
        rss,
        size / u64::from(versions),
        rss / u64::from(versions),
    );
}
