//! Launching forge's own CUDA kernels (`kernels/forge_kernels.cu`, embedded as sm_90 machine code by
//! build.rs) from candle custom ops.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, Layout, Shape, Storage, Tensor};
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

/// One block of `threads` per row, for the kernels that reduce over a row.
fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Enough 256-thread blocks for `n` items, capped: the elementwise kernels loop over a grid stride.
fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// The per-row causal softmax kernels over contiguous bf16 tensors `(…, seq, total)` of one shape:
/// `causal_softmax_bf16` given the scores, `causal_softmax_backward_bf16` given the probabilities and
/// their gradient.
pub fn causal_softmax_rows_bf16(
    kernel: &'static str,
    inputs: &[(&CudaStorage, &Layout)],
    scale: f32,
    past: usize,
) -> candle_core::Result<CudaStorage> {
    let shape = inputs[0].1.shape();
    if inputs.iter().any(|(_, l)| l.shape() != shape) {
        return Err(candle_core::Error::Msg(format!("{kernel}: inputs of different shapes")));
    }
    let views =
        inputs.iter().map(|input| view::<bf16>(input, kernel)).collect::<candle_core::Result<Vec<_>>>()?;
    let (seq, total) = (shape.dims()[shape.rank() - 2], shape.dims()[shape.rank() - 1]);
    let dev = inputs[0].0.device.clone();
    // SAFETY: the kernels write every element of `y`.
    let mut y = unsafe { dev.alloc::<bf16>(shape.elem_count())? };
    let func = function(&dev, kernel)?;
    let stream = dev.cuda_stream();
    let config = per_row(shape.elem_count() / total, 256);
    let (seq, total, past) = (seq as i32, total as i32, past as i32);
    let mut launch = stream.launch_builder(&func);
    for view in &views {
        launch.arg(view);
    }
    launch.arg(&mut y).arg(&seq).arg(&total).arg(&past).arg(&scale);
    // SAFETY: the arguments match the kernels' signatures; every buffer holds rows × total values.
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
    let x = view::<bf16>(&(logits, logits_layout), "row-nll")?;
    let t = view::<u32>(&(targets, targets_layout), "row-nll")?;
    let (rows, vocab) = (t.len(), logits_layout.dims()[logits_layout.dims().len() - 1]);
    let dev = logits.device.clone();
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
    let (xv, wv) = (view::<bf16>(&(x, xl), "rms-norm")?, view::<bf16>(&(w, wl), "rms-norm")?);
    let n = wv.len();
    let dev = x.device.clone();
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(xv.len())? };
    let func = function(&dev, "rms_norm_bf16")?;
    let stream = dev.cuda_stream();
    let config = per_row(xv.len() / n, 256);
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
    let xv = view::<bf16>(&(x, xl), "rope")?;
    let (cv, sv) = (view::<bf16>(&(cos, cl), "rope")?, view::<bf16>(&(sin, sl), "rope")?);
    let (b, s, h, d) = xl.shape().dims4()?;
    let dev = x.device.clone();
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(xv.len())? };
    let func = function(&dev, "rope_bf16")?;
    let stream = dev.cuda_stream();
    let config = grid_stride(xv.len() / 2);
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
    let (g, u) = (view::<bf16>(&(gate, gl), "swiglu")?, view::<bf16>(&(up, ul), "swiglu")?);
    let dev = gate.device.clone();
    let n = g.len() as i64;
    // SAFETY: the kernel writes every element.
    let mut y = unsafe { dev.alloc::<bf16>(g.len())? };
    let func = function(&dev, "swiglu_bf16")?;
    let stream = dev.cuda_stream();
    let config = grid_stride(g.len());
    let mut launch = stream.launch_builder(&func);
    launch.arg(&g).arg(&u).arg(&mut y).arg(&n);
    // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
    unsafe { launch.launch(config) }.map_err(launch_error)?;
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// Runs a kernel over tensors outside the autograd graph (the backward passes): borrows the CUDA
/// storages of `inputs` (made contiguous first) for `launch`, and wraps the storage it returns as a
/// tensor of `shape`.
fn launch_on_tensors(
    inputs: &[&Tensor],
    shape: impl Into<Shape>,
    launch: impl FnOnce(&CudaDevice, &[(&CudaStorage, &Layout)]) -> candle_core::Result<CudaSlice<bf16>>,
) -> candle_core::Result<Tensor> {
    let inputs = inputs.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let storages = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cuda(s) => Ok((s, *layout)),
            _ => Err(candle_core::Error::Msg("a CUDA kernel was given a tensor on another device".into())),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dev = storages[0].0.device.clone();
    let out = CudaStorage::wrap_cuda_slice(launch(&dev, &storages)?, dev);
    Ok(Tensor::from_storage(Storage::Cuda(out), shape, BackpropOp::none(), false))
}

/// The contiguous elements of one borrowed input, as `T`.
fn view<'a, T: DeviceRepr + candle_core::cuda_backend::CudaDType>(
    input: &(&'a CudaStorage, &Layout),
    op: &'static str,
) -> candle_core::Result<CudaView<'a, T>> {
    let (start, end) = input.1.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op })?;
    Ok(input.0.as_cuda_slice::<T>()?.slice(start..end))
}

/// The logits' gradient of [`row_nll_bf16`] for bf16 `logits` `(rows, vocab)`, u32 `targets` and f32
/// row gradients `grad` `(rows)`, as `row_nll_backward_bf16` computes it.
pub fn row_nll_backward_bf16(
    logits: &Tensor,
    targets: &Tensor,
    grad: &Tensor,
) -> candle_core::Result<Tensor> {
    let (rows, vocab) = logits.dims2()?;
    launch_on_tensors(&[logits, targets, grad], (rows, vocab), |dev, s| {
        let op = "row-nll-backward";
        let (x, t, g) = (view::<bf16>(&s[0], op)?, view::<u32>(&s[1], op)?, view::<f32>(&s[2], op)?);
        // SAFETY: the kernel writes every element.
        let mut d = unsafe { dev.alloc::<bf16>(rows * vocab)? };
        let func = function(dev, "row_nll_backward_bf16")?;
        let stream = dev.cuda_stream();
        let vocab = vocab as i32;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&x).arg(&t).arg(&g).arg(&mut d).arg(&vocab);
        // SAFETY: the arguments match the kernel's signature; `x` and `d` hold rows × vocab values.
        unsafe { launch.launch(per_row(rows, 512)) }.map_err(launch_error)?;
        Ok(d)
    })
}

/// The gradient of bf16 `x` `(…, n)` for an RMS norm with weight `w` given `dy`, as
/// `rms_norm_backward_bf16` computes it.
pub fn rms_norm_backward_bf16(x: &Tensor, w: &Tensor, dy: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let n = w.elem_count();
    let rows = x.elem_count() / n;
    launch_on_tensors(&[x, w, dy], x.shape(), |dev, s| {
        let op = "rms-norm-backward";
        let (xv, wv, gv) = (view::<bf16>(&s[0], op)?, view::<bf16>(&s[1], op)?, view::<bf16>(&s[2], op)?);
        // SAFETY: the kernel writes every element.
        let mut d = unsafe { dev.alloc::<bf16>(rows * n)? };
        let func = function(dev, "rms_norm_backward_bf16")?;
        let stream = dev.cuda_stream();
        let n = n as i32;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&xv).arg(&wv).arg(&gv).arg(&mut d).arg(&n).arg(&eps);
        // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
        unsafe { launch.launch(per_row(rows, 256)) }.map_err(launch_error)?;
        Ok(d)
    })
}

/// The gradient of [`rope_bf16`]'s input `(batch, seq, heads, d)` given `dy` `(batch, heads, seq, d)`,
/// as `rope_backward_bf16` computes it.
pub fn rope_backward_bf16(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, s, d) = dy.dims4()?;
    launch_on_tensors(&[dy, cos, sin], (b, s, h, d), |dev, st| {
        let op = "rope-backward";
        let (gv, cv, sv) = (view::<bf16>(&st[0], op)?, view::<bf16>(&st[1], op)?, view::<bf16>(&st[2], op)?);
        // SAFETY: the kernel writes every element.
        let mut dx = unsafe { dev.alloc::<bf16>(b * s * h * d)? };
        let func = function(dev, "rope_backward_bf16")?;
        let stream = dev.cuda_stream();
        let config = grid_stride(b * s * h * d / 2);
        let (b, s, h, d) = (b as i32, s as i32, h as i32, d as i32);
        let mut launch = stream.launch_builder(&func);
        launch.arg(&gv).arg(&cv).arg(&sv).arg(&mut dx).arg(&b).arg(&s).arg(&h).arg(&d);
        // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
        unsafe { launch.launch(config) }.map_err(launch_error)?;
        Ok(dx)
    })
}

/// The gradients of `gate` and `up` of [`swiglu_bf16`] given `dy`, as `swiglu_backward_bf16` computes them.
pub fn swiglu_backward_bf16(
    gate: &Tensor,
    up: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = gate.elem_count();
    let both = launch_on_tensors(&[gate, up, dy], (2, n), |dev, s| {
        let op = "swiglu-backward";
        let (g, u, y) = (view::<bf16>(&s[0], op)?, view::<bf16>(&s[1], op)?, view::<bf16>(&s[2], op)?);
        // SAFETY: the kernel writes every element.
        let mut d = unsafe { dev.alloc::<bf16>(2 * n)? };
        let func = function(dev, "swiglu_backward_bf16")?;
        let stream = dev.cuda_stream();
        let n64 = n as i64;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&g).arg(&u).arg(&y).arg(&mut d).arg(&n64);
        // SAFETY: the arguments match the kernel's signature and the buffers' lengths.
        unsafe { launch.launch(grid_stride(n)) }.map_err(launch_error)?;
        Ok(d)
    })?;
    Ok((both.get(0)?.reshape(gate.shape())?, both.get(1)?.reshape(up.shape())?))
}
