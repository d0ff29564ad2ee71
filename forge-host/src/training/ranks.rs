//! Data-parallel ranks on CUDA devices, one process a GPU: threads driving several GPUs contend on the
//! driver's lock (cudarc issue #169), and a process that dies takes only its own GPU's work with it.
//!
//! `forge train --devices cuda:0,cuda:1` (and `forge run`) does no work itself: it makes an NCCL group
//! id, starts the same command once per device with `--device cuda:N` and the id, rank and world in
//! the environment ([`RankSpec`]), and waits. Rank 0 writes the outputs and prints the report; the
//! others print nothing (their stderr is kept and shown if they fail). `forge run`'s other ranks write
//! into a scratch folder beside `--out` (`.<out>.ranks/<rank>`), removed at the end, so every rank
//! runs the whole recipe alike and only the training steps talk; on `--resume` each starts from a copy
//! (hard links) of rank 0's folder, so all resume from the same point.
//!
//! A rank that fails ends the job: the others are killed (a rank blocked in an all-reduce could not
//! notice), and the error names the rank, its device and its last lines. Everything rank 0 writes is
//! written atomically, so the folder is then as a killed one-device run leaves it: `--resume` continues
//! it. An interrupt (SIGINT or SIGTERM to the parent) is passed on to the ranks, which stop together
//! at the end of the same training step (the stop is agreed in the step's all-reduce).
//!
//! Measured on one H200 (NCCL refuses two ranks on one GPU, so with one rank): the adapter of
//! `forge train --devices cuda:0` equals one device's bit for bit, and a `forge run --devices cuda:0`
//! whose rank was SIGKILLed, or whose parent was SIGINTed, mid-training resumes to the uninterrupted
//! run's model bit for bit (`bench/gpu_ranks.sh`, docs/distributed.md).
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::nccl::{Nccl, UniqueId};
use super::Communicator;
use crate::runtime::{child, interrupt, DeviceChoice};
use crate::{bad_input, Error, Result};

const RANK: &str = "FORGE_RANK";
const WORLD: &str = "FORGE_WORLD";
const GROUP: &str = "FORGE_NCCL_ID";
/// How long the other ranks may take to reach their own stop once one has stopped on an interrupt.
const GRACE: Duration = Duration::from_secs(120);

/// What a rank process was started as.
pub struct RankSpec {
    pub rank: usize,
    pub world: usize,
    group: String,
}

impl RankSpec {
    /// This process's rank, when a parent started it as one.
    pub fn from_env() -> Result<Option<RankSpec>> {
        let Ok(rank) = std::env::var(RANK) else { return Ok(None) };
        let number = |name: &str, text: &str| {
            text.parse::<usize>().map_err(|_| bad_input!("{name} must be a number, not `{text}`"))
        };
        let world = number(WORLD, &std::env::var(WORLD).unwrap_or_default())?;
        let rank = number(RANK, &rank)?;
        if rank >= world {
            return Err(bad_input!("{RANK}={rank} is not below {WORLD}={world}"));
        }
        Ok(Some(RankSpec { rank, world, group: std::env::var(GROUP).unwrap_or_default() }))
    }

    /// Joins the group on `device` (the `--device` the parent gave this rank).
    pub fn join(&self, device: &candle_core::Device) -> Result<Box<dyn Communicator>> {
        let id = UniqueId::from_hex(&self.group)?;
        #[cfg(feature = "cuda")]
        {
            let nccl = Nccl::load()?;
            Ok(Box::new(super::nccl::NcclRank::join(nccl, id, self.rank, self.world, device)?))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (id, device);
            Err(bad_input!("this forge was built without CUDA, so it cannot be an NCCL rank"))
        }
    }
}

/// Whether `--devices` names GPUs, which train as processes of their own (CPU ranks are threads).
pub fn gpu_ranks(devices: &[DeviceChoice]) -> bool {
    devices.iter().any(|d| *d != DeviceChoice::Cpu)
}

/// Refuses a `--devices` list data-parallel processes cannot run, before any work.
pub fn check_devices(devices: &[DeviceChoice]) -> Result<()> {
    if devices.contains(&DeviceChoice::Cpu) {
        return Err(bad_input!(
            "--devices mixes the CPU with CUDA devices; give CUDA devices only (cuda:0,cuda:1), or cpu,cpu"
        ));
    }
    for (i, d) in devices.iter().enumerate() {
        if devices[..i].contains(d) {
            return Err(bad_input!("--devices names {d} twice; NCCL runs one rank a GPU"));
        }
    }
    Ok(())
}

/// Runs this command once per device as NCCL ranks and waits for them all. `out` is `forge run`'s
/// folder and whether it resumes (its other ranks then get scratch folders); `forge train` gives None.
pub fn launch(devices: &[DeviceChoice], out: Option<(&Path, bool)>) -> Result<()> {
    check_devices(devices)?;
    let nccl = Nccl::load()?;
    if !cfg!(feature = "cuda") {
        return Err(bad_input!(
            "this forge was built without CUDA, so it cannot run GPU ranks; rebuild with `cargo build --release --features cuda`"
        ));
    }
    let group = nccl.unique_id()?.to_hex();
    tracing::info!("NCCL {}: {} ranks on {}", nccl.version()?, devices.len(), list(devices));
    let outs = out.map(|(out, resume)| RankOuts::prepare(out, resume, devices.len())).transpose()?;
    let mut ranks = Vec::new();
    for (rank, device) in devices.iter().enumerate() {
        let rank_out = outs.as_ref().filter(|_| rank > 0).map(|o| o.of(rank));
        ranks.push(start(rank, devices.len(), *device, &group, rank_out)?);
    }
    wait_all(ranks)
}

/// `forge run`'s output folder of each rank: rank 0's is `--out`, the others' are scratch folders
/// beside it, removed when this is dropped (the job ended, however).
pub struct RankOuts {
    root: PathBuf,
    outs: Vec<PathBuf>,
}

impl RankOuts {
    /// Empty scratch folders, or on `resume` hard-linked copies of rank 0's `out`.
    pub fn prepare(out: &Path, resume: bool, world: usize) -> Result<RankOuts> {
        let root = scratch_root(out);
        let mut outs = vec![out.to_path_buf()];
        for rank in 1..world {
            outs.push(prepare_scratch(out, &root, rank, resume)?);
        }
        Ok(RankOuts { root, outs })
    }

    pub fn of(&self, rank: usize) -> &Path {
        &self.outs[rank]
    }
}

impl Drop for RankOuts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn list(devices: &[DeviceChoice]) -> String {
    devices.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// `.<name>.ranks` beside `out`: on the same file system, so a resume can hard-link rank 0's files.
fn scratch_root(out: &Path) -> PathBuf {
    let name = out.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.ranks"))
}

/// Rank `rank`'s folder: empty, or on `--resume` a hard-linked copy of rank 0's `out`.
fn prepare_scratch(out: &Path, root: &Path, rank: usize, resume: bool) -> Result<PathBuf> {
    let dir = root.join(rank.to_string());
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    if resume && out.is_dir() {
        link_tree(out, &dir)?;
    } else {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    }
    Ok(dir)
}

/// Copies the tree `from` to `to` as hard links (every file forge writes is replaced whole, never
/// changed in place, so a link never sees the other rank's later writes).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(|e| Error::io(&src, e))?.is_dir() {
            link_tree(&src, &dst)?;
        } else {
            std::fs::hard_link(&src, &dst)
                .or_else(|_| std::fs::copy(&src, &dst).map(drop))
                .map_err(|e| Error::io(&dst, e))?;
        }
    }
    Ok(())
}

/// This command's arguments for one rank: `--devices` and `--device` dropped, the rank's device (and
/// scratch `--out`) added. Global flags may come after the subcommand's, so appending is enough.
fn rank_args(device: DeviceChoice, out: Option<&Path>) -> Vec<OsString> {
    let mut dropped: Vec<&str> = vec!["--devices", "--device"];
    if out.is_some() {
        dropped.push("--out");
    }
    let mut args = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        let text = arg.to_string_lossy();
        if dropped.contains(&text.as_ref()) {
            given.next();
        } else if !dropped.iter().any(|d| text.starts_with(&format!("{d}="))) {
            args.push(arg);
        }
    }
    args.extend(["--device".into(), device.to_string().into()]);
    if let Some(out) = out {
        args.extend(["--out".into(), out.as_os_str().to_owned()]);
    }
    args
}

/// One running rank: its process and, for ranks after the first, the file its stderr goes to.
struct Rank {
    rank: usize,
    device: DeviceChoice,
    child: Child,
    log: Option<PathBuf>,
    ended: Option<ExitStatus>,
}

fn start(rank: usize, world: usize, device: DeviceChoice, group: &str, out: Option<&Path>) -> Result<Rank> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Strategy(format!("finding forge's own binary: {e}")))?;
    let mut command = Command::new(exe);
    command
        .args(rank_args(device, out))
        .env(RANK, rank.to_string())
        .env(WORLD, world.to_string())
        .env(GROUP, group)
        // NVLink multicast stays off on shared hosts (it can take every GPU of the host down).
        .env("NCCL_NVLS_ENABLE", "0")
        .stdin(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches the parent alone, which passes it on once.
        .process_group(0);
    child::tie_to_parent(&mut command);
    let log = (rank > 0)
        .then(|| std::env::temp_dir().join(format!("forge-rank-{}-{rank}.log", std::process::id())));
    if let Some(log) = &log {
        let file = std::fs::File::create(log).map_err(|e| Error::io(log, e))?;
        command.stdout(Stdio::null()).stderr(file);
    }
    let child = command.spawn().map_err(|e| Error::Strategy(format!("starting rank {rank}: {e}")))?;
    Ok(Rank { rank, device, child, log, ended: None })
}

/// Waits for every rank; the first that fails ends the others.
fn wait_all(mut ranks: Vec<Rank>) -> Result<()> {
    let mut passed_on = false;
    let mut stopping_since: Option<Instant> = None;
    let mut failure: Option<usize> = None;
    while ranks.iter().any(|r| r.ended.is_none()) {
        if interrupt::requested() && !passed_on {
            ranks.iter().for_each(|r| child::signal(r.child.id(), libc::SIGINT));
            passed_on = true;
        }
        for (i, r) in ranks.iter_mut().enumerate().filter(|(_, r)| r.ended.is_none()) {
            let Some(status) =
                r.child.try_wait().map_err(|e| Error::Strategy(format!("waiting for a rank: {e}")))?
            else {
                continue;
            };
            r.ended = Some(status);
            match status.code() {
                Some(0) => {}
                Some(130) => {
                    stopping_since.get_or_insert_with(Instant::now);
                }
                _ => {
                    failure.get_or_insert(i);
                }
            }
        }
        if failure.is_some() || stopping_since.is_some_and(|t| t.elapsed() > GRACE) {
            kill_rest(&mut ranks);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let outcome = match failure {
        Some(i) => Err(describe(&ranks[i])),
        None if stopping_since.is_some() => Err(Error::Interrupted(String::new())),
        None => Ok(()),
    };
    ranks.iter().filter_map(|r| r.log.as_ref()).for_each(|log| drop(std::fs::remove_file(log)));
    outcome
}

fn kill_rest(ranks: &mut [Rank]) {
    for r in ranks.iter_mut().filter(|r| r.ended.is_none()) {
        let _ = r.child.kill();
        r.ended = r.child.wait().ok();
    }
}

/// The error of a failed rank: which, on which device, how it ended, and its last lines.
fn describe(r: &Rank) -> Error {
    let status = r.ended.expect("a failed rank has ended");
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_string(),
    };
    let mut text = String::new();
    if let Some(mut file) = r.log.as_ref().and_then(|log| std::fs::File::open(log).ok()) {
        let _ = file.read_to_string(&mut text);
    }
    let tail: Vec<&str> = text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
    let lines =
        if tail.is_empty() { String::new() } else { format!("; its last lines:\n{}", tail.join("\n")) };
    let message = format!("rank {} ({}) {how}, so the job ended{lines}", r.rank, r.device);
    match status.code() {
        Some(2) => Error::BadInput(message),
        _ => Error::Strategy(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_checked_and_scratch_sits_beside_out() {
        assert!(check_devices(&[DeviceChoice::Cuda(0), DeviceChoice::Cuda(1)]).is_ok());
        let twice = check_devices(&[DeviceChoice::Cuda(0), DeviceChoice::Cuda(0)]).unwrap_err().to_string();
        assert!(twice.contains("cuda:0 twice"), "{twice}");
        assert!(check_devices(&[DeviceChoice::Cpu, DeviceChoice::Cuda(0)]).is_err());
        assert_eq!(scratch_root(Path::new("runs/code")), PathBuf::from("runs/.code.ranks"));
    }

    #[test]
    fn a_resumed_rank_starts_from_links_to_rank_zeros_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("cycles/1")).unwrap();
        std::fs::write(out.join("cycles/1/cycle.json"), "{}").unwrap();
        let root = scratch_root(&out);
        let rank = prepare_scratch(&out, &root, 1, true).unwrap();
        assert_eq!(std::fs::read_to_string(rank.join("cycles/1/cycle.json")).unwrap(), "{}");
        let fresh = prepare_scratch(&out, &root, 2, false).unwrap();
        assert!(!fresh.exists() && root.is_dir());
    }
}
