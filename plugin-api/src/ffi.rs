//! The stable-ABI boundary between the host and a plugin library.
//!
//! Two `extern "C"` functions over strings, in an abi_stable prefix-type root module:
//! - `init(log)`: installs the log callback, returns the plugin's manifest as JSON;
//! - `validate(request_type, payload)`: returns normalised JSON, problems (JSON), or a
//!   failure message (e.g. a caught panic).
//!
//! Plugin authors never use this module directly: [`export_plugin!`](crate::export_plugin)
//! generates the functions, each wrapped in `catch_unwind`.

// abi_stable's derives expand to code with `unsafe` in it.
#![allow(unsafe_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::author::Plugin;

/// Log levels across the boundary.
pub mod level {
    pub const OFF: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const WARN: u8 = 2;
    pub const INFO: u8 = 3;
    pub const DEBUG: u8 = 4;
    pub const TRACE: u8 = 5;
}

/// The host's logger as the plugin sees it: a callback (level, target — the plugin's module
/// path —, message), and the most verbose level the host records, so a plugin does not
/// format events the host would drop. A struct because abi_stable checks function pointers
/// as struct fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, StableAbi)]
pub struct LogFn {
    pub log: extern "C" fn(level: u8, target: RStr<'_>, message: RStr<'_>),
    /// One of [`level`]; [`level::OFF`] forwards nothing.
    pub max_level: u8,
}

/// The outcome of one validation, as it crosses the boundary.
#[repr(u8)]
#[derive(Debug, StableAbi)]
pub enum FfiValidation {
    /// The normalised payload JSON.
    Valid(RString),
    /// A JSON array of `{pointer, message}` problems.
    Invalid(RString),
    /// The plugin failed (panicked, or could not encode its answer).
    Failed(RString),
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Installs the log callback and returns the manifest JSON (or why the plugin cannot start).
    pub init: extern "C" fn(log: LogFn) -> RResult<RString, RString>,
    /// Validates one payload. Add new functions after this one, never before.
    #[sabi(last_prefix_field)]
    pub validate: extern "C" fn(request_type: RStr<'_>, payload: RStr<'_>) -> FfiValidation,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "taskgate_plugin";
    const NAME: &'static str = "taskgate_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

impl PluginMod {
    /// The module as the exported root: called by [`export_plugin!`](crate::export_plugin).
    pub fn into_root(self) -> PluginModRef {
        use abi_stable::prefix_type::PrefixTypeTrait;
        self.leak_into_prefix()
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The body of the generated `init`. Not for plugin authors.
#[doc(hidden)]
pub fn run_init(log: LogFn, plugin: fn() -> &'static Plugin) -> RResult<RString, RString> {
    crate::log_bridge::install(log);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let manifest = plugin().manifest();
        serde_json::to_string(&manifest).map_err(|e| e.to_string())
    }));
    match outcome {
        Ok(Ok(json)) => RResult::ROk(RString::from(json)),
        Ok(Err(e)) => RResult::RErr(RString::from(format!("manifest not encodable: {e}"))),
        Err(panic) => RResult::RErr(RString::from(format!(
            "plugin panicked while starting: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// The body of the generated `validate`. Not for plugin authors.
#[doc(hidden)]
pub fn run_validate(
    plugin: fn() -> &'static Plugin,
    request_type: RStr<'_>,
    payload: RStr<'_>,
) -> FfiValidation {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        plugin().validate(request_type.as_str(), payload.as_str())
    }));
    match outcome {
        Ok(Ok(normalised)) => FfiValidation::Valid(RString::from(normalised)),
        Ok(Err(problems)) => match serde_json::to_string(&problems) {
            Ok(json) => FfiValidation::Invalid(RString::from(json)),
            Err(e) => FfiValidation::Failed(RString::from(format!("problems not encodable: {e}"))),
        },
        Err(panic) => FfiValidation::Failed(RString::from(format!(
            "plugin panicked: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// Exports a plugin: `export_plugin!(constructor)` where `constructor: fn() -> Plugin`.
///
/// The constructor runs once, when the host loads the library. Every exported function
/// catches panics. Invoke it once, at the crate root of a `cdylib`. The plugin needs no
/// dependency on abi_stable: the export is spelled out here with `$crate` paths.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:path) => {
        #[doc(hidden)]
        fn __taskgate_plugin_constructor() -> $crate::Plugin {
            $constructor()
        }

        #[doc(hidden)]
        #[allow(unsafe_code)]
        pub mod __taskgate_plugin_export {
            use $crate::ffi::abi::{RResult, RStr, RString};

            static PLUGIN: ::std::sync::OnceLock<$crate::Plugin> = ::std::sync::OnceLock::new();

            fn plugin() -> &'static $crate::Plugin {
                PLUGIN.get_or_init(super::__taskgate_plugin_constructor)
            }

            extern "C" fn init(log: $crate::ffi::LogFn) -> RResult<RString, RString> {
                $crate::ffi::run_init(log, plugin)
            }

            extern "C" fn validate(
                request_type: RStr<'_>,
                payload: RStr<'_>,
            ) -> $crate::ffi::FfiValidation {
                $crate::ffi::run_validate(plugin, request_type, payload)
            }

            fn root_module() -> $crate::ffi::PluginModRef {
                $crate::ffi::PluginMod { init, validate }.into_root()
            }

            extern "C" fn erased_root_module() -> $crate::ffi::abi::RootModuleResult {
                $crate::ffi::abi::__call_root_module_loader(root_module)
            }

            /// What abi_stable's `#[export_root_module]` generates, with `$crate` paths. The
            /// symbol name is `abi_stable::library::ROOT_MODULE_LOADER_NAME` (a test in
            /// taskgate-plugin-api checks it).
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static TASKGATE_PLUGIN_HEADER: $crate::ffi::abi::LibHeader =
                // SAFETY: `erased_root_module` returns the `PluginModRef` built by
                // `root_module`, erased by abi_stable's own loader function, which is
                // what `from_constructor::<PluginModRef>` requires.
                unsafe {
                    $crate::ffi::abi::LibHeader::from_constructor::<$crate::ffi::PluginModRef>(
                        erased_root_module,
                        $crate::ffi::abi::CheckTypeLayout::Yes,
                    )
                };
        }
    };
}

/// The abi_stable items the generated code names.
#[doc(hidden)]
pub mod abi {
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::std_types::{RResult, RStr, RString};
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_up() {
        let source = include_str!("ffi.rs");
        let name = abi_stable::library::ROOT_MODULE_LOADER_NAME;
        assert!(
            source.contains(&format!("#[export_name = \"{name}\"]")),
            "export_plugin! must export `{name}`"
        );
    }
}
