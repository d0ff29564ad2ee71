//! The loss and the trainable parameters' gradients for one batch, with or without gradient
//! checkpointing.
//!
//! Plain: one forward pass that keeps every activation, one backward pass. Checkpointed: a first pass
//! without a graph that keeps only each decoder layer's input; then the head (final norm and loss)
//! is differentiated from the last layer's output, and each layer, from the last to the first, is run
//! again from its saved input with the graph on and differentiated against the gradient arriving from
//! above (`∑ out · grad_out` has exactly that gradient). Peak activation memory is one layer's, plus
//! one input per layer.
use candle_core::{Tensor, Var};

use crate::autograd::no_grad;
use crate::model::CausalLm;
use forge_kernels::profile::section;

/// Mean next-token NLL of `ids` and the gradient of every parameter in `params` (zeros where none
/// reaches a parameter).
pub fn loss_and_grads(
    model: &CausalLm,
    ids: &Tensor,
    params: &[Var],
    checkpoint: bool,
) -> candle_core::Result<(f32, Vec<Tensor>)> {
    let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
    let mut collect = |store: &candle_core::backprop::GradStore| -> candle_core::Result<()> {
        for (slot, var) in grads.iter_mut().zip(params) {
            if let Some(g) = store.get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g.clone(),
                });
            }
        }
        Ok(())
    };
    let loss = if !checkpoint {
        let loss = model.next_token_nll(ids)?.mean_all()?;
        collect(&section("train backward", ids.device(), || loss.backward())?)?;
        loss
    } else {
        let rope = model.rope(0, ids.dim(1)?)?;
        let inputs = no_grad(|| -> candle_core::Result<Vec<Tensor>> {
            let mut inputs = vec![model.embed(ids)?.detach()];
            for i in 0..model.layers.len() {
                let next =
                    model.layer_forward(i, inputs.last().expect("one input per layer so far"), &rope)?;
                inputs.push(next.detach());
            }
            Ok(inputs)
        })?;
        let top = Var::from_tensor(inputs.last().expect("the embedding is always there"))?;
        let loss = model.nll_from_last_layer(top.as_tensor(), ids)?.mean_all()?;
        let store = loss.backward()?;
        collect(&store)?;
        let mut grad_out = store
            .get(top.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the last layer".into()))?;
        for i in (0..model.layers.len()).rev() {
            let input = Var::from_tensor(&inputs[i])?;
            let out = model.layer_forward(i, input.as_tensor(), &rope)?;
            let store = (out * &grad_out)?.sum_all()?.backward()?;
            collect(&store)?;
            if i > 0 {
                grad_out = store.get(input.as_tensor()).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!("no gradient reached layer {i}'s input"))
                })?;
            }
        }
        loss
    };
    let grads = grads
        .into_iter()
        .zip(params)
        .map(|(g, var)| match g {
            Some(g) => Ok(g),
            None => var.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    Ok((loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?, grads))
}
