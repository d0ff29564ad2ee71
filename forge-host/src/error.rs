//! forge's error type. The split that matters to users and scripts is the exit status: bad input
//! (a file, option or name they can fix) exits 2, everything else exits 1. So errors are typed by that
//! cause, and every bad-input message names the culprit and, where one exists, the fix.
use std::path::{Path, PathBuf};

/// forge's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the host library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input the user can fix: a file, an option, a name. The message says what and how.
    #[error("{0}")]
    BadInput(String),
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A strategy failed for a reason other than its input.
    #[error("{0}")]
    Strategy(String),
    /// A tensor operation failed: a bug or an exhausted device, not the user's input.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// SIGINT or SIGTERM stopped the work at a safe point; the message says how to go on.
    #[error("interrupted{0}")]
    Interrupted(String),
}

impl Error {
    /// Builds a bad-input error from a message that names the culprit.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Error::BadInput(message.into())
    }

    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }

    /// What to do about an error whose message alone does not say: a device out of memory (candle
    /// reports the driver's code, not a way out).
    pub fn hint(&self) -> Option<&'static str> {
        let Error::Tensor(e) = self else { return None };
        let text = e.to_string();
        (text.contains("OUT_OF_MEMORY") || text.contains("out of memory")).then_some(
            "the device ran out of memory: lower --batch-size or --seq-len, train with --grad-checkpoint, \
             or give --memory-budget so forge checks its estimate before it starts",
        )
    }

    /// The process exit status this error maps to (see the CLI contract).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) | Error::Io { .. } => 2,
            Error::Tensor(_) | Error::Strategy(_) => 1,
            // As a shell reports a process ended by SIGINT.
            Error::Interrupted(_) => 130,
        }
    }
}

/// Builds an [`Error::BadInput`] from a format string.
#[macro_export]
macro_rules! bad_input {
    ($($arg:tt)*) => { $crate::Error::BadInput(format!($($arg)*)) };
}

impl From<forge_api::StrategyError> for Error {
    fn from(e: forge_api::StrategyError) -> Self {
        match e {
            forge_api::StrategyError::BadInput(m) => Error::BadInput(m),
            other => Error::Strategy(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_out_of_memory_comes_with_what_to_do() {
        let oom = Error::Tensor(candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        ));
        assert!(oom.hint().is_some_and(|h| h.contains("--grad-checkpoint")));
        assert!(Error::Tensor(candle_core::Error::Msg("shape mismatch".into())).hint().is_none());
        assert!(Error::bad_input("out of memory").hint().is_none(), "bad input says its own fix");
    }
}
