//! Every kernel on the first CUDA device against its CPU reference (`checks::all`). Built only with
//! the `cuda` feature; run on a GPU machine with `cargo test -p forge-kernels --features cuda`.
#![cfg(feature = "cuda")]
use candle_core::Device;
use forge_kernels::{checks, SplitMix64};

#[test]
fn every_kernel_matches_its_cpu_reference() -> candle_core::Result<()> {
    let device = Device::new_cuda(0)?;
    let checks = checks::all(&device, &mut SplitMix64::new(0))?;
    let failed: Vec<String> = checks.iter().filter(|c| !c.pass).map(|c| c.to_string()).collect();
    assert!(failed.is_empty(), "kernel checks failed:\n{}", failed.join("\n"));
    Ok(())
}
