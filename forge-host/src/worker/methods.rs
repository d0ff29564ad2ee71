//! The methods a client may call (docs/worker.md has each with an example).
use std::sync::Arc;

use serde_json::{json, Value};

use super::jobs::{self, Job, Status};
use super::protocol::{self, Refusal, Request};
use super::state::{admit, Conn, Shared};

const METHODS: &str =
    "model/forge, model/eval, model/compact, job/status, job/list, job/watch, job/cancel, server/info";

/// Serves `request`: the reply to send, or None when it was sent already (with the events after it).
pub fn dispatch(shared: &Arc<Shared>, conn: &Arc<Conn>, request: &Request) -> Result<Option<Value>, Refusal> {
    match request.method.as_str() {
        "model/forge" | "model/eval" | "model/compact" => submit(shared, conn, request),
        "job/status" => {
            let state = shared.lock();
            let job = known(&state.jobs, request)?;
            Ok(Some(protocol::reply(&request.id, serde_json::to_value(job).expect("records serialise"))))
        }
        "job/list" => {
            let state = shared.lock();
            let list: Vec<Value> = state
                .jobs
                .values()
                .map(|j| json!({"job": j.job, "method": j.method, "status": j.status, "out": j.out, "submitted": j.submitted}))
                .collect();
            Ok(Some(protocol::reply(&request.id, json!({"jobs": list}))))
        }
        "job/watch" => watch(shared, conn, request),
        "job/cancel" => cancel(shared, request),
        "server/info" => Ok(Some(protocol::reply(&request.id, info(shared)))),
        other => {
            Err(Refusal::bad(&request.id, format!("unknown method `{other}`; the methods are {METHODS}")))
        }
    }
}

/// The job `params.job` names.
fn known<'a>(
    jobs: &'a std::collections::BTreeMap<String, Job>,
    request: &Request,
) -> Result<&'a Job, Refusal> {
    let job = request.string("job")?;
    jobs.get(&job)
        .ok_or_else(|| Refusal::bad(&request.id, format!("no job `{job}`; job/list shows the jobs")))
}

/// Queues a job after checking its inputs and, for a recipe, its memory; the submitter watches it.
fn submit(shared: &Arc<Shared>, conn: &Arc<Conn>, request: &Request) -> Result<Option<Value>, Refusal> {
    let job = shared.next_job(request)?;
    let command = jobs::command_line(request, &job, &shared.jobs_dir())?;
    let (estimate, waits) = match &command.recipe {
        Some((path, sets)) => {
            let (bytes, waits) = admit(shared, request, path, sets)?;
            (Some(bytes), waits)
        }
        None => (None, None),
    };
    let record = Job {
        job: job.clone(),
        method: request.method.clone(),
        status: Status::Queued,
        args: command.args,
        out: command.out,
        estimate_bytes: estimate,
        submitted: jobs::now(),
        device: None,
        started: None,
        ended: None,
        last_event: None,
        result: None,
    };
    let mut state = shared.lock();
    record.save(&shared.jobs_dir()).map_err(|e| Refusal {
        id: request.id.clone(),
        class: 1,
        message: e.to_string(),
    })?;
    state.jobs.insert(job.clone(), record);
    state.queue.push_back(job.clone());
    state.watchers.entry(job.clone()).or_default().push((conn.clone(), request.id.clone()));
    // The reply goes first, under the lock, so no event of the job can overtake it.
    let queued = json!({"job": job, "status": "queued", "position": state.queue.len(), "estimate_bytes": estimate, "admission": waits});
    conn.send(&protocol::reply(&request.id, queued.clone()));
    shared.transition(&mut state, &job, Status::Queued, "queued", queued);
    shared.wake.notify_all();
    Ok(None)
}

/// Subscribes the connection to a job's events from now on, the last one replayed after the reply.
fn watch(shared: &Arc<Shared>, conn: &Arc<Conn>, request: &Request) -> Result<Option<Value>, Refusal> {
    let mut state = shared.lock();
    let job = known(&state.jobs, request)?;
    let (name, status, last) = (job.job.clone(), job.status, job.last_event.clone());
    conn.send(&protocol::reply(&request.id, json!({"job": name, "status": status})));
    if let Some(last) = last {
        let event = last["event"].as_str().unwrap_or("progress");
        conn.send(&protocol::event(&request.id, &name, event, &last["fields"]));
    }
    if !status.finished() {
        state.watchers.entry(name).or_default().push((conn.clone(), request.id.clone()));
    }
    Ok(None)
}

/// Cancels a queued job at once, and a running one at its next safe point (it then ends `cancelled`,
/// resumable with `resume: true`).
fn cancel(shared: &Arc<Shared>, request: &Request) -> Result<Option<Value>, Refusal> {
    let mut state = shared.lock();
    let job = known(&state.jobs, request)?;
    let (name, status) = (job.job.clone(), job.status);
    let answer = match status {
        Status::Queued => {
            state.queue.retain(|j| j != &name);
            shared.transition(&mut state, &name, Status::Cancelled, "cancelled", json!({}));
            "cancelled"
        }
        Status::Running => {
            state.cancelling.insert(name.clone());
            if let Some(&(pid, _)) = state.running.get(&name) {
                super::runner::interrupt(pid);
            }
            "cancelling"
        }
        ended => {
            let ended = serde_json::to_value(ended).expect("statuses serialise");
            return Err(Refusal::bad(&request.id, format!("job `{name}` has already ended ({ended})")));
        }
    };
    Ok(Some(protocol::reply(&request.id, json!({"job": name, "status": answer}))))
}

fn info(shared: &Shared) -> Value {
    let state = shared.lock();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "devices": shared.opts.devices.iter().map(|(name, device)| json!({
            "device": name,
            "free_memory": crate::runtime::free_device_memory(device),
            "running": state.running.iter().find(|(_, &(_, d))| shared.opts.devices[d].0 == *name).map(|(job, _)| job),
        })).collect::<Vec<_>>(),
        "memory_budget": shared.opts.budget,
        "queue": state.queue,
    })
}
