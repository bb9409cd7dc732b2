//! What a taskgate plugin is written against.
//!
//! A plugin declares request types — name, queue, limits, timeout, whether it streams, the
//! JSON Schema of its payload — and validates payloads. It is plain, safe Rust:
//!
//! ```ignore
//! use taskgate_plugin_api::{export_plugin, JsonSchema, Plugin, Problem, RequestType};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, Serialize, JsonSchema)]
//! struct WordCount { text: String }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("wordcount", env!("CARGO_PKG_VERSION"))
//!         .request_type(RequestType::typed::<WordCount>("text.wordcount").max_payload_bytes(1 << 20))
//! }
//! export_plugin!(plugin);
//! ```
//!
//! # Design
//! The host loads plugins as `cdylib`s through [abi_stable]. The boundary is kept as small
//! as possible: two `extern "C"` functions over strings (see [`ffi`]). The declaration
//! crosses once, at load, as a JSON [`PluginManifest`]; each validation is payload JSON in,
//! normalised JSON (or problems) out. So the ABI almost never has to change, and a plugin
//! author never sees an FFI type.
//!
//! Every exported function catches panics ([`export_plugin!`] does it, so no author can
//! forget): a panic that crossed the boundary would abort the host.
//!
//! Plugins are synchronous and pure — no I/O, no threads, no async runtime: they run inside
//! the host process, which owns every socket and broker connection. A plugin's `tracing`
//! events are forwarded to the host's log.
//!
//! The crate's version is the ABI version: the host refuses a plugin built against an
//! incompatible version (for 0.x, another minor version) with one clear log line.
//!
//! # Where things go
//! - New declaration fields: [`RequestTypeManifest`] (serde; add with `#[serde(default)]`
//!   so older plugins still load).
//! - New boundary functions: at the end of [`ffi::PluginMod`], after `validate`, as a
//!   new prefix field (never reorder fields).

mod author;
pub mod ffi;
#[cfg(feature = "host")]
pub mod host;
mod log_bridge;
mod manifest;

pub use author::{Plugin, RequestType};
pub use manifest::{PluginManifest, Problem, RequestTypeManifest};
pub use schemars::{self, JsonSchema};
pub use serde_json;

/// Defaults of a request type that does not set them.
pub mod defaults {
    /// 30 seconds.
    pub const TIMEOUT_MS: u64 = 30_000;
    /// 1 MiB.
    pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;
    /// The queue of a request type named `name` is `taskgate.<name>`.
    pub const QUEUE_PREFIX: &str = "taskgate.";
}
