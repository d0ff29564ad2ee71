//! `forge serve`: the socket, the connections and the requests they carry. Each connection has its
//! own thread; a job's events go to every connection watching it (its submitter, and any that asked
//! `job/watch`), and a connection that goes away only stops receiving them.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{json, Value};

use super::jobs::{self, Job, Status};
use super::protocol::{self, Refusal, Request, MAX_LINE};
use crate::pipeline::{open_and_estimate, Recipe};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

/// How the server was started.
pub struct ServeOptions {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Global flags every job's forge command gets (dtype, plugins, memory budget).
    pub job_flags: Vec<String>,
    /// The devices, each with one job at a time: as written (`cuda:1`) and opened.
    pub devices: Vec<(String, candle_core::Device)>,
    pub dtype: candle_core::DType,
    pub budget: Option<u64>,
}

/// One client connection: replies and events are written whole, a line at a time.
pub struct Conn {
    stream: Mutex<UnixStream>,
    alive: AtomicBool,
}

impl Conn {
    /// Writes `value` as one line; a failed write marks the connection gone.
    pub fn send(&self, value: &Value) {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if writeln!(stream, "{value}").and_then(|()| stream.flush()).is_err() {
            self.alive.store(false, Ordering::SeqCst);
        }
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

/// The jobs and who watches them.
#[derive(Default)]
pub struct State {
    pub jobs: BTreeMap<String, Job>,
    pub queue: VecDeque<String>,
    pub watchers: HashMap<String, Vec<(Arc<Conn>, Value)>>,
    /// The running jobs: each one's process id and device (an index of the options' devices).
    pub running: BTreeMap<String, (u32, usize)>,
    pub cancelling: HashSet<String>,
    pub stopping: bool,
    next: u64,
}

/// What every thread shares.
pub struct Shared {
    pub state: Mutex<State>,
    pub wake: Condvar,
    pub opts: ServeOptions,
    registry: Registry,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh job id, unless the server is stopping.
    pub fn next_job(&self, request: &Request) -> std::result::Result<String, Refusal> {
        let mut state = self.lock();
        if state.stopping {
            return Err(Refusal::bad(&request.id, "the server is stopping; submit to the next one"));
        }
        state.next += 1;
        Ok(format!("job-{}", state.next))
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.opts.state_dir.join("jobs")
    }

    /// Sets `job`'s status (saved before anyone hears of it) and sends `event` with `fields`.
    pub fn transition(&self, state: &mut State, job: &str, status: Status, event: &str, fields: Value) {
        let now = jobs::now();
        if let Some(record) = state.jobs.get_mut(job) {
            record.status = status;
            match status {
                Status::Running => record.started = Some(now),
                s if s.finished() => record.ended = Some(now),
                _ => {}
            }
            record.last_event = Some(json!({"event": event, "fields": fields}));
            if let Err(e) = record.save(&self.jobs_dir()) {
                tracing::error!("{e}");
            }
        }
        Self::broadcast(state, job, event, &fields);
    }

    /// Sends an event of `job` to its watchers, dropping those gone.
    pub fn broadcast(state: &mut State, job: &str, event: &str, fields: &Value) {
        if let Some(record) = state.jobs.get_mut(job) {
            record.last_event = Some(json!({"event": event, "fields": fields}));
        }
        if let Some(list) = state.watchers.get_mut(job) {
            list.retain(|(conn, id)| {
                conn.send(&protocol::event(id, job, event, fields));
                conn.alive()
            });
        }
    }
}

/// Serves until SIGINT or SIGTERM: then the running jobs are cancelled at their next safe point, and
/// the socket removed.
pub fn serve(opts: ServeOptions, registry: Registry) -> Result<()> {
    let listener = bind(&opts.socket)?;
    let jobs_dir = opts.state_dir.join("jobs");
    let mut state = State::default();
    for job in jobs::load_all(&jobs_dir)? {
        state.next = state.next.max(job.job.trim_start_matches("job-").parse::<u64>().unwrap_or(0));
        if job.status == Status::Queued {
            state.queue.push_back(job.job.clone());
        }
        state.jobs.insert(job.job.clone(), job);
    }
    let socket = opts.socket.clone();
    let shared = Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new(), opts, registry });
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
    let conn = Arc::new(Conn { stream: Mutex::new(stream), alive: AtomicBool::new(true) });
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

/// The memory the recipe of a `model/forge` job needs at its largest phase, and whether it must
/// wait. With `--memory-budget` a job over it is refused with the numbers. On GPUs without one, a job
/// over every device's free memory waits in the queue when it would fit on a device once the job
/// running there has freed its estimate, and is refused otherwise. On the CPU without a budget every
/// job is admitted.
pub fn admit(
    shared: &Shared,
    request: &Request,
    recipe: &Path,
    sets: &[String],
) -> std::result::Result<(u64, Option<String>), Refusal> {
    let refuse = |e: Error| Refusal { id: request.id.clone(), class: e.exit_code(), message: e.to_string() };
    let recipe = Recipe::load(recipe, sets).map_err(refuse)?;
    let device = &shared.opts.devices[0].1;
    let (_, estimates) =
        open_and_estimate(&recipe, &shared.registry, (shared.opts.dtype, device)).map_err(refuse)?;
    let largest = estimates.iter().max_by_key(|e| e.total()).expect("every recipe has phases").clone();
    let check = |limit: u64| crate::pipeline::check_budget(std::slice::from_ref(&largest), Some(limit));
    if let Some(budget) = shared.opts.budget {
        check(budget).map_err(refuse)?;
        return Ok((largest.total(), None));
    }
    let free: Vec<Option<u64>> =
        shared.opts.devices.iter().map(|(_, d)| crate::runtime::free_device_memory(d)).collect();
    let Some(now) = free.iter().flatten().copied().max() else {
        return Ok((largest.total(), None));
    };
    if check(now).is_ok() {
        return Ok((largest.total(), None));
    }
    let state = shared.lock();
    let held = |device: usize| -> u64 {
        let running = state.running.iter().find(|(_, &(_, d))| d == device);
        running.and_then(|(job, _)| state.jobs.get(job)).and_then(|j| j.estimate_bytes).unwrap_or(0)
    };
    let later = free.iter().enumerate().filter_map(|(d, f)| f.map(|f| f + held(d))).max().unwrap_or(now);
    check(later).map_err(refuse)?;
    let why = format!(
        "waits: needs an estimated {} and {} is free while the running jobs hold their share",
        crate::pipeline::human(largest.total()),
        crate::pipeline::human(now)
    );
    Ok((largest.total(), Some(why)))
}
