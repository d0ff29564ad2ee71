//! Atomic writes: a file appears complete under its name or not at all, so an interrupted or failed
//! run never leaves a half-written output that a later step (or user) would mistake for a good one.
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name beside `path` that is renamed onto it once complete.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes whatever `write` puts at the temporary path it is given, then renames it onto `path`.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary(path);
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes, under `dir`, the temporary files of writes a kill cut short: forge's own
/// (`.NAME.partial-PID`) and those of the safetensors writer it calls (`.tmpXXXXXX`, tempfile's
/// pattern). Neither is ever a valid output.
pub fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            remove_leftovers(&path);
        } else if name.contains(".partial-") || is_tempfile_name(&name) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `.tmp` and six alphanumerics, as the tempfile crate names its files.
fn is_tempfile_name(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|rest| rest.len() == 6 && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Refuses an output folder (`flag` names it) that is an existing file, or is one of the `inputs`
/// (forge never writes over what it reads).
pub fn check_out(out: &Path, inputs: &[&Path], flag: &str) -> Result<()> {
    if out.is_file() {
        return Err(crate::bad_input!("{flag} {} is an existing file; give a folder path", out.display()));
    }
    let absolute = |p: &Path| std::fs::canonicalize(p).ok();
    if let Some(o) = absolute(out) {
        for input in inputs {
            if absolute(input).as_ref() == Some(&o) {
                return Err(crate::bad_input!(
                    "{flag} {} is the input model folder; forge never writes over its input: give another folder",
                    out.display()
                ));
            }
        }
    }
    Ok(())
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json_atomic(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("forge's outputs are plain data");
    write_atomic(path, |tmp| std::fs::write(tmp, text + "\n").map_err(|e| Error::io(tmp, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_neither_the_file_nor_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, "half").unwrap();
            Err(crate::bad_input!("failed midway"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_json_atomic(&path, &serde_json::json!({"ok": true})).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
