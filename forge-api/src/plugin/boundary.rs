//! The few rules every crossing obeys, written once: text in and out, sinks, statuses, panics caught
//! before they reach the other side, and the geometry in its C form.
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::abi::*;
use crate::{HeadMask, HeadScores, ModelGeometry, StrategyError, UnitKind};

impl ForgeStr {
    /// Borrows `text`; the view is valid while `text` is.
    pub fn new(text: &str) -> Self {
        ForgeStr { ptr: text.as_ptr(), len: text.len() }
    }

    /// The text, checked to be UTF-8.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes (or `len` must be 0) for the returned lifetime.
    pub unsafe fn to_str<'a>(self) -> Result<&'a str, StrategyError> {
        let bytes = if self.len == 0 { &[][..] } else { std::slice::from_raw_parts(self.ptr, self.len) };
        std::str::from_utf8(bytes)
            .map_err(|e| StrategyError::failed(format!("text across the plugin boundary is not UTF-8: {e}")))
    }
}

unsafe extern "C" fn append<T: Copy>(ctx: *mut c_void, data: *const c_void, count: usize) {
    if count == 0 || data.is_null() {
        return;
    }
    let out = &mut *(ctx as *mut Vec<T>);
    out.extend_from_slice(std::slice::from_raw_parts(data as *const T, count));
}

/// A sink that appends to `out`; it must not outlive `out`.
pub(crate) fn sink_into<T: Copy>(out: &mut Vec<T>) -> ForgeSink {
    ForgeSink { ctx: out as *mut Vec<T> as *mut c_void, write: append::<T> }
}

/// Hands `items` to a sink the other side owns.
///
/// # Safety
/// `sink` must be a valid sink expecting elements of type `T`.
pub(crate) unsafe fn write_to<T>(sink: *const ForgeSink, items: &[T]) {
    if let Some(sink) = sink.as_ref() {
        (sink.write)(sink.ctx, items.as_ptr() as *const c_void, items.len());
    }
}

/// Runs the callee's side of a call: its error becomes a status plus a message in `error`, and a panic
/// is caught here, never unwinding into the caller's frames.
pub(crate) fn serve(
    error: *const ForgeSink,
    work: impl FnOnce() -> Result<(), StrategyError>,
) -> ForgeStatus {
    let (status, message) = match catch_unwind(AssertUnwindSafe(work)) {
        Ok(Ok(())) => return FORGE_OK,
        Ok(Err(StrategyError::BadInput(m))) => (FORGE_BAD_INPUT, m),
        Ok(Err(e)) => (FORGE_FAILED, e.to_string()),
        Err(payload) => (FORGE_FAILED, format!("panicked: {}", panic_message(&*payload))),
    };
    // SAFETY: the caller passed `error` as a byte sink (or null).
    unsafe { write_to(error, message.as_bytes()) };
    status
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Runs the caller's side of a call: hands the callee an error sink and turns its status back into
/// a result.
pub(crate) fn request(call: impl FnOnce(*const ForgeSink) -> ForgeStatus) -> Result<(), StrategyError> {
    let mut message = Vec::<u8>::new();
    let sink = sink_into(&mut message);
    let status = call(&sink);
    let text = || {
        let text = String::from_utf8_lossy(&message).into_owned();
        if text.is_empty() {
            format!("failed with status {status} and no message")
        } else {
            text
        }
    };
    match status {
        FORGE_OK => Ok(()),
        FORGE_BAD_INPUT => Err(StrategyError::BadInput(text())),
        _ => Err(StrategyError::Failed(text())),
    }
}

/// The ABI's code of a unit kind.
pub(crate) fn unit_code(kind: UnitKind) -> u32 {
    match kind {
        UnitKind::QueryHead => FORGE_UNIT_QUERY_HEAD,
        UnitKind::LinearHead => FORGE_UNIT_LINEAR_HEAD,
        UnitKind::MlpChannel => FORGE_UNIT_MLP_CHANNEL,
        UnitKind::Layer => FORGE_UNIT_LAYER,
    }
}

/// The kinds beyond query heads, in buffer order.
fn extra_kinds() -> impl Iterator<Item = UnitKind> {
    UnitKind::ALL.into_iter().skip(1)
}

/// A geometry laid out for the boundary; the views borrow its arrays. Units beyond query heads (the
/// 1.1 `extra_units`) are described only for the kinds the model has.
pub(crate) struct GeometryFfi {
    heads: Vec<u64>,
    kv_heads: Vec<u64>,
    layers: u64,
    head_dim: u64,
    hidden: u64,
    extra: Vec<(Vec<u64>, Vec<u64>)>,
    units: Vec<ForgeUnits>,
    kinds: Vec<UnitKind>,
}

impl GeometryFfi {
    pub(crate) fn new(g: &ModelGeometry) -> Self {
        let wide = |v: &[usize]| -> Vec<u64> { v.iter().map(|&h| h as u64).collect() };
        let present: Vec<UnitKind> = extra_kinds().filter(|&k| g.total(k) > 0).collect();
        let extra: Vec<(Vec<u64>, Vec<u64>)> = present
            .iter()
            .map(|&k| {
                let (counts, groups) = g.of(k);
                (wide(&counts), wide(&groups))
            })
            .collect();
        // The arrays live on the heap: their pointers stay valid when the struct moves.
        let units: Vec<ForgeUnits> = present
            .iter()
            .zip(&extra)
            .map(|(&k, (c, gr))| ForgeUnits { kind: unit_code(k), counts: c.as_ptr(), groups: gr.as_ptr() })
            .collect();
        GeometryFfi {
            heads: wide(&g.heads),
            kv_heads: wide(&g.kv_heads),
            layers: g.layers as u64,
            head_dim: g.head_dim as u64,
            hidden: g.hidden as u64,
            extra,
            units,
            kinds: std::iter::once(UnitKind::QueryHead).chain(present).collect(),
        }
    }

    /// The view; valid while `self` is.
    pub(crate) fn view(&self) -> ForgeGeometry {
        ForgeGeometry {
            layers: self.layers,
            head_dim: self.head_dim,
            hidden: self.hidden,
            heads: self.heads.as_ptr(),
            kv_heads: self.kv_heads.as_ptr(),
        }
    }

    /// The kinds a 1.1 buffer holds, in order: query heads, then those of `extra_units`.
    pub(crate) fn kinds(&self) -> &[UnitKind] {
        &self.kinds
    }

    /// The 1.1 `extra_units` and their count; valid while `self` is.
    pub(crate) fn extra_units(&self) -> (*const ForgeUnits, usize) {
        debug_assert_eq!(self.extra.len(), self.units.len());
        (self.units.as_ptr(), self.units.len())
    }
}

impl ForgeGeometry {
    /// Copies the geometry out.
    ///
    /// # Safety
    /// `heads` and `kv_heads` must point to `layers` values each.
    pub unsafe fn to_geometry(&self) -> ModelGeometry {
        let layers = self.layers as usize;
        ModelGeometry {
            heads: read_layers(self.heads, layers),
            kv_heads: read_layers(self.kv_heads, layers),
            ..ModelGeometry::uniform(layers, 0, 0, self.head_dim as usize, self.hidden as usize)
        }
    }

    /// [`ForgeGeometry::to_geometry`] with the 1.1 `extra_units` read in, and the kinds a buffer
    /// then holds (query heads first). Kinds this build does not know come after those it knows
    /// (codes only grow) and are left out: their scores stay NaN, their flags 0.
    ///
    /// # Safety
    /// As `to_geometry`, and `units` must point to `count` descriptions of `layers` values each.
    pub(crate) unsafe fn geometry_with_units(
        &self,
        units: *const ForgeUnits,
        count: usize,
    ) -> (ModelGeometry, Vec<UnitKind>) {
        let mut g = self.to_geometry();
        let mut kinds = vec![UnitKind::QueryHead];
        for u in slice(units, count) {
            let (counts, groups) = (read_layers(u.counts, g.layers), read_layers(u.groups, g.layers));
            match u.kind {
                FORGE_UNIT_LINEAR_HEAD => (g.linear_heads, g.linear_key_heads) = (counts, groups),
                FORGE_UNIT_MLP_CHANNEL => g.mlp_channels = counts,
                FORGE_UNIT_LAYER => {}
                _ => continue,
            }
            kinds.push(UnitKind::ALL.into_iter().find(|&k| unit_code(k) == u.kind).expect("a known code"));
        }
        (g, kinds)
    }
}

/// `layers` counts from the other side.
unsafe fn read_layers(p: *const u64, layers: usize) -> Vec<usize> {
    slice(p, layers).iter().map(|&v| v as usize).collect()
}

/// Scores of `kinds` as a 1.1 buffer lays them out, kind after kind (NaN where unscored).
pub(crate) fn flatten_kinds(scores: &HeadScores, g: &ModelGeometry, kinds: &[UnitKind]) -> Vec<f32> {
    let mut flat = Vec::new();
    for &kind in kinds {
        match scores.of(kind) {
            Some(rows) => flat.extend(flatten(rows)),
            None => flat.extend(std::iter::repeat_n(f32::NAN, g.total(kind))),
        }
    }
    flat
}

/// The inverse of [`flatten_kinds`]: an all-NaN kind is unscored. `flat` holds every unit of `kinds`.
pub(crate) fn unflatten_kinds(flat: &[f32], g: &ModelGeometry, kinds: &[UnitKind]) -> HeadScores {
    let mut scores = HeadScores::default();
    let mut rest = flat;
    for &kind in kinds {
        let (these, after) = rest.split_at(g.total(kind));
        if !these.iter().all(|v| v.is_nan()) {
            *scores.of_mut(kind) = unflatten(these, &g.of(kind).0);
        }
        rest = after;
    }
    scores
}

/// Units of `kinds` in `g`: the length of a 1.1 buffer.
pub(crate) fn total_units(g: &ModelGeometry, kinds: &[UnitKind]) -> usize {
    kinds.iter().map(|&k| g.total(k)).sum()
}

/// A mask as one flag per unit (1 = pruned), kinds in `kinds` order, each layer-major.
pub(crate) fn mask_flags(mask: &HeadMask, g: &ModelGeometry, kinds: &[UnitKind]) -> Vec<u8> {
    let mut flags = Vec::new();
    for &kind in kinds {
        for (layer, &n) in g.of(kind).0.iter().enumerate() {
            let pruned = mask.pruned_of(kind, layer);
            flags.extend((0..n).map(|u| u8::from(pruned.contains(&u))));
        }
    }
    flags
}

/// The inverse of [`mask_flags`].
pub(crate) fn flags_mask(flags: &[u8], g: &ModelGeometry, kinds: &[UnitKind]) -> HeadMask {
    let mut mask = HeadMask::default();
    let mut first = 0;
    for &kind in kinds {
        for (layer, &n) in g.of(kind).0.iter().enumerate() {
            let removed: Vec<usize> = (0..n).filter(|&u| flags[first + u] != 0).collect();
            if !removed.is_empty() {
                mask.of_mut(kind).insert(layer, removed);
            }
            first += n;
        }
    }
    mask
}

/// Per-layer rows as one layer-major array.
pub(crate) fn flatten(rows: &[Vec<f32>]) -> Vec<f32> {
    rows.iter().flatten().copied().collect()
}

/// A layer-major array back into rows of `heads[layer]` values.
pub(crate) fn unflatten(flat: &[f32], heads: &[usize]) -> Vec<Vec<f32>> {
    let mut at = 0;
    heads
        .iter()
        .map(|&n| {
            let row = flat[at..at + n].to_vec();
            at += n;
            row
        })
        .collect()
}

/// A slice from a pointer the other side passed, empty when `len` is 0 (the pointer may then be null).
///
/// # Safety
/// `ptr` must point to `len` readable values.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

/// The mutable counterpart of [`slice`].
///
/// # Safety
/// `ptr` must point to `len` writable values that nothing else accesses during the call.
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> &'a mut [T] {
    if len == 0 {
        &mut []
    } else {
        std::slice::from_raw_parts_mut(ptr, len)
    }
}
