//! `forge merge`: fold an adapter into the base weights and write a plain checkpoint.
use std::path::PathBuf;

use candle_core::{DType, Device};
use clap::Args;
use serde::Serialize;

use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::outputs::{source_config, stored_tensors, write_model_folder};
use crate::strategies::adapters::{load_adapter, merge_into};
use crate::strategies::Registry;
use crate::Result;

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base model folder the adapter was trained on.
    #[arg(long)]
    model: PathBuf,
    /// The adapter folder (PEFT layout: adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output model folder (same dtype as the base).
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct MergeReport {
    out: PathBuf,
    merged_tensors: usize,
    parameters: usize,
}

pub fn run(args: MergeArgs, registry: &Registry) -> Result<()> {
    crate::outputs::check_out(&args.out, &[args.model.as_path(), args.adapter.as_path()], "--out")?;
    let folder = ModelFolder::open(&args.model)?;
    let mut model = CausalLm::load(&folder, DType::F32, &Device::Cpu)?;
    let adapter = load_adapter(&args.adapter, &mut model, registry)?;
    let mut tensors = stored_tensors(&folder)?;
    let merged_tensors = merge_into(&mut tensors, adapter.as_ref())?;
    let parameters = write_model_folder(&folder, &tensors, &source_config(&folder)?, &args.out)?;
    let report = MergeReport { out: args.out.clone(), merged_tensors, parameters };
    super::emit(&report, args.json, |r| {
        format!("merged {} weights into {}", r.merged_tensors, r.out.display())
    });
    Ok(())
}
