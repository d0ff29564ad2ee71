//! Jobs: what each is (the forge command it runs), where it stands, and its record on disk. Every
//! change of status is written, atomically, to `<state-dir>/jobs/<job>.json` before anyone is told,
//! so a server killed at any point restarts knowing every job; one that was running then is
//! `interrupted`, and resubmitting it with `resume: true` continues it from its last finished
//! cycle, as `forge run --resume` does.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::protocol::{Refusal, Request};
use crate::outputs::write_json_atomic;
use crate::{Error, Result};

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
    /// It was running when the server stopped without finishing it; resumable.
    Interrupted,
}

impl Status {
    pub fn finished(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// One job, as kept on disk and reported by `job/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub job: String,
    pub method: String,
    pub status: Status,
    /// The forge command line it runs, after the binary.
    pub args: Vec<String>,
    /// Its output folder, where it has one.
    pub out: Option<String>,
    /// The memory the budget estimated for its largest phase, where it was estimated.
    pub estimate_bytes: Option<u64>,
    /// The device it ran on, once started.
    #[serde(default)]
    pub device: Option<String>,
    /// Seconds since the Unix epoch.
    pub submitted: f64,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    /// The last event sent for it (replayed to a new watcher).
    pub last_event: Option<Value>,
    /// `done`: the report (what the command prints with `--json`); `failed`: `{"class", "message"}`.
    pub result: Option<Value>,
}

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl Job {
    /// Writes the record into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_json_atomic(&dir.join(format!("{}.json", self.job)), self)
    }
}

/// Every job record in `dir`, oldest first; one left running by a server that stopped is marked
/// `interrupted` (and saved so); queued ones stay queued.
pub fn load_all(dir: &Path) -> Result<Vec<Job>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut jobs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut job: Job = serde_json::from_slice(&text)
            .map_err(|e| crate::bad_input!("{}: {e}; move it out of the state folder", path.display()))?;
        if job.status == Status::Running {
            job.status = Status::Interrupted;
            job.ended = Some(now());
            job.save(dir)?;
        }
        jobs.push(job);
    }
    jobs.sort_by(|a, b| a.submitted.total_cmp(&b.submitted).then_with(|| a.job.cmp(&b.job)));
    Ok(jobs)
}

/// The command line of a job request (`model/forge`, `model/eval` or `model/compact`), checked for
/// what it needs before it is queued; `recipes` is where a recipe given as text is written.
pub fn command_line(request: &Request, job: &str, recipes: &Path) -> std::result::Result<Command, Refusal> {
    match request.method.as_str() {
        "model/forge" => forge_command(request, job, recipes),
        "model/eval" => flags_command(request, "eval", &["model", "data"]),
        "model/compact" => flags_command(request, "prune", &["model", "pruner", "out"]),
        other => Err(Refusal::bad(&request.id, format!("`{other}` does not start a job"))),
    }
}

/// A job's command: its arguments, its output folder and, for a recipe, the recipe file with its
/// overrides (`KEY=VALUE`).
pub struct Command {
    pub args: Vec<String>,
    pub out: Option<String>,
    pub recipe: Option<(PathBuf, Vec<String>)>,
}

/// `forge run`: `recipe` (a path, or the recipe's TOML text), `out`, `set` (an object of recipe keys),
/// `resume`.
fn forge_command(request: &Request, job: &str, recipes: &Path) -> std::result::Result<Command, Refusal> {
    let (recipe, out) = (request.string("recipe")?, request.string("out")?);
    let path = if recipe.contains('\n') || recipe.contains('=') {
        let path = recipes.join(format!("{job}.recipe.toml"));
        std::fs::write(&path, &recipe).map_err(|e| Refusal {
            id: request.id.clone(),
            class: 1,
            message: format!("{}: {e}", path.display()),
        })?;
        path
    } else {
        let path = PathBuf::from(&recipe);
        if !path.is_file() {
            return Err(Refusal::bad(&request.id, format!("params.recipe: no recipe file {recipe}")));
        }
        path
    };
    let mut args = vec!["run".into(), "--json".into(), "--recipe".into(), path.display().to_string()];
    args.extend(["--out".into(), out.clone()]);
    let mut sets = Vec::new();
    match request.params.get("set") {
        None | Some(Value::Null) => {}
        Some(Value::Object(set)) => {
            for (key, value) in set {
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                sets.push(format!("{key}={value}"));
                args.extend(["--set".into(), format!("{key}={value}")]);
            }
        }
        Some(other) => {
            return Err(Refusal::bad(
                &request.id,
                format!("params.set must be an object of recipe keys, not {other}"),
            ))
        }
    }
    if request.flag("resume")? {
        args.push("--resume".into());
    }
    Ok(Command { args, out: Some(out), recipe: Some((path, sets)) })
}

/// Params that name inputs, which must exist when the job is submitted.
const INPUTS: [&str; 5] = ["model", "data", "adapter", "mask", "scores"];

/// A single-step command whose params are its flags: `{"max_windows": 8}` is `--max-windows 8`, and
/// `true` a bare flag; `required` must be present.
fn flags_command(
    request: &Request,
    command: &str,
    required: &[&str],
) -> std::result::Result<Command, Refusal> {
    for name in required {
        request.string(name)?;
    }
    for name in INPUTS {
        if let Some(path) = request.params.get(name).and_then(Value::as_str) {
            if !Path::new(path).exists() {
                return Err(Refusal::bad(&request.id, format!("params.{name}: {path} does not exist")));
            }
        }
    }
    let mut args = vec![command.to_string(), "--json".into()];
    for (key, value) in &request.params {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            Value::Bool(true) => args.push(flag),
            Value::Bool(false) | Value::Null => {}
            Value::String(s) => args.extend([flag, s.clone()]),
            Value::Number(n) => args.extend([flag, n.to_string()]),
            other => {
                return Err(Refusal::bad(
                    &request.id,
                    format!("params.{key} must be a string, number or true, not {other}"),
                ))
            }
        }
    }
    let out = request.params.get("out").and_then(Value::as_str).map(str::to_string);
    Ok(Command { args, out, recipe: None })
}
