//! Reading documents. A `.jsonl` file holds one `{"text": …}` object a line; any other file is one
//! plain-text document. Reading is lazy, so a protocol that needs only the first windows of a large
//! split reads only the first documents.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::{bad_input, Error, Result};

/// The documents of a data file, in file order.
pub struct Documents {
    path: PathBuf,
    source: Source,
}

enum Source {
    Jsonl { lines: BufReader<File>, line: usize },
    Text(Option<File>),
}

#[derive(serde::Deserialize)]
struct JsonlRecord {
    text: String,
}

impl Documents {
    /// Opens `path`; its format follows its extension (`.jsonl`, else plain text).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad_input!("data file {} not found", path.display()),
            _ => Error::io(path, e),
        })?;
        let source = if path.extension().is_some_and(|e| e == "jsonl") {
            Source::Jsonl { lines: BufReader::new(file), line: 0 }
        } else {
            Source::Text(Some(file))
        };
        Ok(Documents { path: path.to_path_buf(), source })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for Documents {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        let path = &self.path;
        match &mut self.source {
            Source::Text(file) => {
                let mut bytes = Vec::new();
                if let Err(e) = std::io::Read::read_to_end(&mut file.take()?, &mut bytes) {
                    return Some(Err(Error::io(path, e)));
                }
                Some(String::from_utf8(bytes).map_err(|e| {
                    bad_input!(
                        "{} is not UTF-8 text (invalid byte at offset {})",
                        path.display(),
                        e.utf8_error().valid_up_to()
                    )
                }))
            }
            Source::Jsonl { lines, line } => loop {
                let mut bytes = Vec::new();
                *line += 1;
                match lines.read_until(b'\n', &mut bytes) {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(e) => return Some(Err(Error::io(path, e))),
                }
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    return Some(Err(bad_input!("{}:{line}: the line is not valid UTF-8", path.display())));
                };
                if text.trim().is_empty() {
                    continue;
                }
                return Some(serde_json::from_str::<JsonlRecord>(text).map(|r| r.text).map_err(|e| {
                    bad_input!("{}:{line}: expected a JSON object with a string `text` ({e})", path.display())
                }));
            },
        }
    }
}
