//! Hot reload's trigger and loop: watch the plugins directory and plugins.toml with
//! notify, and on every (debounced) change rescan, declare the new table's queues, then
//! swap the table into the gateway.
//!
//! Directories are watched, not files: a watch on plugins.toml itself ends with the first
//! save by rename (what editors do), and a copy into the plugins directory shows up as a
//! create, several writes and a close. The debouncer turns a burst into one wake-up; the
//! rescan then looks at everything, so a missed or merged event costs nothing. SIGHUP
//! asks for a rescan too, for file systems without change notification.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{new_debouncer, DebounceEventResult, DebouncedEventKind, Debouncer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::amqp::QueueDecl;
use crate::plugins::{is_library, Loader};
use crate::reload::{log_and_record, Reloader};
use crate::routes::RoutingTable;

/// Quiet time after the last change before a rescan: long enough for an editor's save or
/// a local copy to finish, short enough to feel immediate. A copy slower than this is
/// refused half-written, then picked up by the next event.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// What a reload acts on: in the host, the broker (queues) and the gateway (routes).
pub trait ReloadTarget: Send + Sync + 'static {
    /// Declares the queues of a table before it serves, so that the first request of a
    /// newly enabled type finds its queue.
    fn declare_queues(&self, queues: Vec<QueueDecl>) -> impl Future<Output = ()> + Send;
    /// Makes `routes` the table new requests are admitted with.
    fn swap_routes(&self, routes: RoutingTable);
}

/// The operating system's watches; dropping this stops them.
pub struct Watch {
    _debouncer: Debouncer<RecommendedWatcher>,
}

/// Watches `plugins_dir` and the directory holding `config`; every change to a library
/// file or to the configuration file wakes `trigger`.
pub fn watch(
    plugins_dir: &Path,
    config: Option<&Path>,
    trigger: Arc<Notify>,
) -> Result<Watch, String> {
    let config_name = config.and_then(Path::file_name).map(|n| n.to_owned());
    let handler = move |result: DebounceEventResult| match result {
        Ok(events) => {
            // `AnyContinuous` comes while a path is still being written (a long copy): wait
            // for the `Any` that follows its last write, so as not to load half a file.
            if events.iter().any(|e| {
                e.kind == DebouncedEventKind::Any && relevant(&e.path, config_name.as_deref())
            }) {
                trigger.notify_one();
            }
        }
        Err(e) => warn!(error = %e, "file watching reported an error"),
    };
    let mut debouncer =
        new_debouncer(DEBOUNCE, handler).map_err(|e| format!("cannot start watching: {e}"))?;
    let mut dirs: Vec<PathBuf> = vec![plugins_dir.to_owned()];
    if let Some(config) = config {
        let dir = match config.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        if !same_dir(&dir, plugins_dir) {
            dirs.push(dir);
        }
    }
    for dir in &dirs {
        debouncer
            .watcher()
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        debug!(dir = %dir.display(), "watching for plugin and configuration changes");
    }
    Ok(Watch {
        _debouncer: debouncer,
    })
}

/// A library file or the configuration file; not editors' swap and backup files, nor the
/// `*.so.tmp.*` files a careful copy writes before its rename.
fn relevant(path: &Path, config_name: Option<&std::ffi::OsStr>) -> bool {
    is_library(path) || config_name.is_some_and(|name| path.file_name() == Some(name))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Rescans whenever `trigger` fires (or SIGHUP arrives) until `stop`; each rescan runs on a
/// blocking thread (it reads files and runs plugin code while loading). `queues` are the
/// queues already declared for the table in service.
pub async fn run<L, T>(
    reloader: Reloader<L>,
    target: Arc<T>,
    trigger: Arc<Notify>,
    mut queues: Vec<QueueDecl>,
    stop: CancellationToken,
) where
    L: Loader + 'static,
    T: ReloadTarget,
{
    let reloader = Arc::new(Mutex::new(reloader));
    let mut hangup = hangup_signal();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = trigger.notified() => {}
            received = next_hangup(&mut hangup) => {
                if received {
                    info!("SIGHUP: rescanning the plugins directory and plugins.toml");
                } else {
                    hangup = None;
                    continue;
                }
            }
        }
        let shared = reloader.clone();
        let rescan = tokio::task::spawn_blocking(move || {
            shared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rescan()
        })
        .await;
        let rescan = match rescan {
            Ok(rescan) => rescan,
            Err(e) => {
                error!(error = %e, "a plugin rescan failed; what was served keeps serving");
                continue;
            }
        };
        log_and_record(&rescan.events);
        if rescan.queues != queues {
            target.declare_queues(rescan.queues.clone()).await;
            queues = rescan.queues;
        }
        target.swap_routes(rescan.routes);
    }
}

#[cfg(unix)]
type Hangup = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangup = ();

fn hangup_signal() -> Option<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(signal) => Some(signal),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; rescans follow file changes only");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// True when a SIGHUP arrived, false when none can arrive any more; pending otherwise.
async fn next_hangup(hangup: &mut Option<Hangup>) -> bool {
    match hangup {
        #[cfg(unix)]
        Some(signal) => signal.recv().await.is_some(),
        #[cfg(not(unix))]
        Some(()) => std::future::pending().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::reload::tests::{library, served_by, Scene};

    /// Records what the loop did, and wakes the test after each swap.
    #[derive(Default)]
    struct Recorder {
        declared: Mutex<Vec<Vec<String>>>,
        swapped: Mutex<Vec<RoutingTable>>,
        swaps: Notify,
    }

    impl ReloadTarget for Recorder {
        async fn declare_queues(&self, queues: Vec<QueueDecl>) {
            let names = queues.into_iter().map(|q| q.name).collect();
            self.declared.lock().unwrap().push(names);
        }

        fn swap_routes(&self, routes: RoutingTable) {
            self.swapped.lock().unwrap().push(routes);
            self.swaps.notify_one();
        }
    }

    async fn next_swap(target: &Recorder) {
        tokio::time::timeout(Duration::from_secs(30), target.swaps.notified())
            .await
            .expect("a swap");
    }

    #[tokio::test]
    async fn each_trigger_rescans_declares_new_queues_first_and_swaps_the_table() {
        let scene = Scene::standard();
        let mut reloader = scene.reloader();
        let initial = reloader.rescan();
        let target = Arc::new(Recorder::default());
        let trigger = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            reloader,
            target.clone(),
            trigger.clone(),
            initial.queues,
            stop.clone(),
        ));

        scene.write("libecho.so", &library("echo", "2.0", &["echo"]));
        trigger.notify_one();
        next_swap(&target).await;
        assert!(
            target.declared.lock().unwrap().is_empty(),
            "same queues: nothing to declare"
        );
        assert_eq!(
            served_by(&target.swapped.lock().unwrap()[0], "echo"),
            "echo 2.0"
        );

        scene.write("libextra.so", &library("extra", "1.0", &["x.extra"]));
        scene.config(
            "[plugins.echo]\nenabled = true\n[plugins.words]\nenabled = true\n[plugins.extra]\nenabled = true\n",
        );
        trigger.notify_one();
        next_swap(&target).await;
        assert_eq!(
            target.declared.lock().unwrap().as_slice(),
            &[vec![
                "taskgate.echo".to_owned(),
                "taskgate.text.words".to_owned(),
                "taskgate.x.extra".to_owned()
            ]]
        );
        assert!(target.swapped.lock().unwrap()[1].get("x.extra").is_some());

        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn changes_to_libraries_and_to_the_config_file_wake_the_trigger() {
        let scene = Scene::standard();
        // A fresh watch for each scenario, so that a wake-up left by one cannot pass for
        // the next.
        let watching = || {
            let trigger = Arc::new(Notify::new());
            let watch = watch(
                &scene.root.join("plugins"),
                Some(&scene.config_path()),
                trigger.clone(),
            )
            .unwrap();
            (watch, trigger)
        };
        async fn woken(trigger: &Notify, what: &str) {
            tokio::time::timeout(Duration::from_secs(30), trigger.notified())
                .await
                .unwrap_or_else(|_| panic!("no wake-up after {what}"));
        }

        let (_watch, trigger) = watching();
        scene.write("libnew.so", b"x");
        woken(&trigger, "a new library").await;

        let (_watch, trigger) = watching();
        // An editor's save: write a temporary file, rename it over plugins.toml (only the
        // rename touches a relevant name).
        let tmp = scene.root.join(".plugins.toml.swp");
        std::fs::write(&tmp, "[plugins.echo]\nenabled = true\n").unwrap();
        std::fs::rename(&tmp, scene.config_path()).unwrap();
        woken(&trigger, "plugins.toml saved by rename").await;
        // The watch survives the rename: a second save is seen too.
        std::fs::write(scene.config_path(), "[plugins.echo]\nenabled = false\n").unwrap();
        woken(&trigger, "plugins.toml written again").await;
    }

    #[test]
    fn only_libraries_and_the_config_file_are_relevant() {
        let config = Some(std::ffi::OsStr::new("plugins.toml"));
        for path in ["/p/libecho.so", "/etc/taskgate/plugins.toml", "libx.so"] {
            assert!(relevant(Path::new(path), config), "{path}");
        }
        for path in [
            "/p/libecho.so.tmp.123",
            "/etc/taskgate/.plugins.toml.swp",
            "/etc/taskgate/plugins.toml~",
            "/etc/taskgate/4913",
            "/p/notes.txt",
            "/p",
        ] {
            assert!(!relevant(Path::new(path), config), "{path}");
        }
        assert!(!relevant(Path::new("/etc/plugins.toml"), None));
    }
}
