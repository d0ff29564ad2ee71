//! Loading plugin libraries: `--plugin PATH` and every library in the folders of `FORGE_PLUGIN_PATH`.
//! The ABI and its checks live in `forge_api::plugin`; this module finds, opens and keeps libraries.
use std::path::{Path, PathBuf};

use forge_api::plugin::abi::{ForgeEntry, ENTRY_SYMBOL};
use forge_api::plugin::{read_plugin, PluginContents};

use crate::{bad_input, Result};

/// The environment variable naming folders of plugins to load, separated like `PATH`.
pub const PLUGIN_PATH_VAR: &str = "FORGE_PLUGIN_PATH";

fn is_library(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll"))
}

/// The libraries to load: those in `FORGE_PLUGIN_PATH`'s folders (sorted by name), then `explicit`;
/// each once.
pub fn plugin_paths(explicit: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    if let Some(dirs) = std::env::var_os(PLUGIN_PATH_VAR) {
        for dir in std::env::split_paths(&dirs).filter(|d| !d.as_os_str().is_empty()) {
            let entries = std::fs::read_dir(&dir).map_err(|e| {
                bad_input!(
                    "{PLUGIN_PATH_VAR} names {}, which cannot be read as a folder of plugins: {e}",
                    dir.display()
                )
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_library(p))
                .collect();
            found.sort();
            paths.extend(found);
        }
    }
    paths.extend(explicit.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())));
    Ok(paths)
}

/// Opens a plugin library and reads its table. The library stays loaded for the life of the process:
/// its strategies' code and strings must outlive every use.
pub fn load(path: &Path) -> Result<PluginContents> {
    if !path.is_file() {
        return Err(bad_input!(
            "plugin {} not found: --plugin takes the path of a built plugin library \
             (e.g. target/release/libforge_entropy_scorer.so)",
            path.display()
        ));
    }
    // SAFETY: loading runs the library's initialisers; a forge plugin has none beyond Rust's or C's own.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| bad_input!("cannot load plugin {}: {e}", path.display()))?;
    // SAFETY: the symbol's type is the ABI's entry type (checked by name only, as C allows).
    let entry = unsafe { library.get::<ForgeEntry>(ENTRY_SYMBOL.as_bytes()) }.map_err(|_| {
        bad_input!(
            "{} is not a forge plugin: it exports no `{ENTRY_SYMBOL}` function \
             (a Rust plugin calls forge_api::export_plugin!, a C plugin defines it as declared in forge_plugin.h)",
            path.display()
        )
    })?;
    // SAFETY: the entry returns a table valid for the life of the library, which is never unloaded.
    let contents = unsafe { read_plugin(entry(), &path.display().to_string()) }
        .map_err(|e| bad_input!("plugin {}: {e}", path.display()))?;
    std::mem::forget(library);
    Ok(contents)
}
