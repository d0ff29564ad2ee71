//! Rotary position embeddings, applied as `x·cos + rotate_half(x)·sin` from elementary ops (candle's
//! fused `rope` has no backward). Frequencies follow transformers: computed in f32 from `rope_theta`,
//! rescaled for `linear` and `llama3` rope types, with the two halves of each head rotated together.
use candle_core::{DType, Device, Tensor, D};

use super::config::{RopeConfig, RopeScaling};
use crate::runtime::profile::section;

/// The inverse frequencies of one head width, after any rescaling.
#[derive(Clone, Debug)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

/// cos and sin for a run of positions, shaped `(1, 1, seq, head_dim)` to broadcast over batch and heads.
#[derive(Clone)]
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    /// Frequencies for heads of width `head_dim`.
    pub fn new(config: &RopeConfig, head_dim: usize) -> Self {
        let base: Vec<f64> =
            (0..head_dim / 2).map(|i| 1.0 / config.theta.powf((2 * i) as f64 / head_dim as f64)).collect();
        let inv_freq = match config.scaling {
            RopeScaling::Default => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        // transformers keeps inv_freq as an f32 buffer; rounding here as it does keeps positions far
        // into a long context identical.
        RotaryEmbedding { inv_freq: inv_freq.into_iter().map(|f| f as f32).collect() }
    }

    /// cos/sin for positions `start..start + len`, in `dtype` on `device`.
    pub fn tables(
        &self,
        start: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<RopeTables> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(len * half * 2);
        for pos in start..start + len {
            let row: Vec<f32> = self.inv_freq.iter().map(|f| pos as f32 * f).collect();
            angles.extend_from_slice(&row);
            angles.extend_from_slice(&row);
        }
        let angles = Tensor::from_vec(angles, (1, 1, len, 2 * half), device)?;
        Ok(RopeTables { cos: angles.cos()?.to_dtype(dtype)?, sin: angles.sin()?.to_dtype(dtype)? })
    }
}

impl RopeTables {
    /// Rotates `x` shaped `(batch, seq, heads, head_dim)` and returns it heads-first,
    /// `(batch, heads, seq, head_dim)`, as attention needs it.
    pub fn apply_heads_first(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !x.device().is_cpu() && x.dtype() == DType::BF16 && self.cos.dtype() == DType::BF16 {
            let (cos, sin) = (self.cos.squeeze(0)?.squeeze(0)?, self.sin.squeeze(0)?.squeeze(0)?);
            return x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, FusedRope);
        }
        self.apply(&x.transpose(1, 2)?.contiguous()?)
    }

    /// Rotates `x`, shaped `(batch, heads, seq, head_dim)`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?
    }
}

/// [`RopeTables::apply_heads_first`] as one op: forge's CUDA kernel, and on the CPU the elementary ops
/// it replaces (its reference, which `forge kernels` checks it against). The backward rotates the
/// gradient back (the transpose of the rotation) and restores the `(batch, seq, heads, d)` layout; the
/// tables are constants and get none.
pub struct FusedRope;

impl candle_core::CustomOp3 for FusedRope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        cos: &candle_core::CpuStorage,
        cl: &candle_core::Layout,
        sin: &candle_core::CpuStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        use half::bf16;
        let (CpuStorage::BF16(x), CpuStorage::BF16(cos), CpuStorage::BF16(sin)) = (x, cos, sin) else {
            return Err(candle_core::Error::UnsupportedDTypeForOp(x.dtype(), "rope"));
        };
        let offsets = |l: &candle_core::Layout| {
            l.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "rope" })
        };
        let ((xs, _), (cs, _), (ss, _)) = (offsets(xl)?, offsets(cl)?, offsets(sl)?);
        let (b, s, h, d) = xl.shape().dims4()?;
        let half = d / 2;
        let round = |v: f32| bf16::from_f32(v).to_f32();
        let mut y = vec![bf16::ZERO; b * s * h * d];
        for (bi, si, hi) in
            (0..b).flat_map(|bi| (0..s).flat_map(move |si| (0..h).map(move |hi| (bi, si, hi))))
        {
            let xr = &x[xs + ((bi * s + si) * h + hi) * d..][..d];
            let yr = &mut y[((bi * h + hi) * s + si) * d..][..d];
            let (c, sn) = (&cos[cs + si * d..][..d], &sin[ss + si * d..][..d]);
            for i in 0..half {
                let (x1, x2) = (xr[i].to_f32(), xr[i + half].to_f32());
                yr[i] = bf16::from_f32(round(x1 * c[i].to_f32()) + round(-x2 * sn[i].to_f32()));
                yr[i + half] =
                    bf16::from_f32(round(x2 * c[i + half].to_f32()) + round(x1 * sn[i + half].to_f32()));
            }
        }
        Ok((CpuStorage::BF16(y), candle_core::Shape::from((b, h, s, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &candle_core::Layout,
        cos: &candle_core::CudaStorage,
        cl: &candle_core::Layout,
        sin: &candle_core::CudaStorage,
        sl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (b, s, h, d) = xl.shape().dims4()?;
        let y = super::cuda_kernels::rope_bf16(x, xl, cos, cl, sin, sl)?;
        Ok((y, candle_core::Shape::from((b, h, s, d))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        section("rope backward", x.device(), || {
            #[cfg(feature = "cuda")]
            if x.device().is_cuda() && x.dtype() == DType::BF16 {
                let dy = grad.to_dtype(DType::BF16)?;
                return Ok((Some(super::cuda_kernels::rope_backward_bf16(&dy, cos, sin)?), None, None));
            }
            let half = x.dim(D::Minus1)? / 2;
            let dy = grad.to_dtype(DType::F32)?;
            // y = x·cos + [−x₂, x₁]·sin, so dx = dy·cos + [z₂, −z₁] with z = dy·sin.
            let z = dy.broadcast_mul(&sin.to_dtype(DType::F32)?)?;
            let back = Tensor::cat(
                &[&z.narrow(D::Minus1, half, half)?, &z.narrow(D::Minus1, 0, half)?.neg()?],
                D::Minus1,
            )?;
            let dx = (dy.broadcast_mul(&cos.to_dtype(DType::F32)?)? + back)?;
            Ok((Some(dx.transpose(1, 2)?.contiguous()?.to_dtype(x.dtype())?), None, None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fused_op_reference_equals_the_elementary_ops_in_bf16() -> candle_core::Result<()> {
        let rope = RotaryEmbedding::new(&RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }, 8);
        let tables = rope.tables(3, 5, DType::BF16, &Device::Cpu)?;
        let values: Vec<f32> = (0..2 * 5 * 3 * 8).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let x = Tensor::from_vec(values, (2, 5, 3, 8), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let (cos, sin) = (tables.cos.squeeze(0)?.squeeze(0)?, tables.sin.squeeze(0)?.squeeze(0)?);
        let fused = x.apply_op3_no_bwd(&cos, &sin, &FusedRope)?;
        let plain = tables.apply_heads_first(&x)?;
        assert_eq!(fused.dims(), plain.dims());
        let diff = (fused.to_dtype(DType::F32)? - plain.to_dtype(DType::F32)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff <= 1e-2, "fused and elementary rope differ by {diff}");
        // The backward, against autograd through the elementary ops in f32.
        let weights: Vec<f32> = (0..2 * 3 * 5 * 8).map(|i| ((i * 3 % 7) as f32 - 3.0) / 2.0).collect();
        let weights = Tensor::from_vec(weights, (2, 3, 5, 8), &Device::Cpu)?;
        let f32_tables = rope.tables(3, 5, DType::F32, &Device::Cpu)?;
        let grad = |fused: bool| -> candle_core::Result<Vec<f32>> {
            let v =
                candle_core::Var::from_tensor(&x.to_dtype(if fused { DType::BF16 } else { DType::F32 })?)?;
            let y = if fused {
                v.as_tensor().apply_op3(&cos, &sin, FusedRope)?
            } else {
                f32_tables.apply(&v.as_tensor().transpose(1, 2)?.contiguous()?)?
            };
            let store = (y.to_dtype(DType::F32)? * &weights)?.sum_all()?.backward()?;
            store.get(v.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
        };
        for (a, b) in grad(true)?.iter().zip(grad(false)?) {
            assert!((a - b).abs() <= 2e-2 * (1.0 + b.abs()), "gradient {a} vs {b}");
        }
        Ok(())
    }

    /// The rotation written out in f64, pair by pair, as the RoPE paper defines it for the
    /// half-split layout.
    fn reference(x: &[f64], pos: usize, inv_freq: &[f32]) -> Vec<f64> {
        let half = x.len() / 2;
        let mut out = vec![0.0; x.len()];
        for i in 0..half {
            let angle = pos as f64 * inv_freq[i] as f64;
            out[i] = x[i] * angle.cos() - x[i + half] * angle.sin();
            out[i + half] = x[i + half] * angle.cos() + x[i] * angle.sin();
        }
        out
    }

    #[test]
    fn rotates_each_pair_by_its_angle() -> candle_core::Result<()> {
        let rope = RotaryEmbedding::new(&RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }, 8);
        let values: Vec<f32> = (0..3 * 8).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let x = Tensor::from_vec(values.clone(), (1, 1, 3, 8), &Device::Cpu)?;
        let out = rope.tables(5, 3, DType::F32, &Device::Cpu)?.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        for p in 0..3 {
            let row: Vec<f64> = values[p * 8..p * 8 + 8].iter().map(|&v| v as f64).collect();
            for (got, want) in out[p * 8..p * 8 + 8].iter().zip(reference(&row, 5 + p, &rope.inv_freq)) {
                assert!((*got as f64 - want).abs() < 1e-5, "position {}: {got} vs {want}", 5 + p);
            }
        }
        Ok(())
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let config = RopeConfig {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            },
        };
        let plain = RotaryEmbedding::new(&RopeConfig { theta: 500000.0, scaling: RopeScaling::Default }, 64);
        let scaled = RotaryEmbedding::new(&config, 64);
        assert_eq!(scaled.inv_freq[0], plain.inv_freq[0]);
        assert!((scaled.inv_freq[31] - plain.inv_freq[31] / 32.0).abs() < 1e-12);
        // A medium frequency lies strictly between its two bounds.
        let mid = (0..32).find(|&i| {
            let wavelen = 2.0 * std::f64::consts::PI / plain.inv_freq[i] as f64;
            wavelen > 2048.0 && wavelen < 8192.0
        });
        let i = mid.expect("theta 5e5 has frequencies in the smoothed band");
        assert!(scaled.inv_freq[i] < plain.inv_freq[i] && scaled.inv_freq[i] > plain.inv_freq[i] / 32.0);
    }
}
