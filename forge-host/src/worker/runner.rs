//! The runners: one per device, each running one job at a time from the one first-in-first-out
//! queue, each job as a forge process of its own (the same
//! binary, `FORGE_EVENTS=1`), so a job that fails, or runs out of memory, never takes the server with
//! it, and a job runs exactly as the same command typed by hand would (the same code, the same speed).
//! Cancelling sends it SIGINT, which forge honours at its next safe point with everything written
//! whole and the run resumable. The process is tied to the server: if the server dies, the kernel
//! kills it (PR_SET_PDEATHSIG), so no orphan writes into a folder a resumed job will use.
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::sync::Arc;

use serde_json::{json, Value};

use super::jobs::Status;
use super::state::Shared;
use crate::runtime::child;

/// Runs queued jobs on `device` (an index of the server's devices) until the server stops.
pub fn run(shared: &Arc<Shared>, device: usize) {
    loop {
        let job = {
            let mut state = shared.lock();
            loop {
                if state.stopping {
                    return;
                }
                if let Some(job) = state.queue.pop_front() {
                    break job;
                }
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        execute(shared, &job, device);
    }
}

/// Asks the running jobs to stop at their next safe point, and the runners to take no other.
pub fn stop(shared: &Shared) {
    let mut state = shared.lock();
    state.stopping = true;
    for (job, (pid, _)) in state.running.clone() {
        state.cancelling.insert(job);
        interrupt(pid);
    }
    shared.wake.notify_all();
}

/// SIGINT to a job's process.
pub fn interrupt(pid: u32) {
    child::signal(pid, libc::SIGINT);
}

fn spawn(shared: &Shared, args: &[String], device: usize) -> std::io::Result<Child> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .args(&shared.opts.job_flags)
        .args(["--device", &shared.opts.devices[device].0, "-q"])
        .args(args)
        .env("FORGE_EVENTS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    child::tie_to_parent(&mut command);
    command.spawn()
}

/// Runs one job to its end on `device`, relaying its events.
fn execute(shared: &Arc<Shared>, job: &str, device: usize) {
    let args = shared.lock().jobs.get(job).map(|j| j.args.clone()).unwrap_or_default();
    let mut child = match spawn(shared, &args, device) {
        Ok(child) => child,
        Err(e) => {
            let mut state = shared.lock();
            let fields = json!({"class": 1, "message": format!("could not start the job's process: {e}")});
            shared.transition(&mut state, job, Status::Failed, "error", fields);
            return;
        }
    };
    {
        let mut state = shared.lock();
        state.running.insert(job.to_string(), (child.id(), device));
        if let Some(record) = state.jobs.get_mut(job) {
            record.device = Some(shared.opts.devices[device].0.clone());
        }
        let fields = json!({"device": shared.opts.devices[device].0});
        shared.transition(&mut state, job, Status::Running, "started", fields);
    }
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let mut report = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&line) else { continue };
            match object.remove("event") {
                Some(Value::String(event)) => {
                    Shared::broadcast(&mut shared.lock(), job, &event, &Value::Object(object))
                }
                _ => report = Some(Value::Object(object)),
            }
        }
    }
    let status = child.wait();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    finish(shared, job, status, report, &stderr);
}

/// Records how the job ended and tells its watchers.
fn finish(
    shared: &Shared,
    job: &str,
    status: std::io::Result<std::process::ExitStatus>,
    report: Option<Value>,
    stderr: &str,
) {
    let mut state = shared.lock();
    state.running.remove(job);
    let cancelled = state.cancelling.remove(job);
    let out = state.jobs.get(job).and_then(|j| j.out.clone());
    let code = status.as_ref().ok().and_then(|s| s.code());
    let (status, event, fields) = match code {
        Some(0) => (Status::Done, "done", json!({"result": report})),
        Some(130) if cancelled || state.stopping => {
            let resume = "submit the same model/forge with resume: true to continue";
            (Status::Cancelled, "cancelled", json!({"out": out, "resume": resume}))
        }
        _ => {
            // forge prints its errors as `forge: ...` lines; those are the message the CLI gives.
            let message: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("forge: ")).collect();
            let message = match (message.is_empty(), &status) {
                (false, _) => message.join("\n"),
                (true, Ok(s)) if s.signal().is_some() => {
                    format!("the job's process was killed by signal {}", s.signal().unwrap_or(0))
                }
                _ => stderr.trim().to_string(),
            };
            let class = if code == Some(2) { 2 } else { 1 };
            (Status::Failed, "error", json!({"class": class, "message": message}))
        }
    };
    if let Some(record) = state.jobs.get_mut(job) {
        record.result =
            Some(if status == Status::Done { report.unwrap_or(Value::Null) } else { fields.clone() });
    }
    shared.transition(&mut state, job, status, event, fields);
}
