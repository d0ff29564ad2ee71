//! Optimizers across the boundary, as kernels over flat f32 buffers in host memory: the host keeps
//! the parameters and the autograd graph, the plugin updates one buffer at a time.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{serve, slice, slice_mut};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{Optimizer, Options, StateData, StateTensor, StrategyError};

/// The table entry of optimizer `T`.
pub fn export<T: Export + Optimizer>() -> ForgeStrategy {
    let methods: &'static ForgeOptimizerMethods = Box::leak(Box::new(ForgeOptimizerMethods {
        update: update::<T>,
        state_bytes: state_bytes::<T>,
        state: state::<T>,
        load_state: load_state::<T>,
    }));
    ForgeStrategy { optimizer: methods, ..describe::<T>(FORGE_KIND_OPTIMIZER) }
}

unsafe extern "C" fn update<T: Optimizer>(
    instance: *mut c_void,
    id: usize,
    params: *mut f32,
    grads: *const f32,
    len: usize,
    lr: f64,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || (*(instance as *mut T)).update(id, slice_mut(params, len), slice(grads, len), lr))
}

unsafe extern "C" fn state_bytes<T: Optimizer>(instance: *mut c_void) -> usize {
    std::panic::catch_unwind(|| (*(instance as *const T)).state_bytes()).unwrap_or(0)
}

/// One piece of state as (dtype, pointer, count).
fn raw_parts(data: &StateData) -> (u32, *const c_void, usize) {
    match data {
        StateData::F32(v) => (FORGE_DTYPE_F32, v.as_ptr() as *const c_void, v.len()),
        StateData::U8(v) => (FORGE_DTYPE_U8, v.as_ptr() as *const c_void, v.len()),
        StateData::U64(v) => (FORGE_DTYPE_U64, v.as_ptr() as *const c_void, v.len()),
    }
}

/// Copies one piece of state the other side lent.
unsafe fn owned(
    name: ForgeStr,
    dtype: u32,
    data: *const c_void,
    count: usize,
) -> Result<StateTensor, StrategyError> {
    let data = match dtype {
        FORGE_DTYPE_F32 => StateData::F32(slice(data as *const f32, count).to_vec()),
        FORGE_DTYPE_U8 => StateData::U8(slice(data as *const u8, count).to_vec()),
        FORGE_DTYPE_U64 => StateData::U64(slice(data as *const u64, count).to_vec()),
        other => return Err(StrategyError::failed(format!("optimizer state of unknown dtype {other}"))),
    };
    Ok(StateTensor { name: name.to_str()?.to_string(), data })
}

unsafe extern "C" fn state<T: Optimizer>(
    instance: *mut c_void,
    sink: *const ForgeStateSink,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let sink = &*sink;
        for piece in (*(instance as *const T)).state()? {
            let (dtype, data, count) = raw_parts(&piece.data);
            (sink.add)(sink.ctx, ForgeStr::new(&piece.name), dtype, data, count);
        }
        Ok(())
    })
}

unsafe extern "C" fn load_state<T: Optimizer>(
    instance: *mut c_void,
    entries: *const ForgeStateEntry,
    count: usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let pieces = slice(entries, count)
            .iter()
            .map(|e| owned(e.name, e.dtype, e.data, e.count))
            .collect::<Result<Vec<_>, _>>()?;
        (*(instance as *mut T)).load_state(pieces)
    })
}

/// Collects state pieces the plugin hands over; the first bad one is kept as the error.
struct Collected(Result<Vec<StateTensor>, StrategyError>);

unsafe extern "C" fn collect(
    ctx: *mut c_void,
    name: ForgeStr,
    dtype: u32,
    data: *const c_void,
    count: usize,
) {
    let collected = &mut *(ctx as *mut Collected);
    if let Ok(pieces) = &mut collected.0 {
        match owned(name, dtype, data, count) {
            Ok(piece) => pieces.push(piece),
            Err(e) => collected.0 = Err(e),
        }
    }
}

struct PluginOptimizer(Instance);

impl PluginOptimizer {
    fn methods(&self) -> &ForgeOptimizerMethods {
        // SAFETY: `read_plugin` checked that optimizers have methods.
        unsafe { &*self.0.raw.optimizer }
    }
}

impl Optimizer for PluginOptimizer {
    fn update(&mut self, id: usize, params: &mut [f32], grads: &[f32], lr: f64) -> Result<(), StrategyError> {
        if params.len() != grads.len() {
            return Err(StrategyError::failed(format!(
                "parameter {id} has {} values and its gradient {}",
                params.len(),
                grads.len()
            )));
        }
        let update = self.methods().update;
        // SAFETY: both buffers hold `params.len()` values and outlive the call.
        self.0.call(|error| unsafe {
            update(self.0.ptr, id, params.as_mut_ptr(), grads.as_ptr(), params.len(), lr, error)
        })
    }

    fn state_bytes(&self) -> usize {
        // SAFETY: the instance is live.
        unsafe { (self.methods().state_bytes)(self.0.ptr) }
    }

    fn state(&self) -> Result<Vec<StateTensor>, StrategyError> {
        let mut collected = Collected(Ok(Vec::new()));
        let sink = ForgeStateSink { ctx: &mut collected as *mut Collected as *mut c_void, add: collect };
        let state = self.methods().state;
        // SAFETY: `sink` and `collected` outlive the call.
        self.0.call(|error| unsafe { state(self.0.ptr, &sink, error) })?;
        collected.0.map_err(|e| self.0.blame(e))
    }

    fn load_state(&mut self, pieces: Vec<StateTensor>) -> Result<(), StrategyError> {
        let entries: Vec<ForgeStateEntry> = pieces
            .iter()
            .map(|p| {
                let (dtype, data, count) = raw_parts(&p.data);
                ForgeStateEntry { name: ForgeStr::new(&p.name), dtype, data, count }
            })
            .collect();
        let load = self.methods().load_state;
        // SAFETY: `entries` borrow `pieces`, which outlive the call.
        self.0.call(|error| unsafe { load(self.0.ptr, entries.as_ptr(), entries.len(), error) })
    }
}

impl PluginStrategy {
    /// Builds this plugin optimizer with resolved options.
    pub fn optimizer(&self, options: &Options) -> Result<Box<dyn Optimizer>, StrategyError> {
        Ok(Box::new(PluginOptimizer(self.instantiate(options)?)))
    }
}
