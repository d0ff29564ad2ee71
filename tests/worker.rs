//! `forge serve` through the real binary: clients on its socket, jobs of the bundled model's short
//! recipe, cancel and resume, a killed server restarted, admission by the budget, hostile input and
//! the socket's permissions.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A server in its own folder, killed when dropped.
struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let socket = dir.join("forge.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(["serve", "-q", "--socket", socket.to_str().unwrap(), "--state-dir"])
            .arg(dir.join("state"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "the server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, socket }
    }

    fn client(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        Client { reader: BufReader::new(stream.try_clone().unwrap()), stream }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn send(&mut self, request: &Value) {
        writeln!(self.stream, "{request}").unwrap();
    }

    fn receive(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).unwrap() > 0, "the server closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(&json!({"id": id, "method": method, "params": params}));
        self.receive()
    }

    /// Events until one of `ends`; returns them all.
    fn events_until(&mut self, ends: &[&str]) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let event = self.receive();
            let end = ends.contains(&event["event"].as_str().unwrap_or(""));
            events.push(event);
            if end {
                return events;
            }
        }
    }
}

/// The short recipe's overrides: one cycle, six training steps.
fn small_set() -> Value {
    json!({"train.steps": "6", "data.eval_windows": "2", "score.calib_windows": "2", "train.seq_len": "64",
           "score.calib_seq_len": "64", "data.eval_seq_len": "64", "prune.cycles": "1",
           "guard.max_increase": "10.0", "guard.max_increase_over_baseline": "10.0"})
}

fn recipe() -> String {
    root().join("examples/code.toml").to_str().unwrap().to_string()
}

fn forge_params(out: &Path, resume: bool) -> Value {
    json!({"recipe": recipe(), "out": out, "set": small_set(), "resume": resume})
}

/// The final model of the same job run by `forge run` without interruption.
fn uninterrupted_model() -> &'static Vec<u8> {
    static MODEL: OnceLock<Vec<u8>> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut args = vec!["run".to_string(), "-q".into(), "--json".into(), "--recipe".into(), recipe()];
        args.extend(["--out".into(), out.to_str().unwrap().into()]);
        for (k, v) in small_set().as_object().unwrap() {
            args.extend(["--set".into(), format!("{k}={}", v.as_str().unwrap())]);
        }
        forge_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::read(out.join("model/model.safetensors")).unwrap()
    })
}

fn no_temporary_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().to_string());
        assert!(
            !name.contains(".partial-") && !name.starts_with(".tmp"),
            "temporary file {}",
            path.display()
        );
        if path.is_dir() {
            no_temporary_files(&path);
        }
    }
}

/// Resubmits the stopped job in `out` with `resume: true`: it finishes, leaves no temporary file, and
/// its model is byte for byte an uninterrupted run's.
fn resumes_to_the_uninterrupted_model(client: &mut Client, out: &Path) {
    client.call(50, "model/forge", forge_params(out, true));
    let events = client.events_until(&["done", "error", "cancelled"]);
    assert_eq!(events.last().unwrap()["event"], "done", "{events:?}");
    no_temporary_files(out);
    let resumed = std::fs::read(out.join("model/model.safetensors")).unwrap();
    assert!(&resumed == uninterrupted_model(), "the resumed job's model differs from an uninterrupted run's");
}

/// A server in `dir` running one `model/forge` job into `out`, past its first training step (where
/// a stop has something to save); the client that submitted it, and the job's id.
fn a_job_in_training(dir: &Path, out: &Path) -> (Server, Client, String) {
    let server = Server::start(dir, &[]);
    let mut client = server.client();
    let reply = client.call(1, "model/forge", forge_params(out, false));
    let job = reply["result"]["job"].as_str().unwrap_or_else(|| panic!("{reply}")).to_string();
    until_training(&mut client);
    (server, client, job)
}

/// Waits for the job's first training step.
fn until_training(client: &mut Client) {
    loop {
        let event = client.receive();
        assert_ne!(event["event"], "done", "the job ended before it could be stopped: {event}");
        if event["event"] == "progress" && event.get("step").is_some() {
            return;
        }
    }
}

#[test]
fn two_clients_see_their_own_jobs_run_one_after_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let clients: Vec<_> = (0..2)
        .map(|i| {
            let (mut client, out) = (server.client(), dir.path().join(format!("out{i}")));
            std::thread::spawn(move || {
                let reply = client.call(i, "model/forge", forge_params(&out, false));
                let job = reply["result"]["job"].as_str().unwrap().to_string();
                let events = client.events_until(&["done", "error"]);
                (job, events)
            })
        })
        .collect();
    let results: Vec<(String, Vec<Value>)> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    for (job, events) in &results {
        let kinds: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds.first(), Some(&"queued"), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"done"), "{events:?}");
        for kind in ["started", "progress", "metric"] {
            assert!(kinds.contains(&kind), "no {kind} event: {kinds:?}");
        }
        assert!(events.iter().all(|e| e["job"] == job.as_str()), "another job's event reached this client");
        assert!(events
            .iter()
            .any(|e| e.get("step").is_some() && e.get("loss").is_some() && e.get("tokens_per_s").is_some()));
    }
    let mut client = server.client();
    let list = client.call(9, "job/list", json!({}));
    let jobs = list["result"]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{list}");
    assert!(jobs.iter().all(|j| j["status"] == "done"), "{list}");
    let [first, second] = run_times(&mut client);
    assert!(second.0 >= first.1, "the jobs overlapped: (started, ended) {first:?} {second:?}");
}

/// When job-1 and job-2 ran, `(started, ended)` each, the first started first.
fn run_times(client: &mut Client) -> [(f64, f64); 2] {
    let mut times = ["job-1", "job-2"].map(|job| {
        let record = client.call(10, "job/status", json!({"job": job}))["result"].clone();
        assert_eq!(record["device"], "cpu", "{}", record["device"]);
        (record["started"].as_f64().unwrap(), record["ended"].as_f64().unwrap())
    });
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times
}

/// `--devices cpu,cpu` stands in for two GPUs: two jobs run at once, one on each.
#[test]
fn two_devices_run_two_jobs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--devices", "cpu,cpu"]);
    let mut client = server.client();
    for i in 0..2 {
        client.call(i, "model/forge", forge_params(&dir.path().join(format!("out{i}")), false));
    }
    let mut done = 0;
    while done < 2 {
        done += usize::from(client.receive()["event"] == "done");
    }
    let [first, second] = run_times(&mut client);
    assert!(second.0 < first.1, "the second job waited for the first: {first:?} {second:?}");
    let err = forge_refuses(&["serve", "--socket", "/tmp/unused.sock", "--devices", "cuda:0,cuda:0"]);
    assert!(err.contains("names cuda:0 twice"), "{err}");
}

#[test]
fn a_cancelled_job_stops_cleanly_and_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (server, mut client, job) = a_job_in_training(dir.path(), &out);
    let asked = Instant::now();
    let mut other = server.client();
    let reply = other.call(2, "job/cancel", json!({"job": job}));
    assert_eq!(reply["result"]["status"], "cancelling", "{reply}");
    let events = client.events_until(&["cancelled", "done", "error"]);
    assert_eq!(events.last().unwrap()["event"], "cancelled", "{events:?}");
    assert!(asked.elapsed() < Duration::from_secs(10), "cancel took {:?}", asked.elapsed());
    no_temporary_files(&out);
    assert!(!out.join("report.json").exists(), "the cancel came too late");

    resumes_to_the_uninterrupted_model(&mut server.client(), &out);
}

#[test]
fn a_killed_server_restarts_with_its_job_interrupted_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    {
        let (mut server, _client, _) = a_job_in_training(dir.path(), &out);
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
    }
    let server = Server::start(dir.path(), &[]);
    let mut client = server.client();
    let status = client.call(1, "job/status", json!({"job": "job-1"}));
    assert_eq!(status["result"]["status"], "interrupted", "{status}");
    resumes_to_the_uninterrupted_model(&mut client, &out);
}

#[test]
fn sigterm_cancels_the_running_job_at_a_safe_point_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (mut server, mut client, _) = a_job_in_training(dir.path(), &out);
    Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    let events = client.events_until(&["cancelled", "done", "error"]);
    assert_eq!(events.last().unwrap()["event"], "cancelled", "{events:?}");
    assert!(server.child.wait().unwrap().success(), "the server did not exit cleanly");
    assert!(!server.socket.exists(), "the socket was left behind");
    no_temporary_files(&out);
    assert!(out.join("cycles/1/train-state").is_dir(), "the stopped training kept no state to resume from");
}

#[test]
fn a_job_over_the_memory_budget_is_refused_with_its_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--memory-budget", "1MiB"]);
    let mut client = server.client();
    let reply = client.call(1, "model/forge", forge_params(&dir.path().join("out"), false));
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(reply["error"]["class"], 2, "{reply}");
    assert!(
        message.contains("needs an estimated") && message.contains("--memory-budget is 1 MiB"),
        "{message}"
    );
    let list = client.call(2, "job/list", json!({}));
    assert_eq!(list["result"]["jobs"], json!([]), "a refused job was queued: {list}");
}

/// 100 hostile requests, each answered by one error reply, on one connection that stays usable.
#[test]
fn hostile_input_gets_an_error_each_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let recipe = recipe();
    for i in 0..10 {
        lines.push(format!("garbage {i}").into_bytes());
        lines.push(format!("{{\"id\": {i}, \"method\": \"model/forge\"").into_bytes()); // truncated
        lines.push(format!("[{i}, 2, 3]").into_bytes());
        lines.push(json!({"id": i, "method": format!("no/such/{i}")}).to_string().into_bytes());
        lines.push(json!({"id": i, "method": i}).to_string().into_bytes());
        lines.push(
            json!({"id": i, "method": "job/cancel", "params": {"job": format!("job-{}", 100 + i)}})
                .to_string()
                .into_bytes(),
        );
        lines.push(
            json!({"id": i, "method": "model/forge", "params": {"recipe": i, "out": "x"}})
                .to_string()
                .into_bytes(),
        );
        lines.push(json!({"id": i, "method": "model/forge", "params": {"recipe": format!("/no/such/{i}.toml"), "out": "x"}}).to_string().into_bytes());
        lines.push(json!({"id": i, "method": "model/eval", "params": {"model": recipe, "data": format!("/missing/{i}")}}).to_string().into_bytes());
        lines.push(match i % 3 {
            0 => vec![b'{'; (1 << 20) + 10],   // over the line limit
            1 => vec![0xff, 0xfe, b'{', b'}'], // not UTF-8
            _ => json!({"id": i, "method": "job/status", "params": "job-1"}).to_string().into_bytes(),
        });
    }
    assert_eq!(lines.len(), 100);
    let mut client = server.client();
    for line in &lines {
        client.stream.write_all(line).unwrap();
        client.stream.write_all(b"\n").unwrap();
        let reply = client.receive();
        assert!(reply["error"]["message"].is_string() && reply.get("result").is_none(), "{reply}");
    }
    let info = client.call(1, "server/info", json!({}));
    assert_eq!(info["result"]["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(client.call(2, "job/list", json!({}))["result"]["jobs"], json!([]));
}

#[test]
fn the_socket_is_owner_only_and_a_live_server_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Server::start(dir.path(), &[]);
    let mode = std::fs::metadata(&first.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let err = forge_refuses(&["serve", "--socket", first.socket.to_str().unwrap()]);
    assert!(err.contains("already listening"), "{err}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(first.socket.exists(), "a killed server leaves its socket behind");
    let second = Server::start(dir.path(), &[]);
    let info = second.client().call(1, "server/info", json!({}));
    assert!(info["result"].is_object(), "{info}");
}
