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

fn contiguous(layout: &Layout, op: &'static str) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })
}

/// One block of `threads` per row, for the kernels that reduce over a row.
fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Enough 256-thread blocks for `n` items, capped: the elementwise kernels loop over a grid stride.
fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Causal softmax of contiguous bf16 scores `(…, seq, total)`, as `causal_softmax_bf16` computes it.
pub fn causal_softmax_bf16(
    storage: &CudaStorage,
    layout: &Layout,
    scale: f32,
    past: usize,
) -> candle_core::Result<CudaStorage> {
    let (start, end) = contiguous(layout, "causal-softmax")?;
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
    let config = per_row(rows, 256);
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
    let ((ls, le), (ts, te)) =
        (contiguous(logits_layout, "row-nll")?, contiguous(targets_layout, "row-nll")?);
    let (rows, vocab) = (te - ts, logits_layout.dims()[logits_layout.dims().len() - 1]);
    let dev = logits.device.clone();
    let x = logits.as_cuda_slice::<bf16>()?.slice(ls..le);
    let t = targets.as_cuda_slice::<u32>()?.slice(ts..te);
    // SAFETY: the kernel writes every row's value.
    let mut nll = unsafe { dev.alloc::<f32>(rows)? };
    let func = function(&dev, "row_nll_bf16")?;
    let stream = dev.cuda_stream();
    let vocab = vocab as i32;
    let config = per_row(rows, 512);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&x).arg(&t).arg(&mut nll).arg(&vocab);
    // SAFETY: the arguments match the kernel's signature; `x` holds rows × vocab values, `t` rows.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(nll, dev))
}

/// RMS norm of each row of contiguous bf16 `x` with bf16 weight `w`, as `rms_norm_bf16` computes it.
pub fn rms_norm_bf16(
    x: &CudaStorage,
    xl: &Layout,
    w: &CudaStorage,
    wl: &Layout,
    eps: f32,
) -> candle_core::Result<CudaStorage> {
    let ((xs, xe), (ws, we)) = (contiguous(xl, "rms-norm")?, contiguous(wl, "rms-norm")?);
    let n = we - ws;
    let dev = x.device.clone();
    let xv = x.as_cuda_slice::<bf16>()?.slice(xs..xe);
    let wv = w.as_cuda_slice::<bf16>()?.slice(ws..we);
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(xe - xs)? };
    let func = function(&dev, "rms_norm_bf16")?;
    let stream = dev.cuda_stream();
    let config = per_row((xe - xs) / n, 256);
    let n = n as i32;
    let mut launch = stream.launch_builder(&func);
    launch.arg(&xv).arg(&wv).arg(&mut y).arg(&n).arg(&eps);
    // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// Rotary embedding of contiguous bf16 `x` `(batch, seq, heads, d)` with `(seq, d)` tables, written
/// `(batch, heads, seq, d)`, as `rope_bf16` computes it.
#[allow(clippy::too_many_arguments)]
pub fn rope_bf16(
    x: &CudaStorage,
    xl: &Layout,
    cos: &CudaStorage,
    cl: &Layout,
    sin: &CudaStorage,
    sl: &Layout,
) -> candle_core::Result<CudaStorage> {
    let (xs, xe) = contiguous(xl, "rope")?;
    let ((cs, ce), (ss, se)) = (contiguous(cl, "rope")?, contiguous(sl, "rope")?);
    let (b, s, h, d) = xl.shape().dims4()?;
    let dev = x.device.clone();
    let xv = x.as_cuda_slice::<bf16>()?.slice(xs..xe);
    let cv = cos.as_cuda_slice::<bf16>()?.slice(cs..ce);
    let sv = sin.as_cuda_slice::<bf16>()?.slice(ss..se);
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(xe - xs)? };
    let func = function(&dev, "rope_bf16")?;
    let stream = dev.cuda_stream();
    let config = grid_stride((xe - xs) / 2);
    let (b, s, h, d) = (b as i32, s as i32, h as i32, d as i32);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&xv).arg(&cv).arg(&sv).arg(&mut y).arg(&b).arg(&s).arg(&h).arg(&d);
    // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `bf16(silu(gate)) · up` over contiguous bf16 tensors of one shape, as `swiglu_bf16` computes it.
pub fn swiglu_bf16(
    gate: &CudaStorage,
    gl: &Layout,
    up: &CudaStorage,
    ul: &Layout,
) -> candle_core::Result<CudaStorage> {
    let ((gs, ge), (us, ue)) = (contiguous(gl, "swiglu")?, contiguous(ul, "swiglu")?);
    let dev = gate.device.clone();
    let g = gate.as_cuda_slice::<bf16>()?.slice(gs..ge);
    let u = up.as_cuda_slice::<bf16>()?.slice(us..ue);
    let n = (ge - gs) as i64;
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(ge - gs)? };
    let func = function(&dev, "swiglu_bf16")?;
    let stream = dev.cuda_stream();
    let config = grid_stride(ge - gs);
    let mut launch = stream.launch_builder(&func);
    launch.arg(&g).arg(&u).arg(&mut y).arg(&n);
    // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}
