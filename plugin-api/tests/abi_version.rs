//! The plugin API's version is honest: the layout of everything that crosses the boundary is
//! kept in `abi-layout.txt`, under the version it belongs to. A change of layout without a
//! new version fails here (abi_stable would refuse the new plugins on an old host only by
//! their layout, with a message that says nothing about which version to build against).
//!
//! After a deliberate change of the boundary: bump `version` in plugin-api/Cargo.toml (for
//! 0.x, the minor: 0.1.0 → 0.2.0), then `TASKGATE_BLESS_ABI=1 cargo test -p
//! taskgate-plugin-api --test abi_version` rewrites the file; commit both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use abi_stable::std_types::{RResult, RString};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;
use taskgate_plugin_api::ffi::{FfiValidation, PluginModRef};

/// Every layout reachable from the root module, each once, in a stable order. Source line
/// numbers are left out: moving a declaration does not change the ABI.
fn describe(layout: &'static TypeLayout, seen: &mut BTreeSet<String>, out: &mut String) {
    let name = layout.full_type().to_string();
    if !seen.insert(name) {
        return;
    }
    for line in layout.to_string().lines() {
        match line.trim_start().strip_prefix("line:") {
            Some(rest) => {
                let module = rest.find(" mod:").map_or("", |at| &rest[at + 1..]);
                let _ = writeln!(out, "{module}");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    // A prefix type (the root module) keeps its struct among the phantom fields.
    let fields = layout.get_fields().into_iter().flat_map(|f| f.iter());
    let phantom = layout.phantom_fields();
    {
        for field in fields.chain(phantom.iter()) {
            for function in field.function_range().iter() {
                let _ = writeln!(out, "{}: {function}", field.name());
                for param in function.param_type_layouts.iter() {
                    describe(param(), seen, out);
                }
            }
            describe(field.layout(), seen, out);
        }
    }
}

fn current() -> String {
    let mut out = format!("taskgate-plugin-api {}\n", taskgate_plugin_api::API_VERSION);
    let mut seen = BTreeSet::new();
    // Return types are not reachable from a function's layout: name them.
    for root in [
        <PluginModRef as StableAbi>::LAYOUT,
        <FfiValidation as StableAbi>::LAYOUT,
        <RResult<RString, RString> as StableAbi>::LAYOUT,
    ] {
        describe(root, &mut seen, &mut out);
    }
    out
}

#[test]
fn the_boundary_changes_only_with_the_version() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/abi-layout.txt");
    let now = current();
    if std::env::var_os("TASKGATE_BLESS_ABI").is_some() {
        std::fs::write(path, &now).unwrap();
        return;
    }
    let kept = std::fs::read_to_string(path).unwrap_or_default();
    let version_line = |s: &str| s.lines().next().unwrap_or_default().to_owned();
    if kept == now {
        return;
    }
    if version_line(&kept) == version_line(&now) {
        panic!(
            "the plugin ABI changed but taskgate-plugin-api is still {}: plugins built \
             before this change would be refused by layout, not by version. Bump `version` in \
             plugin-api/Cargo.toml (0.x: the minor), then run with TASKGATE_BLESS_ABI=1 and \
             commit abi-layout.txt.",
            taskgate_plugin_api::API_VERSION
        );
    }
    panic!(
        "taskgate-plugin-api is now {} but abi-layout.txt describes {}: run with \
         TASKGATE_BLESS_ABI=1 and commit abi-layout.txt.",
        taskgate_plugin_api::API_VERSION,
        version_line(&kept)
    );
}
