//! Writing a pruned model two ways.
//!
//! *mask*: every tensor keeps its shape; the pruned heads' output columns (`o_proj`, or `out_proj` for
//! a linear-attention value head) are zeroed, which removes their contribution exactly. *compact*: the
//! heads are physically removed, and so are the groups all of whose heads are gone. For attention:
//! a query head's `q_proj` rows (and bias) and `o_proj` columns, a KV group's `k_proj`/`v_proj` rows.
//! For Gated DeltaNet: a value head's v slice of `in_proj_qkv` and `conv1d`, its rows of
//! `in_proj_z/b/a`, its `dt_bias` and `A_log` entries and its `out_proj` columns; a key head's q and k
//! slices. When the kept heads of a layer are spread unevenly over its groups, the standard layout
//! (each group serving the same number of consecutive heads) cannot express it, so the layer gets
//! zeroed padding heads or copies of the group, whichever is smaller. A model with the same counts in
//! every layer of a kind gets a standard `config.json`; otherwise forge adds its per-layer keys
//! (`forge_heads_per_layer`, `forge_kv_heads_per_layer`, `forge_linear_num_value_heads_per_layer`,
//! `forge_linear_num_key_heads_per_layer`; see docs/pruned-models.md), which forge loads and
//! transformers does not.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use forge_api::{HeadMask, UnitKind};

use super::{write_atomic, write_json_atomic};
use crate::loader::{LayerKind, ModelConfig, ModelFolder};
use crate::{bad_input, Error, Result};

/// How pruned heads are removed from the written checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveMode {
    /// Same shapes, pruned heads' `o_proj` columns zeroed.
    Mask,
    /// Heads' rows and columns removed.
    Compact,
}

/// What was written.
#[derive(Debug, serde::Serialize)]
pub struct SavedModel {
    /// Values in the written checkpoint.
    pub parameters: usize,
    /// Query heads per layer of the written model.
    pub heads: Vec<usize>,
    /// Key/value heads per layer of the written model.
    pub kv_heads: Vec<usize>,
}

/// For one layer of a compact model: the query heads kept (old indices), those of them kept only as
/// zeroed padding, and for each KV head kept, its old index.
#[derive(Debug, PartialEq)]
struct LayerPlan {
    heads: Vec<usize>,
    padding: Vec<usize>,
    kv_heads: Vec<usize>,
}

/// Standard GQA needs the same number of query heads per KV head. When pruning leaves groups uneven
/// there are two exact ways back, each costing one head-sized block of q/o or k/v rows per unit:
/// give every kept query head its own copy of its KV head, or keep some pruned heads as zeroed
/// padding until every group is even. The plan takes whichever costs fewer.
fn plan(layer: usize, heads: usize, kv_heads: usize, pruned: &[usize]) -> Result<LayerPlan> {
    let kept: Vec<usize> = (0..heads).filter(|h| !pruned.contains(h)).collect();
    if kept.is_empty() {
        return Err(bad_input!("the mask removes every head of layer {layer}; a layer needs at least one"));
    }
    let group = heads / kv_heads;
    let mut per_group: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    kept.iter().for_each(|&h| per_group.entry(h / group).or_default().push(h));
    let widest = per_group.values().map(Vec::len).max().unwrap_or(0);
    let pad_cost = per_group.len() * widest - kept.len();
    let copy_cost = kept.len() - per_group.len();
    if pad_cost <= copy_cost {
        let mut heads_kept = Vec::new();
        let mut padding = Vec::new();
        for (&g, members) in &per_group {
            let fill =
                (g * group..(g + 1) * group).filter(|h| !members.contains(h)).take(widest - members.len());
            padding.extend(fill);
            heads_kept
                .extend(members.iter().copied().chain(padding.iter().copied().filter(|h| h / group == g)));
        }
        heads_kept.sort_unstable();
        Ok(LayerPlan { heads: heads_kept, padding, kv_heads: per_group.keys().copied().collect() })
    } else {
        Ok(LayerPlan { kv_heads: kept.iter().map(|h| h / group).collect(), heads: kept, padding: Vec::new() })
    }
}

/// Rows (`dim` 0) or columns (`dim` 1) of whole heads `blocks`, each `width` wide.
fn take_heads(t: &Tensor, dim: usize, blocks: &[usize], width: usize) -> Result<Tensor> {
    let index: Vec<u32> =
        blocks.iter().flat_map(|&b| (b * width..(b + 1) * width).map(|i| i as u32)).collect();
    Ok(t.index_select(&Tensor::new(index, t.device())?, dim)?)
}

/// The checkpoint's tensors by name, edited in place.
type Tensors = HashMap<String, Tensor>;

/// Replaces tensor `name` (when the checkpoint has it) by `f` of it.
fn edit(tensors: &mut Tensors, name: String, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    if let Some(t) = tensors.get(&name) {
        let new = f(t)?;
        tensors.insert(name, new);
    }
    Ok(())
}

/// Columns of whole heads `p.heads`, each `width` wide, with the padding heads' columns zeroed: they
/// stay in place but write nothing.
fn take_live_columns(t: &Tensor, p: &LayerPlan, width: usize) -> Result<Tensor> {
    let live: Vec<f32> = p
        .heads
        .iter()
        .flat_map(|h| std::iter::repeat_n(if p.padding.contains(h) { 0.0 } else { 1.0 }, width))
        .collect();
    let kept = take_heads(t, 1, &p.heads, width)?;
    Ok(kept.broadcast_mul(&Tensor::new(live.as_slice(), t.device())?.to_dtype(t.dtype())?)?)
}

/// Removes attention layer `layer`'s planned-away query heads and KV groups.
fn compact_attention(tensors: &mut Tensors, config: &ModelConfig, layer: usize, p: &LayerPlan) -> Result<()> {
    let (d, q_rows) = (config.head_dim, config.query_rows_per_head());
    let key = |n: &str| format!("{}.layers.{layer}.self_attn.{n}", config.weight_prefix);
    for name in ["q_proj.weight", "q_proj.bias"] {
        edit(tensors, key(name), &|t| take_heads(t, 0, &p.heads, q_rows))?;
    }
    for name in ["k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"] {
        edit(tensors, key(name), &|t| take_heads(t, 0, &p.kv_heads, d))?;
    }
    edit(tensors, key("o_proj.weight"), &|t| take_live_columns(t, p, d))
}

/// Removes Gated DeltaNet layer `layer`'s planned-away value heads and key heads: `p.heads` are the
/// value heads kept, `p.kv_heads` the key heads (a key head's q and k slices come first in
/// `in_proj_qkv` and `conv1d`, the value slices after them).
fn compact_linear(tensors: &mut Tensors, config: &ModelConfig, layer: usize, p: &LayerPlan) -> Result<()> {
    let h = config.hybrid.as_ref().expect("a linear-attention layer belongs to a hybrid");
    let (dk, dv, key_heads) = (h.key_dim, h.value_dim, h.key_heads[layer]);
    let key = |n: &str| format!("{}.layers.{layer}.linear_attn.{n}", config.weight_prefix);
    // Channel indices of the kept q, k and v slices, for in_proj_qkv's rows and conv1d's channels.
    let channels: Vec<u32> = [0, key_heads * dk]
        .iter()
        .flat_map(|&start| p.kv_heads.iter().flat_map(move |&g| start + g * dk..start + (g + 1) * dk))
        .chain(p.heads.iter().flat_map(|&v| 2 * key_heads * dk + v * dv..2 * key_heads * dk + (v + 1) * dv))
        .map(|i| i as u32)
        .collect();
    for name in ["in_proj_qkv.weight", "conv1d.weight"] {
        edit(
            tensors,
            key(name),
            &|t| Ok(t.index_select(&Tensor::new(channels.as_slice(), t.device())?, 0)?),
        )?;
    }
    edit(tensors, key("in_proj_z.weight"), &|t| take_heads(t, 0, &p.heads, dv))?;
    for name in ["in_proj_b.weight", "in_proj_a.weight", "dt_bias", "A_log"] {
        edit(tensors, key(name), &|t| take_heads(t, 0, &p.heads, 1))?;
    }
    edit(tensors, key("out_proj.weight"), &|t| take_live_columns(t, p, dv))
}

/// Removes the tensors of the layers `removed` marks and renumbers the layers after them, so the
/// checkpoint's layers are 0.. again.
fn drop_layers(tensors: &mut Tensors, config: &ModelConfig, removed: &[bool]) {
    let prefix = format!("{}.layers.", config.weight_prefix);
    // Every layer tensor comes out first: a renumbered name may be one still to be read.
    let names: Vec<String> = tensors.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
    let taken: Vec<(String, Tensor)> =
        names.into_iter().map(|n| (n.clone(), tensors.remove(&n).expect("listed"))).collect();
    for (name, tensor) in taken {
        let rest = &name[prefix.len()..];
        let parsed =
            rest.split_once('.').and_then(|(index, tail)| Some((index.parse::<usize>().ok()?, tail)));
        match parsed {
            Some((layer, _)) if removed[layer] => {}
            Some((layer, tail)) => {
                let below = removed[..layer].iter().filter(|&&r| r).count();
                tensors.insert(format!("{prefix}{}.{tail}", layer - below), tensor);
            }
            None => {
                tensors.insert(name, tensor);
            }
        }
    }
}

/// Values the tensors of layer `layer` hold.
fn layer_parameters(folder: &ModelFolder, layer: usize) -> usize {
    let prefix = format!("{}.layers.{layer}.", folder.config.weight_prefix);
    let names = folder.weights.names();
    names
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .map(|n| folder.weights.shape(n).unwrap_or_default().iter().product::<usize>())
        .sum()
}

/// The kinds of units layer `layer` has: its mixer's heads, and its MLP channels.
fn layer_kinds(config: &ModelConfig, layer: usize) -> [UnitKind; 2] {
    [config.layer_kind(layer).head_kind(), UnitKind::MlpChannel]
}

/// Removes layer `layer`'s planned-away MLP channels: their `gate_proj`/`up_proj` rows (and biases)
/// and `down_proj` columns (each channel is its own group, so the plan keeps no padding).
fn compact_mlp(tensors: &mut Tensors, config: &ModelConfig, layer: usize, p: &LayerPlan) -> Result<()> {
    let key = |n: &str| format!("{}.layers.{layer}.mlp.{n}", config.weight_prefix);
    for name in ["gate_proj.weight", "gate_proj.bias", "up_proj.weight", "up_proj.bias"] {
        edit(tensors, key(name), &|t| take_heads(t, 0, &p.heads, 1))?;
    }
    edit(tensors, key("down_proj.weight"), &|t| take_heads(t, 1, &p.heads, 1))
}

/// Writes `folder`'s model with `mask`'s units (query heads, linear-attention value heads, MLP
/// channels) removed into `out` (config, weights, tokenizer files, `mask.json`), each file atomically.
pub fn save_pruned(folder: &ModelFolder, mask: &HeadMask, mode: SaveMode, out: &Path) -> Result<SavedModel> {
    let config = &folder.config;
    let geometry = config.geometry();
    mask.validate(&geometry).map_err(|e| bad_input!("mask: {e}"))?;
    let mut tensors = stored_tensors(folder)?;
    let mut counts = HeadCounts::of(config);
    match mode {
        SaveMode::Mask => zero_pruned_heads(&mut tensors, config, mask)?,
        SaveMode::Compact => {
            let removed: Vec<bool> =
                (0..config.layers).map(|l| !mask.pruned_of(UnitKind::Layer, l).is_empty()).collect();
            for layer in (0..config.layers).filter(|&l| !removed[l]) {
                // A kind with nothing pruned in the layer stays as it is.
                for kind in
                    layer_kinds(config, layer).into_iter().filter(|&k| !mask.pruned_of(k, layer).is_empty())
                {
                    let (units, groups) = geometry.of(kind);
                    let p = plan(layer, units[layer], groups[layer], mask.pruned_of(kind, layer))?;
                    match kind {
                        UnitKind::QueryHead => compact_attention(&mut tensors, config, layer, &p)?,
                        UnitKind::LinearHead => compact_linear(&mut tensors, config, layer, &p)?,
                        UnitKind::MlpChannel => compact_mlp(&mut tensors, config, layer, &p)?,
                        UnitKind::Layer => {
                            unreachable!("layer_kinds lists a layer's parts; whole layers go below")
                        }
                    }
                    counts.set(kind, layer, p.heads.len(), p.kv_heads.len());
                }
            }
            counts.drop_layers(&removed);
            drop_layers(&mut tensors, config, &removed);
        }
    }
    let mut json = source_config(folder)?;
    counts.write(&mut json, config)?;
    let parameters = write_model_folder(folder, &tensors, &json, out)?;
    write_json_atomic(&out.join("mask.json"), mask)?;
    Ok(SavedModel { parameters, heads: counts.heads, kv_heads: counts.kv_heads })
}

/// Zeroes the output columns (`o_proj`, `out_proj`, `down_proj`) of `mask`'s units in a checkpoint's
/// tensors: the units then reach nothing, exactly as if removed, and every shape stays as it was.
pub fn zero_pruned_heads(tensors: &mut Tensors, config: &ModelConfig, mask: &HeadMask) -> Result<()> {
    let geometry = config.geometry();
    let value_dim = config.hybrid.as_ref().map_or(0, |h| h.value_dim);
    for kind in UnitKind::ALL {
        let (module, width) = match kind {
            UnitKind::QueryHead => ("self_attn.o_proj", config.head_dim),
            UnitKind::LinearHead => ("linear_attn.out_proj", value_dim),
            UnitKind::MlpChannel => ("mlp.down_proj", 1),
            // A removed layer: both its output projections zeroed, it adds nothing to the stream.
            UnitKind::Layer => {
                for &layer in mask.of(kind).keys() {
                    let prefix = format!("{}.layers.{layer}", config.weight_prefix);
                    for module in ["self_attn.o_proj", "linear_attn.out_proj", "mlp.down_proj"] {
                        for part in ["weight", "bias"] {
                            edit(tensors, format!("{prefix}.{module}.{part}"), &|t| Ok(t.zeros_like()?))?;
                        }
                    }
                }
                continue;
            }
        };
        for (&layer, pruned) in mask.of(kind) {
            let keep: Vec<f32> = (0..geometry.of(kind).0[layer] * width)
                .map(|i| if pruned.contains(&(i / width)) { 0.0 } else { 1.0 })
                .collect();
            let name = format!("{}.layers.{layer}.{module}.weight", config.weight_prefix);
            edit(tensors, name, &|o| {
                Ok(o.broadcast_mul(&Tensor::new(keep.as_slice(), o.device())?.to_dtype(o.dtype())?)?)
            })?;
        }
    }
    Ok(())
}

/// Values a compact model of `folder` with `mask`'s heads removed would hold (nothing is written).
pub fn compact_parameters(folder: &ModelFolder, mask: &HeadMask) -> Result<usize> {
    let c = &folder.config;
    let geometry = c.geometry();
    let mut removed = 0;
    for layer in 0..c.layers {
        if !mask.pruned_of(UnitKind::Layer, layer).is_empty() {
            removed += layer_parameters(folder, layer) as isize;
            continue;
        }
        for kind in layer_kinds(c, layer) {
            let (units, groups) = geometry.of(kind);
            let p = plan(layer, units[layer], groups[layer], mask.pruned_of(kind, layer))?;
            let (per_unit, per_group) = unit_sizes(c, kind);
            // Copied key/value heads (uneven groups) add rather than remove, hence signed arithmetic.
            removed += (units[layer] as isize - p.heads.len() as isize) * per_unit;
            removed += (groups[layer] as isize - p.kv_heads.len() as isize) * per_group;
        }
    }
    Ok((folder.weights.parameter_count() as isize - removed) as usize)
}

/// The model's geometry with what each unit costs (`ModelGeometry::costs`), for parameter targets:
/// the same sizes [`compact_parameters`] counts, and each layer's tensors counted from the weights.
pub fn costed_geometry(folder: &ModelFolder) -> forge_api::ModelGeometry {
    let c = &folder.config;
    let sizes: Vec<(isize, isize)> = UnitKind::ALL.iter().map(|&k| unit_sizes(c, k)).collect();
    let mut geometry = c.geometry();
    geometry.costs = Some(forge_api::UnitCosts {
        parameters: folder.weights.parameter_count() as u64,
        unit: sizes.iter().map(|s| s.0 as u64).collect(),
        group: sizes.iter().map(|s| s.1 as u64).collect(),
        layers: (0..c.layers).map(|l| layer_parameters(folder, l) as u64).collect(),
    });
    geometry
}

/// Values one head of `kind` and one of its groups own (biases, a few values, are left out).
fn unit_sizes(c: &ModelConfig, kind: UnitKind) -> (isize, isize) {
    let hidden = c.hidden as isize;
    match (kind, &c.hybrid) {
        // A channel's gate and up rows and down column; it is its own group, counted once.
        (UnitKind::MlpChannel, _) => (3 * hidden, 0),
        // Removed layers are counted whole, from their tensors.
        (UnitKind::Layer, _) => (0, 0),
        (UnitKind::LinearHead, Some(h)) => {
            let (dk, dv, taps) = (h.key_dim as isize, h.value_dim as isize, h.conv_kernel as isize);
            // A value head: its rows of in_proj_qkv (v), in_proj_z, in_proj_b and in_proj_a, its conv
            // channels, its out_proj columns, dt_bias and A_log. A key head: its q and k rows and
            // conv channels.
            (dv * (3 * hidden + taps) + 2 * hidden + 2, 2 * dk * (hidden + taps))
        }
        // A query head's q_proj rows (a gated head's query and gate) and o_proj columns; a KV
        // group's k and v rows.
        _ => {
            let d = c.head_dim as isize;
            ((c.query_rows_per_head() as isize + d) * hidden, 2 * d * hidden)
        }
    }
}

/// Every tensor of `folder`'s checkpoint in its stored dtype, on the CPU.
pub fn stored_tensors(folder: &ModelFolder) -> Result<HashMap<String, Tensor>> {
    folder
        .weights
        .names()
        .into_iter()
        .map(|name| Ok((name.to_string(), folder.weights.load_stored(name, &Device::Cpu)?)))
        .collect()
}

/// The folder's `config.json` as JSON, to edit and write again.
pub fn source_config(folder: &ModelFolder) -> Result<serde_json::Value> {
    let path = folder.path.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text).map_err(|e| bad_input!("{}: {e}", path.display()))
}

/// Writes a model folder — `model.safetensors`, `config.json` and the source's tokenizer files — each
/// file atomically; returns the number of values written.
pub fn write_model_folder(
    folder: &ModelFolder,
    tensors: &HashMap<String, Tensor>,
    config: &serde_json::Value,
    out: &Path,
) -> Result<usize> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(&out.join("model.safetensors"), |tmp| {
        // transformers checks this metadata key before loading a safetensors checkpoint.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(tensors.iter(), Some(metadata), tmp)
            .map_err(|e| bad_input!("cannot write {}: {e}", tmp.display()))
    })?;
    write_json_atomic(&out.join("config.json"), config)?;
    for extra in
        ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"]
    {
        let from = folder.path.join(extra);
        if from.is_file() {
            write_atomic(&out.join(extra), |tmp| {
                std::fs::copy(&from, tmp).map(drop).map_err(|e| Error::io(&from, e))
            })?;
        }
    }
    Ok(tensors.values().map(|t| t.elem_count()).sum())
}

/// Head counts per layer of the model being written, of both kinds.
struct HeadCounts {
    heads: Vec<usize>,
    kv_heads: Vec<usize>,
    linear: Option<(Vec<usize>, Vec<usize>)>,
    intermediates: Vec<usize>,
    /// Each layer's kind; layers removed whole are dropped from every list.
    kinds: Vec<LayerKind>,
    /// The source's layers removed whole.
    removed: Vec<bool>,
}

impl HeadCounts {
    fn of(c: &ModelConfig) -> Self {
        HeadCounts {
            heads: c.heads.clone(),
            kv_heads: c.kv_heads.clone(),
            linear: c.hybrid.as_ref().map(|h| (h.value_heads.clone(), h.key_heads.clone())),
            intermediates: c.intermediates.clone(),
            kinds: (0..c.layers).map(|l| c.layer_kind(l)).collect(),
            removed: vec![false; c.layers],
        }
    }

    /// Drops the entries of the layers `removed` marks.
    fn drop_layers(&mut self, removed: &[bool]) {
        let keep = |v: &mut Vec<usize>| retain_kept(v, removed);
        [&mut self.heads, &mut self.kv_heads, &mut self.intermediates].into_iter().for_each(keep);
        if let Some((v, k)) = &mut self.linear {
            keep(v);
            keep(k);
        }
        retain_kept(&mut self.kinds, removed);
        self.removed = removed.to_vec();
    }

    fn set(&mut self, kind: UnitKind, layer: usize, heads: usize, groups: usize) {
        if kind == UnitKind::MlpChannel {
            self.intermediates[layer] = heads;
            return;
        }
        let (h, g) = match (kind, &mut self.linear) {
            (UnitKind::LinearHead, Some((v, k))) => (v, k),
            _ => (&mut self.heads, &mut self.kv_heads),
        };
        (h[layer], g[layer]) = (heads, groups);
    }

    /// Writes the counts into `json` (with an explicit `head_dim`, which no longer follows from
    /// `hidden_size / num_attention_heads`), under `text_config` where the checkpoint keeps the text
    /// model there: the standard keys when every layer of a kind has the same counts, else forge's
    /// per-layer extension beside them (MLP widths: `forge_intermediate_size_per_layer`).
    fn write(&self, json: &mut serde_json::Value, model: &ModelConfig) -> Result<()> {
        debug_assert!(model.layers >= self.kinds.len());
        let root = json.as_object_mut().ok_or_else(|| bad_input!("config.json is not a JSON object"))?;
        let c = match root.contains_key("text_config") {
            true => root["text_config"]
                .as_object_mut()
                .ok_or_else(|| bad_input!("config.json: `text_config` is not a JSON object"))?,
            false => root,
        };
        c.insert("head_dim".into(), model.head_dim.into());
        c.insert("num_hidden_layers".into(), self.kinds.len().into());
        if let Some(serde_json::Value::Array(types)) = c.get_mut("layer_types") {
            if types.len() == self.removed.len() {
                retain_kept(types, &self.removed);
            }
        }
        let layers_of = |kind: LayerKind| -> Vec<usize> {
            (0..self.kinds.len()).filter(|&l| self.kinds[l] == kind).collect()
        };
        let keys = [
            "num_attention_heads",
            "num_key_value_heads",
            "forge_heads_per_layer",
            "forge_kv_heads_per_layer",
        ];
        set_counts(c, &layers_of(LayerKind::Full), (&self.heads, &self.kv_heads), keys);
        if let Some((values, keys_heads)) = &self.linear {
            let keys = [
                "linear_num_value_heads",
                "linear_num_key_heads",
                "forge_linear_num_value_heads_per_layer",
                "forge_linear_num_key_heads_per_layer",
            ];
            set_counts(c, &layers_of(LayerKind::Linear), (values, keys_heads), keys);
        }
        let widths = &self.intermediates;
        c.remove("forge_intermediate_size_per_layer");
        c.insert("intermediate_size".into(), widths.iter().max().copied().unwrap_or(0).into());
        if widths.iter().any(|&w| w != widths[0]) {
            c.insert("forge_intermediate_size_per_layer".into(), widths.clone().into());
        }
        Ok(())
    }
}

/// Keeps the entries of a per-layer list whose layer `removed` does not mark.
fn retain_kept<T>(list: &mut Vec<T>, removed: &[bool]) {
    let mut layer = 0;
    list.retain(|_| {
        layer += 1;
        !removed[layer - 1]
    });
}

/// Writes one kind's `(heads, groups)` per layer into config object `c` under `keys` (standard head
/// key, standard group key, per-layer head key, per-layer group key). Uniform means uniform over
/// `layers`, the layers of that kind: the other layers carry the counts unused.
fn set_counts(
    c: &mut serde_json::Map<String, serde_json::Value>,
    layers: &[usize],
    (heads, groups): (&[usize], &[usize]),
    [head_key, group_key, heads_per_layer, groups_per_layer]: [&str; 4],
) {
    c.remove(heads_per_layer);
    c.remove(groups_per_layer);
    let Some(&first) = layers.first() else { return };
    if layers.iter().all(|&l| heads[l] == heads[first] && groups[l] == groups[first]) {
        c.insert(head_key.into(), heads[first].into());
        c.insert(group_key.into(), groups[first].into());
    } else {
        c.insert(head_key.into(), layers.iter().map(|&l| heads[l]).max().unwrap_or(0).into());
        c.insert(group_key.into(), layers.iter().map(|&l| groups[l]).max().unwrap_or(0).into());
        c.insert(heads_per_layer.into(), heads.into());
        c.insert(groups_per_layer.into(), groups.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_groups_are_padded_or_given_kv_copies_whichever_is_smaller() {
        // 8 query heads over 4 KV groups of 2.
        let even = plan(0, 8, 4, &[0, 1, 4, 5]).unwrap();
        assert_eq!(even, LayerPlan { heads: vec![2, 3, 6, 7], padding: vec![], kv_heads: vec![1, 3] });
        // Groups {1}, {2,3}, {4}, {6,7}: padding 2 heads beats copying 2 KV heads (a tie goes to padding).
        let padded = plan(0, 8, 4, &[0, 5]).unwrap();
        assert_eq!(
            padded,
            LayerPlan { heads: (0..8).collect(), padding: vec![0, 5], kv_heads: vec![0, 1, 2, 3] }
        );
        // 12 heads in 3 groups of 4, left as {0}, {4}, {8..12}: copying 3 KV heads beats padding 6 heads.
        let copied = plan(0, 12, 3, &[1, 2, 3, 5, 6, 7]).unwrap();
        assert_eq!(
            copied,
            LayerPlan { heads: vec![0, 4, 8, 9, 10, 11], padding: vec![], kv_heads: vec![0, 1, 2, 2, 2, 2] }
        );
        assert!(plan(3, 2, 1, &[0, 1]).unwrap_err().to_string().contains("every head of layer 3"));
    }

    #[test]
    fn take_heads_picks_whole_blocks() {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((6, 2)).unwrap();
        let rows = take_heads(&t, 0, &[0, 2], 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(rows, vec![0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]);
    }
}
