//! The host side of [`ScoringContext`]: weights by name, and the probes scorers build on, computed
//! on the calibration windows with forge's own decoder (an [`AttentionObserver`] for activations and
//! entropies; trainable head masks for gradients). In a hybrid, one pass measures both kinds of
//! heads (each layer's mask and output cover its own mixer's heads); the linear-attention half is
//! kept for the `linear_*` probe that follows, so a scorer asking for both pays one pass.
use candle_core::{DType, Tensor, Var, D};
use forge_api::{HostTensor, ModelGeometry, ScoringContext, StrategyError, UnitKind};

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
    /// MLP-channel rows of the same passes.
    mlp_norms: Option<Vec<Vec<f32>>>,
    mlp_gradients: Option<Vec<Vec<f32>>>,
    /// Layer rows of the same passes: update norms, input/output cosines, gate gradients.
    layer_norms: Option<Vec<Vec<f32>>>,
    layer_cosines: Option<Vec<Vec<f32>>>,
    layer_gradients: Option<Vec<Vec<f32>>>,
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
            mlp_norms: None,
            mlp_gradients: None,
            layer_norms: None,
            layer_cosines: None,
            layer_gradients: None,
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
    fn observe<'s>(
        &mut self,
        probe: &str,
        mut observer: MeanPerHead<'s>,
    ) -> Result<MeanPerHead<'s>, StrategyError> {
        let batches = self.batches(probe)?;
        let bar = progress::bar(batches.len() as u64, "batches", self.quiet);
        bar.set_message(probe.to_string());
        for ids in &batches {
            self.model.hidden_states_observed(ids, None, Some(&mut observer)).map_err(tensor_error)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(observer)
    }
}

impl<'a> ModelProbes<'a> {
    /// The rows the last `pass` left in `slot`, running `pass` first when it left none (the rows
    /// are taken: a second ask runs the pass again, at the model as it then is).
    fn cached(
        &mut self,
        slot: for<'p> fn(&'p mut ModelProbes<'a>) -> &'p mut Option<Vec<Vec<f32>>>,
        pass: fn(&mut ModelProbes<'a>) -> Result<Vec<Vec<f32>>, StrategyError>,
    ) -> Result<Vec<Vec<f32>>, StrategyError> {
        if slot(self).is_none() {
            pass(self)?;
        }
        Ok(slot(self).take().unwrap_or_default())
    }
}

fn tensor_error(e: candle_core::Error) -> StrategyError {
    StrategyError::failed(format!("probe failed: {e}"))
}

/// Heads of each layer's own mixer: its query heads, or its value heads in a linear-attention layer.
fn mixer_heads(g: &ModelGeometry) -> Vec<usize> {
    let (linear, _) = g.of(forge_api::UnitKind::LinearHead);
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

/// Per-layer sums over `tokens` per-layer counts, as means.
fn means(sums: &[Vec<f64>], tokens: &[usize]) -> Vec<Vec<f32>> {
    sums.iter()
        .zip(tokens)
        .map(|(row, &n)| row.iter().map(|s| (s / n.max(1) as f64) as f32).collect())
        .collect()
}

/// A per-token statistic of each linear-attention value head, `(batch, heads, seq)`, from its output.
type LinearStatistic<'s> = Box<dyn Fn(usize, &Tensor) -> candle_core::Result<Tensor> + 's>;

/// Accumulates a per-head statistic over batches, averaged per token: of attention heads, and of
/// linear-attention value heads where the probe has a statistic for them.
struct MeanPerHead<'s> {
    statistic: Statistic<'s>,
    linear: Option<LinearStatistic<'s>>,
    sums: Vec<Vec<f64>>,
    tokens: Vec<usize>,
    /// Each layer's `down_proj` column norms `(channels)`, when MLP channels are measured too: a
    /// channel writes `|a_c| · ‖W_down[:, c]‖` per token.
    down_norms: Option<Vec<Tensor>>,
    mlp_sums: Vec<Vec<f64>>,
    mlp_tokens: Vec<usize>,
    /// Per layer: sums over tokens of ‖output − input‖ and of cos(input, output), and the tokens.
    layer_sums: Vec<[f64; 2]>,
    layer_tokens: Vec<usize>,
}

impl<'s> MeanPerHead<'s> {
    fn new(geometry: &ModelGeometry, statistic: Statistic<'s>, linear: Option<LinearStatistic<'s>>) -> Self {
        MeanPerHead {
            statistic,
            linear,
            sums: mixer_heads(geometry).iter().map(|&h| vec![0.0; h]).collect(),
            tokens: vec![0; geometry.layers],
            down_norms: None,
            mlp_sums: geometry.of(UnitKind::MlpChannel).0.iter().map(|&c| vec![0.0; c]).collect(),
            mlp_tokens: vec![0; geometry.layers],
            layer_sums: vec![[0.0; 2]; geometry.layers],
            layer_tokens: vec![0; geometry.layers],
        }
    }

    /// Per layer `[[mean update norm]]` and `[[mean cosine]]`.
    fn layer_means(&self) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mean = |i: usize| -> Vec<Vec<f32>> {
            let (sums, tokens) = (&self.layer_sums, &self.layer_tokens);
            sums.iter().zip(tokens).map(|(s, &n)| vec![(s[i] / n.max(1) as f64) as f32]).collect()
        };
        (mean(0), mean(1))
    }

    fn mlp_means(&self) -> Vec<Vec<f32>> {
        means(&self.mlp_sums, &self.mlp_tokens)
    }

    fn add(&mut self, layer: usize, per_token: Tensor) -> candle_core::Result<()> {
        let (b, _, s) = per_token.dims3()?;
        let sums = per_token.sum(2)?.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.sums[layer].iter_mut().zip(sums).for_each(|(acc, v)| *acc += v);
        self.tokens[layer] += b * s;
        Ok(())
    }

    fn means(&self) -> Vec<Vec<f32>> {
        means(&self.sums, &self.tokens)
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

    fn observe_layer(&mut self, layer: usize, input: &Tensor, output: &Tensor) -> candle_core::Result<()> {
        let (b, s, _) = input.dims3()?;
        let (x, y) = (input.to_dtype(DType::F32)?, output.to_dtype(DType::F32)?);
        let norm = |t: &Tensor| t.sqr()?.sum(D::Minus1)?.sqrt();
        let update = norm(&(&y - &x)?)?.sum_all()?.to_scalar::<f32>()? as f64;
        let cos = ((&x * &y)?.sum(D::Minus1)? / (norm(&x)? * norm(&y)?)?.clamp(1e-12, f64::MAX)?)?;
        let cos = cos.sum_all()?.to_scalar::<f32>()? as f64;
        self.layer_sums[layer][0] += update;
        self.layer_sums[layer][1] += cos;
        self.layer_tokens[layer] += b * s;
        Ok(())
    }

    fn observe_mlp(&mut self, layer: usize, activations: &Tensor) -> candle_core::Result<()> {
        let Some(norms) = &self.down_norms else { return Ok(()) };
        let (b, s, channels) = activations.dims3()?;
        let written = activations
            .to_dtype(DType::F32)?
            .abs()?
            .reshape((b * s, channels))?
            .broadcast_mul(&norms[layer])?;
        let sums = written.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        self.mlp_sums[layer].iter_mut().zip(sums).for_each(|(acc, v)| *acc += v);
        self.mlp_tokens[layer] += b * s;
        Ok(())
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

/// Which of a layer's masks a variable stands for.
#[derive(Clone, Copy)]
enum Slot {
    Heads,
    Channels,
    Gates,
}

impl Slot {
    fn get(self, model: &CausalLm, layer: usize) -> Option<Tensor> {
        match self {
            Slot::Heads => model.head_mask(layer).cloned(),
            Slot::Channels => model.channel_mask(layer).cloned(),
            Slot::Gates => model.layer_gate(layer).cloned(),
        }
    }

    fn set(self, model: &mut CausalLm, layer: usize, mask: Option<Tensor>) {
        match self {
            Slot::Heads => model.set_head_mask(layer, mask),
            Slot::Channels => model.set_channel_mask(layer, mask),
            Slot::Gates => model.set_layer_gate(layer, mask),
        }
    }
}

/// One slot's masks made variables for a gradient pass, with what they replaced and the running sums
/// of |gradient|.
struct MaskVars {
    slot: Slot,
    vars: Vec<Option<Var>>,
    saved: Vec<Option<Tensor>>,
    sums: Vec<Vec<f64>>,
    error: Option<candle_core::Error>,
}

impl MaskVars {
    /// Each layer's mask becomes a variable at its current value (1 for live units, 0 for units
    /// already removed), so the gradient is taken at the model as it is; a layer with no units of
    /// the slot (`counts` 0) has none. A failure is kept for [`MaskVars::restore`] to report, after
    /// the model has its masks back.
    fn install(model: &mut CausalLm, slot: Slot, counts: &[usize]) -> Self {
        let saved: Vec<Option<Tensor>> = (0..counts.len()).map(|l| slot.get(model, l)).collect();
        let (dtype, device) = (model.dtype(), model.device().clone());
        let vars: candle_core::Result<Vec<Option<Var>>> = saved
            .iter()
            .zip(counts)
            .map(|(mask, &n)| match mask {
                _ if n == 0 => Ok(None),
                Some(m) => Var::from_tensor(m).map(Some),
                None => Var::ones(n, dtype, &device).map(Some),
            })
            .collect();
        let (vars, error) = match vars {
            Ok(vars) => (vars, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        for (layer, var) in vars.iter().enumerate() {
            if let Some(var) = var {
                slot.set(model, layer, Some(var.as_tensor().clone()));
            }
        }
        MaskVars { slot, vars, saved, sums: counts.iter().map(|&n| vec![0.0; n]).collect(), error }
    }

    fn add(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        for (layer, var) in self.vars.iter().enumerate() {
            let Some(var) = var else { continue };
            let g = grads.get(var.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg(format!("no gradient reached the mask of layer {layer}"))
            })?;
            let g = g.to_dtype(DType::F64)?.abs()?.to_vec1::<f64>()?;
            self.sums[layer].iter_mut().zip(g).for_each(|(acc, v)| *acc += v);
        }
        Ok(())
    }

    /// Puts the replaced masks back; the mean |gradient| over `batches`.
    fn restore(self, model: &mut CausalLm, batches: usize) -> candle_core::Result<Vec<Vec<f32>>> {
        for (layer, mask) in self.saved.into_iter().enumerate() {
            self.slot.set(model, layer, mask);
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        let n = batches.max(1) as f64;
        Ok(self.sums.into_iter().map(|row| row.into_iter().map(|s| (s / n) as f32).collect()).collect())
    }
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
                Mixer::Attention(a) => per_head(&a.o_proj.weight()?, n),
                Mixer::Linear(l) => per_head(&l.out_proj.weight()?, n),
            })
            .collect::<candle_core::Result<_>>()
            .map_err(tensor_error)?;
        let down_norms: Vec<Tensor> = self
            .model
            .layers
            .iter()
            .map(|layer| layer.mlp.down_proj.weight()?.to_dtype(DType::F32)?.sqr()?.sum(0)?.sqrt())
            .collect::<candle_core::Result<_>>()
            .map_err(tensor_error)?;
        let o_heads = &o_heads;
        let mut observer = MeanPerHead::new(
            &self.geometry,
            Box::new(move |layer, _, out| contribution_norm(o_heads, layer, out)),
            Some(Box::new(move |layer, out| contribution_norm(o_heads, layer, out))),
        );
        observer.down_norms = Some(down_norms);
        let observer = self.observe("output norms", observer)?;
        let (attention, linear) = split(&self.geometry, observer.means());
        (self.linear_norms, self.mlp_norms) = (Some(linear), Some(observer.mlp_means()));
        let (norms, cosines) = observer.layer_means();
        (self.layer_norms, self.layer_cosines) = (Some(norms), Some(cosines));
        Ok(attention)
    }

    fn layer_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.layer_norms, |p| p.head_output_norms())
    }

    fn layer_cosines(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.layer_cosines, |p| p.head_output_norms())
    }

    fn mlp_channel_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.mlp_norms, |p| p.head_output_norms())
    }

    fn linear_head_output_norms(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.linear_norms, |p| p.head_output_norms())
    }

    fn attention_entropy(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        let observer = MeanPerHead::new(&self.geometry, Box::new(|_, probs, _| entropy(probs)), None);
        let observer = self.observe("attention entropy", observer)?;
        Ok(split(&self.geometry, observer.means()).0)
    }

    fn head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        let batches = self.batches("mask gradients")?;
        let channels = self.geometry.of(UnitKind::MlpChannel).0;
        // A removed layer is not run, so it has no gate to differentiate.
        let gates: Vec<usize> =
            (0..self.geometry.layers).map(|l| usize::from(!self.model.layer_removed(l))).collect();
        let mut masks = [
            MaskVars::install(self.model, Slot::Heads, &mixer_heads(&self.geometry)),
            MaskVars::install(self.model, Slot::Channels, &channels),
            MaskVars::install(self.model, Slot::Gates, &gates),
        ];
        let bar = progress::bar(batches.len() as u64, "batches", self.quiet);
        bar.set_message("mask gradients");
        let result = (|| -> candle_core::Result<()> {
            for ids in &batches {
                let grads = self.model.next_token_nll(ids)?.mean_all()?.backward()?;
                masks.iter_mut().try_for_each(|m| m.add(&grads))?;
                bar.inc(1);
            }
            Ok(())
        })();
        bar.finish_and_clear();
        let [heads, channels, gates] = masks.map(|m| m.restore(self.model, batches.len()));
        result.map_err(tensor_error)?;
        let (attention, linear) = split(&self.geometry, heads.map_err(tensor_error)?);
        (self.linear_gradients, self.mlp_gradients) = (Some(linear), Some(channels.map_err(tensor_error)?));
        // A removed layer has no row entry: its score is 0 (and a pipeline marks it removed).
        let gates = gates.map_err(tensor_error)?;
        self.layer_gradients =
            Some(gates.into_iter().map(|r| vec![r.first().copied().unwrap_or(0.0)]).collect());
        Ok(attention)
    }

    fn layer_gate_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.layer_gradients, |p| p.head_mask_gradients())
    }

    fn mlp_channel_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.mlp_gradients, |p| p.head_mask_gradients())
    }

    fn linear_head_mask_gradients(&mut self) -> Result<Vec<Vec<f32>>, StrategyError> {
        self.cached(|p| &mut p.linear_gradients, |p| p.head_mask_gradients())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The analytic mask gradients against central finite differences of the loss, on the bundled
    /// model in f32: the gradient must really flow through attention, softmax, norms and loss (head
    /// masks), through SwiGLU and `down_proj` (MLP channel masks) and through whole layers (gates).
    #[test]
    fn mask_gradients_match_finite_differences() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-qwen3");
        let folder = crate::loader::ModelFolder::open(&root).unwrap();
        let mut model = CausalLm::load(&folder, DType::F32, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..48).map(|i| (i * 733 + 11) % 8192).collect();
        let windows = TokenWindows::from_tokens(ids.clone(), 48);
        let (heads, channels, gates) = {
            let mut probes = ModelProbes::new(&mut model, &folder.weights, Some(&windows), 1, 0, true);
            let heads = probes.head_mask_gradients().unwrap();
            (heads, probes.mlp_channel_mask_gradients().unwrap(), probes.layer_gate_gradients().unwrap())
        };
        let batch = Tensor::from_slice(&ids, (1, 48), &Device::Cpu).unwrap();
        let loss_with =
            |model: &mut CausalLm, slot: Slot, (layer, unit): (usize, usize), delta: f32| -> f64 {
                let width = match slot {
                    Slot::Heads => 8,
                    Slot::Channels => 768,
                    Slot::Gates => 1,
                };
                let mut mask = vec![1f32; width];
                mask[unit] += delta;
                slot.set(model, layer, Some(Tensor::new(mask, &Device::Cpu).unwrap()));
                let loss =
                    model.next_token_nll(&batch).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
                slot.set(model, layer, None);
                loss as f64
            };
        let eps = 1e-2;
        let checks =
            [(Slot::Heads, (0, 0)), (Slot::Heads, (2, 5)), (Slot::Heads, (7, 3)), (Slot::Heads, (4, 7))]
                .into_iter()
                .chain([(0, 5), (3, 400), (7, 767)].map(|at| (Slot::Channels, at)))
                .chain([(1, 0), (6, 0)].map(|at| (Slot::Gates, at)));
        for (slot, (layer, unit)) in checks {
            let numeric = (loss_with(&mut model, slot, (layer, unit), eps)
                - loss_with(&mut model, slot, (layer, unit), -eps))
                / (2.0 * eps as f64);
            let rows = match slot {
                Slot::Heads => &heads,
                Slot::Channels => &channels,
                Slot::Gates => &gates,
            };
            let analytic = rows[layer][unit] as f64;
            assert!(
                (numeric.abs() - analytic).abs() < 1e-4 + 0.02 * analytic,
                "layer {layer} unit {unit}: |finite difference| {} vs analytic {analytic}",
                numeric.abs()
            );
        }
    }
}
