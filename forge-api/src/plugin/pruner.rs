//! Pruners across the boundary: scores and geometry in, one keep/remove flag per head out; from ABI
//! 1.1 (`prune_units`) over every kind of unit, query heads first.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{
    flags_mask, flatten_kinds, mask_flags, serve, slice, slice_mut, total_units, unflatten, unflatten_kinds,
    GeometryFfi,
};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{HeadMask, HeadScores, ModelGeometry, Options, PruneTarget, Pruner, StrategyError, UnitKind};

/// The table entry of pruner `T`.
pub fn export<T: Export + Pruner>() -> ForgeStrategy {
    let methods: &'static ForgePrunerMethods =
        Box::leak(Box::new(ForgePrunerMethods { prune: prune::<T>, prune_units: Some(prune_units::<T>) }));
    ForgeStrategy { pruner: methods, ..describe::<T>(FORGE_KIND_PRUNER) }
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn prune<T: Pruner>(
    instance: *mut c_void,
    geometry: *const ForgeGeometry,
    scores: *const f32,
    len: usize,
    target_kind: u32,
    target: f64,
    pruned: *mut u8,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let geometry = (*geometry).to_geometry();
        if len != geometry.total_heads() {
            return Err(StrategyError::failed(format!("{len} scores for {} heads", geometry.total_heads())));
        }
        let scores = HeadScores::attention(unflatten(slice(scores, len), &geometry.heads));
        let mask = (*(instance as *const T)).prune(&scores, &geometry, target_of(target_kind, target)?)?;
        mask.validate(&geometry).map_err(|e| StrategyError::failed(e.to_string()))?;
        let flags = mask_flags(&mask, &geometry, &[UnitKind::QueryHead]);
        slice_mut(pruned, len).copy_from_slice(&flags);
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn prune_units<T: Pruner>(
    instance: *mut c_void,
    geometry: *const ForgeGeometry,
    extra_units: *const ForgeUnits,
    extra_unit_count: usize,
    scores: *const f32,
    len: usize,
    target_kind: u32,
    target: f64,
    pruned: *mut u8,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let (geometry, kinds) = (*geometry).geometry_with_units(extra_units, extra_unit_count);
        let known = total_units(&geometry, &kinds);
        if len < known {
            return Err(StrategyError::failed(format!("{len} scores for {known} units")));
        }
        let scores = unflatten_kinds(&slice(scores, len)[..known], &geometry, &kinds);
        let mask = (*(instance as *const T)).prune(&scores, &geometry, target_of(target_kind, target)?)?;
        mask.validate(&geometry).map_err(|e| StrategyError::failed(e.to_string()))?;
        // Units of kinds this build does not know stay (flag 0).
        let flags = slice_mut(pruned, len);
        flags.fill(0);
        flags[..known].copy_from_slice(&mask_flags(&mask, &geometry, &kinds));
        Ok(())
    })
}

fn target_of(kind: u32, value: f64) -> Result<PruneTarget, StrategyError> {
    match kind {
        FORGE_TARGET_RATIO => Ok(PruneTarget::Ratio(value)),
        FORGE_TARGET_COUNT => Ok(PruneTarget::Count(value as usize)),
        other => Err(StrategyError::failed(format!("unknown prune target kind {other}"))),
    }
}

struct PluginPruner(Instance);

impl Pruner for PluginPruner {
    /// A plugin of ABI 1.1 with `prune_units` decides every kind of unit; an older one the query
    /// heads alone.
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError> {
        let methods = unsafe { &*self.0.raw.pruner };
        let units = if self.0.knows_units() { methods.prune_units } else { None };
        let geometry_ffi = GeometryFfi::new(geometry);
        let kinds: &[UnitKind] = if units.is_some() { geometry_ffi.kinds() } else { &[UnitKind::QueryHead] };
        let flat = flatten_kinds(scores, geometry, kinds);
        let (extra, extra_count) = geometry_ffi.extra_units();
        let (kind, value) =
            match target {
                PruneTarget::Ratio(r) => (FORGE_TARGET_RATIO, r),
                PruneTarget::Count(n) => (FORGE_TARGET_COUNT, n as f64),
                PruneTarget::Params { .. } => return Err(self.0.blame(StrategyError::bad_input(
                    "the plugin ABI carries head ratios and counts, not parameter targets; use a built-in \
                     pruner (`budget`) with --target-params",
                ))),
            };
        let mut flags = vec![0u8; flat.len()];
        let view = geometry_ffi.view();
        let (ptr, scores_ptr, len, out) = (self.0.ptr, flat.as_ptr(), flat.len(), flags.as_mut_ptr());
        // SAFETY: every buffer outlives the call and has the length it is told.
        self.0.call(|error| unsafe {
            match units {
                Some(f) => f(ptr, &view, extra, extra_count, scores_ptr, len, kind, value, out, error),
                None => (methods.prune)(ptr, &view, scores_ptr, len, kind, value, out, error),
            }
        })?;
        Ok(flags_mask(&flags, geometry, kinds))
    }
}

impl PluginStrategy {
    /// Builds this plugin pruner with resolved options.
    pub fn pruner(&self, options: &Options) -> Result<Box<dyn Pruner>, StrategyError> {
        Ok(Box::new(PluginPruner(self.instantiate(options)?)))
    }
}
