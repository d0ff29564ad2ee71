//! `forge serve` and its clients `forge submit`, `forge jobs` and `forge cancel` (see
//! [`crate::worker`] and docs/worker.md).
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Map, Value};

use super::run::RecipeArgs;
use super::{GlobalArgs, Runtime};
use crate::runtime::{parse_device, DeviceChoice};
use crate::strategies::Registry;
use crate::worker::client::{watch, Client};
use crate::worker::{serve, ServeOptions};
use crate::{bad_input, Error, Result};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The Unix socket to listen on (created owner-only; a stale one is replaced, a live one refused).
    #[arg(long)]
    socket: PathBuf,
    /// Where job records live, so a restarted server knows every job [default: <socket>.state].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The devices to run jobs on, one job at a time each, comma-separated (e.g. `cuda:0,cuda:1`)
    /// [default: --device].
    #[arg(long, value_delimiter = ',')]
    devices: Vec<DeviceChoice>,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The socket of a running `forge serve`.
    #[arg(long)]
    socket: PathBuf,
    #[command(flatten)]
    job: RecipeArgs,
    /// Stay and print the job's events until it ends (exit status as `forge run` would give).
    #[arg(long)]
    watch: bool,
    /// Print the reply and events as JSON lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// The socket of a running `forge serve`.
    #[arg(long)]
    socket: PathBuf,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The socket of a running `forge serve`.
    #[arg(long)]
    socket: PathBuf,
    /// The job to cancel (as `forge jobs` lists it).
    job: String,
}

pub fn run_serve(args: ServeArgs, global: &GlobalArgs, rt: &Runtime, registry: Registry) -> Result<()> {
    let state_dir = args.state_dir.unwrap_or_else(|| args.socket.with_extension("state"));
    let mut job_flags = Vec::new();
    if let Some(dtype) = &global.dtype {
        job_flags.extend(["--dtype".into(), dtype.clone()]);
    }
    if let Some(budget) = &global.memory_budget {
        job_flags.extend(["--memory-budget".into(), budget.clone()]);
    }
    for plugin in &global.plugins {
        job_flags.extend(["--plugin".into(), absolute(plugin)?.display().to_string()]);
    }
    if let Some(twice) = args
        .devices
        .iter()
        .enumerate()
        .find_map(|(i, d)| (*d != DeviceChoice::Cpu && args.devices[..i].contains(d)).then_some(d))
    {
        return Err(bad_input!(
            "--devices names {twice} twice; a GPU runs one job at a time, so name each once"
        ));
    }
    let devices = match args.devices.is_empty() {
        true => vec![(global.device.to_string(), rt.device.clone())],
        false => {
            args.devices.iter().map(|&d| Ok((d.to_string(), parse_device(d)?))).collect::<Result<_>>()?
        }
    };
    let opts = ServeOptions {
        socket: args.socket,
        state_dir,
        job_flags,
        devices,
        dtype: rt.dtype,
        budget: rt.memory_budget,
    };
    serve(opts, registry)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

pub fn run_submit(args: SubmitArgs, quiet: bool) -> Result<()> {
    let mut set = Map::new();
    for item in &args.job.overrides {
        let (key, value) =
            item.split_once('=').ok_or_else(|| bad_input!("--set `{item}` is not KEY=VALUE"))?;
        set.insert(key.to_string(), Value::String(value.to_string()));
    }
    let params = json!({
        "recipe": absolute(&args.job.recipe)?,
        "out": absolute(&args.job.out)?,
        "set": set,
        "resume": args.job.resume,
    });
    let mut client = Client::connect(&args.socket)?;
    let reply = client.call("model/forge", params)?;
    if args.json {
        println!("{reply}");
    } else {
        println!(
            "{} queued{}",
            reply["job"].as_str().unwrap_or("?"),
            reply["admission"].as_str().map(|w| format!(" ({w})")).unwrap_or_default()
        );
    }
    if args.watch {
        return watch(&mut client, args.json, quiet);
    }
    Ok(())
}

pub fn run_jobs(args: JobsArgs) -> Result<()> {
    let list = Client::connect(&args.socket)?.call("job/list", json!({}))?;
    if args.json {
        println!("{list}");
        return Ok(());
    }
    for job in list["jobs"].as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}",
            job["job"].as_str().unwrap_or(""),
            job["status"].as_str().unwrap_or(""),
            job["method"].as_str().unwrap_or(""),
            job["out"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub fn run_cancel(args: CancelArgs) -> Result<()> {
    let reply = Client::connect(&args.socket)?.call("job/cancel", json!({"job": args.job}))?;
    println!("{} {}", reply["job"].as_str().unwrap_or(""), reply["status"].as_str().unwrap_or(""));
    Ok(())
}
