//! A frozen weight stored as int8 rows, one f32 scale a row (`forge train --frozen-base int8`), and
//! turned back into the model's dtype where it is used.
//!
//! Why: LoRA trains against a frozen base, and a base in bf16 is most of training's memory (qwen3.5-27b:
//! 50.1 GiB of its linear layers' weights, beside the peer's 82.3 GiB whole run). In int8 it is half
//! that. Each product takes the weight dense: one pass reads a byte and writes two per weight
//! (`dequant_rows_u8_bf16`), a few milliseconds a layer beside the layer's products, and the dense copy
//! lives only as long as the op that uses it (under checkpointing, one layer's).
//!
//! The codes: `round(w / s) + 128` as a byte, `s = max |w| / 127` over the row (symmetric, so zero
//! stays zero); the dense value is `(code − 128) · s`, rounded once to the dtype. Relative error per
//! weight at most half a step, `s / 2`.
use candle_core::{DType, Tensor, D};

/// A weight `(out, in)` as int8 rows.
#[derive(Clone)]
pub struct Int8Rows {
    /// `(out, in)`, u8: the code plus 128.
    codes: Tensor,
    /// `(out)`, f32: each row's step.
    scales: Tensor,
    /// What the dense weight was, and is given back as.
    dtype: DType,
}

impl Int8Rows {
    /// The codes of `weight` `(out, in)` (on its device).
    pub fn quantize(weight: &Tensor) -> candle_core::Result<Self> {
        let w = weight.to_dtype(DType::F32)?;
        // A row of zeros keeps step 1 (its codes are all 128), not a division by zero.
        let max = w.abs()?.max_keepdim(D::Minus1)?;
        let scales = (max.eq(0.0)?.to_dtype(DType::F32)? + (max / 127.0)?)?;
        let codes = (w.broadcast_div(&scales)?.round()? + 128.0)?.clamp(1f32, 255f32)?.to_dtype(DType::U8)?;
        Ok(Int8Rows { codes, scales: scales.squeeze(1)?, dtype: weight.dtype() })
    }

    /// `(out, in)`.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.codes.dims2()
    }

    /// Bytes on the device: a byte a weight and four a row.
    pub fn bytes(&self) -> usize {
        self.codes.elem_count() + 4 * self.scales.elem_count()
    }

    /// The dense weight, `(code − 128) · s` in the original dtype: forge's kernel on CUDA for bf16 rows
    /// a multiple of 8 wide, else elementary ops (the reference the kernel is checked against).
    pub fn dequantize(&self) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.dtype == DType::BF16 && !self.codes.device().is_cpu() {
            use crate::launch::{launch_on_tensors, Grid, Scalar};
            let (out, cols) = self.dims()?;
            // The kernel reads eight codes a load: rows a multiple of 8 wide, from an 8-byte boundary.
            if cols.is_multiple_of(8) && self.codes.layout().start_offset().is_multiple_of(8) {
                let groups = out * cols / 8;
                let scalars = [Scalar::I64(groups as i64), Scalar::I32(cols as i32)];
                return launch_on_tensors::<half::bf16>(
                    "dequant_rows_u8_bf16",
                    &[&self.codes, &self.scales],
                    (out, cols),
                    Grid::Stride(groups),
                    &scalars,
                );
            }
        }
        self.reference()
    }

    /// [`Self::dequantize`] by elementary ops.
    pub fn reference(&self) -> candle_core::Result<Tensor> {
        let centred = (self.codes.to_dtype(DType::F32)? - 128.0)?;
        centred.broadcast_mul(&self.scales.unsqueeze(1)?)?.to_dtype(self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn codes_round_trip_within_half_a_step_and_keep_zero_rows() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w =
            Tensor::new(&[[0.5f32, -1.27, 0.0, 0.013], [0.0, 0.0, 0.0, 0.0], [3.0, 2.0, -1.0, 0.25]], &dev)?;
        let q = Int8Rows::quantize(&w)?;
        assert_eq!(q.bytes(), 12 + 12);
        let back = q.dequantize()?.to_vec2::<f32>()?;
        for (row, (got, want)) in back.iter().zip(w.to_vec2::<f32>()?).enumerate() {
            let step = want.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (g, v) in got.iter().zip(&want) {
                assert!((g - v).abs() <= step / 2.0 + 1e-7, "row {row}: {g} vs {v} (step {step})");
            }
            // The row's largest weight is a code exactly.
            assert!(got.iter().zip(&want).any(|(g, v)| v.abs() == step * 127.0 && g == v) || step == 0.0);
        }
        assert_eq!(back[1], vec![0.0; 4], "a zero row stays zero");
        Ok(())
    }
}
