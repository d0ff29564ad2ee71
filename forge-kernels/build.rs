//! With the `cuda` feature, compiles `cuda/forge_kernels.cu` with nvcc (`../shared/cuda/env.sh`
//! provides one) into a fat binary embedded in forge: machine code for each architecture in
//! `FORGE_CUDA_SASS` (comma-separated compute capabilities, default `80,90,100`: A100, H100/H200,
//! B200), so the driver compiles nothing of forge's when forge starts on those, plus PTX for
//! `FORGE_CUDA_PTX` (default `80`), which the driver compiles once for any other card from compute 8.0
//! on. bf16 arithmetic needs compute 80 or later. (candle's own kernels are PTX for one architecture,
//! `CUDA_COMPUTE_CAP`, which `.cargo/config.toml` sets to 80 so that they load on all of these too.)
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "cuda/forge_kernels.cu";

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    for var in ["CUDA_ROOT", "FORGE_CUDA_SASS", "FORGE_CUDA_PTX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("forge_kernels.fatbin");
    let nvcc =
        std::env::var("CUDA_ROOT").map(|root| format!("{root}/bin/nvcc")).unwrap_or_else(|_| "nvcc".into());
    let sass = std::env::var("FORGE_CUDA_SASS").unwrap_or_else(|_| "80,90,100".into());
    let ptx = std::env::var("FORGE_CUDA_PTX").unwrap_or_else(|_| "80".into());
    let mut command = Command::new(&nvcc);
    command.args(["-fatbin", "-O3", "-std=c++17"]);
    for cc in sass.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        assert!(
            cc.chars().all(|c| c.is_ascii_digit()),
            "FORGE_CUDA_SASS: `{cc}` is not a compute capability such as 90"
        );
        command.arg(format!("-gencode=arch=compute_{cc},code=sm_{cc}"));
    }
    if !ptx.trim().is_empty() {
        let cc = ptx.trim();
        assert!(
            cc.chars().all(|c| c.is_ascii_digit()),
            "FORGE_CUDA_PTX: `{cc}` is not a compute capability such as 80"
        );
        command.arg(format!("-gencode=arch=compute_{cc},code=compute_{cc}"));
    }
    let status = command
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (source ../shared/cuda/env.sh first): {e}"));
    assert!(status.success(), "nvcc failed on {SOURCE}");
}
