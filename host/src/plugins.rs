//! Plugin files → loaded plugin versions → the routing table.
//!
//! Loading itself (the ABI boundary) lives in `taskgate_plugin_api::host`; this module
//! decides what to do with each file: it loads every version from a private copy named by
//! its content hash ([`PrivateCopyLoader`]), applies plugins.toml (which plugins are
//! enabled, the operator's overrides) and says what is refused and why. Hot reload
//! (`reload`) calls the same functions whenever the directory or plugins.toml changes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use taskgate_plugin_api::host::{LoadError, LoadedPlugin};
use taskgate_plugin_api::{PluginManifest, RequestTypeManifest};
use tracing::Level;
use uuid::Uuid;

use crate::broker::amqp::QueueDecl;
use crate::config::Settings;
use crate::dead_letters::{request_queue_arguments, DeadLetterNames, DEFAULT_DELIVERY_LIMIT};
use crate::routes::{PayloadValidator, RequestTypeSpec, RoutingTable, ServedPlugin, SpecParts};

/// The SHA-256 of a library file: what tells two versions of a plugin apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(String);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_digest(Sha256::digest(bytes).as_slice())
    }

    /// Hashes the file at `path` without holding it in memory (plugin files are megabytes).
    pub fn of_file(path: &Path) -> std::io::Result<Self> {
        copy_hashing(path, None).map(|(hash, _)| hash)
    }

    fn from_digest(digest: &[u8]) -> Self {
        let mut hex = String::with_capacity(64);
        for byte in digest {
            let _ = write!(hex, "{byte:02x}");
        }
        ContentHash(hex)
    }

    /// The first 16 hex digits: what logs, metrics, `/readyz` and file names show.
    pub fn short(&self) -> &str {
        &self.0[..16.min(self.0.len())]
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One plugin version, loaded once and shared by every routing table that serves it — or
/// only inspected (its manifest read in a child process), for a plugin that is not enabled:
/// a library is mapped into the host only when it is to serve (issue 20 #7).
#[derive(Clone)]
pub struct Loaded {
    pub manifest: Arc<PluginManifest>,
    /// `None`: inspected only, not loaded into the host.
    pub validator: Option<Arc<dyn PayloadValidator>>,
}

impl Loaded {
    /// A version known by its manifest only.
    pub fn inspected(manifest: PluginManifest) -> Self {
        Loaded {
            manifest: Arc::new(manifest),
            validator: None,
        }
    }

    /// Whether the library is loaded into the host (not only inspected).
    pub fn in_host(&self) -> bool {
        self.validator.is_some()
    }
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .finish_non_exhaustive()
    }
}

impl From<LoadedPlugin> for Loaded {
    fn from(plugin: LoadedPlugin) -> Self {
        Loaded {
            manifest: Arc::new(plugin.manifest().clone()),
            validator: Some(Arc::new(plugin)),
        }
    }
}

/// Why a file version was not loaded. `Display` is one line naming the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadFailure {
    /// The content is not a loadable plugin: the same bytes would fail the same way.
    #[error("{0}")]
    Refused(String),
    /// Loading was not attempted (the private copy could not be written, or the limit of
    /// mapped libraries is reached): worth trying again later.
    #[error("{0}")]
    NotAttempted(String),
}

/// Turns a library file into a loaded plugin. The host's implementation is
/// [`PrivateCopyLoader`]; tests of the reload logic inject one without any dlopen.
pub trait Loader: Send {
    /// Loads the version of the file `source` whose content hashes to `hash`; if the file
    /// no longer has that content, loads nothing ([`LoadFailure::NotAttempted`]). A plugin
    /// whose name `enabled` refuses is only inspected ([`Loaded::inspected`]).
    fn load(
        &mut self,
        source: &Path,
        hash: &ContentHash,
        enabled: &dyn Fn(&str) -> bool,
    ) -> Result<Loaded, LoadFailure>;
}

/// How long a child process may take to load a plugin file and print its manifest.
const INSPECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The hidden subcommand of the taskgate binary that inspects a plugin file.
pub const INSPECT_COMMAND: &str = "inspect-plugin";

/// What `taskgate inspect-plugin` prints: one line of JSON.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inspection {
    Manifest(PluginManifest),
    Refused(String),
}

/// `taskgate inspect-plugin <copy> <source>`: loads the library in this (child) process and
/// describes it. A library that crashes or aborts here takes only this process down.
pub fn inspect_here(copy: &Path, source: &Path) -> Inspection {
    match LoadedPlugin::load_copy(copy, source) {
        Ok(plugin) => Inspection::Manifest(plugin.manifest().clone()),
        Err(e) => Inspection::Refused(e.to_string()),
    }
}

/// Loads `copy` in a child process (`program inspect-plugin`, the host's own binary) and
/// reads the manifest it prints.
fn inspect_in_child(
    program: &Path,
    copy: &Path,
    source: &Path,
) -> Result<PluginManifest, LoadFailure> {
    use std::process::{Command, Stdio};
    let refused = |why: String| LoadFailure::Refused(format!("{}: {why}", source.display()));
    let mut child = Command::new(program)
        .arg(INSPECT_COMMAND)
        .arg(copy)
        .arg(source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env_remove("TASKGATE_LOG")
        .spawn()
        .map_err(|e| {
            LoadFailure::NotAttempted(format!(
                "{}: cannot start {} to inspect it: {e}",
                source.display(),
                program.display()
            ))
        })?;
    // The manifest is small; read it while waiting, so a full pipe cannot block the child.
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut out = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.take(16 * 1024 * 1024).read_to_end(&mut out);
        }
        out
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > INSPECTION_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                return Err(refused(format!(
                    "loading it did not finish within {INSPECTION_TIMEOUT:?} (inspected in a child process)"
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(LoadFailure::NotAttempted(format!(
                    "{}: cannot wait for its inspection: {e}",
                    source.display()
                )))
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(refused(format!(
            "it crashed the process that loaded it ({}; inspected in a child process, the host was not affected)",
            describe_exit(&status)
        )));
    }
    let line = String::from_utf8_lossy(&out);
    let last = line
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    match serde_json::from_str::<Inspection>(last) {
        Ok(Inspection::Manifest(manifest)) => Ok(manifest),
        Ok(Inspection::Refused(reason)) => Err(LoadFailure::Refused(reason)),
        Err(e) => Err(refused(format!("its inspection printed no manifest ({e})"))),
    }
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                6 => " (SIGABRT)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                4 => " (SIGILL)",
                7 => " (SIGBUS)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "no exit code".to_owned(),
    }
}

/// Why a file of the plugins directory may not be loaded at all, decided before its content
/// is read (issue 20 #7); `None` when it may. A symbolic link is followed only when it
/// resolves inside `dir`. With `check_owner_and_mode`, the file (a link's target) must not be
/// writable by group or others, and must belong to the host's user or to root: whoever can
/// change it can run code inside the host.
pub fn file_problem(path: &Path, dir: &Path, check_owner_and_mode: bool) -> Option<String> {
    // Unreadable metadata is reported when the file is read.
    let link = std::fs::symlink_metadata(path).ok()?;
    if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).ok();
        let inside = match (&target, std::fs::canonicalize(dir)) {
            (Some(target), Ok(dir)) => target.starts_with(dir),
            _ => false,
        };
        if !inside {
            let target = target
                .map(|t| t.display().to_string())
                .unwrap_or_else(|| "nowhere".to_owned());
            return Some(format!(
                "{}: a symbolic link to {target}, outside the plugins directory (links are followed only inside it)",
                path.display()
            ));
        }
    }
    #[cfg(unix)]
    if check_owner_and_mode {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Some(format!(
                "{}: writable by group or others (mode {mode:04o}); `chmod go-w` it, or set [host] check_plugin_files = false",
                path.display()
            ));
        }
        let host_user = rustix::process::geteuid().as_raw();
        if meta.uid() != host_user && meta.uid() != 0 {
            return Some(format!(
                "{}: owned by uid {}, neither the host's user (uid {host_user}) nor root; `chown` it, or set [host] check_plugin_files = false",
                path.display(),
                meta.uid()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = check_owner_and_mode;
    None
}

/// Loads every version from its own copy, `<runtime dir>/<file stem>-<hash>.<ext>`:
/// the dynamic loader returns the library it already has for a path it knows, and
/// overwriting a mapped library crashes the process, so the operator's file is never the
/// one mapped. The copy is deleted once loaded (the mapping stays); libraries are never
/// unloaded, so each distinct version costs its mapping once, up to `max_libraries`.
pub struct PrivateCopyLoader {
    dir: PathBuf,
    max_libraries: usize,
    mapped_libraries: usize,
    mapped_bytes: u64,
    /// The program that inspects a file in a child process before the host loads it (the
    /// taskgate binary); `None`: loaded without inspection (library users, tests).
    inspector: Option<PathBuf>,
}

impl PrivateCopyLoader {
    /// Creates a private runtime directory under `parent` (mode 0700 on Unix: nobody else
    /// may swap a copy between its write and its load).
    pub fn new(parent: &Path, max_libraries: usize) -> std::io::Result<Self> {
        let dir = parent.join(format!("taskgate-plugins-{}", Uuid::new_v4()));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&dir)?;
        Ok(PrivateCopyLoader {
            dir,
            max_libraries,
            mapped_libraries: 0,
            mapped_bytes: 0,
            inspector: None,
        })
    }

    /// Inspects every new file in a child process running `program inspect-plugin` first,
    /// so a library that crashes or aborts while loading cannot take the host down.
    pub fn with_inspector(mut self, program: Option<PathBuf>) -> Self {
        self.inspector = program;
        self
    }

    /// In the system's temporary directory (`TMPDIR`).
    pub fn in_temp_dir(max_libraries: usize) -> std::io::Result<Self> {
        Self::new(&std::env::temp_dir(), max_libraries)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Libraries mapped into the process by this loader (refused ones included when the
    /// loader got as far as mapping them).
    pub fn mapped_libraries(&self) -> usize {
        self.mapped_libraries
    }

    /// The size of the files of those libraries: an upper bound of what they cost in
    /// memory until the process exits.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
    }
}

impl Drop for PrivateCopyLoader {
    fn drop(&mut self) {
        // Copies are deleted right after loading; the directory is empty by now.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Loader for PrivateCopyLoader {
    fn load(
        &mut self,
        source: &Path,
        hash: &ContentHash,
        enabled: &dyn Fn(&str) -> bool,
    ) -> Result<Loaded, LoadFailure> {
        let Some(inspector) = self.inspector.clone() else {
            return self.load_into_host(source, hash);
        };
        let manifest = self.with_copy(source, hash, |copy| {
            inspect_in_child(&inspector, copy, source)
        })?;
        if !enabled(&manifest.name) {
            return Ok(Loaded::inspected(manifest));
        }
        let loaded = self.load_into_host(source, hash)?;
        // The same content; a library that answers differently in the host is suspect.
        if *loaded.manifest != manifest {
            return Err(LoadFailure::Refused(format!(
                "{}: it declared something else when loaded than when inspected",
                source.display()
            )));
        }
        Ok(loaded)
    }
}

impl PrivateCopyLoader {
    /// Writes the private copy of `source` (checked against `hash`), runs `with` on it and
    /// deletes it.
    fn with_copy<T>(
        &self,
        source: &Path,
        hash: &ContentHash,
        with: impl FnOnce(&Path) -> Result<T, LoadFailure>,
    ) -> Result<T, LoadFailure> {
        let copy = self.copy_path(source, hash, "inspect");
        let (copied, _) = copy_hashing(source, Some(&copy)).map_err(|e| {
            let _ = std::fs::remove_file(&copy);
            LoadFailure::NotAttempted(format!(
                "{}: cannot copy it to {}: {e}",
                source.display(),
                copy.display()
            ))
        })?;
        let outcome = if &copied == hash {
            with(&copy)
        } else {
            Err(LoadFailure::NotAttempted(format!(
                "{}: changed while being copied; loaded once it is stable",
                source.display()
            )))
        };
        let _ = std::fs::remove_file(&copy);
        outcome
    }

    fn copy_path(&self, source: &Path, hash: &ContentHash, purpose: &str) -> PathBuf {
        let stem = source
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".to_owned());
        self.dir.join(format!(
            "{stem}-{}{purpose}.{}",
            hash.short(),
            std::env::consts::DLL_EXTENSION
        ))
    }

    /// Maps the version into the host, from its own copy.
    fn load_into_host(&mut self, source: &Path, hash: &ContentHash) -> Result<Loaded, LoadFailure> {
        if self.mapped_libraries >= self.max_libraries {
            return Err(LoadFailure::NotAttempted(format!(
                "{}: not loaded: this host already mapped {} plugin libraries (max_plugin_libraries); restart it to load more",
                source.display(),
                self.mapped_libraries
            )));
        }
        let copy = self.copy_path(source, hash, "");
        let (copied, len) = copy_hashing(source, Some(&copy)).map_err(|e| {
            let _ = std::fs::remove_file(&copy);
            LoadFailure::NotAttempted(format!(
                "{}: cannot copy it to {}: {e}",
                source.display(),
                copy.display()
            ))
        })?;
        if &copied != hash {
            let _ = std::fs::remove_file(&copy);
            return Err(LoadFailure::NotAttempted(format!(
                "{}: changed while being copied; loaded once it is stable",
                source.display()
            )));
        }
        let outcome = LoadedPlugin::load_copy(&copy, source);
        // The mapping outlives the file; nothing else may ever open this path again.
        let _ = std::fs::remove_file(&copy);
        // Files refused before the loader mapped them cost nothing; everything else stays.
        if !matches!(outcome, Err(LoadError::NotALibrary { .. })) {
            self.mapped_libraries += 1;
            self.mapped_bytes += len;
            metrics::gauge!(crate::metrics::PLUGIN_LIBRARIES_MAPPED)
                .set(self.mapped_libraries as f64);
            metrics::gauge!(crate::metrics::PLUGIN_MAPPED_BYTES).set(self.mapped_bytes as f64);
        }
        outcome
            .map(Loaded::from)
            .map_err(|e| LoadFailure::Refused(e.to_string()))
    }
}

/// Streams `from` through SHA-256, into `to` when given (a new file: never one that
/// exists). Returns the hash and the length of what was read.
fn copy_hashing(from: &Path, to: Option<&Path>) -> std::io::Result<(ContentHash, u64)> {
    use std::io::{Read, Write};
    let mut source = std::fs::File::open(from)?;
    let mut target = match to {
        Some(to) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buffer.get(..n).unwrap_or_default();
        hasher.update(chunk);
        if let Some(target) = target.as_mut() {
            target.write_all(chunk)?;
        }
        len += n as u64;
    }
    // No fsync: the loader reads the copy back through the page cache, and a copy lost to a
    // crash is never needed again.
    Ok((ContentHash::from_digest(hasher.finalize().as_slice()), len))
}

/// Whether `path` looks like a shared library on this platform.
pub fn is_library(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
}

/// The shared libraries in `dir`, in file-name order.
pub fn library_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_library(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// A loaded plugin version offered to [`resolve`]: the file it came from and its hash.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub file: PathBuf,
    pub hash: ContentHash,
    pub plugin: Loaded,
}

/// Something [`resolve`] has to tell the operator, at `level`. Hot reload logs each once,
/// not again at every rescan while it stays true.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub level: Level,
    pub text: String,
}

impl Note {
    fn new(level: Level, text: String) -> Self {
        Note { level, text }
    }
}

/// The result of applying plugins.toml to the loaded plugin versions.
#[derive(Debug, Default)]
pub struct Resolved {
    pub routes: RoutingTable,
    pub queues: Vec<QueueDecl>,
    /// Plugin name → the version serving it (enabled plugins with at least one type).
    pub served: BTreeMap<String, ServedPlugin>,
    pub notes: Vec<Note>,
}

/// Builds the routing table of the enabled plugins, with a note for every refusal.
pub fn resolve(candidates: &[Candidate], settings: &Settings) -> Resolved {
    let mut resolved = Resolved::default();
    let mut specs: Vec<RequestTypeSpec> = Vec::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    let mut files: BTreeMap<String, &Path> = BTreeMap::new();
    for candidate in candidates {
        let manifest = &candidate.plugin.manifest;
        let file = candidate.file.display();
        if let Some(first) = files.get(&manifest.name) {
            resolved.notes.push(Note::new(
                Level::ERROR,
                format!(
                    "plugin refused: {file} declares plugin `{}`, which {} already declares",
                    manifest.name,
                    first.display()
                ),
            ));
            continue;
        }
        files.insert(manifest.name.clone(), &candidate.file);
        if !settings.is_enabled(&manifest.name) {
            resolved.notes.push(Note::new(
                Level::INFO,
                format!(
                    "plugin `{}` {} found in {file} but not enabled in plugins.toml",
                    manifest.name, manifest.version
                ),
            ));
            continue;
        }
        let mut served = ServedPlugin {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            hash: candidate.hash.short().to_owned(),
            file: candidate.file.clone(),
            request_types: Vec::new(),
        };
        for declared in &manifest.request_types {
            if let Some(owner) = owners.get(&declared.name) {
                resolved.notes.push(Note::new(
                    Level::ERROR,
                    format!(
                    "request type `{}` of plugin `{}` refused: plugin `{owner}` already serves it",
                    declared.name, manifest.name
                ),
                ));
                continue;
            }
            let Some(validator) = candidate.plugin.validator.clone() else {
                // Enabled, yet only inspected (the load into the host is still due).
                resolved.notes.push(Note::new(
                    Level::ERROR,
                    format!(
                        "request type `{}` of plugin `{}` refused: the plugin is not loaded into the host",
                        declared.name, manifest.name
                    ),
                ));
                continue;
            };
            let spec = spec_for(
                &manifest.name,
                &manifest.version,
                declared,
                settings,
                validator,
            );
            match spec {
                Ok(spec) => {
                    let room = usize::try_from(settings.max_message_bytes)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(crate::limits::ENVELOPE_ALLOWANCE);
                    if spec.max_payload_bytes > room {
                        resolved.notes.push(Note::new(
                            Level::WARN,
                            format!(
                                "request type `{}` accepts payloads up to {} bytes, but the transports take messages up to {} bytes (fitted at start to the largest type then): bigger payloads are cut off; restart the host, or set [host] max_message_bytes",
                                spec.name, spec.max_payload_bytes, settings.max_message_bytes
                            ),
                        ));
                    }
                    owners.insert(spec.name.clone(), manifest.name.clone());
                    if spec.delivery_limit.is_none() {
                        resolved.notes.push(Note::new(
                            Level::WARN,
                            format!(
                                "request type `{}` of plugin `{}`: its queue `{}` is not a quorum queue, so RabbitMQ does not count deliveries: a request its workers crash on is redelivered until its timeout instead of being dead-lettered",
                                spec.name, manifest.name, spec.queue
                            ),
                        ));
                    }
                    resolved.queues.push(QueueDecl {
                        name: spec.queue.clone(),
                        arguments: spec.queue_arguments.clone(),
                        delivery_limit: spec.delivery_limit,
                    });
                    served.request_types.push(spec.name.clone());
                    specs.push(spec);
                }
                Err(reason) => resolved.notes.push(Note::new(
                    Level::ERROR,
                    format!(
                        "request type `{}` of plugin `{}` refused: {reason}",
                        declared.name, manifest.name
                    ),
                )),
            }
        }
        if !served.request_types.is_empty() {
            resolved.served.insert(served.name.clone(), served);
        }
    }
    for name in settings
        .plugins
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(n, _)| n)
    {
        if !files.contains_key(name) {
            resolved.notes.push(Note::new(
                Level::WARN,
                format!(
                    "plugin `{name}` is enabled in plugins.toml but no file in {} declares it",
                    settings.plugins_dir.display()
                ),
            ));
        }
    }
    resolved.routes =
        RoutingTable::new(specs).with_plugins(resolved.served.values().cloned().collect());
    resolved
}

fn spec_for(
    plugin: &str,
    version: &str,
    declared: &RequestTypeManifest,
    settings: &Settings,
    validator: Arc<dyn PayloadValidator>,
) -> Result<RequestTypeSpec, String> {
    let overrides = settings.overrides_for(plugin, &declared.name);
    let queue = overrides.queue.unwrap_or_else(|| declared.queue.clone());
    if queue.is_empty() || queue.len() > 255 {
        return Err(format!("queue name `{queue}` must be 1 to 255 bytes"));
    }
    let wanted_payload_bytes = usize::try_from(
        overrides
            .max_payload_bytes
            .unwrap_or(declared.max_payload_bytes),
    )
    .unwrap_or(usize::MAX);
    if wanted_payload_bytes > settings.limits.max_payload_bytes {
        tracing::warn!(plugin, request_type = %declared.name, wanted = wanted_payload_bytes, ceiling = settings.limits.max_payload_bytes, "payload limit cut to [limits] max_payload_bytes");
    }
    let deliveries = overrides
        .delivery_limit
        .or(declared.delivery_limit)
        .unwrap_or(DEFAULT_DELIVERY_LIMIT);
    if deliveries == 0 {
        return Err("delivery_limit must be at least 1".to_owned());
    }
    let queue_arguments = request_queue_arguments(
        &overrides
            .queue_arguments
            .unwrap_or_else(|| declared.queue_arguments.clone()),
        deliveries,
        &DeadLetterNames::new(&settings.dead_letter_queue).exchange,
    );
    let parts = SpecParts {
        name: declared.name.clone(),
        plugin: plugin.to_owned(),
        plugin_version: version.to_owned(),
        queue,
        queue_arguments: queue_arguments.arguments,
        streams: declared.streams,
        timeout: Duration::from_millis(overrides.timeout_ms.unwrap_or(declared.timeout_ms).max(1)),
        max_payload_bytes: settings.limits.payload_limit(wanted_payload_bytes),
        required_roles: overrides
            .required_roles
            .unwrap_or_else(|| declared.required_roles.clone()),
        payload_schema: declared.payload_schema.clone(),
    };
    let budget = overrides.validation_budget_ms.map_or(
        crate::routes::DEFAULT_VALIDATION_BUDGET,
        Duration::from_millis,
    );
    let mut spec = RequestTypeSpec::new(parts, declared.validates.then_some(validator))?
        .with_validation_budget(budget);
    spec.delivery_limit = queue_arguments.delivery_limit;
    spec.when_no_workers = overrides.when_no_workers.unwrap_or_default();
    let retry = overrides.retry.or_else(|| declared.retry.clone());
    if let Some(policy) = &retry {
        policy
            .check()
            .map_err(|e| format!("retry policy in plugins.toml: {e}"))?;
    }
    spec.retry = retry
        .as_ref()
        .and_then(|policy| serde_json::to_string(policy).ok())
        .map(Arc::from);
    Ok(spec)
}

/// One file of the plugins directory as `taskgate plugins` reports it.
#[derive(Debug)]
pub struct PluginFile {
    pub path: PathBuf,
    pub hash: Option<ContentHash>,
    pub outcome: Result<Loaded, LoadFailure>,
}

/// Loads every library file of `dir` once (for the `taskgate plugins` report). A missing
/// directory is an empty one.
pub fn scan(dir: &Path, loader: &mut dyn Loader, settings: &Settings) -> Vec<PluginFile> {
    let paths = library_files(dir).unwrap_or_default();
    paths
        .into_iter()
        .map(|path| match ContentHash::of_file(&path) {
            Ok(hash) => {
                // Reported from an inspection: nothing is loaded into this process.
                let outcome = match file_problem(&path, dir, settings.check_plugin_files) {
                    Some(problem) => Err(LoadFailure::Refused(problem)),
                    None => loader.load(&path, &hash, &|_| false),
                };
                PluginFile {
                    path,
                    hash: Some(hash),
                    outcome,
                }
            }
            Err(e) => PluginFile {
                outcome: Err(LoadFailure::NotAttempted(format!(
                    "{}: unreadable: {e}",
                    path.display()
                ))),
                path,
                hash: None,
            },
        })
        .collect()
}

/// The report of `taskgate plugins`: every file, its content hash, whether it loads and why
/// not, and each request type with its queue.
pub fn report(files: &[PluginFile], settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plugins directory: {}", settings.plugins_dir.display());
    let _ = writeln!(
        out,
        "plugin API: {} (this host loads plugins built against taskgate-plugin-api {})",
        taskgate_plugin_api::API_VERSION,
        crate::cli::compatible_api_versions(taskgate_plugin_api::API_VERSION)
    );
    if files.is_empty() {
        let _ = writeln!(out, "  (no plugin files found)");
    }
    let mut seen = BTreeMap::new();
    for file in files {
        let name = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = file
            .hash
            .as_ref()
            .map(|h| format!(" (sha256 {h})"))
            .unwrap_or_default();
        match &file.outcome {
            Err(e) => {
                let _ = writeln!(out, "\n{name}{hash}: REFUSED — {e}");
            }
            Ok(plugin) => {
                let m = &plugin.manifest;
                let state = if seen.insert(m.name.clone(), ()).is_some() {
                    "REFUSED — duplicate plugin name"
                } else if settings.is_enabled(&m.name) {
                    "enabled"
                } else {
                    "loads, not enabled in plugins.toml (so not loaded by the host)"
                };
                let _ = writeln!(
                    out,
                    "\n{name}: plugin `{}` {}{hash} — {state}",
                    m.name, m.version
                );
                for t in &m.request_types {
                    let o = settings.overrides_for(&m.name, &t.name);
                    let queue = o.queue.unwrap_or_else(|| t.queue.clone());
                    let timeout = o.timeout_ms.unwrap_or(t.timeout_ms);
                    let limit = settings.limits.payload_limit(
                        usize::try_from(o.max_payload_bytes.unwrap_or(t.max_payload_bytes))
                            .unwrap_or(usize::MAX),
                    );
                    let deliveries = request_queue_arguments(
                        &o.queue_arguments
                            .unwrap_or_else(|| t.queue_arguments.clone()),
                        o.delivery_limit
                            .or(t.delivery_limit)
                            .unwrap_or(DEFAULT_DELIVERY_LIMIT),
                        &settings.dead_letter_queue,
                    )
                    .delivery_limit
                    .map_or_else(
                        || ", no delivery limit (not a quorum queue)".to_owned(),
                        |n| format!(", ≤ {n} deliveries"),
                    );
                    let roles = o.required_roles.unwrap_or_else(|| t.required_roles.clone());
                    let roles = if roles.is_empty() {
                        String::new()
                    } else {
                        format!(", roles {}", roles.join(" + "))
                    };
                    let _ = writeln!(
                        out,
                        "  {:<24} queue {:<32} {:<9} timeout {timeout} ms, payload ≤ {limit} bytes{deliveries}{roles}",
                        t.name,
                        queue,
                        if t.streams { "streams" } else { "" },
                    );
                }
            }
        }
    }
    for (name, section) in &settings.plugins {
        if section.enabled && !seen.contains_key(name) {
            let _ = writeln!(
                out,
                "\nplugin `{name}` is enabled in plugins.toml but no file declares it"
            );
        }
    }
    let _ = writeln!(
        out,
        "\nThis lists the files. A running host's /readyz lists the versions it serves."
    );
    out
}

/// An enabled request type's queue, for the workers part of `taskgate plugins`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeQueue {
    pub request_type: String,
    pub queue: String,
    pub when_no_workers: crate::serving::WhenNoWorkers,
}

/// The queue of every request type of the enabled plugins among `files`, as plugins.toml
/// sets it.
pub fn enabled_queues(files: &[PluginFile], settings: &Settings) -> Vec<TypeQueue> {
    let mut types = Vec::new();
    for plugin in files.iter().filter_map(|f| f.outcome.as_ref().ok()) {
        let m = &plugin.manifest;
        if !settings.is_enabled(&m.name) {
            continue;
        }
        for t in &m.request_types {
            let o = settings.overrides_for(&m.name, &t.name);
            types.push(TypeQueue {
                request_type: t.name.clone(),
                queue: o.queue.unwrap_or_else(|| t.queue.clone()),
                when_no_workers: o.when_no_workers.unwrap_or_default(),
            });
        }
    }
    types.sort_by(|a, b| a.request_type.cmp(&b.request_type));
    types
}

/// The workers part of `taskgate plugins`: each enabled type's consumers now (`looks`, one
/// per type in order), or why the broker could not be asked.
pub fn workers_report(
    types: &[TypeQueue],
    looks: Result<Vec<Result<u32, String>>, String>,
) -> String {
    let mut out =
        String::from("\nworkers (consumers of each enabled request type's queue, now):\n");
    let looks = match looks {
        Ok(looks) => looks,
        Err(reason) => {
            let _ = writeln!(out, "  not looked at: {reason}");
            return out;
        }
    };
    for (t, look) in types.iter().zip(looks) {
        let state = match look {
            Ok(0) => match t.when_no_workers {
                crate::serving::WhenNoWorkers::Fail => "NONE — its requests are refused UNAVAILABLE (noConsumers) after a few seconds; start a worker".to_owned(),
                crate::serving::WhenNoWorkers::Queue => "NONE — its requests wait in the queue (when_no_workers = \"queue\")".to_owned(),
            },
            Ok(n) => format!("{n} consumer{}", if n == 1 { "" } else { "s" }),
            Err(reason) => format!("unknown: {reason}"),
        };
        let _ = writeln!(
            out,
            "  {:<24} queue {:<32} {state}",
            t.request_type, t.queue
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_workers_report_says_which_types_nobody_serves_and_what_their_requests_do() {
        use crate::serving::WhenNoWorkers;
        let t = |name: &str, when| TypeQueue {
            request_type: name.into(),
            queue: format!("q.{name}"),
            when_no_workers: when,
        };
        let types = [
            t("a", WhenNoWorkers::Fail),
            t("b", WhenNoWorkers::Queue),
            t("c", WhenNoWorkers::Fail),
            t("d", WhenNoWorkers::Fail),
        ];
        let out = workers_report(&types, Ok(vec![Ok(0), Ok(0), Ok(2), Err("gone".into())]));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[2].contains("q.a")
                && lines[2].contains("NONE — its requests are refused UNAVAILABLE")
        );
        assert!(lines[3].contains("NONE — its requests wait in the queue"));
        assert!(lines[4].ends_with("2 consumers"));
        assert!(lines[5].ends_with("unknown: gone"));
        let offline = workers_report(&types, Err("cannot reach the broker".into()));
        assert!(offline.contains("not looked at: cannot reach the broker"));
    }

    #[test]
    fn content_hashes_are_sha256_in_hex_shown_by_their_first_16_digits() {
        let h = ContentHash::of(b"abc");
        assert_eq!(
            h.0,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string(), "ba7816bf8f01cfea");
        assert_ne!(ContentHash::of(b"abd"), h);
    }
}
