//! `forge kernels`: forge-kernels' checks of every fused op, forge's checks of the composite ops built
//! on them, and the optimizers' device step against their host step, on a device against the CPU —
//! so a GPU build can be trusted before it is timed.
use clap::Args;
use forge_kernels::SplitMix64;

use super::Runtime;
use crate::{bad_input, Error, Result};

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: KernelsArgs, rt: &Runtime) -> Result<()> {
    if rt.device.is_cpu() {
        return Err(bad_input!(
            "give --device cuda: the CPU references are what the device kernels are checked against"
        ));
    }
    let mut rng = SplitMix64::new(rt.seed);
    let mut checks = forge_kernels::checks::all(&rt.device, &mut rng)?;
    checks.extend(crate::autograd::checks::all(&rt.device, &mut rng)?);
    checks.extend(crate::strategies::optimizer_checks::all(&rt.device, &mut rng)?);
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
