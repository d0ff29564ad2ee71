//! Rotary position embeddings: the tables of cos and sin a layer rotates by (the rotation itself is
//! forge-kernels' `rope`, with a backward). Frequencies follow transformers: computed in f32 from `rope_theta`,
//! rescaled for `linear` and `llama3` rope types, with the two halves of each head rotated together.
use candle_core::{DType, Device, Tensor};

use crate::loader::{RopeConfig, RopeScaling};

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
        // Made on the host and moved in the model's dtype: on CUDA the unary and cast ops would each
        // load one of candle's PTX modules, which a fresh machine compiles inside the first forward pass.
        let angles = Tensor::from_vec(angles, (1, 1, len, 2 * half), &Device::Cpu)?;
        let on_device = |t: Tensor| t.to_dtype(dtype)?.to_device(device);
        Ok(RopeTables { cos: on_device(angles.cos()?)?, sin: on_device(angles.sin()?)? })
    }
}

impl RopeTables {
    /// The rows of these tables at the positions `at` (u32 on the tables' device, read there: a
    /// captured decoding step does not bake its position in).
    pub fn at(&self, at: &Tensor) -> candle_core::Result<RopeTables> {
        Ok(RopeTables { cos: self.cos.index_select(at, 2)?, sin: self.sin.index_select(at, 2)? })
    }

    /// `cos` and `sin`, `(1, 1, seq, rot)`.
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// The device the tables are on.
    pub fn device(&self) -> Device {
        self.cos.device().clone()
    }

    /// Rotates `x` shaped `(batch, seq, heads, head_dim)` and returns it heads-first,
    /// `(batch, heads, seq, head_dim)`, as attention needs it.
    pub fn apply_heads_first(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        forge_kernels::rope_heads_first(x, &self.cos, &self.sin)
    }

    /// Rotates `x`, shaped `(batch, heads, seq, head_dim)`.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        forge_kernels::rope(x, &self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
