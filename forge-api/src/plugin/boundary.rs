//! The few rules every crossing obeys, written once: text in and out, sinks, statuses, panics caught
//! before they reach the other side, and the geometry in its C form.
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::abi::*;
use crate::{ModelGeometry, StrategyError};

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

/// A geometry in its C form, with the arrays it points into.
pub(crate) struct GeometryFfi {
    heads: Vec<u64>,
    kv_heads: Vec<u64>,
    layers: u64,
    head_dim: u64,
    hidden: u64,
}

impl GeometryFfi {
    pub(crate) fn new(g: &ModelGeometry) -> Self {
        GeometryFfi {
            heads: g.heads.iter().map(|&h| h as u64).collect(),
            kv_heads: g.kv_heads.iter().map(|&h| h as u64).collect(),
            layers: g.layers as u64,
            head_dim: g.head_dim as u64,
            hidden: g.hidden as u64,
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
}

impl ForgeGeometry {
    /// Copies the geometry out.
    ///
    /// # Safety
    /// `heads` and `kv_heads` must point to `layers` values each.
    pub unsafe fn to_geometry(&self) -> ModelGeometry {
        let layers = self.layers as usize;
        let read = |p: *const u64| -> Vec<usize> {
            if layers == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p, layers).iter().map(|&v| v as usize).collect()
            }
        };
        ModelGeometry {
            layers,
            heads: read(self.heads),
            kv_heads: read(self.kv_heads),
            head_dim: self.head_dim as usize,
            hidden: self.hidden as usize,
            // ABI 1.0 carries query heads only: a plugin sees no linear-attention heads.
            linear_heads: Vec::new(),
            linear_key_heads: Vec::new(),
        }
    }
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
