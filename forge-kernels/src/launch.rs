//! The one launcher of forge's CUDA kernels (`cuda/forge_kernels.cu`, embedded by build.rs).
//!
//! Every kernel has the same shape: its inputs as device pointers, then one output, then scalars. So a
//! launch is described as data — kernel name, inputs (borrowed storages, viewed by their dtype), output
//! length and type, grid, scalars — and this file is the only place that talks to the driver.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape, Storage, Tensor};
use half::bf16;

/// forge's kernels as build.rs compiled them (see [`crate::fatbin`] for what it holds).
pub static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/forge_kernels.fatbin"));

/// How the threads of a launch cover the work.
#[derive(Clone, Copy)]
pub enum Grid {
    /// One block of `threads` per row, for the kernels that reduce over a row.
    PerRow { rows: usize, threads: u32 },
    /// Enough 256-thread blocks for `n` items, capped: the elementwise kernels loop over a grid stride.
    Stride(usize),
    /// [`Grid::Stride`] for kernels that take eight values a thread and step where `n` and the buffers
    /// allow: an eighth of the threads when `n` is a multiple of 8 (the loop covers the rest either way).
    Stride8(usize),
    /// [`Grid::PerRow`] with `shared` bytes of dynamic shared memory a block (more than the 48 KiB a
    /// kernel gets without asking is allowed for it at launch).
    PerRowShared { rows: usize, threads: u32, shared: u32 },
    /// Up to `blocks` blocks of `threads`, no more than the card holds at once and the work shared
    /// evenly between them, for kernels whose warps walk their rows a grid apart: a last wave of a few
    /// blocks would run at a fraction of the card (`cuda/matvec.cu`).
    OneWave { blocks: usize, threads: u32 },
}

impl Grid {
    fn config(self) -> LaunchConfig {
        let (blocks, threads, shared) = match self {
            Grid::PerRow { rows, threads } => (rows as u32, threads, 0),
            Grid::Stride(n) => (n.div_ceil(256).clamp(1, 65535 * 8) as u32, 256, 0),
            Grid::Stride8(n) => return Grid::Stride(if n % 8 == 0 { n / 8 } else { n }).config(),
            Grid::PerRowShared { rows, threads, shared } => (rows as u32, threads, shared),
            Grid::OneWave { blocks, threads } => (blocks as u32, threads, 0),
        };
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: shared }
    }
}

/// A scalar argument, after the output.
#[derive(Clone, Copy)]
pub enum Scalar {
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

/// A kernel's output element type.
pub trait Output: DeviceRepr + CudaDType {}
impl Output for bf16 {}
impl Output for f32 {}
impl Output for u32 {}

/// The module, loaded once per device.
fn module(dev: &CudaDevice) -> candle_core::Result<Arc<CudaModule>> {
    static MODULES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaModule>>>> = OnceLock::new();
    let mut modules = MODULES.get_or_init(Default::default).lock().expect("no panic while loading");
    if let Some(module) = modules.get(&dev.id()) {
        return Ok(module.clone());
    }
    let module = dev
        .cuda_stream()
        .context()
        .load_module(Ptx::from_binary(EMBEDDED.to_vec()))
        .map_err(|e| candle_core::Error::Msg(format!("loading forge's CUDA kernels: {e}")))?;
    modules.insert(dev.id(), module.clone());
    Ok(module)
}

/// Kernel `name` on `dev`, allowed `shared` bytes of dynamic shared memory: looked up and allowed once
/// per device (a training step launches thousands of kernels; each lookup and attribute is a driver
/// call).
fn function(dev: &CudaDevice, name: &'static str, shared: u32) -> candle_core::Result<CudaFunction> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
    /// Each kernel looked up, with the dynamic shared memory it is allowed.
    type Functions = HashMap<(DeviceId, &'static str), (CudaFunction, u32)>;
    static FUNCTIONS: OnceLock<Mutex<Functions>> = OnceLock::new();
    let mut functions = FUNCTIONS.get_or_init(Default::default).lock().expect("no panic while loading");
    let key = (dev.id(), name);
    if let Some((func, allowed)) = functions.get(&key) {
        if *allowed >= shared {
            return Ok(func.clone());
        }
    }
    // New, or asked for more shared memory than it was allowed so far.
    let func = match functions.remove(&key) {
        Some((func, _)) => func,
        None => module(dev)?
            .load_function(name)
            .map_err(|e| candle_core::Error::Msg(format!("CUDA kernel {name}: {e}")))?,
    };
    if shared > 0 {
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            shared as i32,
        )
        .map_err(|e| candle_core::Error::Msg(format!("{name}: {shared} bytes of shared memory: {e}")))?;
    }
    functions.insert(key, (func.clone(), shared));
    Ok(func)
}

/// The blocks of a [`Grid::OneWave`] launch of `blocks` of `threads`: as few rounds of what `dev` holds
/// at once (its multiprocessors times the kernel's resident blocks on one, asked once a kernel) as
/// cover them, each of the same size.
fn one_wave(
    dev: &CudaDevice,
    kernel: &'static str,
    func: &CudaFunction,
    blocks: usize,
    threads: u32,
) -> candle_core::Result<u32> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
    static RESIDENT: OnceLock<Mutex<HashMap<(DeviceId, &'static str), usize>>> = OnceLock::new();
    let mut resident = RESIDENT.get_or_init(Default::default).lock().expect("no panic while asking");
    let held = match resident.get(&(dev.id(), kernel)) {
        Some(&held) => held,
        None => {
            let fail = |e| candle_core::Error::Msg(format!("{kernel}: occupancy: {e}"));
            let context = dev.cuda_stream().context().clone();
            let sms = context
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(fail)?;
            let per_sm =
                func.occupancy_max_active_blocks_per_multiprocessor(threads, 0, None).map_err(fail)?;
            let held = sms.max(1) as usize * per_sm.max(1) as usize;
            resident.insert((dev.id(), kernel), held);
            held
        }
    };
    let rounds = blocks.div_ceil(held).max(1);
    Ok(blocks.div_ceil(rounds).max(1) as u32)
}

/// A borrowed input, viewed as the element type its storage holds.
enum View<'a> {
    Bf16(CudaView<'a, bf16>),
    F32(CudaView<'a, f32>),
    U32(CudaView<'a, u32>),
    U8(CudaView<'a, u8>),
}

fn view<'a>(
    kernel: &'static str,
    (storage, layout): (&'a CudaStorage, &Layout),
) -> candle_core::Result<View<'a>> {
    let (start, end) =
        layout.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: kernel })?;
    Ok(match storage.dtype() {
        DType::BF16 => View::Bf16(storage.as_cuda_slice::<bf16>()?.slice(start..end)),
        DType::F32 => View::F32(storage.as_cuda_slice::<f32>()?.slice(start..end)),
        DType::U32 => View::U32(storage.as_cuda_slice::<u32>()?.slice(start..end)),
        DType::U8 => View::U8(storage.as_cuda_slice::<u8>()?.slice(start..end)),
        other => return Err(candle_core::Error::UnsupportedDTypeForOp(other, kernel)),
    })
}

/// Runs `kernel` over contiguous `inputs` into a new buffer of `len` `T`s, which the kernel must write
/// whole.
pub fn launch<T: Output>(
    kernel: &'static str,
    inputs: &[(&CudaStorage, &Layout)],
    len: usize,
    grid: Grid,
    scalars: &[Scalar],
) -> candle_core::Result<CudaStorage> {
    let dev = inputs[0].0.device.clone();
    let views = inputs.iter().map(|&input| view(kernel, input)).collect::<candle_core::Result<Vec<_>>>()?;
    // SAFETY: every kernel writes each element of its output (the contract of this launcher).
    let mut out = unsafe { dev.alloc::<T>(len)? };
    let shared = if let Grid::PerRowShared { shared, .. } = grid { shared } else { 0 };
    let func = function(&dev, kernel, shared)?;
    let mut config = grid.config();
    if let Grid::OneWave { blocks, threads } = grid {
        config.grid_dim.0 = one_wave(&dev, kernel, &func, blocks, threads)?;
    }
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&func);
    for v in &views {
        match v {
            View::Bf16(v) => builder.arg(v),
            View::F32(v) => builder.arg(v),
            View::U32(v) => builder.arg(v),
            View::U8(v) => builder.arg(v),
        };
    }
    builder.arg(&mut out);
    for s in scalars {
        match s {
            Scalar::I32(v) => builder.arg(v),
            Scalar::I64(v) => builder.arg(v),
            Scalar::F32(v) => builder.arg(v),
            Scalar::F64(v) => builder.arg(v),
        };
    }
    // SAFETY: the callers give each kernel the arguments of its signature in `cuda/forge_kernels.cu`,
    // with buffers of the lengths its indexing reads.
    unsafe { builder.launch(config) }
        .map_err(|e| candle_core::Error::Msg(format!("CUDA launch of {kernel}: {e}")))?;
    Ok(CudaStorage::wrap_cuda_slice::<T>(out, dev))
}

/// [`launch`] on tensors outside the autograd graph (the backward passes): made contiguous, their
/// storages borrowed, the result a tensor of `shape`.
pub fn launch_on_tensors<T: Output>(
    kernel: &'static str,
    inputs: &[&Tensor],
    shape: impl Into<Shape>,
    grid: Grid,
    scalars: &[Scalar],
) -> candle_core::Result<Tensor> {
    let shape = shape.into();
    let inputs = inputs.iter().map(|t| t.contiguous()).collect::<candle_core::Result<Vec<_>>>()?;
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let storages = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cuda(s) => Ok((s, *layout)),
            _ => Err(candle_core::Error::Msg(format!("{kernel} was given a tensor on another device"))),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let out = launch::<T>(kernel, &storages, shape.elem_count(), grid, scalars)?;
    Ok(Tensor::from_storage(Storage::Cuda(out), shape, BackpropOp::none(), false))
}

/// `t` as kernels that read eight bf16 a load take it: contiguous from a 16-byte boundary (a view that
/// starts elsewhere is copied).
pub fn aligned8(t: &Tensor) -> candle_core::Result<Tensor> {
    let t = t.contiguous()?;
    if t.layout().start_offset().is_multiple_of(8) {
        Ok(t)
    } else {
        t.copy()
    }
}

/// The output of a kernel whose output has its first input's shape, for a custom op's `cuda_fwd`.
pub fn same_shape<T: Output>(
    kernel: &'static str,
    inputs: &[(&CudaStorage, &Layout)],
    grid: Grid,
    scalars: &[Scalar],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let shape = inputs[0].1.shape().clone();
    Ok((launch::<T>(kernel, inputs, shape.elem_count(), grid, scalars)?, shape))
}
