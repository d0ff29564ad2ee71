//! Scorers across the boundary. Plugin side: [`export`] builds the table entry, and the host's
//! callback table is seen through [`ScoringContext`]. Host side: [`PluginStrategy::scorer`] wraps an
//! instance as an [`ImportanceScorer`], and the host's context is offered as a callback table.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{
    flatten, flatten_kinds, request, serve, slice, slice_mut, total_units, unflatten, unflatten_kinds,
    unit_code, GeometryFfi,
};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{
    HeadScores, HostTensor, ImportanceScorer, ModelGeometry, Options, ScoringContext, StrategyError, UnitKind,
};

/// The table entry of scorer `T`.
pub fn export<T: Export + ImportanceScorer>() -> ForgeStrategy {
    let methods: &'static ForgeScorerMethods = Box::leak(Box::new(ForgeScorerMethods { score: score::<T> }));
    ForgeStrategy { scorer: methods, ..describe::<T>(FORGE_KIND_SCORER) }
}

unsafe extern "C" fn score<T: ImportanceScorer>(
    instance: *mut c_void,
    host: *const ForgeScoringHost,
    out: *mut f32,
    len: usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let host = &*host;
        // This plugin speaks 1.1, so its host does too and describes its other units.
        let (geometry, kinds) = host.geometry.geometry_with_units(host.extra_units, host.extra_unit_count);
        let mut ctx = HostScoring { geometry, host };
        let scores = (*(instance as *const T)).score(&mut ctx)?;
        scores.validate(&ctx.geometry)?;
        // Kinds this build does not know lie after the known ones and stay NaN (unscored).
        let flat = flatten_kinds(&scores, &ctx.geometry, &kinds);
        if flat.len() > len {
            return Err(StrategyError::failed(format!("{} scores for {len} units", flat.len())));
        }
        slice_mut(out, len)[..flat.len()].copy_from_slice(&flat);
        Ok(())
    })
}

/// The host's callback table, seen from the plugin as a [`ScoringContext`].
struct HostScoring<'a> {
    host: &'a ForgeScoringHost,
    geometry: ModelGeometry,
}

impl HostScoring<'_> {
    fn probe(&mut self, probe: u32) -> Result<Vec<Vec<f32>>, StrategyError> {
        let mut out = vec![0f32; self.geometry.total_heads()];
        // SAFETY: `out` has the length the call is told.
        request(|error| unsafe {
            (self.host.probe)(self.host.ctx, probe, out.as_mut_ptr(), out.len(), error)
        })?;
        Ok(unflatten(&out, &self.geometry.heads))
    }

    fn probe_units(&mut self, probe: u32, kind: UnitKind) -> Result<Vec<Vec<f32>>, StrategyError> {
        let counts = self.geometry.of(kind).0;
        let mut out = vec![0f32; counts.iter().sum()];
        let (ctx, unit) = (self.host.ctx, unit_code(kind));
        // SAFETY: `out` has the length the call is told.
        request(|error| unsafe {
            (self.host.probe_units)(ctx, probe, unit, out.as_mut_ptr(), out.len(), error)
        })?;
        Ok(unflatten(&out, &counts))
    }
}

impl ScoringContext for HostScoring<'_> {
    fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError> {
        let mut view = std::mem::MaybeUninit::<ForgeTensorView>::uninit();
        // SAFETY: the host fills `view` when it returns FORGE_OK.
        request(|error| unsafe {
            (self.host.tensor)(self.host.ctx, ForgeStr::new(name), view.as_mut_ptr(), error)
        })?;
        // SAFETY: filled above; valid until this `score` call returns.
        unsafe { view.assume_init().to_host_tensor() }
    }

    fn seed(&self) -> u64 {
        self.host.seed
    }

    fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe(FORGE_PROBE_HEAD_OUTPUT_NORMS)
    }

    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe(FORGE_PROBE_HEAD_MASK_GRADIENTS)
    }

    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe(FORGE_PROBE_ATTENTION_ENTROPY)
    }

    fn linear_head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_OUTPUT_NORMS, UnitKind::LinearHead)
    }

    fn linear_head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_MASK_GRADIENTS, UnitKind::LinearHead)
    }

    fn mlp_channel_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_OUTPUT_NORMS, UnitKind::MlpChannel)
    }

    fn mlp_channel_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_MASK_GRADIENTS, UnitKind::MlpChannel)
    }

    fn layer_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_OUTPUT_NORMS, UnitKind::Layer)
    }

    fn layer_gate_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_HEAD_MASK_GRADIENTS, UnitKind::Layer)
    }

    fn layer_cosines(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.probe_units(FORGE_PROBE_LAYER_COSINE, UnitKind::Layer)
    }
}

impl ForgeTensorView {
    /// Copies a host f32 view, following its strides, into a row-major [`HostTensor`].
    ///
    /// # Safety
    /// The view must be valid: `shape` and `strides` of `ndim` values, `data` covering every index.
    pub unsafe fn to_host_tensor(&self) -> Result<HostTensor, StrategyError> {
        if self.dtype != FORGE_DTYPE_F32 || self.device != FORGE_DEVICE_CPU {
            return Err(StrategyError::failed(format!(
                "expected an f32 host tensor, got dtype {} on device {}",
                self.dtype, self.device
            )));
        }
        let ndim = self.ndim as usize;
        let shape: Vec<usize> = slice(self.shape, ndim).iter().map(|&d| d as usize).collect();
        let strides = slice(self.strides, ndim);
        let count: usize = shape.iter().product();
        let base = self.data as *const f32;
        let mut data = Vec::with_capacity(count);
        let mut index = vec![0usize; ndim];
        for _ in 0..count {
            let offset: isize = index.iter().zip(strides).map(|(&i, &s)| i as isize * s as isize).sum();
            data.push(*base.offset(offset));
            for d in (0..ndim).rev() {
                index[d] += 1;
                if index[d] < shape[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(HostTensor { shape, data })
    }
}

/// What the host's callbacks need during one call: its context, and the tensors it lent.
struct ScoringState<'a> {
    ctx: &'a mut dyn ScoringContext,
    lent: Vec<(Vec<u64>, Vec<i64>, HostTensor)>,
}

unsafe extern "C" fn host_tensor(
    ctx: *mut c_void,
    name: ForgeStr,
    out: *mut ForgeTensorView,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let state = &mut *(ctx as *mut ScoringState);
        let tensor = state.ctx.tensor(name.to_str()?)?;
        let shape: Vec<u64> = tensor.shape.iter().map(|&d| d as u64).collect();
        let mut strides = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1] as i64;
        }
        state.lent.push((shape, strides, tensor));
        let (shape, strides, tensor) = state.lent.last_mut().expect("just pushed");
        *out = ForgeTensorView {
            dtype: FORGE_DTYPE_F32,
            device: FORGE_DEVICE_CPU,
            device_index: 0,
            ndim: shape.len() as u32,
            shape: shape.as_ptr(),
            strides: strides.as_ptr(),
            data: tensor.data.as_mut_ptr() as *mut c_void,
            stream: std::ptr::null_mut(),
        };
        Ok(())
    })
}

unsafe extern "C" fn host_probe(
    ctx: *mut c_void,
    probe: u32,
    out: *mut f32,
    len: usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    host_probe_units(ctx, probe, FORGE_UNIT_QUERY_HEAD, out, len, error)
}

unsafe extern "C" fn host_probe_units(
    ctx: *mut c_void,
    probe: u32,
    unit: u32,
    out: *mut f32,
    len: usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let state = &mut *(ctx as *mut ScoringState);
        let rows = match (probe, unit) {
            (FORGE_PROBE_HEAD_OUTPUT_NORMS, FORGE_UNIT_QUERY_HEAD) => state.ctx.head_output_norms()?,
            (FORGE_PROBE_HEAD_MASK_GRADIENTS, FORGE_UNIT_QUERY_HEAD) => state.ctx.head_mask_gradients()?,
            (FORGE_PROBE_ATTENTION_ENTROPY, FORGE_UNIT_QUERY_HEAD) => state.ctx.attention_entropy()?,
            (FORGE_PROBE_HEAD_OUTPUT_NORMS, FORGE_UNIT_LINEAR_HEAD) => {
                state.ctx.linear_head_output_norms()?
            }
            (FORGE_PROBE_HEAD_MASK_GRADIENTS, FORGE_UNIT_LINEAR_HEAD) => {
                state.ctx.linear_head_mask_gradients()?
            }
            (probe, unit) => {
                return Err(StrategyError::bad_input(format!(
                    "there is no probe {probe} over units of kind {unit}"
                )))
            }
        };
        let flat = flatten(&rows);
        if flat.len() != len {
            return Err(StrategyError::bad_input(format!(
                "the probe has {} values (one per unit of kind {unit}); the plugin passed room for {len}",
                flat.len()
            )));
        }
        slice_mut(out, len).copy_from_slice(&flat);
        Ok(())
    })
}

struct PluginScorer(Instance);

impl ImportanceScorer for PluginScorer {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let geometry = ctx.geometry().clone();
        let geometry_ffi = GeometryFfi::new(&geometry);
        // A plugin older than 1.1 is told of query heads alone, and scores them alone.
        let units = self.0.knows_units();
        let (extra, extra_count) = if units { geometry_ffi.extra_units() } else { (std::ptr::null(), 0) };
        let seed = ctx.seed();
        let mut state = ScoringState { ctx, lent: Vec::new() };
        let host = ForgeScoringHost {
            ctx: &mut state as *mut ScoringState as *mut c_void,
            geometry: geometry_ffi.view(),
            seed,
            tensor: host_tensor,
            probe: host_probe,
            extra_units: extra,
            extra_unit_count: extra_count,
            probe_units: host_probe_units,
        };
        let kinds: &[UnitKind] = if units { geometry_ffi.kinds() } else { &[UnitKind::QueryHead] };
        let mut flat = vec![f32::NAN; total_units(&geometry, kinds)];
        let methods = unsafe { &*self.0.raw.scorer };
        // SAFETY: `host`, `state` and `flat` outlive the call; the instance is live.
        self.0.call(|error| unsafe {
            (methods.score)(self.0.ptr, &host, flat.as_mut_ptr(), flat.len(), error)
        })?;
        let scores = unflatten_kinds(&flat, &geometry, kinds);
        scores.validate(&geometry).map_err(|e| self.0.blame(e))?;
        Ok(scores)
    }
}

impl PluginStrategy {
    /// Builds this plugin scorer with resolved options.
    pub fn scorer(&self, options: &Options) -> Result<Box<dyn ImportanceScorer>, StrategyError> {
        Ok(Box::new(PluginScorer(self.instantiate(options)?)))
    }
}
