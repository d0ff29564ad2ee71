//! SIGINT and SIGTERM as a request to stop at the next safe point, never mid-write: long loops
//! (training steps, evaluation batches, the phases of `forge run`) call [`check`], which turns a
//! pending request into [`Error::Interrupted`]; every output is written atomically, so what is on
//! disk then is whole. A second signal exits at once.
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Installs the handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            eprintln!("forge: second interrupt, exiting now");
            std::process::exit(130);
        }
        eprintln!("forge: interrupt received; stopping at the next safe point (press again to exit now)");
    });
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails with [`Error::Interrupted`] if a stop was requested.
pub fn check() -> Result<()> {
    if requested() {
        return Err(Error::Interrupted(String::new()));
    }
    Ok(())
}
