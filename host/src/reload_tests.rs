//! Unit tests of hot reload's bookkeeping: real files in a scratch directory, a loader
//! that reads a JSON description instead of calling dlopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use taskgate_plugin_api::host::Validation;
use taskgate_plugin_api::{PluginManifest, RequestTypeManifest};

use super::*;
use crate::config::Overrides;
use crate::routes::testing::FnValidator;
use crate::routes::{Checked, PayloadValidator};

/// A "library" is JSON: `{"name": …, "version": …, "types": […]}`. Anything else is refused
/// the way a real loader refuses a file that is not a plugin. The plugin's validation
/// returns `"<name> <version>"`, so a test can tell which version a table calls.
#[derive(Default, Clone)]
pub(crate) struct FakeLoader {
    loads: Arc<AtomicUsize>,
    host_loads: Arc<AtomicUsize>,
    /// Loads fail with `NotAttempted` while this is set.
    unavailable: Arc<std::sync::atomic::AtomicBool>,
}

impl FakeLoader {
    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }

    /// Versions loaded into the host (not only inspected).
    fn host_loads(&self) -> usize {
        self.host_loads.load(Ordering::SeqCst)
    }
}

impl Loader for FakeLoader {
    /// As the host's loader with an inspector: a plugin that is not enabled is only
    /// inspected (its manifest), not loaded ([`FakeLoader::host_loads`] does not count it).
    fn load(
        &mut self,
        source: &Path,
        _hash: &ContentHash,
        enabled: &dyn Fn(&str) -> bool,
    ) -> Result<Loaded, LoadFailure> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(LoadFailure::NotAttempted(format!(
                "{}: not loaded: no room",
                source.display()
            )));
        }
        self.loads.fetch_add(1, Ordering::SeqCst);
        let bytes = std::fs::read(source).unwrap_or_default();
        let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| {
            LoadFailure::Refused(format!("{}: not a taskgate plugin", source.display()))
        })?;
        let name = parsed["name"].as_str().unwrap().to_owned();
        let version = parsed["version"].as_str().unwrap().to_owned();
        let request_types = parsed["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let t = t.as_str().unwrap();
                serde_json::from_value::<RequestTypeManifest>(json!({
                    "name": t,
                    "queue": format!("taskgate.{t}"),
                    "validates": true,
                    "timeout_ms": 30_000,
                    "max_payload_bytes": 1024,
                    "payload_schema": true,
                }))
                .unwrap()
            })
            .collect();
        let stamp = format!("\"{name} {version}\"");
        let validator: Arc<dyn PayloadValidator> =
            Arc::new(FnValidator(move |_: &str| Validation::Valid(stamp.clone())));
        let manifest = PluginManifest {
            name,
            version,
            request_types,
        };
        if !enabled(&manifest.name) {
            return Ok(Loaded::inspected(manifest));
        }
        self.host_loads.fetch_add(1, Ordering::SeqCst);
        Ok(Loaded {
            manifest: Arc::new(manifest),
            validator: Some(validator),
        })
    }
}

pub(crate) fn library(name: &str, version: &str, types: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({"name": name, "version": version, "types": types})).unwrap()
}

/// A scratch directory with `plugins/` and `plugins.toml`, removed afterwards.
pub(crate) struct Scene {
    pub(crate) root: PathBuf,
    pub(crate) loader: FakeLoader,
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

const BOTH_ENABLED: &str = "[plugins.echo]\nenabled = true\n[plugins.words]\nenabled = true\n";

impl Scene {
    pub(crate) fn new(config: &str) -> Scene {
        let root = std::env::temp_dir().join(format!("taskgate-reload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("plugins")).unwrap();
        let scene = Scene {
            root,
            loader: FakeLoader::default(),
        };
        scene.config(config);
        scene
    }

    /// The usual start: echo 1.0 and words 1.0, both enabled.
    pub(crate) fn standard() -> Scene {
        let scene = Scene::new(BOTH_ENABLED);
        scene.write("libecho.so", &library("echo", "1.0", &["echo"]));
        scene.write("libwords.so", &library("words", "1.0", &["text.words"]));
        scene
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.root.join("plugins.toml")
    }

    pub(crate) fn config(&self, plugin_tables: &str) {
        let text = format!("[host]\nplugins_dir = \"plugins\"\n{plugin_tables}");
        std::fs::write(self.config_path(), text).unwrap();
    }

    fn write_raw_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).unwrap();
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.root.join("plugins").join(name)
    }

    /// Writes in place, as `cp` does (same inode, new content).
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.file(name), bytes).unwrap();
    }

    pub(crate) fn reloader(&self) -> Reloader<FakeLoader> {
        let path = self.config_path();
        let file = FileConfig::load(&path).unwrap();
        let settings = Settings::resolve(file, Some(&path), Overrides::default()).unwrap();
        Reloader::new(settings, self.loader.clone())
    }
}

fn versions(routes: &RoutingTable) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = routes
        .iter()
        .map(|s| (s.name.clone(), s.plugin_version.clone()))
        .collect();
    v.sort();
    v
}

/// What the plugin behind `request_type` answers in `routes`.
pub(crate) fn served_by(routes: &RoutingTable, request_type: &str) -> String {
    let spec = routes.get(request_type).expect("type served");
    let payload = serde_json::value::RawValue::from_string("{}".to_owned()).unwrap();
    match spec.check(&payload).unwrap() {
        Checked::Normalised(json) => serde_json::from_str(&json).unwrap(),
        Checked::Unchanged => panic!("the fake plugins normalise"),
    }
}

fn loaded_names(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Loaded(p) => Some(format!("{} {}", p.name, p.version)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_first_rescan_loads_every_enabled_plugin_and_reports_each() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    let rescan = reloader.rescan();
    assert_eq!(
        versions(&rescan.routes),
        vec![
            ("echo".to_owned(), "1.0".to_owned()),
            ("text.words".to_owned(), "1.0".to_owned())
        ]
    );
    assert_eq!(loaded_names(&rescan.events), vec!["echo 1.0", "words 1.0"]);
    assert_eq!(rescan.events.len(), 2, "{:?}", rescan.events);
    let queues: Vec<&str> = rescan.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(queues, vec!["taskgate.echo", "taskgate.text.words"]);
    // The table says which file version serves, with the file's content hash.
    let echo = &rescan.routes.plugins()[0];
    assert_eq!(echo.name, "echo");
    assert_eq!(echo.file, scene.file("libecho.so"));
    assert_eq!(
        echo.hash,
        ContentHash::of(&library("echo", "1.0", &["echo"])).short()
    );
    assert_eq!(echo.request_types, vec!["echo"]);
}

#[test]
fn a_rescan_without_changes_loads_nothing_and_reports_nothing() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    let loads = scene.loader.loads();
    let rescan = reloader.rescan();
    assert_eq!(rescan.events, vec![]);
    assert_eq!(scene.loader.loads(), loads);
    assert_eq!(rescan.routes.len(), 2);

    // Rewriting the same bytes changes the metadata, not the content: still no load.
    scene.write("libecho.so", &library("echo", "1.0", &["echo"]));
    let rescan = reloader.rescan();
    assert_eq!(rescan.events, vec![]);
    assert_eq!(scene.loader.loads(), loads);
}

#[test]
fn a_new_version_at_the_same_path_is_loaded_and_the_old_table_keeps_the_old_one() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    let before = reloader.rescan().routes;
    scene.write("libecho.so", &library("echo", "2.0", &["echo"]));
    let rescan = reloader.rescan();
    match rescan.events.as_slice() {
        [Event::Reloaded { from, to }] => {
            assert_eq!((from.version.as_str(), to.version.as_str()), ("1.0", "2.0"));
            assert_ne!(from.hash, to.hash);
        }
        other => panic!("expected one reload, got {other:?}"),
    }
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 2.0");
    // A request admitted with the old table still goes through the old version.
    assert_eq!(served_by(&before, "echo"), "echo 1.0");
    assert_eq!(served_by(&rescan.routes, "text.words"), "words 1.0");
}

#[test]
fn a_version_seen_before_is_served_again_without_loading_it_twice() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    let v1 = library("echo", "1.0", &["echo"]);
    let v2 = library("echo", "2.0", &["echo"]);
    scene.write("libecho.so", &v2);
    reloader.rescan();
    let loads = scene.loader.loads();
    for round in 0..3 {
        scene.write("libecho.so", &v1);
        let rescan = reloader.rescan();
        assert_eq!(
            served_by(&rescan.routes, "echo"),
            "echo 1.0",
            "round {round}"
        );
        assert!(matches!(rescan.events.as_slice(), [Event::Reloaded { .. }]));
        scene.write("libecho.so", &v2);
        assert_eq!(served_by(&reloader.rescan().routes, "echo"), "echo 2.0");
    }
    assert_eq!(
        scene.loader.loads(),
        loads,
        "both versions were loaded once"
    );
}

#[test]
fn a_broken_new_version_keeps_the_old_one_serving_is_reported_once_and_picked_up_when_fixed() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    let v2 = library("echo", "2.0", &["echo"]);
    // Half a copy, as seen in the middle of `cp`.
    scene.write("libecho.so", &v2[..v2.len() / 2]);
    let rescan = reloader.rescan();
    match rescan.events.as_slice() {
        [Event::FileRefused {
            file,
            reason,
            keeping: Some((version, _)),
        }] => {
            assert_eq!(file, &scene.file("libecho.so"));
            assert!(
                reason.contains("libecho.so: not a taskgate plugin"),
                "{reason}"
            );
            assert_eq!(version, "1.0");
        }
        other => panic!("expected one refusal, got {other:?}"),
    }
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 1.0");
    // Other changes meanwhile do not repeat the refusal.
    scene.config("[plugins.echo]\nenabled = true\n");
    let rescan = reloader.rescan();
    assert!(
        !rescan
            .events
            .iter()
            .any(|e| matches!(e, Event::FileRefused { .. })),
        "{:?}",
        rescan.events
    );
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 1.0");
    // The rest of the copy arrives.
    scene.write("libecho.so", &v2);
    let rescan = reloader.rescan();
    assert!(matches!(rescan.events.as_slice(), [Event::Reloaded { .. }]));
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 2.0");
}

#[test]
fn a_refusal_stands_in_the_table_until_the_file_loads_or_the_config_is_fixed() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    assert!(reloader.rescan().routes.load_errors().is_empty());
    let v2 = library("echo", "2.0", &["echo"]);
    scene.write("libecho.so", &v2[..v2.len() / 2]);
    let rescan = reloader.rescan();
    let errors = rescan.routes.load_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].file,
        scene.file("libecho.so").display().to_string()
    );
    assert!(
        errors[0].reason.contains("not a taskgate plugin"),
        "{errors:?}"
    );
    // Said once in the events, but it stands in every table until fixed.
    scene.config("[plugins.echo]\nenabled = true\n");
    assert_eq!(reloader.rescan().routes.load_errors(), errors);
    scene.config("[plugins.echo\n");
    let rescan = reloader.rescan();
    assert_eq!(rescan.routes.load_errors().len(), 2);
    assert!(rescan
        .routes
        .load_errors()
        .iter()
        .any(|e| e.file == scene.config_path().display().to_string()));
    scene.config("[plugins.echo]\nenabled = true\n");
    scene.write("libecho.so", &v2);
    assert!(reloader.rescan().routes.load_errors().is_empty());
}

#[test]
fn a_broken_new_file_serves_nothing_until_it_is_fixed() {
    let scene = Scene::new("[plugins.echo]\nenabled = true\n[plugins.extra]\nenabled = true\n");
    scene.write("libecho.so", &library("echo", "1.0", &["echo"]));
    let mut reloader = scene.reloader();
    reloader.rescan();
    scene.write("libextra.so", b"\x7fELF half a library");
    let rescan = reloader.rescan();
    assert!(matches!(
        rescan.events.as_slice(),
        [Event::FileRefused { keeping: None, .. }]
    ));
    assert_eq!(rescan.routes.len(), 1);
    scene.write("libextra.so", &library("extra", "0.1", &["x.extra"]));
    let rescan = reloader.rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["extra 0.1"]);
    assert_eq!(served_by(&rescan.routes, "x.extra"), "extra 0.1");
}

#[test]
fn disabling_a_plugin_removes_its_types_and_enabling_it_again_needs_no_load() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    let loads = scene.loader.loads();
    scene.config("[plugins.echo]\nenabled = true\n[plugins.words]\nenabled = false\n");
    let rescan = reloader.rescan();
    assert!(rescan.routes.get("text.words").is_none());
    assert!(rescan.routes.get("echo").is_some());
    assert!(rescan.events.contains(&Event::ConfigApplied {
        path: scene.config_path()
    }));
    let unloaded: Vec<_> = rescan
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Unloaded { plugin, why } => Some((plugin.name.as_str(), why.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(unloaded, vec![("words", "disabled in plugins.toml")]);

    scene.config(BOTH_ENABLED);
    let rescan = reloader.rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["words 1.0"]);
    assert!(rescan.routes.get("text.words").is_some());
    assert_eq!(scene.loader.loads(), loads);
}

#[test]
fn a_plugins_toml_that_does_not_parse_keeps_the_previous_settings_until_fixed() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    for (broken, expected) in [
        (
            "[plugins.words]\nenabled = false\n[plugins.echo\nenabled = true\n",
            "invalid table header",
        ),
        (
            "[plugins.words]\nenabled = false\nenabeld = true\n",
            "enabeld",
        ),
    ] {
        scene.config(broken);
        let rescan = reloader.rescan();
        match rescan.events.as_slice() {
            [Event::ConfigRejected { reason }] => {
                assert!(reason.contains("plugins.toml"), "{reason}");
                assert!(reason.contains(expected), "{reason}");
                assert!(!reason.contains('\n'), "one line: {reason}");
            }
            other => panic!("expected the config to be rejected, got {other:?}"),
        }
        assert_eq!(rescan.routes.len(), 2, "both plugins still serve");
        // Reported once, not at every rescan.
        assert_eq!(reloader.rescan().events, vec![]);
    }
    scene.config("[plugins.echo]\nenabled = true\n[plugins.words]\nenabled = false\n");
    let rescan = reloader.rescan();
    assert!(rescan.events.contains(&Event::ConfigApplied {
        path: scene.config_path()
    }));
    assert!(rescan.routes.get("text.words").is_none());
}

#[test]
fn fixing_plugins_toml_back_to_what_was_applied_is_reported_as_applied() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    scene.config("[plugins.echo\n");
    reloader.rescan();
    scene.config(BOTH_ENABLED);
    assert_eq!(
        reloader.rescan().events,
        vec![Event::ConfigApplied {
            path: scene.config_path()
        }]
    );
}

#[test]
fn host_settings_need_a_restart_while_plugin_tables_apply_at_once() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    scene.write_raw_config(
        "[host]\nplugins_dir = \"plugins\"\nlisten = \"127.0.0.1:9999\"\namqp_url = \"amqp://u:secret@h/%2f\"\n[plugins.echo]\nenabled = true\n",
    );
    let rescan = reloader.rescan();
    let restart = rescan
        .events
        .iter()
        .find_map(|e| match e {
            Event::RestartNeeded { keys, .. } => Some(keys.clone()),
            _ => None,
        })
        .expect("a restart notice");
    assert_eq!(restart, vec!["[host] amqp_url", "[host] listen"]);
    assert!(!format!("{:?}", rescan.events).contains("secret"));
    assert!(
        rescan.routes.get("text.words").is_none(),
        "plugin tables applied"
    );
    assert_eq!(
        reloader.settings().listen.to_string(),
        crate::config::DEFAULT_LISTEN,
        "the running address stays"
    );
    // Said once while it stays so.
    scene.write_raw_config(
        "[host]\nplugins_dir = \"plugins\"\nlisten = \"127.0.0.1:9999\"\namqp_url = \"amqp://u:secret@h/%2f\"\n[plugins.echo]\nenabled = true\n[plugins.words]\nenabled = true\n",
    );
    let rescan = reloader.rescan();
    assert!(!rescan
        .events
        .iter()
        .any(|e| matches!(e, Event::RestartNeeded { .. })));
    assert!(rescan.routes.get("text.words").is_some());
}

#[test]
fn a_removed_file_stops_serving_its_plugin() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    std::fs::remove_file(scene.file("libwords.so")).unwrap();
    let rescan = reloader.rescan();
    assert!(rescan.routes.get("text.words").is_none());
    let events: Vec<String> = rescan
        .events
        .iter()
        .map(|e| match e {
            Event::Unloaded { plugin, why } => format!("unloaded {} ({why})", plugin.name),
            Event::Note(n) => format!("note {}", n.text),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events[0].starts_with("note plugin `words` is enabled in plugins.toml but no file"));
    assert!(
        events[1].starts_with("unloaded words (no file in"),
        "{events:?}"
    );
}

#[test]
fn problems_found_resolving_are_reported_once_while_they_last() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    scene.write("libecho-copy.so", &library("echo", "9.0", &["echo"]));
    let rescan = reloader.rescan();
    match rescan.events.as_slice() {
        [Event::Note(note)] => {
            assert_eq!(note.level, Level::ERROR);
            assert!(
                note.text
                    .contains("libecho-copy.so declares plugin `echo`, which"),
                "{}",
                note.text
            );
            assert!(
                note.text.ends_with("libecho.so already declares"),
                "{}",
                note.text
            );
        }
        other => panic!("expected one note, got {other:?}"),
    }
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 1.0");
    assert_eq!(reloader.rescan().events, vec![]);
}

#[test]
fn a_load_that_could_not_be_attempted_is_tried_again_at_the_next_rescan() {
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    reloader.rescan();
    scene.loader.unavailable.store(true, Ordering::SeqCst);
    scene.write("libecho.so", &library("echo", "2.0", &["echo"]));
    let rescan = reloader.rescan();
    assert!(matches!(
        rescan.events.as_slice(),
        [Event::FileRefused {
            keeping: Some(_),
            ..
        }]
    ));
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 1.0");
    scene.loader.unavailable.store(false, Ordering::SeqCst);
    let rescan = reloader.rescan();
    assert_eq!(served_by(&rescan.routes, "echo"), "echo 2.0");
}

#[test]
fn events_become_the_plugin_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let scene = Scene::standard();
    let mut reloader = scene.reloader();
    metrics::with_local_recorder(&recorder, || {
        log_and_record(&reloader.rescan().events);
        scene.write("libecho.so", &library("echo", "2.0", &["echo"]));
        log_and_record(&reloader.rescan().events);
        scene.write("libecho.so", b"broken");
        log_and_record(&reloader.rescan().events);
    });
    let mut counters = BTreeMap::new();
    let mut info = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match (key.name(), value) {
            (crate::metrics::PLUGIN_LOADS, DebugValue::Counter(n)) => {
                counters.insert(labels.join(","), n);
            }
            (crate::metrics::PLUGIN_INFO, DebugValue::Gauge(v)) => {
                info.insert(labels.join(","), v.into_inner());
            }
            _ => {}
        }
    }
    assert_eq!(
        counters,
        BTreeMap::from([
            ("outcome=loaded".to_owned(), 2),
            ("outcome=reloaded".to_owned(), 1),
            ("outcome=failed".to_owned(), 1),
        ])
    );
    let hash = |v: &str| {
        ContentHash::of(&library("echo", v, &["echo"]))
            .short()
            .to_owned()
    };
    assert_eq!(
        info.get(&format!("plugin=echo,version=1.0,hash={}", hash("1.0"))),
        Some(&0.0)
    );
    assert_eq!(
        info.get(&format!("plugin=echo,version=2.0,hash={}", hash("2.0"))),
        Some(&1.0)
    );
}

#[test]
fn a_disabled_plugin_is_inspected_not_loaded_and_is_loaded_once_enabled() {
    // Issue 20 #7: only enabled plugins are mapped into the host.
    let scene = Scene::new("[plugins.echo]\nenabled = true\n");
    scene.write("libecho.so", &library("echo", "1.0", &["echo"]));
    scene.write("libwords.so", &library("words", "1.0", &["text.words"]));
    let mut reloader = scene.reloader();
    let rescan = reloader.rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["echo 1.0"]);
    assert_eq!(scene.loader.host_loads(), 1, "words is only inspected");

    scene.config(BOTH_ENABLED);
    let rescan = reloader.rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["words 1.0"]);
    assert_eq!(scene.loader.host_loads(), 2);
    assert_eq!(served_by(&rescan.routes, "text.words"), "words 1.0");
}

#[cfg(unix)]
#[test]
fn files_others_may_write_or_links_out_of_the_directory_are_refused_once_each() {
    use std::os::unix::fs::PermissionsExt;
    let scene = Scene::standard();
    std::fs::set_permissions(
        scene.file("libwords.so"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let outside = scene.root.join("libother.so");
    std::fs::write(&outside, library("other", "1.0", &["other"])).unwrap();
    std::os::unix::fs::symlink(&outside, scene.file("libother.so")).unwrap();
    let inner_dir = scene.file("versions");
    std::fs::create_dir(&inner_dir).unwrap();
    std::fs::write(
        inner_dir.join("libecho-2.so"),
        library("echo", "2.0", &["echo"]),
    )
    .unwrap();
    std::fs::remove_file(scene.file("libecho.so")).unwrap();
    std::os::unix::fs::symlink(inner_dir.join("libecho-2.so"), scene.file("libecho.so")).unwrap();

    let mut reloader = scene.reloader();
    let rescan = reloader.rescan();
    assert_eq!(
        loaded_names(&rescan.events),
        vec!["echo 2.0"],
        "a link inside the directory is followed"
    );
    let refused: Vec<String> = rescan
        .events
        .iter()
        .filter_map(|e| match e {
            Event::FileRefused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|r| r.contains("libwords.so") && r.contains("writable by group or others")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|r| r.contains("libother.so") && r.contains("outside the plugins directory")),
        "{refused:?}"
    );
    // Reported once, not at every rescan.
    let again = reloader.rescan();
    assert!(
        !again
            .events
            .iter()
            .any(|e| matches!(e, Event::FileRefused { .. })),
        "{:?}",
        again.events
    );

    // Fixed: picked up at the next rescan.
    std::fs::set_permissions(
        scene.file("libwords.so"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(loaded_names(&reloader.rescan().events), vec!["words 1.0"]);
}

#[cfg(unix)]
#[test]
fn a_file_owned_by_another_user_is_refused_unless_the_checks_are_off() {
    let scene = Scene::standard();
    // Only root may give a file away: elsewhere there is nothing to show here.
    if std::os::unix::fs::chown(scene.file("libwords.so"), Some(65534), None).is_err() {
        return;
    }
    let rescan = scene.reloader().rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["echo 1.0"]);
    assert!(rescan.events.iter().any(|e| matches!(e, Event::FileRefused { reason, .. } if reason.contains("owned by uid 65534"))), "{:?}", rescan.events);

    let text = std::fs::read_to_string(scene.config_path()).unwrap();
    std::fs::write(
        scene.config_path(),
        text.replace("[host]\n", "[host]\ncheck_plugin_files = false\n"),
    )
    .unwrap();
    let rescan = scene.reloader().rescan();
    assert_eq!(loaded_names(&rescan.events), vec!["echo 1.0", "words 1.0"]);
}
