//! The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
use candle_core::{DType, Module, Tensor};

use super::config::ModelConfig;
use super::custom_grad::with_gradient;
use super::linear::{linear, Linear};
use super::scope::WeightScope;
use crate::runtime::profile::section;
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
        let frozen = [&self.gate_proj, &self.up_proj, &self.down_proj].iter().all(|l| !l.has_adapter());
        if frozen && x.track_op() {
            return self.frozen_forward(x);
        }
        let gated = swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}

impl Mlp {
    /// The forward of an MLP with no trainable part, for training through it: through candle's
    /// autograd, the gate and up outputs and their product (three `rows × intermediate` tensors, most
    /// of a layer's activations) would be kept for the backward. Here the block runs outside the graph
    /// and the backward recomputes gate and up from the input, which is kept anyway, at the cost of
    /// two matmuls.
    fn frozen_forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x0 = x.detach();
        let out = self.forward(&x0)?;
        let mlp = self.clone();
        with_gradient("mlp backward", x, out, move |grad, _| {
            let (gate, up) = (mlp.gate_proj.forward(&x0)?, mlp.up_proj.forward(&x0)?);
            let hidden = grad.dim(candle_core::D::Minus1)?;
            let grad = grad.to_dtype(x0.dtype())?.reshape(((), hidden))?;
            let d_gated = grad.matmul(mlp.down_proj.weight())?.reshape(gate.shape())?;
            let (d_gate, d_up) = swiglu_backward(&gate, &up, &d_gated)?;
            let flat = |t: Tensor| t.reshape(((), t.dim(candle_core::D::Minus1)?));
            let dx = (flat(d_gate)?.matmul(mlp.gate_proj.weight())?
                + flat(d_up)?.matmul(mlp.up_proj.weight())?)?;
            dx.reshape(x0.shape())
        })
    }
}

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !gate.device().is_cpu() && gate.dtype() == DType::BF16 {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, FusedSwiglu);
    }
    gate.silu()? * up
}

/// [`swiglu`] as one op: forge's CUDA kernel, and on the CPU the same rounding steps (its reference).
/// Only the two inputs are kept for the backward, which recomputes the gate in f32.
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

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (d_gate, d_up) = swiglu_backward(gate, up, grad)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// The gradients of `gate` and `up` of [`swiglu`] given the output's, in f32 whatever the dtype:
/// d_gate = dy · up · silu'(gate), d_up = dy · silu(gate).
pub fn swiglu_backward(gate: &Tensor, up: &Tensor, grad: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    section("swiglu backward", gate.device(), || {
        #[cfg(feature = "cuda")]
        if gate.device().is_cuda() && gate.dtype() == DType::BF16 {
            return super::cuda_kernels::swiglu_backward_bf16(gate, up, &grad.to_dtype(DType::BF16)?);
        }
        let (g, u, dy) = (gate.to_dtype(DType::F32)?, up.to_dtype(DType::F32)?, grad.to_dtype(DType::F32)?);
        let sigmoid = (g.neg()?.exp()? + 1.0)?.recip()?;
        let silu = (&g * &sigmoid)?;
        // d silu / dg = σ(g) (1 + g (1 − σ(g))).
        let dsilu = (&sigmoid * ((&g * (1.0 - &sigmoid)?)? + 1.0)?)?;
        let d_gate = (&dy * &u)?.mul(&dsilu)?;
        let d_up = (&dy * &silu)?;
        Ok((d_gate.to_dtype(gate.dtype())?, d_up.to_dtype(up.dtype())?))
    })
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
        // The backward, against autograd through the elementary ops in f32.
        let weights = Tensor::from_vec(values(2), (5, 7), &Device::Cpu)?;
        let grads = |fused: bool| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let dtype = if fused { DType::BF16 } else { DType::F32 };
            let (g, u) = (
                candle_core::Var::from_tensor(&gate.to_dtype(dtype)?)?,
                candle_core::Var::from_tensor(&up.to_dtype(dtype)?)?,
            );
            let y = if fused {
                g.as_tensor().apply_op2(u.as_tensor(), FusedSwiglu)?
            } else {
                (g.as_tensor().silu()? * u.as_tensor())?
            };
            let store = (y.to_dtype(DType::F32)? * &weights)?.sum_all()?.backward()?;
            let get = |v: &candle_core::Var| {
                store.get(v.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
            };
            Ok((get(&g)?, get(&u)?))
        };
        let ((fg, fu), (pg, pu)) = (grads(true)?, grads(false)?);
        for (a, b) in fg.iter().chain(&fu).zip(pg.iter().chain(&pu)) {
            assert!((a - b).abs() <= 2e-2 * (1.0 + b.abs()), "gradient {a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn a_frozen_mlp_recomputes_and_gets_the_gradient_of_the_graph_through_its_ops() -> candle_core::Result<()>
    {
        let dev = Device::Cpu;
        let values =
            |n: usize, k: usize| -> Vec<f32> { (0..n).map(|i| ((i * k % 19) as f32 - 9.0) / 7.0).collect() };
        let (rows, hidden, inter) = (6, 4, 10);
        let weight = |k, out, inp| Tensor::from_vec(values(out * inp, k), (out, inp), &dev);
        let mlp = Mlp {
            gate_proj: Linear::new(
                weight(3, inter, hidden)?,
                Some(Tensor::from_vec(values(inter, 2), inter, &dev)?),
            ),
            up_proj: Linear::new(weight(5, inter, hidden)?, None),
            down_proj: Linear::new(weight(7, hidden, inter)?, None),
        };
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(
            values(rows * hidden, 11),
            (2, 3, hidden),
            &dev,
        )?)?;
        let weights = Tensor::from_vec(values(rows * hidden, 13), (2, 3, hidden), &dev)?;
        let gradient = |y: Tensor| -> candle_core::Result<Vec<f32>> {
            let store = (y * &weights)?.sum_all()?.backward()?;
            store.get(x.as_tensor()).expect("x gets a gradient").flatten_all()?.to_vec1::<f32>()
        };
        let joined = mlp.forward(x.as_tensor())?;
        let through_ops = mlp.down_proj.forward(&swiglu(
            &mlp.gate_proj.forward(x.as_tensor())?,
            &mlp.up_proj.forward(x.as_tensor())?,
        )?)?;
        assert_eq!(joined.to_vec3::<f32>()?, through_ops.to_vec3::<f32>()?);
        let (a, b) = (gradient(joined)?, gradient(through_ops)?);
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "gradient {a} vs {b}");
        }
        Ok(())
    }
}
