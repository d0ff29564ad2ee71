//! The loss and the trainable parameters' gradients for one batch, with or without gradient
//! checkpointing.
//!
//! Plain: one forward pass that keeps every activation, one backward pass. Checkpointed: a first pass
//! without a graph that keeps only each decoder layer's input; then the head (final norm and loss)
//! is differentiated from the last layer's output, and each layer, from the last to the first, is run
//! again from its saved input and differentiated against the gradient arriving from above. Peak
//! activation memory is one layer's, plus one input per layer.
//!
//! Either way the decoder layers' backward is forge's tape on a GPU (`forge_kernels::tape`: each op's
//! own backward, replayed layer by layer; a gradient is kept as it arrives, where candle's graph makes
//! every node's gradient as zeros and adds to it) and candle's graph on the CPU, where the tape wraps
//! elementary ops and measured slower (BENCHMARKS, CPU); the head (final norm, NLL, KL) is always
//! differentiated by the graph.
use candle_core::{Tensor, Var};

use crate::autograd::{backward_from, chunked_kl, keeping_activations, no_grad};
use crate::model::CausalLm;
use forge_kernels::profile::section;
use forge_kernels::tape;

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

/// The loss, the NLL part and, when distilling, the KL part, as tensors of the head's graph.
type HeadLoss = (Tensor, Tensor, Option<Tensor>);

/// The loss of the last layer's output `x` for `ids`: the NLL, mixed with the KL to the teacher when
/// distilling (the teacher runs without a graph).
fn head_loss(
    model: &CausalLm,
    x: &Tensor,
    ids: &Tensor,
    distill: Option<&Distill>,
) -> candle_core::Result<HeadLoss> {
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

/// Which backward a training step runs (`forge train --backward`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Backprop {
    /// candle's graph over the whole step.
    Graph,
    /// forge's tape over the decoder layers (each op's own backward, gradients kept where they
    /// arrive: `forge_kernels::tape`) and candle's graph over the head.
    Tape,
    /// The tape, with an op it does not know failing instead of losing its gradient, at a copy per op
    /// (tests and checks).
    #[value(skip)]
    StrictTape,
}

impl Backprop {
    /// The backward for training on `device`: the tape on a GPU, where candle's zeros-then-add per
    /// graph node costs a checkpointed qwen3.5-9b step 11%; the graph on the CPU, whose elementary ops
    /// the tape can only wrap, each input copied once more (BENCHMARKS, CPU).
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Backprop::Graph
        } else {
            Backprop::Tape
        }
    }

    /// Whether the tape runs, and strictly.
    fn tape(self) -> Option<bool> {
        match self {
            Backprop::Graph => None,
            Backprop::Tape => Some(false),
            Backprop::StrictTape => Some(true),
        }
    }
}

/// The gradients of the parameters, summed over the backward passes that reach them.
struct Collected<'a> {
    params: &'a [Var],
    grads: Vec<Option<Tensor>>,
}

impl Collected<'_> {
    fn add(&mut self, get: impl Fn(&Tensor) -> Option<Tensor>) -> candle_core::Result<()> {
        for (slot, var) in self.grads.iter_mut().zip(self.params) {
            if let Some(g) = get(var.as_tensor()) {
                *slot = Some(match slot.take() {
                    Some(sum) => (sum + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }
}

/// The loss of `ids` (its parts) and the gradient of every parameter in `params` (zeros where none
/// reaches a parameter), by `backprop`.
pub fn loss_and_grads(
    model: &CausalLm,
    ids: &Tensor,
    params: &[Var],
    checkpoint: bool,
    distill: Option<&Distill>,
    backprop: Backprop,
) -> candle_core::Result<(LossParts, Vec<Tensor>)> {
    let mut collected = Collected { params, grads: vec![None; params.len()] };
    let (loss, ce, kl) = match (checkpoint, backprop.tape()) {
        (false, None) => {
            let (loss, ce, kl) = head_loss(model, &model.last_layer(ids)?, ids, distill)?;
            let store = section("train backward", ids.device(), || loss.backward())?;
            collected.add(|t| store.get(t).cloned())?;
            (loss, ce, kl)
        }
        (false, Some(strict)) => {
            let (top, tape) = tape::record_with(&[], strict, || model.last_layer(ids))?;
            let (parts, grad_top) = head_and_its_gradient(model, &top, ids, distill, &mut collected)?;
            let grads = section("train backward", ids.device(), || {
                tape.backward(&top, grad_top, forge_kernels::residual_add)
            })?;
            collected.add(|t| grads.get(t).cloned())?;
            parts
        }
        (true, _) => checkpointed(model, ids, distill, backprop, &mut collected)?,
    };
    let grads = collected
        .grads
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

/// The head's loss of the last layer's output `top` (its graph from a variable made of `top`), with
/// the gradients it gives the parameters collected, and the gradient arriving at `top`.
fn head_and_its_gradient(
    model: &CausalLm,
    top: &Tensor,
    ids: &Tensor,
    distill: Option<&Distill>,
    collected: &mut Collected,
) -> candle_core::Result<(HeadLoss, Tensor)> {
    let top = Var::from_tensor(top)?;
    let (loss, ce, kl) = head_loss(model, top.as_tensor(), ids, distill)?;
    let store = loss.backward()?;
    collected.add(|t| store.get(t).cloned())?;
    let grad = store
        .get(top.as_tensor())
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the last layer".into()))?;
    Ok(((loss, ce, kl), grad))
}

/// Checkpointed: the layers run without a graph keeping their inputs, the head is differentiated, then
/// each layer from the last is run again from its input and differentiated against the gradient
/// arriving from above, by `backprop`.
fn checkpointed(
    model: &CausalLm,
    ids: &Tensor,
    distill: Option<&Distill>,
    backprop: Backprop,
    collected: &mut Collected,
) -> candle_core::Result<HeadLoss> {
    let rope = model.rope(0, ids.dim(1)?)?;
    let inputs = no_grad(|| -> candle_core::Result<Vec<Tensor>> {
        let mut inputs = vec![model.embed(ids)?.detach()];
        for i in 0..model.layers.len() {
            let next = model.layer_forward(i, inputs.last().expect("one input per layer so far"), &rope)?;
            inputs.push(next.detach());
        }
        Ok(inputs)
    })?;
    let top = inputs.last().expect("the embedding is always there");
    let (parts, mut grad_out) = head_and_its_gradient(model, top, ids, distill, collected)?;
    for i in (0..model.layers.len()).rev() {
        let rerun = |input: &Tensor| keeping_activations(|| model.layer_forward(i, input, &rope));
        let grad_in = match backprop.tape() {
            None => {
                let input = Var::from_tensor(&inputs[i])?;
                let store = backward_from(&rerun(input.as_tensor())?, &grad_out)?;
                collected.add(|t| store.get(t).cloned())?;
                store.get(input.as_tensor()).cloned()
            }
            Some(strict) => {
                let input = &inputs[i];
                let (out, tape) = tape::record_with(&[input], strict, || rerun(input))?;
                let grads = tape.backward(&out, grad_out.clone(), forge_kernels::residual_add)?;
                collected.add(|t| grads.get(t).cloned())?;
                grads.get(input).cloned()
            }
        };
        if i > 0 {
            grad_out = grad_in
                .ok_or_else(|| candle_core::Error::Msg(format!("no gradient reached layer {i}'s input")))?;
        }
    }
    Ok(parts)
}
