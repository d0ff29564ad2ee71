//! What the server's threads share: the options, the jobs (their records, the queue, who watches
//! each, which run where), the connections events go to, and admission by memory.
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{json, Value};

use super::jobs::{self, Job, Status};
use super::protocol::{self, Refusal, Request};
use crate::pipeline::{open_and_estimate, Recipe};
use crate::strategies::Registry;
use crate::Error;

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
    pub fn new(stream: UnixStream) -> Self {
        Conn { stream: Mutex::new(stream), alive: AtomicBool::new(true) }
    }

    /// Writes `value` as one line; a failed write marks the connection gone.
    pub fn send(&self, value: &Value) {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if writeln!(stream, "{value}").and_then(|()| stream.flush()).is_err() {
            self.alive.store(false, Ordering::SeqCst);
        }
    }

    pub fn alive(&self) -> bool {
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
    /// The shared state of a server starting with the `jobs` its state folder holds: queued ones are
    /// queued again, and new ids follow the highest.
    pub fn new(opts: ServeOptions, registry: Registry, jobs: Vec<Job>) -> Self {
        let mut state = State::default();
        for job in jobs {
            state.next = state.next.max(job.job.trim_start_matches("job-").parse::<u64>().unwrap_or(0));
            if job.status == Status::Queued {
                state.queue.push_back(job.job.clone());
            }
            state.jobs.insert(job.job.clone(), job);
        }
        Shared { state: Mutex::new(state), wake: Condvar::new(), opts, registry }
    }

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

    /// Sets `job`'s status (saved before anyone hears of it) and sends `event` with `fields`; a
    /// finished job's watchers are let go, so their connections close when their clients do.
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
        if status.finished() {
            state.watchers.remove(job);
        }
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
