//! Adapters across the boundary, as kernels over flat f32 buffers: the host owns the parameters and
//! the autograd graph and calls the plugin for the forward pass, the backward pass and merging.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{serve, slice, slice_mut};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{AdapterKernel, LinearDims, Options, StrategyError};

/// The table entry of adapter `T`.
pub fn export<T: Export + AdapterKernel>() -> ForgeStrategy {
    let methods: &'static ForgeAdapterMethods = Box::leak(Box::new(ForgeAdapterMethods {
        param_count: param_count::<T>,
        init: init::<T>,
        forward: forward::<T>,
        backward: backward::<T>,
        delta_weight: delta_weight::<T>,
    }));
    ForgeStrategy { adapter: methods, ..describe::<T>(FORGE_KIND_ADAPTER) }
}

unsafe fn kernel<'a, T>(instance: *mut c_void) -> &'a T {
    &*(instance as *const T)
}

unsafe extern "C" fn param_count<T: AdapterKernel>(
    instance: *mut c_void,
    module: ForgeStr,
    in_dim: usize,
    out_dim: usize,
) -> usize {
    // A panic or bad text leaves the module alone; the host then adapts nothing there.
    std::panic::catch_unwind(|| match module.to_str() {
        Ok(module) => kernel::<T>(instance).param_count(module, in_dim, out_dim),
        Err(_) => 0,
    })
    .unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn init<T: AdapterKernel>(
    instance: *mut c_void,
    module: ForgeStr,
    in_dim: usize,
    out_dim: usize,
    seed: u64,
    params: *mut f32,
    count: usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let dims = LinearDims { in_dim, out_dim, rows: 0 };
        kernel::<T>(instance).init(module.to_str()?, dims, seed, slice_mut(params, count))
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn forward<T: AdapterKernel>(
    instance: *mut c_void,
    in_dim: usize,
    out_dim: usize,
    rows: usize,
    x: *const f32,
    params: *const f32,
    count: usize,
    y: *mut f32,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let dims = LinearDims { in_dim, out_dim, rows };
        kernel::<T>(instance).forward(
            dims,
            slice(x, rows * in_dim),
            slice(params, count),
            slice_mut(y, rows * out_dim),
        )
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn backward<T: AdapterKernel>(
    instance: *mut c_void,
    in_dim: usize,
    out_dim: usize,
    rows: usize,
    x: *const f32,
    params: *const f32,
    count: usize,
    dy: *const f32,
    dx: *mut f32,
    dparams: *mut f32,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let dims = LinearDims { in_dim, out_dim, rows };
        kernel::<T>(instance).backward(
            dims,
            slice(x, rows * in_dim),
            slice(params, count),
            slice(dy, rows * out_dim),
            slice_mut(dx, rows * in_dim),
            slice_mut(dparams, count),
        )
    })
}

unsafe extern "C" fn delta_weight<T: AdapterKernel>(
    instance: *mut c_void,
    in_dim: usize,
    out_dim: usize,
    params: *const f32,
    count: usize,
    dw: *mut f32,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let dims = LinearDims { in_dim, out_dim, rows: 0 };
        kernel::<T>(instance).delta_weight(dims, slice(params, count), slice_mut(dw, out_dim * in_dim))
    })
}

struct PluginAdapter(Instance);

// SAFETY: the ABI requires plugin functions to be callable from any thread; the host never calls
// one instance concurrently (training and evaluation run one forward or backward at a time).
unsafe impl Send for PluginAdapter {}
unsafe impl Sync for PluginAdapter {}

impl PluginAdapter {
    fn methods(&self) -> &ForgeAdapterMethods {
        // SAFETY: `read_plugin` checked that adapters have methods.
        unsafe { &*self.0.raw.adapter }
    }

    fn check(&self, what: &str, got: usize, want: usize) -> Result<(), StrategyError> {
        if got == want {
            Ok(())
        } else {
            Err(self
                .0
                .blame(StrategyError::failed(format!("{what} has {got} values where {want} are needed"))))
        }
    }
}

impl AdapterKernel for PluginAdapter {
    fn param_count(&self, module: &str, in_dim: usize, out_dim: usize) -> usize {
        // SAFETY: the instance is live and `module` outlives the call.
        unsafe { (self.methods().param_count)(self.0.ptr, ForgeStr::new(module), in_dim, out_dim) }
    }

    fn init(
        &self,
        module: &str,
        dims: LinearDims,
        seed: u64,
        params: &mut [f32],
    ) -> Result<(), StrategyError> {
        let init = self.methods().init;
        // SAFETY: `params` holds the count the call is told.
        self.0.call(|error| unsafe {
            init(
                self.0.ptr,
                ForgeStr::new(module),
                dims.in_dim,
                dims.out_dim,
                seed,
                params.as_mut_ptr(),
                params.len(),
                error,
            )
        })
    }

    fn forward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        y: &mut [f32],
    ) -> Result<(), StrategyError> {
        self.check("the input", x.len(), dims.rows * dims.in_dim)?;
        self.check("the output", y.len(), dims.rows * dims.out_dim)?;
        let forward = self.methods().forward;
        // SAFETY: every buffer has the length the ABI documents for these dims.
        self.0.call(|error| unsafe {
            forward(
                self.0.ptr,
                dims.in_dim,
                dims.out_dim,
                dims.rows,
                x.as_ptr(),
                params.as_ptr(),
                params.len(),
                y.as_mut_ptr(),
                error,
            )
        })
    }

    fn backward(
        &self,
        dims: LinearDims,
        x: &[f32],
        params: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        dparams: &mut [f32],
    ) -> Result<(), StrategyError> {
        self.check("the input", x.len(), dims.rows * dims.in_dim)?;
        self.check("the input gradient", dx.len(), x.len())?;
        self.check("the output gradient", dy.len(), dims.rows * dims.out_dim)?;
        self.check("the parameter gradient", dparams.len(), params.len())?;
        let backward = self.methods().backward;
        // SAFETY: every buffer has the length the ABI documents for these dims.
        self.0.call(|error| unsafe {
            backward(
                self.0.ptr,
                dims.in_dim,
                dims.out_dim,
                dims.rows,
                x.as_ptr(),
                params.as_ptr(),
                params.len(),
                dy.as_ptr(),
                dx.as_mut_ptr(),
                dparams.as_mut_ptr(),
                error,
            )
        })
    }

    fn delta_weight(&self, dims: LinearDims, params: &[f32], dw: &mut [f32]) -> Result<(), StrategyError> {
        self.check("the weight delta", dw.len(), dims.out_dim * dims.in_dim)?;
        let delta_weight = self.methods().delta_weight;
        // SAFETY: `dw` holds out_dim × in_dim values.
        self.0.call(|error| unsafe {
            delta_weight(
                self.0.ptr,
                dims.in_dim,
                dims.out_dim,
                params.as_ptr(),
                params.len(),
                dw.as_mut_ptr(),
                error,
            )
        })
    }
}

impl PluginStrategy {
    /// Builds this plugin adapter kernel with resolved options.
    pub fn adapter(&self, options: &Options) -> Result<Box<dyn AdapterKernel>, StrategyError> {
        Ok(Box::new(PluginAdapter(self.instantiate(options)?)))
    }
}
