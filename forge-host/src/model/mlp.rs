//! The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
use candle_core::{DType, Module, Tensor};

use super::config::ModelConfig;
use super::linear::{linear, Linear};
use super::scope::WeightScope;
use crate::Result;

/// The MLP of one decoder layer.
#[derive(Clone)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

/// Loads an MLP from `vb` (`model.layers.N.mlp`).
pub fn mlp(config: &ModelConfig, vb: WeightScope) -> Result<Mlp> {
    let (h, i, bias) = (config.hidden, config.intermediate, config.mlp_bias);
    Ok(Mlp {
        gate_proj: linear(h, i, bias, vb.pp("gate_proj"))?,
        up_proj: linear(h, i, bias, vb.pp("up_proj"))?,
        down_proj: linear(i, h, bias, vb.pp("down_proj"))?,
    })
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gated = swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    // The fused kernel has no backward: it serves only where no gradient flows (eval, generation).
    if !gate.device().is_cpu() && gate.dtype() == DType::BF16 && !gate.track_op() && !up.track_op() {
        return gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &FusedSwiglu);
    }
    gate.silu()? * up
}

/// [`swiglu`] as one op without a backward: forge's CUDA kernel, and on the CPU the same rounding
/// steps (its reference).
pub struct FusedSwiglu;

impl candle_core::CustomOp2 for FusedSwiglu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gate: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
        up: &candle_core::CpuStorage,
        ul: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        use half::bf16;
        let (CpuStorage::BF16(g), CpuStorage::BF16(u)) = (gate, up) else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(gate.dtype(), "swiglu"));
        };
        let (Some((gs, ge)), Some((us, ue))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
            return Err(candle_core::Error::RequiresContiguous { op: "swiglu" });
        };
        let y = g[gs..ge]
            .iter()
            .zip(&u[us..ue])
            .map(|(g, u)| {
                let g = g.to_f32();
                bf16::from_f32(bf16::from_f32(g / (1.0 + (-g).exp())).to_f32() * u.to_f32())
            })
            .collect();
        Ok((CpuStorage::BF16(y), gl.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gate: &candle_core::CudaStorage,
        gl: &candle_core::Layout,
        up: &candle_core::CudaStorage,
        ul: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        Ok((super::cuda_kernels::swiglu_bf16(gate, gl, up, ul)?, gl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_fused_op_reference_equals_the_elementary_ops_in_bf16() -> candle_core::Result<()> {
        let values =
            |k: usize| -> Vec<f32> { (0..5 * 7).map(|i| ((i * k % 17) as f32 - 8.0) / 3.0).collect() };
        let gate = Tensor::from_vec(values(5), (5, 7), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let up = Tensor::from_vec(values(3), (5, 7), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let fused = gate.apply_op2_no_bwd(&up, &FusedSwiglu)?.to_dtype(DType::F32)?;
        let plain = swiglu(&gate, &up)?.to_dtype(DType::F32)?;
        let diff = (fused - plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 2e-2, "fused and elementary swiglu differ by {diff}");
        Ok(())
    }
}
