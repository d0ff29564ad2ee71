//! Pruners across the boundary: scores and geometry in, one keep/remove flag per head out.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{flatten, serve, slice, slice_mut, unflatten, GeometryFfi};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{HeadMask, HeadScores, ModelGeometry, Options, PruneTarget, Pruner, StrategyError};

/// The table entry of pruner `T`.
pub fn export<T: Export + Pruner>() -> ForgeStrategy {
    let methods: &'static ForgePrunerMethods = Box::leak(Box::new(ForgePrunerMethods { prune: prune::<T> }));
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
        let target = match target_kind {
            FORGE_TARGET_RATIO => PruneTarget::Ratio(target),
            FORGE_TARGET_COUNT => PruneTarget::Count(target as usize),
            other => return Err(StrategyError::failed(format!("unknown prune target kind {other}"))),
        };
        let mask = (*(instance as *const T)).prune(&scores, &geometry, target)?;
        mask.validate(&geometry).map_err(|e| StrategyError::failed(e.to_string()))?;
        let flags = slice_mut(pruned, len);
        flags.fill(0);
        let mut first = 0;
        for (layer, &heads) in geometry.heads.iter().enumerate() {
            for &head in mask.pruned_in(layer) {
                flags[first + head] = 1;
            }
            first += heads;
        }
        Ok(())
    })
}

struct PluginPruner(Instance);

impl Pruner for PluginPruner {
    fn prune(
        &self,
        scores: &HeadScores,
        geometry: &ModelGeometry,
        target: PruneTarget,
    ) -> Result<HeadMask, StrategyError> {
        let flat = flatten(&scores.scores);
        let geometry_ffi = GeometryFfi::new(geometry);
        let (kind, value) = match target {
            PruneTarget::Ratio(r) => (FORGE_TARGET_RATIO, r),
            PruneTarget::Count(n) => (FORGE_TARGET_COUNT, n as f64),
        };
        let mut flags = vec![0u8; flat.len()];
        let methods = unsafe { &*self.0.raw.pruner };
        // SAFETY: every buffer outlives the call and has the length it is told.
        self.0.call(|error| unsafe {
            (methods.prune)(
                self.0.ptr,
                &geometry_ffi.view(),
                flat.as_ptr(),
                flat.len(),
                kind,
                value,
                flags.as_mut_ptr(),
                error,
            )
        })?;
        let mut mask = HeadMask::default();
        let mut first = 0;
        for (layer, &heads) in geometry.heads.iter().enumerate() {
            let removed: Vec<usize> = (0..heads).filter(|&h| flags[first + h] != 0).collect();
            if !removed.is_empty() {
                mask.pruned.insert(layer, removed);
            }
            first += heads;
        }
        Ok(mask)
    }
}

impl PluginStrategy {
    /// Builds this plugin pruner with resolved options.
    pub fn pruner(&self, options: &Options) -> Result<Box<dyn Pruner>, StrategyError> {
        Ok(Box::new(PluginPruner(self.instantiate(options)?)))
    }
}
