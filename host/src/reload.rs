//! Hot reload: keeps what the host serves in step with the plugins directory and
//! plugins.toml, without a restart and without disturbing requests in flight.
//!
//! A [`Reloader`] rescans on demand (the watcher in `watcher` asks after every debounced
//! change): it re-reads plugins.toml, lists the library files, hashes the ones whose
//! metadata changed, loads only content it has never seen (through a [`Loader`]), and
//! resolves a complete new routing table. The caller declares the table's queues and
//! swaps it into the gateway in one atomic store; a request admitted before keeps the spec
//! it was admitted with.
//!
//! Everything that goes wrong keeps the last working state of that part: a plugins.toml
//! that does not parse keeps the previous settings; a file that does not load keeps the
//! version that file served before (or nothing, for a new file). Each problem is reported
//! once, as one [`Event`], and picked up again when the file changes.
//!
//! Rescans are pure bookkeeping over the loader and the file system: [`Event`]s say what
//! happened, [`log_and_record`] turns them into log lines and metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use tracing::{error, info, warn, Level};

use crate::broker::amqp::QueueDecl;
use crate::config::{FileConfig, Settings};
use crate::plugins::{self, Candidate, ContentHash, LoadFailure, Loaded, Loader, Note};
use crate::routes::{LoadError, RoutingTable, ServedPlugin};

/// What a rescan found: a complete routing table, the queues it needs, and what changed.
#[derive(Debug)]
pub struct Rescan {
    pub routes: RoutingTable,
    pub queues: Vec<QueueDecl>,
    pub events: Vec<Event>,
}

/// Something a rescan has to tell the operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A plugin serves that did not before (at start, new file, or enabled again).
    Loaded(ServedPlugin),
    /// A plugin now serves from another file version.
    Reloaded {
        from: ServedPlugin,
        to: ServedPlugin,
    },
    /// A plugin serves no more; its requests in flight finish normally.
    Unloaded { plugin: ServedPlugin, why: String },
    /// A file version was not loaded. `keeping` is the version that file still serves.
    FileRefused {
        file: PathBuf,
        reason: String,
        keeping: Option<(String, ContentHash)>,
    },
    /// The file could not be read; whatever it served before keeps serving.
    FileUnreadable { file: PathBuf, reason: String },
    /// The plugins directory could not be listed; the previous files keep serving.
    DirUnreadable { dir: PathBuf, reason: String },
    /// plugins.toml changed and its plugin tables were applied.
    ConfigApplied { path: PathBuf },
    /// plugins.toml does not parse or is invalid: the previous settings stay.
    ConfigRejected { reason: String },
    /// Settings outside the plugin tables changed: they apply only after a restart.
    RestartNeeded { path: PathBuf, keys: Vec<String> },
    /// A refusal or remark from resolving plugins.toml against the plugins.
    Note(Note),
}

/// One library file of the plugins directory, as of the last rescan.
#[derive(Debug, Clone)]
struct FileState {
    /// Metadata that changes whenever the content may have: an unchanged stamp is not
    /// read again.
    stamp: Option<Stamp>,
    /// The content last read (loaded or not). `None` forces a retry.
    seen: Option<ContentHash>,
    /// The version this file serves: the last one that loaded (or was inspected, for a
    /// plugin not enabled).
    serving: Option<(ContentHash, Loaded)>,
    /// Why the file itself is refused (owner, mode, a link out of the directory), as of
    /// `stamp`: reported once.
    problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: u64,
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Some(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: meta.ino(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The state hot reload keeps between rescans.
pub struct Reloader<L: Loader> {
    loader: L,
    /// The settings the host started with: everything but the plugin tables needs a restart.
    running: Settings,
    /// `running` with the plugin tables of the last plugins.toml that was valid.
    applied: Settings,
    /// The tables of plugins.toml other than `[plugins]`, as the host started with them.
    started_sections: toml::Table,
    /// What was last reported, so a problem that stays is not logged at every rescan.
    config_problem: Option<String>,
    restart_keys: Vec<String>,
    dir_problem: Option<String>,
    notes: BTreeSet<Note>,
    /// Every content ever loaded or refused, by hash. Libraries are never unloaded, so a
    /// version seen before is served again without loading it a second time.
    versions: HashMap<ContentHash, Result<Loaded, LoadFailure>>,
    files: BTreeMap<PathBuf, FileState>,
    served: BTreeMap<String, ServedPlugin>,
    /// The last refusal of each file (or plugins.toml) that still stands: the events say
    /// it once, the console shows it until the file loads or goes.
    load_errors: BTreeMap<PathBuf, LoadError>,
}

impl<L: Loader> Reloader<L> {
    pub fn new(settings: Settings, loader: L) -> Self {
        let started_sections = settings
            .config_path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.parse::<toml::Table>().ok())
            .map(non_plugin_sections)
            .unwrap_or_default();
        Reloader {
            loader,
            applied: settings.clone(),
            running: settings,
            started_sections,
            config_problem: None,
            restart_keys: Vec::new(),
            dir_problem: None,
            notes: BTreeSet::new(),
            versions: HashMap::new(),
            files: BTreeMap::new(),
            served: BTreeMap::new(),
            load_errors: BTreeMap::new(),
        }
    }

    /// The transports' message limit as fitted at start: a type hot reload serves later
    /// with a larger payload limit is reported (its big payloads cannot arrive).
    pub fn set_message_limit(&mut self, max_message_bytes: u64) {
        self.running.max_message_bytes = max_message_bytes;
        self.applied.max_message_bytes = max_message_bytes;
    }

    /// The settings in effect (the running host settings, the last valid plugin tables).
    pub fn settings(&self) -> &Settings {
        &self.applied
    }

    pub fn loader(&self) -> &L {
        &self.loader
    }

    /// Re-reads plugins.toml and the plugins directory and resolves a new routing table.
    pub fn rescan(&mut self) -> Rescan {
        let mut events = Vec::new();
        self.reread_config(&mut events);
        self.reread_files(&mut events);
        self.load_enabled(&mut events);
        let candidates = self.candidates();
        let resolved = plugins::resolve(&candidates, &self.applied);

        let notes: BTreeSet<Note> = resolved.notes.iter().cloned().collect();
        for note in &resolved.notes {
            if !self.notes.contains(note) {
                events.push(Event::Note(note.clone()));
            }
        }
        self.notes = notes;

        for (name, now) in &resolved.served {
            match self.served.get(name) {
                None => events.push(Event::Loaded(now.clone())),
                Some(before) if before.hash != now.hash => events.push(Event::Reloaded {
                    from: before.clone(),
                    to: now.clone(),
                }),
                Some(_) => {}
            }
        }
        for (name, before) in &self.served {
            if !resolved.served.contains_key(name) {
                events.push(Event::Unloaded {
                    plugin: before.clone(),
                    why: self.why_not_served(name, &candidates),
                });
            }
        }
        self.served = resolved.served;
        self.keep_load_errors(&events);
        Rescan {
            routes: resolved
                .routes
                .with_load_errors(self.load_errors.values().cloned().collect()),
            queues: resolved.queues,
            events,
        }
    }

    /// Remembers the refusals among `events` and forgets those that no longer stand.
    fn keep_load_errors(&mut self, events: &[Event]) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for event in events {
            let (file, reason) = match event {
                Event::FileRefused { file, reason, .. }
                | Event::FileUnreadable { file, reason } => (file.clone(), reason.clone()),
                Event::ConfigRejected { reason } => match &self.running.config_path {
                    Some(path) => (path.clone(), reason.clone()),
                    None => continue,
                },
                _ => continue,
            };
            let error = LoadError {
                file: file.display().to_string(),
                reason,
                at_ms,
            };
            self.load_errors.insert(file, error);
        }
        let config = self.running.config_path.clone();
        let config_fine = self.config_problem.is_none();
        let files = &self.files;
        let versions = &self.versions;
        self.load_errors.retain(|path, _| {
            if config.as_ref() == Some(path) {
                return !config_fine;
            }
            let Some(state) = files.get(path) else {
                return false;
            };
            let loads = state.problem.is_none()
                && state
                    .seen
                    .as_ref()
                    .is_some_and(|hash| matches!(versions.get(hash), Some(Ok(_))));
            !loads
        });
    }

    fn why_not_served(&self, name: &str, candidates: &[Candidate]) -> String {
        if !self.applied.is_enabled(name) {
            "disabled in plugins.toml".to_owned()
        } else if !candidates.iter().any(|c| c.plugin.manifest.name == name) {
            format!(
                "no file in {} declares it any more",
                self.applied.plugins_dir.display()
            )
        } else {
            "none of its request types could be served (see the lines above)".to_owned()
        }
    }

    fn reread_config(&mut self, events: &mut Vec<Event>) {
        let Some(path) = self.running.config_path.clone() else {
            return;
        };
        let parsed = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| {
                let file = FileConfig::parse(&text, &path).map_err(|e| e.to_string())?;
                let settings = Settings::resolve(file, Some(&path), self.running.overrides.clone())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let sections = text
                    .parse::<toml::Table>()
                    .map(non_plugin_sections)
                    .unwrap_or_default();
                Ok((settings, sections))
            });
        let (settings, sections) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                if self.config_problem.as_ref() != Some(&reason) {
                    events.push(Event::ConfigRejected {
                        reason: reason.clone(),
                    });
                    self.config_problem = Some(reason);
                }
                return;
            }
        };
        let was_rejected = self.config_problem.take().is_some();
        let keys = changed_keys(&self.started_sections, &sections);
        if keys != self.restart_keys {
            if !keys.is_empty() {
                events.push(Event::RestartNeeded {
                    path: path.clone(),
                    keys: keys.clone(),
                });
            }
            self.restart_keys = keys;
        }
        if settings.plugins != self.applied.plugins || was_rejected {
            self.applied.plugins = settings.plugins;
            events.push(Event::ConfigApplied { path });
        }
    }

    fn reread_files(&mut self, events: &mut Vec<Event>) {
        let dir = self.running.plugins_dir.clone();
        match plugins::library_files(&dir) {
            Ok(paths) => {
                self.dir_problem = None;
                let mut files = BTreeMap::new();
                for path in paths {
                    let previous = self.files.remove(&path);
                    let state = self.reread_file(&path, previous, events);
                    files.insert(path, state);
                }
                self.files = files;
            }
            Err(e) => {
                let reason = e.to_string();
                if self.dir_problem.as_ref() != Some(&reason) {
                    events.push(Event::DirUnreadable {
                        dir: dir.clone(),
                        reason: reason.clone(),
                    });
                    self.dir_problem = Some(reason);
                }
            }
        }
    }

    /// Loads into the host the versions that were only inspected while their plugin was
    /// not enabled, and now is (plugins.toml changed).
    fn load_enabled(&mut self, events: &mut Vec<Event>) {
        let applied = &self.applied;
        let due: Vec<(PathBuf, ContentHash)> = self
            .files
            .iter()
            .filter_map(|(path, state)| {
                let (hash, plugin) = state.serving.as_ref()?;
                (!plugin.in_host() && applied.is_enabled(&plugin.manifest.name))
                    .then(|| (path.clone(), hash.clone()))
            })
            .collect();
        for (path, hash) in due {
            let outcome = self
                .loader
                .load(&path, &hash, &|name| applied.is_enabled(name));
            let Some(state) = self.files.get_mut(&path) else {
                continue;
            };
            match outcome {
                Ok(plugin) => {
                    if plugin.in_host() {
                        self.versions.insert(hash.clone(), Ok(plugin.clone()));
                    }
                    state.serving = Some((hash, plugin));
                }
                Err(failure) => {
                    if let LoadFailure::Refused(_) = failure {
                        self.versions.insert(hash.clone(), Err(failure.clone()));
                        state.serving = None;
                    } else {
                        // Tried again at the next rescan.
                        state.seen = None;
                    }
                    events.push(Event::FileRefused {
                        file: path.clone(),
                        reason: failure.to_string(),
                        keeping: None,
                    });
                }
            }
        }
    }

    /// The versions the files serve, to resolve plugins.toml against.
    fn candidates(&self) -> Vec<Candidate> {
        let mut candidates: Vec<Candidate> = self
            .files
            .iter()
            .filter_map(|(file, state)| {
                let (hash, plugin) = state.serving.clone()?;
                Some(Candidate {
                    file: file.clone(),
                    hash,
                    plugin,
                })
            })
            .collect();
        // When two files declare one plugin the first wins: let it be the file already
        // serving it, so that dropping in a second copy never displaces the one in service.
        candidates.sort_by_key(|c| {
            let incumbent = self
                .served
                .get(&c.plugin.manifest.name)
                .is_some_and(|s| s.file == c.file);
            !incumbent
        });
        candidates
    }

    fn reread_file(
        &mut self,
        path: &Path,
        previous: Option<FileState>,
        events: &mut Vec<Event>,
    ) -> FileState {
        let stamp = Stamp::of(path);
        let mut state = previous.unwrap_or(FileState {
            stamp: None,
            seen: None,
            serving: None,
            problem: None,
        });
        if stamp.is_some()
            && stamp == state.stamp
            && (state.seen.is_some() || state.problem.is_some())
        {
            return state;
        }
        // Before anything reads it (the stamp covers owner, mode and links: a change is
        // looked at again). A version the file served before keeps serving: its code is
        // already in memory, from a private copy.
        let dir = self.running.plugins_dir.clone();
        state.problem = plugins::file_problem(path, &dir, self.running.check_plugin_files);
        if let Some(problem) = &state.problem {
            state.stamp = stamp;
            state.seen = None;
            events.push(Event::FileRefused {
                file: path.to_owned(),
                reason: problem.clone(),
                keeping: state
                    .serving
                    .as_ref()
                    .map(|(hash, p)| (p.manifest.version.clone(), hash.clone())),
            });
            return state;
        }
        let hash = match ContentHash::of_file(path) {
            Ok(hash) => hash,
            Err(e) => {
                events.push(Event::FileUnreadable {
                    file: path.to_owned(),
                    reason: e.to_string(),
                });
                return state;
            }
        };
        state.stamp = stamp;
        if state.seen.as_ref() == Some(&hash) {
            return state;
        }
        let outcome = match self.versions.get(&hash) {
            Some(known) => known.clone(),
            None => {
                let applied = &self.applied;
                let outcome = self
                    .loader
                    .load(path, &hash, &|name| applied.is_enabled(name));
                if !matches!(outcome, Err(LoadFailure::NotAttempted(_))) {
                    self.versions.insert(hash.clone(), outcome.clone());
                }
                outcome
            }
        };
        match outcome {
            Ok(plugin) => {
                state.seen = Some(hash.clone());
                state.serving = Some((hash, plugin));
            }
            Err(failure) => {
                state.seen = match failure {
                    LoadFailure::Refused(_) => Some(hash),
                    LoadFailure::NotAttempted(_) => None,
                };
                events.push(Event::FileRefused {
                    file: path.to_owned(),
                    reason: failure.to_string(),
                    keeping: state
                        .serving
                        .as_ref()
                        .map(|(hash, p)| (p.manifest.version.clone(), hash.clone())),
                });
            }
        }
        state
    }
}

/// Every top-level table of plugins.toml but `[plugins]`: what only a restart applies.
fn non_plugin_sections(mut table: toml::Table) -> toml::Table {
    table.remove("plugins");
    table
}

/// `[section] key` for every key that differs between the two (values are not shown: some
/// are secrets, like the broker URL's password).
fn changed_keys(started: &toml::Table, now: &toml::Table) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for name in started.keys().chain(now.keys()) {
        match (started.get(name), now.get(name)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                for key in a.keys().chain(b.keys()) {
                    if a.get(key) != b.get(key) {
                        keys.insert(format!("[{name}] {key}"));
                    }
                }
            }
            (a, b) if a != b => {
                keys.insert(format!("[{name}]"));
            }
            _ => {}
        }
    }
    keys.into_iter().collect()
}

fn record_info(plugin: &ServedPlugin, value: f64) {
    metrics::gauge!(
        crate::metrics::PLUGIN_INFO,
        "plugin" => plugin.name.clone(),
        "version" => plugin.version.clone(),
        "hash" => plugin.hash.clone()
    )
    .set(value);
}

fn count_load(outcome: &'static str) {
    metrics::counter!(crate::metrics::PLUGIN_LOADS, "outcome" => outcome).increment(1);
}

/// Logs every event on one line and records the plugin metrics.
pub fn log_and_record(events: &[Event]) {
    for event in events {
        match event {
            Event::Loaded(p) => {
                count_load("loaded");
                record_info(p, 1.0);
                info!(plugin = %p.name, version = %p.version, hash = %p.hash, file = %p.file.display(), request_types = ?p.request_types, "plugin loaded");
            }
            Event::Reloaded { from, to } => {
                count_load("reloaded");
                record_info(from, 0.0);
                record_info(to, 1.0);
                info!(plugin = %to.name, version = %to.version, hash = %to.hash, previous_version = %from.version, previous_hash = %from.hash, file = %to.file.display(), request_types = ?to.request_types, "plugin reloaded; requests in flight finish with the previous version");
            }
            Event::Unloaded { plugin: p, why } => {
                record_info(p, 0.0);
                info!(plugin = %p.name, version = %p.version, hash = %p.hash, request_types = ?p.request_types, "plugin no longer served: {why}; requests in flight finish normally");
            }
            Event::FileRefused {
                file,
                reason,
                keeping,
            } => {
                count_load("failed");
                // `file`: the reason of a content refused before names the file it came
                // from then, which may be another.
                let file = file.display();
                match keeping {
                    Some((version, hash)) => {
                        error!(%file, kept_version = %version, kept_hash = %hash, "plugin file refused, the version it served before keeps serving: {reason}")
                    }
                    None => error!(%file, "plugin refused: {reason}"),
                }
            }
            Event::FileUnreadable { file, reason } => {
                warn!(file = %file.display(), %reason, "plugin file unreadable; what it served keeps serving")
            }
            Event::DirUnreadable { dir, reason } => {
                warn!(dir = %dir.display(), %reason, "cannot read the plugins directory; the plugins loaded before keep serving")
            }
            Event::ConfigApplied { path } => {
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "applied")
                    .increment(1);
                info!(config = %path.display(), "plugins.toml applied")
            }
            Event::ConfigRejected { reason } => {
                metrics::counter!(crate::metrics::CONFIG_RELOADS, "outcome" => "failed")
                    .increment(1);
                error!("plugins.toml not applied, the previous settings stay: {reason}")
            }
            Event::RestartNeeded { path, keys } => warn!(
                config = %path.display(),
                "plugins.toml changed {}: the host applies these on restart only (plugin tables apply at once)",
                keys.join(", ")
            ),
            Event::Note(note) => match note.level {
                Level::ERROR => error!("{}", note.text),
                Level::WARN => warn!("{}", note.text),
                _ => info!("{}", note.text),
            },
        }
    }
}

#[cfg(test)]
#[path = "reload_tests.rs"]
pub(crate) mod tests;
