//! Progress as data, for a program that drives forge (the worker of `forge serve`). With
//! `FORGE_EVENTS=1` in its environment, `forge run` prints on stdout, one JSON object a line, what a
//! person sees in the progress bars: each phase as it starts (`load`, `eval`, `score`, `prune`,
//! `train`, `merge`) with its cycle, each training step with the loss and speed, and each evaluation's
//! metrics, every line carrying `"event"`; the `--json` report (no `"event"` key) comes last. Without
//! the variable nothing is printed and nothing is kept.
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use serde_json::{json, Map, Value};

/// Where the run stands, repeated in every progress event.
#[derive(Default)]
struct Position {
    cycle: Option<usize>,
    phase: String,
    metric: Option<Value>,
    peak_memory_bytes: u64,
}

fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("FORGE_EVENTS").is_ok_and(|v| v == "1")) && !MUTED.get()
}

thread_local! {
    /// Set on the threads of data-parallel CPU ranks after the first: rank 0 alone reports.
    static MUTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This thread's events are not printed (a CPU rank other than rank 0).
pub fn mute_this_thread() {
    MUTED.set(true);
}

fn position() -> &'static Mutex<Position> {
    static POSITION: OnceLock<Mutex<Position>> = OnceLock::new();
    POSITION.get_or_init(Mutex::default)
}

/// Prints `fields` as one event line of kind `event`.
fn emit(event: &str, mut fields: Map<String, Value>) {
    fields.insert("event".into(), event.into());
    let mut out = std::io::stdout().lock();
    // A reader that went away (the worker was killed) must not stop the run here: the run's own
    // interrupt handling decides that.
    let _ = writeln!(out, "{}", Value::Object(fields));
    let _ = out.flush();
}

/// A progress event at the current position, with `extra` fields.
fn progress(extra: Value) {
    let mut fields = {
        let p = position().lock().unwrap_or_else(|e| e.into_inner());
        let mut fields = Map::new();
        fields.insert("phase".into(), p.phase.clone().into());
        fields.insert("cycle".into(), p.cycle.map_or(Value::Null, Value::from));
        fields.insert("metric".into(), p.metric.clone().unwrap_or(Value::Null));
        fields.insert("peak_memory_bytes".into(), p.peak_memory_bytes.into());
        fields
    };
    if let Value::Object(extra) = extra {
        fields.extend(extra);
    }
    emit("progress", fields);
}

/// The run enters cycle `cycle` (None: after the cycles).
pub fn cycle(cycle: Option<usize>) {
    if enabled() {
        position().lock().unwrap_or_else(|e| e.into_inner()).cycle = cycle;
    }
}

/// The run enters `phase` of the current cycle.
pub fn phase(phase: &str) {
    if enabled() {
        position().lock().unwrap_or_else(|e| e.into_inner()).phase = phase.to_string();
        progress(json!({}));
    }
}

/// A phase ended with `bytes` as its peak memory.
pub fn peak(bytes: u64) {
    if enabled() {
        let mut p = position().lock().unwrap_or_else(|e| e.into_inner());
        p.peak_memory_bytes = p.peak_memory_bytes.max(bytes);
    }
}

/// Training step `step` of `steps` ended with `loss`, at `tokens_per_s` so far.
pub fn step(step: usize, steps: usize, loss: f64, tokens_per_s: f64) {
    if enabled() {
        progress(json!({"step": step, "steps": steps, "loss": loss, "tokens_per_s": tokens_per_s}));
    }
}

/// An evaluation produced `metrics`; the one named `headline` (the run's guarded metric) is the latest
/// metric of later progress events.
pub fn metrics(metrics: &forge_api::Metrics, headline: &str) {
    if !enabled() {
        return;
    }
    let cycle = {
        let mut p = position().lock().unwrap_or_else(|e| e.into_inner());
        p.metric = metrics.get(headline).map(|v| json!({ headline: v }));
        p.cycle
    };
    let mut fields = Map::new();
    fields.insert("cycle".into(), cycle.map_or(Value::Null, Value::from));
    fields.insert("metrics".into(), serde_json::to_value(metrics).unwrap_or(Value::Null));
    emit("metric", fields);
}

/// A warning a person would see in the log.
pub fn warning(message: &str) {
    if enabled() {
        let mut fields = Map::new();
        fields.insert("message".into(), message.into());
        emit("warning", fields);
    }
}
