//! What a taskgate plugin is written against.
//!
//! A plugin declares request types — name, queue, limits, timeout, whether it streams, the
//! JSON Schema of its payload — and validates payloads. It is plain, safe Rust:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use taskgate_plugin_api::prelude::*;
//!
//! #[derive(Deserialize, Serialize, JsonSchema)]
//! struct Repeat {
//!     #[schemars(length(min = 1, max = 200))]
//!     text: String,
//!     // A rule written once: the JSON Schema says it, the host enforces it.
//!     #[schemars(range(min = 1, max = 100))]
//!     times: u32,
//!     #[serde(default)]
//!     separator: Option<String>,
//! }
//!
//! // What a schema cannot say: a relation between fields.
//! fn check(r: &Repeat) -> Vec<Problem> {
//!     match &r.separator {
//!         Some(_) if r.times == 1 => vec![Problem::new("/separator", "needs `times` above 1")],
//!         _ => vec![],
//!     }
//! }
//!
//! fn plugin() -> Plugin {
//!     tracing::info!("repeat plugin ready");
//!     Plugin::new("repeat", env!("CARGO_PKG_VERSION")).request_type(
//!         RequestType::typed::<Repeat>("text.repeat")
//!             .max_payload_bytes(64 * 1024)
//!             .check(check),
//!     )
//! }
//! export_plugin!(plugin);
//! # fn main() {}
//! ```
//!
//! `taskgate new plugin NAME` writes a complete crate to start from. By hand, a plugin's
//! Cargo.toml needs `taskgate-plugin-api` — the version of the host that loads it, exactly
//! ([`API_VERSION`], printed by `taskgate --version`) — and `serde` (with `derive`), and
//! `crate-type = ["cdylib", "rlib"]` (the `rlib` lets its unit tests call `plugin()`
//! in-process). The prelude brings `schemars` (for the derive) and `tracing` into scope:
//! log with the re-exported `tracing`, so events reach the copy that forwards them to the
//! host.
//!
//! # Payload rules: the schema, then `check`
//! A payload of a [`RequestType::typed`] type is checked in this order:
//! 1. by the host, against the JSON Schema of `T` (schemars attributes: `range`, `length`,
//!    `regex`, `required` fields, enums, `deny_unknown_fields` …). A refusal names the JSON
//!    Pointer and says what the schema expects in its words (`/times: 0 is less than the
//!    minimum of 1`);
//! 2. by deserializing into `T` (serde's defaults are filled in, unknown fields dropped);
//! 3. by the request type's check, `Fn(&T) -> Vec<Problem>`: an empty list accepts the
//!    payload; each [`Problem::new(pointer, message)`](Problem::new) refuses it, `pointer`
//!    a JSON Pointer into the payload (`""` for the whole payload, `/items/0/name` …).
//!
//! So write each limit once, as a schemars attribute: clients see it in the published
//! schema (and their generated types), and the host enforces it. `check` is for what a
//! schema cannot say. The in-process [`Plugin::validate`] that unit tests call does steps 2
//! and 3 only: test the schema's limits on [`Plugin::manifest`]'s `payload_schema`.
//! (Validation crates whose attributes schemars also reads report Rust field names, not the
//! serde names clients send: their problems would point at the wrong place.)
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
//! The crate's version is the ABI version ([`API_VERSION`], not the host's version): the host
//! refuses a plugin built against an incompatible version (for 0.x, another minor version)
//! with one log line that says which version to build against. `abi-layout.txt` records the
//! layout of everything that crosses the boundary; `tests/abi_version.rs` fails when it
//! changes under the same version.
//!
//! # Where things go
//! - New declaration fields: [`RequestTypeManifest`] (serde; add with `#[serde(default)]`
//!   so older plugins still load).
//! - New boundary functions: at the end of [`ffi::PluginMod`], after `validate`, as a
//!   new prefix field (never reorder fields), with a new [`API_VERSION`].

mod author;
pub mod ffi;
#[cfg(feature = "host")]
pub mod host;
mod log_bridge;
mod manifest;

pub use author::{Plugin, RequestType};

/// The plugin API's version: the version of the boundary a plugin is built against. The
/// host loads plugins built against a compatible version only (for 0.x, the same minor);
/// `taskgate --version` and `taskgate plugins` print it. It changes when the boundary
/// changes — `tests/abi_version.rs` fails on a new layout under an old version — and not
/// with the host's releases: a host upgrade that keeps it keeps every plugin working.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use manifest::{Backoff, PluginManifest, Problem, RequestTypeManifest, RetryPolicy};
pub use schemars::{self, JsonSchema};
pub use serde_json;
pub use tracing;

/// What a plugin's source needs: `use taskgate_plugin_api::prelude::*;`.
pub mod prelude {
    pub use crate::{
        export_plugin, schemars, tracing, Backoff, JsonSchema, Plugin, Problem, RequestType,
        RetryPolicy,
    };
}

/// Defaults of a request type that does not set them.
pub mod defaults {
    /// 30 seconds.
    pub const TIMEOUT_MS: u64 = 30_000;
    /// 1 MiB.
    pub const MAX_PAYLOAD_BYTES: u64 = 1024 * 1024;
    /// The queue of a request type named `name` is `taskgate.<name>`.
    pub const QUEUE_PREFIX: &str = "taskgate.";
}
