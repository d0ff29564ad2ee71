//! The dynamic (tree) quantization maps of 8-bit optimizers (Dettmers et al. 2022, "8-bit Optimizers
//! via Block-wise Quantization"; `create_dynamic_map` in bitsandbytes): 256 values in [-1, 1] (signed,
//! for first moments) or [0, 1] (unsigned, for second moments), dense near zero and sparse near one,
//! so small and large values both keep relative precision. Values are normalised by their block's
//! absolute maximum before coding.

/// A sorted 256-entry code book.
pub struct DynamicMap {
    values: [f32; 256],
}

impl DynamicMap {
    /// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`.
    pub fn new(signed: bool) -> Self {
        const MAX_EXPONENT_BITS: i32 = 7;
        let mut data: Vec<f32> = Vec::with_capacity(256);
        for i in 0..MAX_EXPONENT_BITS {
            let items = if signed { (1usize << i) + 1 } else { (1usize << (i + 1)) + 1 };
            let boundaries: Vec<f32> =
                (0..items).map(|k| 0.1 + 0.9 * k as f32 / (items - 1) as f32).collect();
            let scale = 10f32.powi(-(MAX_EXPONENT_BITS - 1) + i);
            for w in boundaries.windows(2) {
                let mean = (w[0] + w[1]) / 2.0;
                data.push(scale * mean);
                if signed {
                    data.push(-scale * mean);
                }
            }
        }
        data.push(0.0);
        data.push(1.0);
        data.resize(256, 0.0);
        data.sort_by(f32::total_cmp);
        DynamicMap { values: data.try_into().expect("exactly 256 codes") }
    }

    /// The code whose value is nearest to `x` (already divided by the block's absmax).
    pub fn quantize(&self, x: f32) -> u8 {
        let upper = self.values.partition_point(|&v| v < x).min(255);
        let lower = upper.saturating_sub(1);
        if (x - self.values[lower]).abs() <= (self.values[upper] - x).abs() {
            lower as u8
        } else {
            upper as u8
        }
    }

    /// The value of `code`.
    pub fn value(&self, code: u8) -> f32 {
        self.values[code as usize]
    }

    /// The most quantizing `x` may be off by: half the gap between the codes around it, or its
    /// distance to the end code outside the map's range (the signed map stops at -0.99297).
    #[cfg(test)]
    pub fn bound(&self, x: f32) -> f32 {
        let (first, last) = (self.values[0], self.values[255]);
        if x <= first || x >= last {
            return (first - x).max(x - last).max(0.0);
        }
        let upper = self.values.partition_point(|&v| v < x);
        (self.values[upper] - self.values[upper - 1]) / 2.0
    }
}

/// Values per absmax block.
pub const BLOCK: usize = 256;

/// Block-wise 8-bit codes of a tensor.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
}

impl Quantized {
    /// All zeros, for `len` values.
    pub fn zeros(map: &DynamicMap, len: usize) -> Self {
        Quantized { codes: vec![map.quantize(0.0); len], absmax: vec![0.0; len.div_ceil(BLOCK)] }
    }

    /// Codes block `b` of `values` (one block's worth) in place.
    pub fn store_block(&mut self, map: &DynamicMap, b: usize, values: &[f32]) {
        let absmax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
        self.absmax[b] = absmax;
        let inv = if absmax > 0.0 { 1.0 / absmax } else { 0.0 };
        for (code, &v) in self.codes[b * BLOCK..b * BLOCK + values.len()].iter_mut().zip(values) {
            *code = map.quantize(v * inv);
        }
    }

    /// Decodes block `b` into `out`.
    pub fn load_block(&self, map: &DynamicMap, b: usize, out: &mut [f32]) {
        for (o, &code) in out.iter_mut().zip(&self.codes[b * BLOCK..]) {
            *o = map.value(code) * self.absmax[b];
        }
    }

    /// Bytes held: one per code, four per block scale.
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.absmax.len() * 4
    }
}

/// AdamW8bit's two moments of one parameter.
#[derive(Clone, Debug)]
pub struct QuantizedMoments {
    pub m: Quantized,
    pub v: Quantized,
}

/// Packed for the device kernel (forge-kernels' `adamw8bit_f32`): one f32 buffer of both absmax
/// arrays, then both code arrays as bytes, each padded to whole words (a candle tensor has one dtype;
/// the codes ride in it as bit patterns, never as numbers).
impl super::on_device::HostState for QuantizedMoments {
    fn pack(&self) -> Vec<f32> {
        let words = |codes: &[u8]| -> Vec<f32> {
            codes
                .chunks(4)
                .map(|c| {
                    let mut w = [0u8; 4];
                    w[..c.len()].copy_from_slice(c);
                    f32::from_bits(u32::from_le_bytes(w))
                })
                .collect()
        };
        let mut packed = self.m.absmax.clone();
        packed.extend(&self.v.absmax);
        packed.extend(words(&self.m.codes));
        packed.extend(words(&self.v.codes));
        packed
    }

    fn unpack(packed: Vec<f32>, values: usize) -> Self {
        let (blocks, words) = (values.div_ceil(BLOCK), values.div_ceil(4));
        let codes = |w: &[f32]| -> Vec<u8> {
            let mut bytes: Vec<u8> = w.iter().flat_map(|f| f.to_bits().to_le_bytes()).collect();
            bytes.truncate(values);
            bytes
        };
        let at = 2 * blocks;
        QuantizedMoments {
            m: Quantized { codes: codes(&packed[at..at + words]), absmax: packed[..blocks].to_vec() },
            v: Quantized {
                codes: codes(&packed[at + words..at + 2 * words]),
                absmax: packed[blocks..at].to_vec(),
            },
        }
    }

    fn bytes(&self) -> usize {
        self.m.bytes() + self.v.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_the_shape_of_bitsandbytes_maps() {
        let signed = DynamicMap::new(true);
        assert_eq!((signed.values[0], signed.values[255]), (-0.99296875, 1.0));
        assert!(signed.values.contains(&0.0));
        let unsigned = DynamicMap::new(false);
        assert_eq!(unsigned.values[255], 1.0);
        assert!(unsigned.values.iter().all(|&v| v >= 0.0));
        // Dense near zero: the smallest non-zero magnitude is of order 1e-6.
        let smallest = unsigned.values.iter().copied().filter(|&v| v > 0.0).fold(1.0, f32::min);
        assert!(smallest < 1e-5, "{smallest}");
    }

    #[test]
    fn round_trip_error_stays_within_the_maps_bound() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        for signed in [true, false] {
            let map = DynamicMap::new(signed);
            // Values of very different magnitudes, as moments have.
            let values: Vec<f32> = (0..BLOCK)
                .map(|i| {
                    let v = next() * 10f32.powi(-((i % 5) as i32));
                    if signed {
                        v
                    } else {
                        v.abs()
                    }
                })
                .collect();
            let mut q = Quantized::zeros(&map, BLOCK);
            q.store_block(&map, 0, &values);
            let mut back = vec![0f32; BLOCK];
            q.load_block(&map, 0, &mut back);
            let absmax = q.absmax[0];
            for (v, b) in values.iter().zip(&back) {
                // f32 rounding of the division and product allows a few ulps past the exact bound.
                let bound = map.bound(v / absmax) * absmax * (1.0 + 1e-4) + 1e-7 * absmax;
                assert!((v - b).abs() <= bound, "{v} came back as {b}, beyond the bound {bound}");
            }
        }
    }

    /// The device layout holds both moments' codes and scales and gives them back unchanged, for a
    /// length that is neither whole blocks nor whole words; its size is what the kernel expects.
    #[test]
    fn packed_moments_round_trip() {
        use crate::strategies::optimizers::on_device::HostState;
        let n = 3 * BLOCK + 7;
        let (signed, unsigned) = (DynamicMap::new(true), DynamicMap::new(false));
        let (mut m, mut v) = (Quantized::zeros(&signed, n), Quantized::zeros(&unsigned, n));
        for b in 0..n.div_ceil(BLOCK) {
            let len = BLOCK.min(n - b * BLOCK);
            let values: Vec<f32> = (0..len).map(|i| ((i * 37 + b) % 101) as f32 / 50.0 - 1.0).collect();
            m.store_block(&signed, b, &values);
            v.store_block(&unsigned, b, &values.iter().map(|x| x * x).collect::<Vec<_>>());
        }
        let moments = QuantizedMoments { m, v };
        let packed = moments.pack();
        assert_eq!(packed.len(), forge_kernels::adam::adam8bit_state_len(n));
        let back = QuantizedMoments::unpack(packed, n);
        assert_eq!((back.m.codes, back.m.absmax), (moments.m.codes, moments.m.absmax));
        assert_eq!((back.v.codes, back.v.absmax), (moments.v.codes, moments.v.absmax));
    }
}
