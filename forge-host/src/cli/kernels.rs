//! `forge kernels`: forge-kernels' checks of every fused op, forge's checks of the composite ops built
//! on them, and the optimizers' device step against their host step, on a device against the CPU —
//! so a GPU build can be trusted before it is timed.
use candle_core::DType;
use clap::Args;
use forge_kernels::SplitMix64;

use super::Runtime;
use crate::loader::ModelFolder;
use crate::training::{self, checks::tape_against_graph, checks::ON_MODEL, checks::ON_RANDOM_HYBRID};
use crate::{bad_input, Error, Result};

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Instead of the checks, time the driver's compilation of each of candle's PTX modules (what a
    /// fresh machine pays on first use); run with CUDA_CACHE_DISABLE=1 so that nothing comes from the
    /// JIT cache.
    #[arg(long)]
    candle_jit: bool,
    /// The layer-wise backward (forge's tape) is checked against candle's graph on a Qwen3.5 hybrid of
    /// random weights (bf16 on the device, LoRA on every linear layer, 2 × 256 random tokens, plain and
    /// checkpointed); this checks it on this model as well.
    #[arg(long, value_name = "DIR")]
    model: Option<std::path::PathBuf>,
}

pub fn run(args: KernelsArgs, rt: &Runtime) -> Result<()> {
    if rt.device.is_cpu() {
        return Err(bad_input!(
            "give --device cuda: the CPU references are what the device kernels are checked against"
        ));
    }
    if args.candle_jit {
        return candle_jit(&args, rt);
    }
    let mut rng = SplitMix64::new(rt.seed);
    let mut checks = forge_kernels::checks::all(&rt.device, &mut rng)?;
    checks.extend(crate::autograd::checks::all(&rt.device, &mut rng)?);
    checks.extend(crate::strategies::optimizer_checks::all(&rt.device, &mut rng)?);
    checks.extend(crate::generate::checks::all(&rt.device, &mut rng)?);
    #[cfg(feature = "cuda")]
    checks.extend(crate::loader::upload::check(&rt.device, &mut rng)?);
    let on_device = (DType::BF16, &rt.device);
    let random = training::checks::random_hybrid(rt.seed)?;
    checks.extend(tape_against_graph(&random, on_device, &mut rng, (2, 256), ON_RANDOM_HYBRID)?);
    if let Some(dir) = &args.model {
        checks.extend(tape_against_graph(&ModelFolder::open(dir)?, on_device, &mut rng, (2, 256), ON_MODEL)?);
    }
    let architectures = built_for()?;
    super::emit(&serde_json::json!({ "built_for": &architectures, "checks": &checks }), args.json, |_| {
        let lines = checks.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        format!("forge's kernels carry {}\n{lines}", architectures.join(", "))
    });
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        return Err(Error::Strategy(format!("{failed} kernel checks failed")));
    }
    Ok(())
}

/// The architectures forge's embedded kernels were built for (machine code `sm_*`, PTX `compute_*`).
fn built_for() -> Result<Vec<String>> {
    #[cfg(feature = "cuda")]
    return forge_kernels::fatbin::architectures(forge_kernels::EMBEDDED_FATBIN).map_err(Error::Strategy);
    #[cfg(not(feature = "cuda"))]
    Ok(Vec::new())
}

#[cfg(feature = "cuda")]
fn candle_jit(args: &KernelsArgs, rt: &Runtime) -> Result<()> {
    let loads = forge_kernels::jit::candle_module_loads(&rt.device)?;
    let cached = std::env::var_os("CUDA_CACHE_DISABLE").is_none_or(|v| v != "1");
    super::emit(&serde_json::json!({ "jit_cache_on": cached, "candle_modules": &loads }), args.json, |_| {
        let mut lines: Vec<String> = loads
            .iter()
            .map(|l| format!("{:10} {:>9} bytes of PTX  {:7.3} s", l.module, l.ptx_bytes, l.seconds))
            .collect();
        if cached {
            lines.push("(the JIT cache was on: set CUDA_CACHE_DISABLE=1 to time compilation)".into());
        }
        lines.join("\n")
    });
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn candle_jit(_: &KernelsArgs, _: &Runtime) -> Result<()> {
    Err(bad_input!("candle's PTX modules exist in a build with the `cuda` feature only"))
}
