//! The loss and the trainable parameters' gradients for one batch, with or without gradient
//! checkpointing.
//!
//! Plain: one forward pass that keeps every activation, one backward pass. Checkpointed: a first pass
//! without a graph that keeps only each decoder layer's input; then the head (final norm and loss)
//! is differentiated from the last layer's output, and each layer, from the last to the first, is run
//! again from its saved input with the graph on and differentiated against the gradient arriving from
//! above (`autograd::backward_from`). Peak activation memory is one layer's, plus
//! one input per layer.
use candle_core::{Tensor, Var};

use crate::autograd::{backward_from, chunked_kl, keeping_activations, no_grad};
use crate::model::CausalLm;
use forge_kernels::profile::section;

/// Distillation from a teacher's logits: the loss becomes `(1 − alpha) · CE + alpha · T² · KL(teacher ‖
/// student)`, both distributions at temperature T.
#[derive(Clone, Copy)]
pub struct Distill<'a> {
    pub teacher: &'a CausalLm,
    pub alpha: f64,
    pub temperature: f64,
}

/// The loss's parts for one batch: the mean next-token NLL and, when distilling, the mean KL.
#[derive(Clone, Copy, Debug, Default)]
pub struct LossParts {
    pub loss: f32,
    pub ce: f32,
    pub kl: Option<f32>,
}

/// The loss of the last layer's output `x` for `ids`: the NLL, mixed with the KL to the teacher when
/// distilling (the teacher runs without a graph).
fn head_loss(
    model: &CausalLm,
    x: &Tensor,
    ids: &Tensor,
    distill: Option<&Distill>,
) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
    let ce = model.nll_from_last_layer(x, ids)?.mean_all()?;
    let Some(d) = distill else { return Ok((ce.clone(), ce, None)) };
    let teacher = no_grad(|| d.teacher.predicting_rows(&d.teacher.last_layer(ids)?))?;
    let student = model.predicting_rows(x)?;
    let kl =
        chunked_kl(&student, model.lm_head(), &teacher, d.teacher.lm_head(), d.temperature)?.mean_all()?;
    let t2 = d.temperature * d.temperature;
    let loss = ((ce.to_dtype(kl.dtype())? * (1.0 - d.alpha))? + (&kl * (d.alpha * t2))?)?;
    Ok((loss, ce, Some(kl)))
}

/// The loss of `ids` (its parts) and the gradient of every parameter in `params` (zeros where none
/// reaches a parameter).
pub fn loss_and_grads(
    model: &CausalLm,
    ids: &Tensor,
    params: &[Var],
    checkpoint: bool,
    distill: Option<&Distill>,
) -> candle_core::Result<(LossParts, Vec<Tensor>)> {
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
    let (loss, ce, kl) = if !checkpoint {
        let (loss, ce, kl) = head_loss(model, &model.last_layer(ids)?, ids, distill)?;
        collect(&section("train backward", ids.device(), || loss.backward())?)?;
        (loss, ce, kl)
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
        let (loss, ce, kl) = head_loss(model, top.as_tensor(), ids, distill)?;
        let store = loss.backward()?;
        collect(&store)?;
        let mut grad_out = store
            .get(top.as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no gradient reached the last layer".into()))?;
        for i in (0..model.layers.len()).rev() {
            let input = Var::from_tensor(&inputs[i])?;
            let out = keeping_activations(|| model.layer_forward(i, input.as_tensor(), &rope))?;
            let store = backward_from(&out, &grad_out)?;
            collect(&store)?;
            if i > 0 {
                grad_out = store.get(input.as_tensor()).cloned().ok_or_else(|| {
                    candle_core::Error::Msg(format!("no gradient reached layer {i}'s input"))
                })?;
            }
        }
        (loss, ce, kl)
    };
    let grads = grads
        .into_iter()
        .zip(params)
        .map(|(g, var)| match g {
            Some(g) => Ok(g),
            None => var.as_tensor().zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?;
    let scalar = |t: &Tensor| t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>();
    let parts =
        LossParts { loss: scalar(&loss)?, ce: scalar(&ce)?, kl: kl.as_ref().map(scalar).transpose()? };
    Ok((parts, grads))
}
