//! What the CUDA driver's compilation of candle's own kernels costs. candle ships its kernels as PTX,
//! one module per family of ops (unary, binary, cast, reduce, indexing...), and the driver compiles a
//! whole module for the card the first time any of its kernels runs; on a fresh machine (an empty JIT
//! cache) that lands inside forge's first eval, training step or generated token. forge's own kernels
//! carry machine code and compile nothing (`crate::fatbin`). This times each of candle's modules: run
//! with `CUDA_CACHE_DISABLE=1`, so that the driver compiles every time, as on a fresh machine.
use std::time::Instant;

use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::Device;

/// One of candle's PTX modules: its name, PTX size and the seconds the driver took to load it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModuleLoad {
    pub module: &'static str,
    pub ptx_bytes: usize,
    pub seconds: f64,
}

/// Loads each of candle's PTX modules once on `device` and times it.
pub fn candle_module_loads(device: &Device) -> candle_core::Result<Vec<ModuleLoad>> {
    let Device::Cuda(dev) = device else { candle_core::bail!("candle's PTX loads on a CUDA device only") };
    let context = dev.cuda_stream().context().clone();
    let modules = [
        ("affine", candle_kernels::AFFINE),
        ("binary", candle_kernels::BINARY),
        ("cast", candle_kernels::CAST),
        ("conv", candle_kernels::CONV),
        ("fill", candle_kernels::FILL),
        ("indexing", candle_kernels::INDEXING),
        ("quantized", candle_kernels::QUANTIZED),
        ("reduce", candle_kernels::REDUCE),
        ("sort", candle_kernels::SORT),
        ("ternary", candle_kernels::TERNARY),
        ("unary", candle_kernels::UNARY),
    ];
    let mut loads = Vec::new();
    for (module, m) in modules {
        let started = Instant::now();
        context
            .load_module(Ptx::from_src(m.ptx()))
            .map_err(|e| candle_core::Error::Msg(format!("loading candle's {module} kernels: {e}")))?;
        loads.push(ModuleLoad { module, ptx_bytes: m.ptx().len(), seconds: started.elapsed().as_secs_f64() });
    }
    Ok(loads)
}
