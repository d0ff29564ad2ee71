//! `forge serve`: forge as a long-lived worker that another program drives over a Unix socket
//! (docs/worker.md): it queues `model/forge`, `model/eval` and `model/compact` jobs, admits them by the
//! memory budget, runs one at a time with progress as events, cancels them at a safe point, and keeps
//! every job's record in a state folder so a restart loses nothing. `forge submit`, `forge jobs` and
//! `forge cancel` are its clients.
//!
//! [`protocol`] is the wire format, [`server`] the socket and connections, [`state`] what their
//! threads share, [`methods`] what clients may call, [`jobs`] the records and command lines, [`runner`] the queue's executor, and [`client`]
//! the command-line clients.
pub mod client;
mod jobs;
mod methods;
mod protocol;
mod runner;
mod server;
mod state;

pub use server::serve;
pub use state::ServeOptions;
