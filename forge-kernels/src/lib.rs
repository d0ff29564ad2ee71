//! forge's fused ops, each a candle custom op with a backward: a CUDA kernel (`cuda/`, launched by one
//! generic launcher) and a CPU reference computing the same function, which the checks compare them
//! against. The model calls these functions; whether the kernel or elementary candle ops run is decided
//! here, by one rule ([`on_kernel`]).
//!
//! | op | kernel | why fused |
//! | --- | --- | --- |
//! | [`flash_attention`], [`flash_attention_at`] | `flash_attention_d{64,128,256}_bf16`, `flash_attention_at_*` (forward) | no score-sized tensor: q·kᵀ, the softmax and p·v on chip; the second reads the position from the device, for captured decoding |
//! | [`flash_attention_backward`] | `flash_attention_{stats,dq,dkv}_d{64,128}_bf16`, `flash_attention_group_sum_bf16` | the probabilities and their gradient made again tile by tile on chip, no score-sized tensor |
//! | [`argmax_rows`] | `argmax_rows_bf16` | greedy decoding's pick inside a captured step, the host's tie rule |
//! | [`causal_softmax`] | `causal_softmax_bf16` (+ backward) | one pass instead of ten over the scores |
//! | [`row_nll`] | `row_nll_bf16` (+ backward) | no f32 copy of a `(rows, vocab)` block |
//! | [`rms_norm`], [`rms_norm_f32_weight`] | `rms_norm_bf16`, `rms_norm_f32w_bf16` (+ backward) | one pass; no f32 copy of the activations |
//! | [`rope_heads_first`] | `rope_bf16` (+ backward) | rotation and the heads-first transpose in one pass |
//! | [`swiglu`] | `swiglu_bf16` (+ backward) | one pass instead of three |
//! | [`gated_delta_rule`] | `gated_delta_prepare_bf16`, `gdn_chunk_*` between cuBLAS products (+ backward, `gated_delta_prepare_backward_bf16`); `gated_delta_rule_dk{32,64,128}` for one-token steps | Gated DeltaNet's recurrence in its chunked form, its inputs prepared in parallel first |
//! | [`causal_conv_silu`] | `causal_conv_silu_bf16` (+ backward) | one pass for prompt and one-token step |
//! | [`gated_rms_norm`] | `gated_rms_norm_bf16` (+ backward) | one pass instead of about twelve |
//! | [`sigmoid_gate`] | `sigmoid_gate_bf16` (+ backward) | reads the gate where `q_proj` wrote it |
//! | [`Int8Rows::dequantize`] | `dequant_rows_u8_bf16` | a frozen base in int8: a byte read and two written a weight |
//! | [`add_matmul`] | cuBLAS's GEMM with β = 1, into the sum | a product added to another without writing it and reading both back |
//! | [`residual_add`], [`add_bias`], [`embedding`], [`transpose12`], [`narrow`] | `add_bias_bf16`, `embedding_bf16`, `transpose12_bf16`, `narrow_bf16` | no candle PTX module to compile on a fresh machine |
//!
//! The last four serve Qwen3.5's hybrid layers. Their forward kernels run only where no input takes a
//! gradient (`forward_kernel`), so a gradient is never silently dropped; training joins the forward
//! kernel to its backward function ([`causal_conv_silu_backward`], [`gated_rms_norm_backward`],
//! [`sigmoid_gate_backward`], [`gated_delta_rule::backward_from_projections`]) in forge-host's
//! autograd, each of which is its kernel on CUDA and candle's autograd or the host walk elsewhere.
pub mod adam;
mod add_matmul;
mod argmax;
mod causal_conv;
mod causal_softmax;
pub mod checks;
pub mod fatbin;
mod flash_attention;
pub mod gated_delta_rule;
mod gated_rms_norm;
mod int8_rows;
#[cfg(feature = "cuda")]
pub mod jit;
#[cfg(feature = "cuda")]
mod launch;
mod matvec;
mod norm_rope;
pub mod profile;
mod residual;
mod rms_norm;
mod rng;
mod rope;
mod row_nll;
mod sigmoid_gate;
mod swiglu;
pub mod tape;

use candle_core::{DType, Tensor};

pub use add_matmul::add_matmul;
#[cfg(feature = "cuda")]
pub use argmax::argmax_rows;
pub use argmax::first_argmax;
#[cfg(feature = "cuda")]
pub use causal_conv::causal_conv_silu_backward;
pub use causal_conv::{causal_conv_silu, on_kernel_shape as conv_on_kernel_shape};
pub use causal_softmax::{causal_softmax, causal_softmax_backward};
pub use flash_attention::{
    backward_takes_head_dim, flash_attention, flash_attention_at, flash_attention_backward, takes_head_dim,
};
pub use gated_rms_norm::gated_rms_norm;
#[cfg(feature = "cuda")]
pub use gated_rms_norm::gated_rms_norm_backward;
pub use int8_rows::Int8Rows;
#[cfg(feature = "cuda")]
pub use launch::EMBEDDED as EMBEDDED_FATBIN;
pub use matvec::{matvec, matvec_swiglu};
pub use norm_rope::rms_norm_rope;
pub use residual::{add_bias, embedding, narrow, residual_add, transpose12};
pub use rms_norm::{add_rms_norm, rms_norm, rms_norm_f32_weight, FusedRmsNorm};
pub use rng::SplitMix64;
pub use rope::{rope, rope_heads_first, FusedRope};
pub use row_nll::{row_nll, row_nll_backward, RowNll};
pub use sigmoid_gate::sigmoid_gate;
#[cfg(feature = "cuda")]
pub use sigmoid_gate::sigmoid_gate_backward;
pub use swiglu::{swiglu, swiglu_backward, FusedSwiglu};

/// Whether forge's kernel runs for these tensors: all on a GPU, all bf16. The kernels take bf16 only
/// (the dtype forge runs on CUDA); everywhere else elementary candle ops, or the CPU op, run.
pub fn on_kernel(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| !t.device().is_cpu() && t.dtype() == DType::BF16)
}

/// Whether a forward-only kernel runs: [`on_kernel`], and no input takes a gradient (these kernels
/// have no backward, and candle would drop the gradient without a word).
#[cfg(feature = "cuda")]
fn forward_kernel(tensors: &[&Tensor]) -> bool {
    on_kernel(tensors) && tensors.iter().all(|t| !tape::tracked(t))
}
