//! Finding plugin files, loading them, and turning the enabled ones into a routing table.
//!
//! Loading itself (the ABI boundary) lives in `taskgate_plugin_api::host`; this module
//! decides what to do with each file: which plugins plugins.toml enables, what the
//! operator overrides, and what is refused — each refusal one log line naming the file.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use taskgate_plugin_api::host::{LoadError, LoadedPlugin};
use taskgate_plugin_api::RequestTypeManifest;
use tracing::{error, info, warn};

use crate::broker::amqp::QueueDecl;
use crate::config::Settings;
use crate::routes::{PayloadValidator, RequestTypeSpec, RoutingTable, SpecParts};

/// One file of the plugins directory and what loading it gave.
#[derive(Debug)]
pub struct PluginFile {
    pub path: PathBuf,
    pub outcome: Result<LoadedPlugin, LoadError>,
}

/// Whether `path` looks like a shared library on this platform.
fn is_library(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == std::env::consts::DLL_EXTENSION)
}

/// Loads every shared library in `dir`, in file-name order. A missing directory is an
/// empty one (with a warning): the host still serves, with no request types.
pub fn scan(dir: &Path) -> Vec<PluginFile> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the plugins directory; no plugins loaded");
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_library(p))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let outcome = LoadedPlugin::load(&path);
            PluginFile { path, outcome }
        })
        .collect()
}

/// The result of applying plugins.toml to the loaded files.
#[derive(Default)]
pub struct Resolved {
    pub routes: RoutingTable,
    pub queues: Vec<QueueDecl>,
    /// Plugin name → the file it was loaded from, for every loaded plugin.
    pub plugins: BTreeMap<String, PathBuf>,
}

/// Builds the routing table of the enabled plugins and logs every decision once.
pub fn resolve(files: &[PluginFile], settings: &Settings) -> Resolved {
    let mut resolved = Resolved::default();
    let mut specs: Vec<RequestTypeSpec> = Vec::new();
    let mut owners: HashMap<String, String> = HashMap::new();
    for file in files {
        let plugin = match &file.outcome {
            Ok(plugin) => plugin,
            Err(e) => {
                error!("plugin refused: {e}");
                continue;
            }
        };
        let manifest = plugin.manifest();
        if let Some(first) = resolved.plugins.get(&manifest.name) {
            error!(file = %file.path.display(), plugin = %manifest.name, first = %first.display(), "plugin refused: another file already declares this plugin name");
            continue;
        }
        resolved
            .plugins
            .insert(manifest.name.clone(), file.path.clone());
        if !settings.is_enabled(&manifest.name) {
            info!(file = %file.path.display(), plugin = %manifest.name, version = %manifest.version, "plugin found but not enabled in plugins.toml");
            continue;
        }
        let validator: Arc<dyn PayloadValidator> = Arc::new(plugin.clone());
        for declared in &manifest.request_types {
            if let Some(owner) = owners.get(&declared.name) {
                error!(plugin = %manifest.name, request_type = %declared.name, owner = %owner, "request type refused: already served by another plugin");
                continue;
            }
            match spec_for(
                &manifest.name,
                &manifest.version,
                declared,
                settings,
                validator.clone(),
            ) {
                Ok(spec) => {
                    info!(plugin = %manifest.name, version = %manifest.version, request_type = %spec.name, queue = %spec.queue, "request type enabled");
                    owners.insert(spec.name.clone(), manifest.name.clone());
                    resolved.queues.push(QueueDecl {
                        name: spec.queue.clone(),
                        arguments: spec.queue_arguments.clone(),
                    });
                    specs.push(spec);
                }
                Err(reason) => {
                    error!(plugin = %manifest.name, request_type = %declared.name, %reason, "request type refused")
                }
            }
        }
    }
    for name in settings
        .plugins
        .iter()
        .filter(|(_, p)| p.enabled)
        .map(|(n, _)| n)
    {
        if !resolved.plugins.contains_key(name) {
            warn!(plugin = %name, dir = %settings.plugins_dir.display(), "plugin enabled in plugins.toml but no file in the plugins directory declares it");
        }
    }
    resolved.routes = RoutingTable::new(specs);
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
    let parts = SpecParts {
        name: declared.name.clone(),
        plugin: plugin.to_owned(),
        plugin_version: version.to_owned(),
        queue,
        queue_arguments: overrides
            .queue_arguments
            .unwrap_or_else(|| declared.queue_arguments.clone()),
        streams: declared.streams,
        timeout: Duration::from_millis(overrides.timeout_ms.unwrap_or(declared.timeout_ms).max(1)),
        max_payload_bytes: usize::try_from(
            overrides
                .max_payload_bytes
                .unwrap_or(declared.max_payload_bytes),
        )
        .unwrap_or(usize::MAX),
        payload_schema: declared.payload_schema.clone(),
    };
    RequestTypeSpec::new(parts, declared.validates.then_some(validator))
}

/// The report of `taskgate plugins`: every file, whether it loads and why not, and each
/// request type with its queue.
pub fn report(files: &[PluginFile], settings: &Settings) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plugins directory: {}", settings.plugins_dir.display());
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
        match &file.outcome {
            Err(e) => {
                let _ = writeln!(out, "\n{name}: REFUSED — {e}");
            }
            Ok(plugin) => {
                let m = plugin.manifest();
                let state = if seen.insert(m.name.clone(), ()).is_some() {
                    "REFUSED — duplicate plugin name"
                } else if settings.is_enabled(&m.name) {
                    "enabled"
                } else {
                    "loads, not enabled in plugins.toml"
                };
                let _ = writeln!(out, "\n{name}: plugin `{}` {} — {state}", m.name, m.version);
                for t in &m.request_types {
                    let o = settings.overrides_for(&m.name, &t.name);
                    let queue = o.queue.unwrap_or_else(|| t.queue.clone());
                    let timeout = o.timeout_ms.unwrap_or(t.timeout_ms);
                    let limit = o.max_payload_bytes.unwrap_or(t.max_payload_bytes);
                    let _ = writeln!(
                        out,
                        "  {:<24} queue {:<32} {:<9} timeout {timeout} ms, payload ≤ {limit} bytes",
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
    out
}
