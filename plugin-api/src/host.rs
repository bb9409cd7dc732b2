//! The host's side of the boundary: loading plugin libraries and calling them.
//!
//! Each library is loaded through its own header (`lib_header_from_path` +
//! `init_root_module`), never through `RootModule::load_from_file`: that one caches a
//! single module per root-module type in a static, so every plugin after the first would
//! come back as the first. abi_stable checks the plugin-api version and the layout of every
//! type that crosses the boundary before anything is called; a refusal becomes one
//! [`LoadError`] line naming the file.
//!
//! Libraries are never unloaded (abi_stable leaks them by design): loading the same path
//! twice returns the already-loaded code, which is why hot reload loads each version from
//! its own private copy ([`LoadedPlugin::load_copy`]), named for the operator's file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::{RResult, RStr};

use crate::ffi::{level, FfiValidation, LogFn, PluginModRef};
use crate::manifest::{PluginManifest, Problem};

/// Why a file was not loaded as a plugin. Its `Display` is one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{path}: not a loadable library: {reason}")]
    NotALibrary { path: PathBuf, reason: String },
    #[error("{path}: not a taskgate plugin (no root module symbol)")]
    NotAPlugin { path: PathBuf },
    #[error("{path}: built against taskgate-plugin-api {found}, this host has {expected}: rebuild it against taskgate-plugin-api {expected} (`taskgate --version` prints it; `taskgate new plugin` writes the dependency line)")]
    IncompatibleVersion {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{path}: ABI layout mismatch with this host's plugin API ({summary}): rebuild it against taskgate-plugin-api {} (`taskgate --version` prints it)", crate::API_VERSION)]
    AbiMismatch { path: PathBuf, summary: String },
    #[error("{path}: the plugin failed to start: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("{path}: invalid manifest: {reason}")]
    Manifest { path: PathBuf, reason: String },
}

/// The outcome of one validation call.
#[derive(Debug, Clone, PartialEq)]
pub enum Validation {
    /// The normalised payload JSON to publish.
    Valid(String),
    /// The payload was refused.
    Invalid(Vec<Problem>),
    /// The plugin failed (a caught panic, a malformed answer): an `INTERNAL` error.
    Failed(String),
}

struct Inner {
    path: PathBuf,
    manifest: PluginManifest,
    module: PluginModRef,
}

/// A loaded plugin. Cheap to clone; the library stays mapped for the life of the process.
#[derive(Clone)]
pub struct LoadedPlugin {
    inner: Arc<Inner>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.inner.path)
            .field("name", &self.inner.manifest.name)
            .field("version", &self.inner.manifest.version)
            .finish()
    }
}

/// First line of a possibly multi-kilobyte error text, shortened.
fn summarize(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("unknown reason");
    let mut summary: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        summary.push('…');
    }
    summary
}

/// abi_stable's layout report is kilobytes of type trees. Keep what differs: the type and
/// package it expected (after "Layout of expected type:") and the one it found (the first
/// type inside the "error(s)inside:" block).
fn summarize_abi(text: &str) -> String {
    fn type_and_package<'a>(mut lines: impl Iterator<Item = &'a str>) -> Option<String> {
        let ty = lines
            .by_ref()
            .find_map(|l| l.strip_prefix("type:"))?
            .to_owned();
        let package = lines
            .find_map(|l| l.strip_prefix("package:"))
            .map(|p| p.replace(['\'', ':'], " ").replace("  ", " "))
            .unwrap_or_default();
        Some(format!("`{ty}` ({})", package.trim()))
    }
    let lines = || text.lines().map(str::trim);
    let found = lines()
        .skip_while(|l| !l.contains("error(s)inside:"))
        .skip(1);
    let expected = lines()
        .skip_while(|l| !l.starts_with("Layout of expected type:"))
        .skip(1);
    match (type_and_package(expected), type_and_package(found)) {
        (Some(expected), Some(found)) => format!("expected {expected}, found {found}"),
        _ => "the plugin was built against a different taskgate-plugin-api".to_owned(),
    }
}

/// Refuses files a dynamic loader would map but that cannot be whole: a truncated copy maps
/// fine and crashes the process (SIGBUS) when a missing page is touched. Reads only the
/// headers (through a read cache), not the whole library: plugin files are megabytes.
fn check_complete(file: &Path, path: &Path) -> Result<(), LoadError> {
    use object::{Object, ObjectSection, ObjectSegment, ReadCache};
    use std::io::Read;
    let not_a_library = |reason: String| LoadError::NotALibrary {
        path: path.to_owned(),
        reason,
    };
    let unreadable = |e: std::io::Error| not_a_library(format!("unreadable: {e}"));
    let mut opened = std::fs::File::open(file).map_err(unreadable)?;
    let len = opened.metadata().map_err(unreadable)?.len();
    if len == 0 {
        return Err(not_a_library("the file is empty".to_owned()));
    }
    let mut magic = Vec::with_capacity(4);
    (&mut opened)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(unreadable)?;
    let cache = ReadCache::new(opened);
    let parsed = object::File::parse(&cache).map_err(|e| {
        // ELF, then the two Mach-O 64-bit byte orders.
        let known = [b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf"];
        if known.iter().any(|m| m.as_slice() == magic) {
            not_a_library(format!("truncated or corrupt ({e})"))
        } else {
            not_a_library("neither ELF nor Mach-O".to_owned())
        }
    })?;
    let ranges = parsed
        .segments()
        .map(|s| s.file_range())
        .chain(parsed.sections().filter_map(|s| s.file_range()));
    for (offset, size) in ranges {
        if offset.saturating_add(size) > len {
            return Err(not_a_library(format!(
                "truncated (the file is {len} bytes, its headers need {})",
                offset.saturating_add(size)
            )));
        }
    }
    Ok(())
}

/// `copy` is the file the loader opened, `path` the one to name (see [`LoadedPlugin::load_copy`]).
fn classify(copy: &Path, path: &Path, error: LibraryError) -> LoadError {
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            // The loader's message starts with the file it opened: name the operator's.
            reason: summarize(
                &err.to_string()
                    .replace(&copy.display().to_string(), &path.display().to_string()),
            ),
            path,
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            path,
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
        },
        LibraryError::ParseVersionError(e) => LoadError::IncompatibleVersion {
            path,
            expected: crate::API_VERSION.to_owned(),
            found: format!("an unreadable version ({})", summarize(&e.to_string())),
        },
        LibraryError::AbiInstability(e) => {
            tracing::debug!(path = %path.display(), details = %e, "ABI mismatch details");
            LoadError::AbiMismatch {
                path,
                summary: summarize_abi(&e.to_string()),
            }
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            LoadError::AbiMismatch {
                path,
                summary: "built with an incompatible abi_stable".to_owned(),
            }
        }
        LibraryError::RootModule { err, .. } => LoadError::Init {
            path,
            reason: summarize(&err.to_string()),
        },
        LibraryError::Many(errors) => match errors.into_iter().next() {
            Some(first) => classify(copy, &path, first),
            None => LoadError::NotAPlugin { path },
        },
    }
}

/// Where plugin log lines go: the host's `tracing`, with the plugin's module path.
extern "C" fn host_log(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let target = target.as_str();
    let message = message.as_str();
    match level {
        level::ERROR => tracing::error!(plugin = target, "{message}"),
        level::WARN => tracing::warn!(plugin = target, "{message}"),
        level::INFO => tracing::info!(plugin = target, "{message}"),
        level::DEBUG => tracing::debug!(plugin = target, "{message}"),
        _ => tracing::trace!(plugin = target, "{message}"),
    }
}

/// The most verbose level any of the host's subscribers records, for the plugin to filter
/// on its side (per-target filters still apply when a line arrives here). Read once, at
/// load: a host that later makes its filter more verbose sees more of a plugin's lines only
/// after the plugin is loaded again.
fn host_max_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        // `tracing` starts at OFF until a subscriber exists: a host that loads plugins
        // before setting up its log must not silence them for good, so forward everything.
        LevelFilter::OFF => level::TRACE,
        LevelFilter::ERROR => level::ERROR,
        LevelFilter::WARN => level::WARN,
        LevelFilter::INFO => level::INFO,
        LevelFilter::DEBUG => level::DEBUG,
        _ => level::TRACE,
    }
}

impl LoadedPlugin {
    /// Loads the plugin library at `path`. Never panics; every refusal is a [`LoadError`].
    pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
        Self::load_copy(path, path)
    }

    /// Loads the library at `copy`, a private copy of the operator's file `source`: errors
    /// and [`LoadedPlugin::path`] name `source`. The dynamic loader knows the library by
    /// `copy`, so a new version must come from a copy at a path never used before.
    pub fn load_copy(copy: &Path, source: &Path) -> Result<LoadedPlugin, LoadError> {
        check_complete(copy, source)?;
        let path = source;
        let header = lib_header_from_path(copy).map_err(|e| classify(copy, path, e))?;
        let module = header
            .init_root_module::<PluginModRef>()
            .map_err(|e| classify(copy, path, e))?;
        let logger = LogFn {
            log: host_log,
            max_level: host_max_level(),
        };
        let manifest_json = match (module.init())(logger) {
            RResult::ROk(json) => json.into_string(),
            RResult::RErr(reason) => {
                return Err(LoadError::Init {
                    path: path.to_owned(),
                    reason: reason.into_string(),
                })
            }
        };
        let manifest: PluginManifest =
            serde_json::from_str(&manifest_json).map_err(|e| LoadError::Manifest {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        manifest.check().map_err(|reason| LoadError::Manifest {
            path: path.to_owned(),
            reason,
        })?;
        Ok(LoadedPlugin {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                manifest,
                module,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn manifest(&self) -> &PluginManifest {
        &self.inner.manifest
    }

    /// Validates one payload through the plugin. Never panics: the plugin side catches its
    /// panics and reports them as [`Validation::Failed`].
    pub fn validate(&self, request_type: &str, payload_json: &str) -> Validation {
        let validate = self.inner.module.validate();
        match validate(RStr::from_str(request_type), RStr::from_str(payload_json)) {
            FfiValidation::Valid(json) => Validation::Valid(json.into_string()),
            FfiValidation::Invalid(json) => match serde_json::from_str(json.as_str()) {
                Ok(problems) => Validation::Invalid(problems),
                Err(e) => Validation::Failed(format!("malformed problems from the plugin: {e}")),
            },
            FfiValidation::Failed(reason) => Validation::Failed(reason.into_string()),
        }
    }
}
