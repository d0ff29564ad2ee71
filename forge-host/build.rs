//! With the `cuda` feature, compiles forge's CUDA kernels to sm_90 machine code (H100/H200) with nvcc
//! (`../shared/cuda/env.sh` provides one), embedded in the binary: shipping machine code rather than
//! PTX keeps the driver from compiling anything when forge starts on a fresh machine.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/model/kernels");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("forge_kernels.cubin");
    let nvcc =
        std::env::var("CUDA_ROOT").map(|root| format!("{root}/bin/nvcc")).unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["-cubin", "-O3", "-std=c++17", "-arch=sm_90", "-o"])
        .arg(&out)
        .arg("src/model/kernels/forge_kernels.cu")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc} (source ../shared/cuda/env.sh first): {e}"));
    assert!(status.success(), "nvcc failed on src/model/kernels/forge_kernels.cu");
}
