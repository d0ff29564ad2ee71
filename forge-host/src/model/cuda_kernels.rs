//! Launching forge's own CUDA kernels (`kernels/forge_kernels.cu`, embedded as sm_90 machine code by
//! build.rs) from candle custom ops.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::{CudaDevice, CudaStorage, Layout};
use half::bf16;

static CUBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/forge_kernels.cubin"));

/// The module, loaded once per device.
fn function(dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    static MODULES: OnceLock<Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<CudaModule>>>> =
        OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().expect("no panic while loading");
    let module = match modules.get(&dev.id()) {
        Some(m) => m.clone(),
        None => {
            let stream = dev.cuda_stream();
            let module = stream
                .context()
                .load_module(Ptx::from_binary(CUBIN.to_vec()))
                .map_err(|e| candle_core::Error::Msg(format!("loading forge's CUDA kernels: {e}")))?;
            modules.insert(dev.id(), module.clone());
            module
        }
    };
    module.load_function(name).map_err(|e| candle_core::Error::Msg(format!("CUDA kernel {name}: {e}")))
}

fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA launch: {e}"))
}

/// Causal softmax of contiguous bf16 scores `(…, seq, total)`, as `causal_softmax_bf16` computes it.
pub fn causal_softmax_bf16(
    storage: &CudaStorage,
    layout: &Layout,
    scale: f32,
    past: usize,
) -> candle_core::Result<CudaStorage> {
    let (start, end) =
        layout.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "causal-softmax" })?;
    let dims = layout.dims();
    let (seq, total) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let rows = (end - start) / total;
    let dev = storage.device.clone();
    let x = storage.as_cuda_slice::<bf16>()?.slice(start..end);
    // SAFETY: the kernel writes every element of `y`.
    let mut y = unsafe { dev.alloc::<bf16>(end - start)? };
    let func = function(&dev, "causal_softmax_bf16")?;
    let stream = dev.cuda_stream();
    let (seq, total, past) = (seq as i32, total as i32, past as i32);
    let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x).arg(&mut y).arg(&seq).arg(&total).arg(&past).arg(&scale);
    // SAFETY: the arguments match the kernel's signature; `x` and `y` hold rows × total values.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// Next-token NLL of each row of contiguous bf16 logits `(rows, vocab)` for u32 `targets` `(rows)`, in f32.
pub fn row_nll_bf16(
    logits: &CudaStorage,
    logits_layout: &Layout,
    targets: &CudaStorage,
    targets_layout: &Layout,
) -> candle_core::Result<CudaStorage> {
    let contiguous =
        |l: &Layout| l.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "row-nll" });
    let ((ls, le), (ts, te)) = (contiguous(logits_layout)?, contiguous(targets_layout)?);
    let (rows, vocab) = (te - ts, logits_layout.dims()[logits_layout.dims().len() - 1]);
    let dev = logits.device.clone();
    let x = logits.as_cuda_slice::<bf16>()?.slice(ls..le);
    let t = targets.as_cuda_slice::<u32>()?.slice(ts..te);
    // SAFETY: the kernel writes every row's value.
    let mut nll = unsafe { dev.alloc::<f32>(rows)? };
    let func = function(&dev, "row_nll_bf16")?;
    let stream = dev.cuda_stream();
    let vocab = vocab as i32;
    let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x).arg(&t).arg(&mut nll).arg(&vocab);
    // SAFETY: the arguments match the kernel's signature; `x` holds rows × vocab values, `t` rows.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(nll, dev))
}
