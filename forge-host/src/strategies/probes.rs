//! The host side of [`ScoringContext`]: weights by name, and the probes scorers build on, computed
//! on the calibration windows with forge's own decoder (an [`AttentionObserver`] for activations and
//! entropies; trainable head masks for gradients). In a hybrid, one pass measures both kinds of
//! heads (each layer's mask and output cover its own mixer's heads); the linear-attention half is
//! kept for the `linear_*` probe that follows, so a scorer asking for both pays one pass.
use candle_core::{DType, Tensor, Var, D};
use forge_api::{HostTensor, ModelGeometry, ScoringContext, StrategyError};

use crate::data::TokenWindows;
use crate::loader::WeightStore;
use crate::model::attention::AttentionObserver;
use crate::model::decoder_layer::Mixer;
use crate::model::CausalLm;
use crate::progress;

/// Scoring context over a loaded model and its calibration windows.
pub struct ModelProbes<'a> {
    model: &'a mut CausalLm,
    weights: &'a WeightStore,
    calibration: Option<&'a TokenWindows>,
    batch_size: usize,
    seed: u64,
    geometry: ModelGeometry,
    quiet: bool,
    /// Linear-attention rows of the last pass of each probe, for its `linear_*` twin.
    linear_norms: Option<Vec<Vec<f32>>>,
    linear_gradients: Option<Vec<Vec<f32>>>,
}

impl<'a> ModelProbes<'a> {
    /// A context for `model` (whose checkpoint is `weights`), probing on `calibration` windows
    /// `batch_size` at a time.
    pub fn new(
        model: &'a mut CausalLm,
        weights: &'a WeightStore,
        calibration: Option<&'a TokenWindows>,
        batch_size: usize,
        seed: u64,
        quiet: bool,
    ) -> Self {
        let geometry = model.config().geometry();
        ModelProbes {
            model,
            weights,
            calibration,
            batch_size: batch_size.max(1),
            seed,
            geometry,
            quiet,
            linear_norms: None,
            linear_gradients: None,
        }
    }

    /// The calibration batches, or an error saying how to provide them.
    fn batches(&self, probe: &str) -> Result<Vec<Tensor>, StrategyError> {
        let windows = self.calibration.ok_or_else(|| {
            StrategyError::bad_input(format!(
                "{probe} needs calibration data: give --data FILE (and --calib-windows N)"
            ))
        })?;
        (0..windows.len())
            .step_by(self.batch_size)
            .map(|start| {
                let rows = self.batch_size.min(windows.len() - start);
                Tensor::from_slice(windows.batch(start, rows), (rows, windows.seq_len()), self.model.device())
                    .map_err(tensor_error)
            })
            .collect()
    }

    /// Runs every calibration batch with `observer` watching, and returns its per-layer means.
    fn observe(&mut self, probe: &str, mut observer: MeanPerHead) -> Result<Vec<Vec<f32>>, StrategyError> {
        let batches = self.batches(probe)?;
        let bar = progress::bar(batches.len() as u64, "batches", self.quiet);
        bar.set_message(probe.to_string());
        for ids in &batches {
            self.model.hidden_states_observed(ids, None, Some(&mut observer)).map_err(tensor_error)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(observer.means())
    }
}

fn tensor_error(e: candle_core::Error) -> StrategyError {
    StrategyError::failed(format!("probe failed: {e}"))
}

/// Heads of each layer's own mixer: its query heads, or its value heads in a linear-attention layer.
fn mixer_heads(g: &ModelGeometry) -> Vec<usize> {
    let (linear, _) = g.of(forge_api::HeadKind::Linear);
    g.heads.iter().zip(linear).map(|(&q, v)| q + v).collect()
}

/// Per-layer rows over each layer's mixer heads, split into (query heads, linear-attention value
/// heads), each with empty rows in the other kind's layers.
fn split(g: &ModelGeometry, rows: Vec<Vec<f32>>) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    rows.into_iter()
        .enumerate()
        .map(|(l, row)| if g.heads[l] > 0 { (row, Vec::new()) } else { (Vec::new(), row) })
        .unzip()
}

/// A per-token statistic of each head, `(batch, heads, seq)`, from a layer's attention probabilities
/// and per-head outputs.
type Statistic<'s> = Box<dyn Fn(usize, &Tensor, &Tensor) -> candle_core::Result<Tensor> + 's>;

/// A per-token statistic of each linear-attention value head, `(batch, heads, seq)`, from its output.
type LinearStatistic<'s> = Box<dyn Fn(usize, &Tensor) -> candle_core::Result<Tensor> + 's>;

/// Accumulates a per-head statistic over batches, averaged per token: of attention heads, and of
/// linear-attention value heads where the probe has a statistic for them.
struct MeanPerHead<'s> {
    statistic: Statistic<'s>,
    linear: Option<LinearStatistic<'s>>,
    sums: Vec<Vec<f64>>,
    tokens: Vec<usize>,
}

impl<'s> MeanPerHead<'s> {
    fn new(geometry: &ModelGeometry, statistic: Statistic<'s>, linear: Option<LinearStatistic<'s>>) -> Self {
        MeanPerHead {
            statistic,
            linear,
            sums: mixer_heads(geometry).iter().map(|&h| vec![0.0; h]).collect(),
            tokens: vec![0; geometry.layers],
        }
    }

    fn add(&mut self, layer: usize, per_token: Tensor) -> candle_core::Result<()> {
        let (b, _, s) = per_token.dims3()?;
        let sums = per_token.sum(2)?.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.sums[layer].iter_mut().zip(sums).for_each(|(acc, v)| *acc += v);
        self.tokens[layer] += b * s;
        Ok(())
    }

    fn means(self) -> Vec<Vec<f32>> {
        self.sums
            .iter()
            .zip(&self.tokens)
            .map(|(row, &n)| row.iter().map(|s| (s / n.max(1) as f64) as f32).collect())
            .collect()
    }
}

impl AttentionObserver for MeanPerHead<'_> {
    fn observe(&mut self, layer: usize, probs: &Tensor, heads_out: &Tensor) -> candle_core::Result<()> {
        let per_token = (self.statistic)(layer, probs, heads_out)?; // (batch, heads, seq)
        self.add(layer, per_token)
    }

    fn observe_linear(&mut self, layer: usize, heads_out: &Tensor) -> candle_core::Result<()> {
        match &self.linear {
            Some(statistic) => {
                let per_token = statistic(layer, heads_out)?;
                self.add(layer, per_token)
            }
            None => Ok(()),
        }
    }
}

/// The norm of what each head writes into the residual stream: its output through its own `o_proj`
/// (or `out_proj`) columns, `‖W_o[:, h] · out_h‖`. (The output before `o_proj` alone ignores how
/// strongly `o_proj` passes it on.) `o_heads[layer]` is `W_o` as `(heads, head_dim, hidden)`.
fn contribution_norm(
    o_heads: &[Option<Tensor>],
    layer: usize,
    heads_out: &Tensor,
) -> candle_core::Result<Tensor> {
    let o = o_heads[layer]
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg(format!("layer {layer} has no such heads")))?;
    let (b, h, s, d) = heads_out.dims4()?;
    let per_head = heads_out.to_dtype(DType::F32)?.transpose(0, 1)?.reshape((h, b * s, d))?;
    let written = per_head.matmul(o)?; // (heads, b·s, hidden)
    written.sqr()?.sum(D::Minus1)?.sqrt()?.reshape((h, b, s))?.transpose(0, 1)
}

fn entropy(probs: &Tensor) -> candle_core::Result<Tensor> {
    // Masked positions have p = 0 exactly; the tiny offset makes their 0 · log 0 term 0, not NaN.
    (probs * (probs + 1e-30)?.log()?)?.sum(D::Minus1)?.neg()
}

impl ScoringContext for ModelProbes<'_> {
    fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    /// Names are the text model's as a `…ForCausalLM` checkpoint has them (`model.layers.…`); where
    /// the checkpoint keeps them under another prefix (`model.language_model.…` beside a vision
    /// tower), that is where they are read.
    fn tensor(&self, name: &str) -> Result<HostTensor, StrategyError> {
        let prefix = &self.model.config().weight_prefix;
        let stored = match name.strip_prefix("model.") {
            Some(rest) if self.weights.shape(name).is_none() => format!("{prefix}.{rest}"),
            _ => name.to_string(),
        };
        let name = stored.as_str();
        let shape = self
            .weights
            .shape(name)
            .ok_or_else(|| StrategyError::bad_input(format!("the model has no tensor `{name}`")))?;
        let t = self
            .weights
            .load(name, &shape, DType::F32, &candle_core::Device::Cpu)
            .map_err(|e| StrategyError::failed(e.to_string()))?;
        Ok(HostTensor {
            shape,
            data: t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(tensor_error)?,
        })
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        // Each layer's output weights as `(heads, width, hidden)`: o_proj per query head, or out_proj
        // per linear-attention value head.
        let per_head = |w: &Tensor, heads: usize| -> candle_core::Result<Option<Tensor>> {
            let w = w.to_dtype(DType::F32)?; // (hidden, heads·width)
            let (hidden, width) = (w.dim(0)?, w.dim(1)? / heads);
            Ok(Some(w.t()?.reshape((heads, width, hidden))?.contiguous()?))
        };
        let heads = mixer_heads(&self.geometry);
        let o_heads: Vec<Option<Tensor>> = self
            .model
            .layers
            .iter()
            .zip(&heads)
            .map(|(layer, &n)| match &layer.mixer {
                Mixer::Attention(a) => per_head(a.o_proj.weight(), n),
                Mixer::Linear(l) => per_head(l.out_proj.weight(), n),
            })
            .collect::<candle_core::Result<_>>()
            .map_err(tensor_error)?;
        let o_heads = &o_heads;
        let observer = MeanPerHead::new(
            &self.geometry,
            Box::new(move |layer, _, out| contribution_norm(o_heads, layer, out)),
            Some(Box::new(move |layer, out| contribution_norm(o_heads, layer, out))),
        );
        let rows = self.observe("head output norms", observer)?;
        let (attention, linear) = split(&self.geometry, rows);
        self.linear_norms = Some(linear);
        Ok(attention)
    }

    fn linear_head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        if self.linear_norms.is_none() {
            self.head_output_norms()?;
        }
        Ok(self.linear_norms.take().unwrap_or_default())
    }

    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        let observer = MeanPerHead::new(&self.geometry, Box::new(|_, probs, _| entropy(probs)), None);
        let rows = self.observe("attention entropy", observer)?;
        Ok(split(&self.geometry, rows).0)
    }

    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        let batches = self.batches("head-mask gradients")?;
        let dtype = self.model.dtype();
        let saved: Vec<Option<Tensor>> =
            (0..self.geometry.layers).map(|l| self.model.head_mask(l).cloned()).collect();
        // Each layer's mask becomes a variable at its current value (1 for live heads, 0 for heads
        // already removed), so the gradient is taken at the model as it is: over query heads, or
        // over value heads in a linear-attention layer.
        let heads = mixer_heads(&self.geometry);
        let vars: Vec<Option<Var>> = saved
            .iter()
            .zip(&heads)
            .map(|(mask, &heads)| match mask {
                _ if heads == 0 => Ok(None),
                Some(m) => Var::from_tensor(m).map(Some),
                None => Var::ones(heads, dtype, self.model.device()).map(Some),
            })
            .collect::<candle_core::Result<_>>()
            .map_err(tensor_error)?;
        for (layer, var) in vars.iter().enumerate() {
            if let Some(var) = var {
                self.model.set_head_mask(layer, Some(var.as_tensor().clone()));
            }
        }
        let mut sums: Vec<Vec<f64>> = heads.iter().map(|&h| vec![0.0; h]).collect();
        let bar = progress::bar(batches.len() as u64, "batches", self.quiet);
        bar.set_message("head-mask gradients");
        let result = (|| -> candle_core::Result<()> {
            for ids in &batches {
                let loss = self.model.next_token_nll(ids)?.mean_all()?;
                let grads = loss.backward()?;
                for (layer, var) in vars.iter().enumerate() {
                    let Some(var) = var else { continue };
                    let g = grads
                        .get(var.as_tensor())
                        .map(|g| g.to_dtype(DType::F64)?.abs()?.to_vec1::<f64>())
                        .transpose()?;
                    let g = g.ok_or_else(|| {
                        candle_core::Error::Msg(format!("no gradient reached the head mask of layer {layer}"))
                    })?;
                    sums[layer].iter_mut().zip(g).for_each(|(acc, v)| *acc += v);
                }
                bar.inc(1);
            }
            Ok(())
        })();
        bar.finish_and_clear();
        for (layer, mask) in saved.into_iter().enumerate() {
            self.model.set_head_mask(layer, mask);
        }
        result.map_err(tensor_error)?;
        let n = batches.len() as f64;
        let rows = sums.into_iter().map(|row| row.into_iter().map(|s| (s / n) as f32).collect()).collect();
        let (attention, linear) = split(&self.geometry, rows);
        self.linear_gradients = Some(linear);
        Ok(attention)
    }

    fn linear_head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        if self.linear_gradients.is_none() {
            self.head_mask_gradients()?;
        }
        Ok(self.linear_gradients.take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The analytic head-mask gradient against central finite differences of the loss, on the bundled
    /// model in f32: the gradient must really flow through attention, softmax, norms and loss.
    #[test]
    fn head_mask_gradients_match_finite_differences() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-qwen3");
        let folder = crate::loader::ModelFolder::open(&root).unwrap();
        let mut model = CausalLm::load(&folder, DType::F32, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..48).map(|i| (i * 733 + 11) % 8192).collect();
        let windows = TokenWindows::from_tokens(ids.clone(), 48);
        let grads = {
            let mut probes = ModelProbes::new(&mut model, &folder.weights, Some(&windows), 1, 0, true);
            probes.head_mask_gradients().unwrap()
        };
        let batch = Tensor::from_slice(&ids, (1, 48), &Device::Cpu).unwrap();
        let loss_with = |model: &mut CausalLm, layer: usize, head: usize, delta: f32| -> f64 {
            let mut mask = vec![1f32; 8];
            mask[head] += delta;
            model.set_head_mask(layer, Some(Tensor::new(mask, &Device::Cpu).unwrap()));
            let loss = model.next_token_nll(&batch).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
            model.set_head_mask(layer, None);
            loss as f64
        };
        let eps = 1e-2;
        for (layer, head) in [(0, 0), (2, 5), (7, 3), (4, 7)] {
            let numeric = (loss_with(&mut model, layer, head, eps)
                - loss_with(&mut model, layer, head, -eps))
                / (2.0 * eps as f64);
            let analytic = grads[layer][head] as f64;
            assert!(
                (numeric.abs() - analytic).abs() < 1e-3 + 0.02 * analytic,
                "layer {layer} head {head}: |finite difference| {} vs analytic {analytic}",
                numeric.abs()
            );
        }
    }
}
