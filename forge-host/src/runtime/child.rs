//! forge processes that forge starts (a worker's jobs, data-parallel ranks): tied to their parent, so
//! that none outlives it and writes into a folder a resumed run will use, and signalled by pid.
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The kernel kills the child if this process dies, whatever way it dies.
pub fn tie_to_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` (libc's number) to a child this process started and has not reaped.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: kill only sends a signal.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}
