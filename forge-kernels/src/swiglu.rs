//! SwiGLU, `silu(gate) · up`, as one op: forge's CUDA kernel (one pass instead of three, and no
//! f32 intermediate), and on the CPU the same rounding steps as its reference. Only the two inputs are
//! kept for the backward, which recomputes the gate in f32.
use candle_core::{DType, Tensor};

use crate::profile::section;
use crate::{on_kernel, tape};

/// `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if on_kernel(&[gate, up]) {
        return tape::apply_op2(&tape::contiguous(gate)?, &tape::contiguous(up)?, FusedSwiglu);
    }
    Ok(tape::through_graph("swiglu", &[gate, up], |v| Ok(((v[0].silu()? * &v[1])?, ())))?.0)
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
        use crate::launch::{same_shape, Grid, Scalar};
        let n = gl.shape().elem_count();
        same_shape::<half::bf16>(
            "swiglu_bf16",
            &[(gate, gl), (up, ul)],
            Grid::Stride8(n),
            &[Scalar::I64(n as i64)],
        )
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
        if on_kernel(&[gate, up]) {
            use crate::launch::{launch_on_tensors, Grid, Scalar};
            let n = gate.elem_count();
            let dy = grad.to_dtype(DType::BF16)?;
            let both = launch_on_tensors::<half::bf16>(
                "swiglu_backward_bf16",
                &[gate, up, &dy],
                (2, n),
                Grid::Stride(n),
                &[Scalar::I64(n as i64)],
            )?;
            return Ok((both.get(0)?.reshape(gate.shape())?, both.get(1)?.reshape(up.shape())?));
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
}
