//! forge's autograd machinery on top of candle's: results computed outside the graph and joined back
//! with hand-written backward passes (`custom_grad`), products with frozen weights that give the
//! weight no gradient, attention whose backward recomputes its probabilities, Gated DeltaNet's delta
//! rule (its backward recomputing states a chunk at a time), causal convolution, gated norm and output
//! gate, the NLL and the distillation KL over vocabulary chunks, and the switch that runs a forward
//! pass without building a graph. The fused ops these build on live in forge-kernels.
mod causal_attention;
mod causal_conv;
pub mod checks;
mod chunked_kl;
mod chunked_nll;
mod custom_grad;
mod delta_rule;
mod frozen_matmul;
mod gated_norm;
mod grad_mode;
mod output_gate;

pub use causal_attention::causal_attention;
pub use causal_conv::causal_conv_silu;
pub use chunked_kl::chunked_kl;
pub use chunked_nll::{chunked_nll, rows_per_chunk};
pub use custom_grad::{backward_from, with_gradient, with_gradients, with_two_gradients};
pub use delta_rule::gated_delta_rule;
pub use frozen_matmul::frozen_matmul;
pub use gated_norm::gated_rms_norm;
pub use grad_mode::{grad_enabled, keep_activations, keeping_activations, layer_output_unread, no_grad};
pub use output_gate::sigmoid_gate;
