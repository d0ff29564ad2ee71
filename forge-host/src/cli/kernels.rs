//! `forge kernels`: forge-kernels' checks of every fused op, and forge's checks of the composite ops
//! built on them, on a device against the CPU — so a GPU build can be trusted before it is timed.
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
    super::emit(&serde_json::json!({ "checks": &checks }), args.json, |_| {
        checks.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    });
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        return Err(Error::Strategy(format!("{failed} kernel checks failed")));
    }
    Ok(())
}
