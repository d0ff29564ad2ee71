//! The SwiGLU feed-forward block: `down(silu(gate(x)) · up(x))`.
use std::sync::Mutex;

use candle_core::{Module, Tensor};
use forge_kernels::{add_matmul, swiglu, swiglu_backward, tape};

use super::attention::AttentionObserver;
use super::linear::{linear, Linear};
use crate::autograd::{keep_activations, layer_output_unread, with_gradient};
use crate::loader::{ModelConfig, WeightScope};
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

/// Loads layer `layer`'s MLP from `vb` (`model.layers.N.mlp`).
pub fn mlp(config: &ModelConfig, layer: usize, vb: WeightScope) -> Result<Mlp> {
    let (h, i, bias) = (config.hidden, config.intermediates[layer], config.mlp_bias);
    Ok(Mlp {
        gate_proj: linear(h, i, bias, vb.pp("gate_proj"))?,
        up_proj: linear(h, i, bias, vb.pp("up_proj"))?,
        down_proj: linear(i, h, bias, vb.pp("down_proj"))?,
    })
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_masked(x, None, 0, None)
    }
}

impl Mlp {
    /// The block on `x` with `mask` `(channels)` on its activations (a removed channel never reaches
    /// `down_proj`), shown to `observer` as layer `layer`'s.
    pub fn forward_masked(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        layer: usize,
        observer: Option<&mut dyn AttentionObserver>,
    ) -> candle_core::Result<Tensor> {
        let frozen = [&self.gate_proj, &self.up_proj, &self.down_proj].iter().all(|l| !l.has_adapter());
        // A trainable mask (scorers differentiate through it) needs the graph's own backward.
        let mask_trains = mask.is_some_and(|m| m.track_op());
        if frozen && tape::tracked(x) && !mask_trains && observer.is_none() {
            return self.frozen_forward(x, mask);
        }
        if mask.is_none() && observer.is_none() {
            if let Some(gated) = self.one_row_swiglu(x)? {
                return self.down_proj.forward(&gated);
            }
        }
        let gated = masked_swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?, mask)?;
        if let Some(observer) = observer {
            observer.observe_mlp(layer, &gated)?;
        }
        self.down_proj.forward(&gated)
    }

    /// `silu(gate(x)) · up(x)` for decoding's one row as one launch (`None` where the kernel does not
    /// apply, or a projection is more than its weight), where the two products and the gate were three.
    fn one_row_swiglu(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (Some(gate), Some(up)) = (self.gate_proj.plain_weight(), self.up_proj.plain_weight()) else {
            return Ok(None);
        };
        let mut dims = x.dims().to_vec();
        let Some(hidden) = dims.pop() else { return Ok(None) };
        let gated = forge_kernels::matvec_swiglu(&x.reshape(((), hidden))?, gate, up)?;
        dims.push(gate.dim(0)?);
        gated.map(|g| g.reshape(dims)).transpose()
    }

    /// The forward of an MLP with no trainable part, for training through it: through candle's
    /// autograd, the gate and up outputs and their product (three `rows × intermediate` tensors, most
    /// of a layer's activations) would be kept for the backward. Here the block runs outside the graph
    /// and the backward recomputes gate and up from the input, which is kept anyway, at the cost of
    /// two matmuls; or, while [`keep_activations`] (a checkpointed layer run again, its backward next),
    /// takes them as the forward left them: two of the block's three products fewer (about 75 ms of
    /// qwen3.5-9b's step, by arithmetic), for no more peak (the backward would hold them at that point).
    /// The block is its decoder layer's last, so then its output, like the layer's, is read by nobody
    /// ([`layer_output_unread`]): it stays zeros, and the down product, a third of the block's
    /// products, is not made (its backward needs the gradient and the weight, not the product).
    fn frozen_forward(&self, x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x0 = tape::detach(x)?;
        let (gate, up) = (self.gate_proj.forward(&x0)?, self.up_proj.forward(&x0)?);
        let out = if layer_output_unread() {
            x0.zeros_like()?
        } else {
            self.down_proj.forward(&masked_swiglu(&gate, &up, mask)?)?
        };
        // Taken by the backward, so they go as soon as it has used them, not with the graph.
        let kept = Mutex::new(keep_activations().then_some((gate, up)));
        let (mlp, mask) = (self.clone(), mask.cloned());
        with_gradient("mlp backward", x, out, move |grad| {
            let taken = kept.lock().expect("no panic while holding the kept activations").take();
            let (gate, up) = match taken {
                Some(both) => both,
                None => (mlp.gate_proj.forward(&x0)?, mlp.up_proj.forward(&x0)?),
            };
            let hidden = grad.dim(candle_core::D::Minus1)?;
            let grad = grad.to_dtype(x0.dtype())?.reshape(((), hidden))?;
            let mut d_gated = grad.matmul(&mlp.down_proj.weight()?)?.reshape(gate.shape())?;
            if let Some(mask) = &mask {
                d_gated = d_gated.broadcast_mul(mask)?;
            }
            let (d_gate, d_up) = swiglu_backward(&gate, &up, &d_gated)?;
            drop((gate, up));
            let flat = |t: Tensor| t.reshape(((), t.dim(candle_core::D::Minus1)?));
            let through_gate = flat(d_gate)?.matmul(&mlp.gate_proj.weight()?)?;
            let dx = add_matmul(through_gate, &flat(d_up)?, &mlp.up_proj.weight()?, 1.0)?;
            dx.reshape(x0.shape())
        })
    }
}

/// `silu(gate) · up`, with `mask` `(channels)` on its channels when given.
fn masked_swiglu(gate: &Tensor, up: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let gated = swiglu(gate, up)?;
    match mask {
        Some(mask) => tape::mask(&gated, mask),
        None => Ok(gated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_frozen_mlp_recomputing_or_keeping_gets_the_gradient_of_the_graph_through_its_ops(
    ) -> candle_core::Result<()> {
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
        // With and without a channel mask (a pruned model trains through its masked MLPs), recomputing
        // gate and up in the backward or keeping them (checkpointing's second pass).
        let channel_mask =
            Tensor::from_vec((0..inter).map(|c| (c % 3 != 1) as u8 as f32).collect(), inter, &dev)?;
        for (mask, keep) in [None, Some(&channel_mask)].into_iter().flat_map(|m| [(m, false), (m, true)]) {
            let forward = || mlp.forward_masked(x.as_tensor(), mask, 0, None);
            let joined = if keep { crate::autograd::keeping_activations(forward)? } else { forward()? };
            let mut gated =
                swiglu(&mlp.gate_proj.forward(x.as_tensor())?, &mlp.up_proj.forward(x.as_tensor())?)?;
            if let Some(mask) = mask {
                gated = gated.broadcast_mul(mask)?;
            }
            let through_ops = mlp.down_proj.forward(&gated)?;
            // Kept: a checkpointed layer's second pass, whose output nobody reads; it is not made.
            let expected = if keep { through_ops.zeros_like()? } else { through_ops.clone() };
            assert_eq!(joined.to_vec3::<f32>()?, expected.to_vec3::<f32>()?);
            let (a, b) = (gradient(joined)?, gradient(through_ops)?);
            for (a, b) in a.iter().zip(&b) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "gradient {a} vs {b}");
            }
        }
        Ok(())
    }
}
