//! What each layer keeps of the tokens seen so far, so generation computes each position once:
//! keys and values for attention; for Qwen3.5's linear attention, the last convolution inputs and the
//! recurrent state (constant in sequence length).
//!
//! A cache grows by concatenation, or is fixed: buffers of a set capacity written in place at a
//! position kept on the device. A decoding step over a fixed cache does the same work with the same
//! buffers whatever the position, so it can be captured once as a CUDA graph and replayed
//! (`generate::graph`).
use candle_core::{DType, Tensor, D};

use super::rope::RopeTables;

/// One layer's cache.
#[derive(Clone, Default)]
pub struct LayerCache {
    /// Attention: keys and values, `(batch, kv_heads, seen, head_dim)` each; in a fixed cache
    /// `(batch, kv_heads, capacity, head_dim)`, filled up to the position.
    kv: Option<(Tensor, Tensor)>,
    /// A fixed cache's position: one u32 on the device, shared by every layer.
    at: Option<Tensor>,
    /// A fixed cache's position as `scatter_set` takes it, repeated over one position's keys
    /// `(batch, kv_heads, 1, head_dim)`, u32; shared by the layers of one shape and written with the
    /// position (made from it inside each layer's step, it was a launch a layer: 128 µs of qwen3-4b's
    /// 4.6 ms token, ncu, sixteenth session's call W).
    index: Option<Tensor>,
    /// Linear attention: the last `conv_kernel − 1` inputs of the convolution `(batch, taps − 1, channels)`.
    pub(crate) conv: Option<Tensor>,
    /// Linear attention: the delta rule's state `(batch, value_heads, key_dim, value_dim)`, f32.
    pub(crate) delta: Option<Tensor>,
}

/// The keys and values attention reads after [`LayerCache::append`].
pub enum Cached {
    /// All positions so far, `(batch, kv_heads, seen, head_dim)`.
    All(Tensor, Tensor),
    /// A fixed cache's buffers and its position (the count of positions before this step's) on the
    /// device.
    At { k: Tensor, v: Tensor, past_at: Tensor },
}

impl LayerCache {
    /// Appends this step's keys and values `(batch, kv_heads, seq, head_dim)`; a fixed cache takes one
    /// position a step, written at its position.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<Cached> {
        if let (Some(at), Some(index), Some((ck, cv))) = (&self.at, &self.index, &self.kv) {
            if k.dims() != index.dims() {
                candle_core::bail!(
                    "a fixed KV cache takes keys {:?} a step, not {:?}",
                    index.dims(),
                    k.dims()
                );
            }
            ck.scatter_set(index, &k.contiguous()?, 2)?;
            cv.scatter_set(index, &v.contiguous()?, 2)?;
            return Ok(Cached::At { k: ck.clone(), v: cv.clone(), past_at: at.clone() });
        }
        let kv = match &self.kv {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], D::Minus2)?, Tensor::cat(&[pv, v], D::Minus2)?),
        };
        self.kv = Some(kv.clone());
        Ok(Cached::All(kv.0, kv.1))
    }

    /// Keeps a linear-attention layer's next convolution inputs and state. A fixed cache writes them
    /// into its own buffers, so that a captured step reads and writes the same memory at every replay.
    pub(crate) fn keep_linear(&mut self, conv: Tensor, delta: Tensor) -> candle_core::Result<()> {
        if let (Some(_), Some(into_conv), Some(into_delta)) = (&self.at, &self.conv, &self.delta) {
            into_conv.slice_set(&conv.contiguous()?, 0, 0)?;
            return into_delta.slice_set(&delta.contiguous()?, 0, 0);
        }
        (self.conv, self.delta) = (Some(conv), Some(delta));
        Ok(())
    }

    /// This layer's cache in buffers of its own: keys and values in zeroed buffers of `capacity`
    /// positions; a linear-attention layer's convolution inputs and state copied at their own sizes
    /// (they do not grow with positions). A removed layer's empty cache stays empty. The position's
    /// index is the one of `indexes` of this layer's shape, or a new one added there.
    fn fixed(
        &self,
        capacity: usize,
        at: &Tensor,
        indexes: &mut Vec<Tensor>,
    ) -> candle_core::Result<LayerCache> {
        let at = Some(at.clone());
        if let (Some(conv), Some(delta)) = (&self.conv, &self.delta) {
            let (conv, delta) =
                (Some(buffer(conv, 1, conv.dim(1)?)?), Some(buffer(delta, 2, delta.dim(2)?)?));
            return Ok(LayerCache { conv, delta, at, ..Default::default() });
        }
        let Some((k, v)) = &self.kv else {
            return Ok(LayerCache::default());
        };
        let (b, heads, _, d) = k.dims4()?;
        let index = match indexes.iter().find(|i| i.dims() == [b, heads, 1, d]) {
            Some(index) => index.clone(),
            None => {
                let index = Tensor::zeros((b, heads, 1, d), DType::U32, k.device())?;
                indexes.push(index.clone());
                index
            }
        };
        Ok(LayerCache {
            kv: Some((buffer(k, 2, capacity)?, buffer(v, 2, capacity)?)),
            at,
            index: Some(index),
            ..Default::default()
        })
    }
}

/// `t` copied into a zeroed buffer of `len` along `dim`. Zeros and a slice copy, not `Tensor::copy`:
/// decoding loads those kernels anyway, where a copy would load candle's unary module too (compiled
/// by the driver on a fresh machine).
fn buffer(t: &Tensor, dim: usize, len: usize) -> candle_core::Result<Tensor> {
    let mut dims = t.dims().to_vec();
    dims[dim] = len;
    let buffer = Tensor::zeros(dims, t.dtype(), t.device())?;
    buffer.slice_set(&t.contiguous()?, dim, 0)?;
    Ok(buffer)
}

/// The cache of a whole model.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    seen: usize,
    fixed: Option<Fixed>,
}

/// What a fixed cache keeps on the device for its position.
#[derive(Clone)]
struct Fixed {
    /// The position, one u32 (every layer's `at`).
    at: Tensor,
    /// The rotary tables of every position the cache holds.
    rope: RopeTables,
    /// The position repeated for each shape of the layers' keys (their `index`).
    indexes: Vec<Tensor>,
}

impl KvCache {
    /// An empty cache for `layers` layers.
    pub fn new(layers: usize) -> Self {
        KvCache { layers: vec![LayerCache::default(); layers], seen: 0, fixed: None }
    }

    /// This cache as a fixed one of `capacity` positions (`rope` the rotary tables of positions
    /// `0..capacity`), its position on the device set to the positions seen.
    pub fn fixed(&self, capacity: usize, rope: RopeTables) -> candle_core::Result<KvCache> {
        if capacity <= self.seen {
            candle_core::bail!("a fixed cache of {capacity} positions cannot hold the {} seen", self.seen);
        }
        let at = Tensor::zeros(1, DType::U32, &rope.device())?;
        let mut indexes = Vec::new();
        let layers = self
            .layers
            .iter()
            .map(|l| l.fixed(capacity, &at, &mut indexes))
            .collect::<candle_core::Result<_>>()?;
        let mut cache = KvCache { layers, seen: self.seen, fixed: Some(Fixed { at, rope, indexes }) };
        cache.set_position(self.seen)?;
        Ok(cache)
    }

    /// Moves a fixed cache's position on the device to `seen` (the host's count follows): copies
    /// from the host, before a step, so a captured step reads it where it is.
    pub fn set_position(&mut self, seen: usize) -> candle_core::Result<()> {
        let Some(fixed) = &self.fixed else {
            candle_core::bail!("only a fixed cache has a position on the device");
        };
        for buffer in fixed.indexes.iter().chain([&fixed.at]) {
            let filled =
                Tensor::from_vec(vec![seen as u32; buffer.elem_count()], buffer.shape(), buffer.device())?;
            buffer.slice_set(&filled, 0, 0)?;
        }
        self.seen = seen;
        Ok(())
    }

    /// A fixed cache's rotary tables at its position on the device; `None` for a growing cache.
    pub(crate) fn rope_at_position(&self) -> Option<candle_core::Result<RopeTables>> {
        self.fixed.as_ref().map(|fixed| fixed.rope.at(&fixed.at))
    }

    /// Positions already cached: where the next token's position starts.
    pub fn seen(&self) -> usize {
        self.seen
    }

    pub(crate) fn layer(&mut self, index: usize) -> &mut LayerCache {
        &mut self.layers[index]
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.seen += tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{RopeConfig, RopeScaling};
    use crate::model::rope::RotaryEmbedding;
    use candle_core::{DType, Device};

    fn kv(seq: usize, from: f32) -> candle_core::Result<Tensor> {
        Tensor::arange(from, from + (2 * seq * 4) as f32, &Device::Cpu)?.reshape((1, 2, seq, 4))
    }

    /// A fixed cache holds what the growing one had, takes each step's keys at its position on the
    /// device, and picks that position's rotary rows there.
    #[test]
    fn a_fixed_cache_writes_at_its_position_on_the_device() -> candle_core::Result<()> {
        let mut cache = KvCache::new(1);
        cache.layer(0).append(&kv(3, 0.0)?, &kv(3, 100.0)?)?;
        cache.advance(3);
        let rotary = RotaryEmbedding::new(&RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }, 4);
        let mut fixed = cache.fixed(8, rotary.tables(0, 8, DType::F32, &Device::Cpu)?)?;
        fixed.set_position(5)?;
        let Cached::At { k, v, past_at } = fixed.layer(0).append(&kv(1, -9.0)?, &kv(1, -90.0)?)? else {
            panic!("a fixed cache gives its buffers")
        };
        assert_eq!(past_at.to_vec1::<u32>()?, [5]);
        let rows = |t: &Tensor, from, len| t.narrow(2, from, len)?.flatten_all()?.to_vec1::<f32>();
        assert_eq!(rows(&k, 0, 3)?, kv(3, 0.0)?.flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(rows(&v, 5, 1)?, kv(1, -90.0)?.flatten_all()?.to_vec1::<f32>()?);
        assert!(rows(&k, 3, 2)?.iter().chain(&rows(&k, 6, 2)?).all(|&x| x == 0.0));
        let at = fixed.rope_at_position().expect("a fixed cache has rotary rows")?;
        let want = rotary.tables(5, 1, DType::F32, &Device::Cpu)?;
        let x = kv(1, 1.0)?.reshape((1, 2, 1, 4))?;
        assert_eq!(
            at.apply(&x)?.flatten_all()?.to_vec1::<f32>()?,
            want.apply(&x)?.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(fixed.layer(0).append(&kv(2, 0.0)?, &kv(2, 0.0)?).is_err(), "two positions in one step");
        // Layers of one shape share the position's index, and a new position reaches each of them.
        let mut two = KvCache::new(2);
        for layer in 0..2 {
            two.layer(layer).append(&kv(3, 0.0)?, &kv(3, 100.0)?)?;
        }
        two.advance(3);
        let mut fixed = two.fixed(8, rotary.tables(0, 8, DType::F32, &Device::Cpu)?)?;
        assert_eq!(fixed.fixed.as_ref().map(|f| f.indexes.len()), Some(1));
        for (position, layer) in [(3, 0), (6, 1)] {
            fixed.set_position(position)?;
            let Cached::At { k, .. } = fixed.layer(layer).append(&kv(1, -9.0)?, &kv(1, -90.0)?)? else {
                panic!("a fixed cache gives its buffers")
            };
            assert_eq!(rows(&k, position, 1)?, kv(1, -9.0)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    /// A fixed linear-attention cache copies the prompt's convolution inputs and state into buffers
    /// of its own and overwrites those in place each step (a captured step reads the same memory);
    /// the prompt's cache is left as it was.
    #[test]
    fn a_fixed_linear_cache_overwrites_its_own_buffers() -> candle_core::Result<()> {
        let t = |from: f32, shape: &[usize]| -> candle_core::Result<Tensor> {
            let n: usize = shape.iter().product();
            Tensor::arange(from, from + n as f32, &Device::Cpu)?.reshape(shape)
        };
        let mut cache = KvCache::new(1);
        cache.layer(0).keep_linear(t(0.0, &[1, 3, 4])?, t(10.0, &[1, 2, 2, 2])?)?;
        cache.advance(5);
        let rotary = RotaryEmbedding::new(&RopeConfig { theta: 10000.0, scaling: RopeScaling::Default }, 4);
        let mut fixed = cache.fixed(8, rotary.tables(0, 8, DType::F32, &Device::Cpu)?)?;
        let (conv, delta) = (fixed.layer(0).conv.clone().unwrap(), fixed.layer(0).delta.clone().unwrap());
        fixed.layer(0).keep_linear(t(-50.0, &[1, 3, 4])?, t(-90.0, &[1, 2, 2, 2])?)?;
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        assert_eq!(flat(&conv)?, flat(&t(-50.0, &[1, 3, 4])?)?, "written into the same buffer");
        assert_eq!(flat(&delta)?, flat(&t(-90.0, &[1, 2, 2, 2])?)?);
        assert_eq!(flat(cache.layer(0).conv.as_ref().unwrap())?, flat(&t(0.0, &[1, 3, 4])?)?);
        Ok(())
    }
}
