//! `forge serve`: the socket, the connections and the requests they carry. Each connection has its
//! own thread; a job's events go to every connection watching it (its submitter, and any that asked
//! `job/watch`), and a connection that goes away only stops receiving them.
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::jobs;
use super::protocol::{self, Refusal, MAX_LINE};
use super::state::{Conn, ServeOptions, Shared};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

/// Serves until SIGINT or SIGTERM: then the running jobs are cancelled at their next safe point, and
/// the socket removed.
pub fn serve(opts: ServeOptions, registry: Registry) -> Result<()> {
    let listener = bind(&opts.socket)?;
    let jobs = jobs::load_all(&opts.state_dir.join("jobs"))?;
    let socket = opts.socket.clone();
    let shared = Arc::new(Shared::new(opts, registry, jobs));
    let runners: Vec<_> = (0..shared.opts.devices.len())
        .map(|device| {
            let shared = shared.clone();
            std::thread::spawn(move || super::runner::run(&shared, device))
        })
        .collect();
    tracing::info!("forge serve: listening on {}", socket.display());
    listener.set_nonblocking(true).map_err(|e| Error::io(&socket, e))?;
    while !crate::runtime::interrupt::requested() {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || connection(&shared, stream));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => tracing::warn!("accept: {e}"),
        }
    }
    super::runner::stop(&shared);
    for runner in runners {
        let _ = runner.join();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Binds `path` owner-only: a stale socket (nothing answers) is replaced, a live one refused.
fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(bad_input!(
                "a forge server is already listening on {}; stop it, or give another --socket",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    // The socket is created under a umask that leaves it to its owner, so no other user can connect
    // between its creation and the chmod below.
    // SAFETY: umask only swaps the process's file-creation mask.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(previous) };
    let listener = bound.map_err(|e| Error::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| Error::io(path, e))?;
    Ok(listener)
}

/// Reads requests from one client until it goes away.
fn connection(shared: &Arc<Shared>, stream: UnixStream) {
    let Ok(reader) = stream.try_clone() else { return };
    let conn = Arc::new(Conn::new(stream));
    let mut reader = BufReader::new(reader);
    loop {
        let line = match read_line(&mut reader) {
            Ok(Some(Line::Text(line))) => line,
            Ok(Some(Line::TooLong)) => {
                let message = format!("a request line is limited to {MAX_LINE} bytes; this one was longer");
                conn.send(&Refusal::bad(&Value::Null, message).to_json());
                continue;
            }
            Ok(Some(Line::NotUtf8)) => {
                conn.send(&Refusal::bad(&Value::Null, "a request line must be UTF-8 JSON").to_json());
                continue;
            }
            Ok(None) | Err(_) => return,
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match protocol::parse(&line) {
            Ok(request) => super::methods::dispatch(shared, &conn, &request),
            Err(refusal) => Err(refusal),
        };
        match reply {
            Ok(Some(reply)) => conn.send(&reply),
            Ok(None) => {}
            Err(refusal) => conn.send(&refusal.to_json()),
        }
        if !conn.alive() {
            return;
        }
    }
}

enum Line {
    Text(String),
    TooLong,
    NotUtf8,
}

/// One line of at most [`MAX_LINE`] bytes; a longer one is read to its end and reported, never kept.
fn read_line(reader: &mut BufReader<UnixStream>) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let n = reader.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
        loop {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    reader.consume(i + 1);
                    break;
                }
                None => {
                    let len = chunk.len();
                    reader.consume(len);
                }
            }
        }
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(String::from_utf8(buf).map_or(Line::NotUtf8, Line::Text)))
}
