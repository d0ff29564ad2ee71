//! forge's fused ops, each a candle custom op with a backward: a CUDA kernel (`cuda/`, launched by one
//! generic launcher) and a CPU reference computing the same function, which the checks compare them
//! against. The model calls these functions; whether the kernel or elementary candle ops run is decided
//! here, by one rule ([`on_kernel`]).
//!
//! | op | kernel | why fused |
//! | --- | --- | --- |
//! | [`causal_softmax`] | `causal_softmax_bf16` (+ backward) | one pass instead of ten over the scores |
//! | [`row_nll`] | `row_nll_bf16` (+ backward) | no f32 copy of a `(rows, vocab)` block |
//! | [`rms_norm`] | `rms_norm_bf16` (+ backward) | one pass; no f32 copy of the activations |
//! | [`rope_heads_first`] | `rope_bf16` (+ backward) | rotation and the heads-first transpose in one pass |
//! | [`swiglu`] | `swiglu_bf16` (+ backward) | one pass instead of three |
//! | [`gated_delta_rule`] | (CPU so far) | Gated DeltaNet's recurrence: chunked and recurrent forms |
mod causal_softmax;
pub mod checks;
pub mod gated_delta_rule;
#[cfg(feature = "cuda")]
mod launch;
pub mod profile;
mod rms_norm;
mod rng;
mod rope;
mod row_nll;
mod swiglu;

use candle_core::{DType, Tensor};

pub use causal_softmax::{causal_softmax, causal_softmax_backward};
pub use rms_norm::{rms_norm, FusedRmsNorm};
pub use rng::SplitMix64;
pub use rope::{rope, rope_heads_first, FusedRope};
pub use row_nll::{row_nll, row_nll_backward, RowNll};
pub use swiglu::{swiglu, swiglu_backward, FusedSwiglu};

/// Whether forge's kernel runs for these tensors: all on a GPU, all bf16. The kernels take bf16 only
/// (the dtype forge runs on CUDA); everywhere else elementary candle ops, or the CPU op, run.
pub fn on_kernel(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| !t.device().is_cpu() && t.dtype() == DType::BF16)
}
