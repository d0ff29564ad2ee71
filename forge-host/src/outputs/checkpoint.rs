//! Writing a pruned model two ways.
//!
//! *mask*: every tensor keeps its shape; the pruned heads' `o_proj` columns are zeroed, which removes
//! their contribution exactly. *compact*: the heads are physically removed — their `q_proj` rows (and
//! bias) and `o_proj` columns — and so are KV groups all of whose query heads are gone. When the kept
//! heads of a layer are spread unevenly over its KV groups, standard GQA (each KV head serving the
//! same number of consecutive query heads) cannot express it, so that layer gets one KV head per kept
//! query head, copied from its group. A model with the same head counts in every layer gets a
//! standard `config.json`; otherwise forge adds `forge_heads_per_layer` / `forge_kv_heads_per_layer`
//! (see docs/pruned-models.md), which forge loads and transformers does not.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use forge_api::HeadMask;

use super::{write_atomic, write_json_atomic};
use crate::loader::{ModelConfig, ModelFolder};
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

/// Writes `folder`'s model with `mask`'s heads removed into `out` (config, weights, tokenizer files,
/// `mask.json`), each file atomically.
pub fn save_pruned(folder: &ModelFolder, mask: &HeadMask, mode: SaveMode, out: &Path) -> Result<SavedModel> {
    let config = &folder.config;
    let geometry = config.geometry();
    mask.validate(&geometry).map_err(|e| bad_input!("mask: {e}"))?;
    let (d, q_rows) = (config.head_dim, config.query_rows_per_head());
    let mut tensors = stored_tensors(folder)?;
    if mode == SaveMode::Mask {
        zero_pruned_heads(&mut tensors, config, mask)?;
    }
    let (mut heads, mut kv_heads) = (config.heads.clone(), config.kv_heads.clone());
    // A hybrid's linear-attention layers have no heads to remove.
    for layer in geometry.attending_layers() {
        let pruned = mask.pruned_in(layer);
        let key = |p: &str| format!("{}.layers.{layer}.self_attn.{p}", config.weight_prefix);
        let mut edit = |name: String, f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<()> {
            if let Some(t) = tensors.get(&name) {
                let new = f(t)?;
                tensors.insert(name, new);
            }
            Ok(())
        };
        match mode {
            SaveMode::Mask => {}
            SaveMode::Compact => {
                let p = plan(layer, heads[layer], kv_heads[layer], pruned)?;
                for name in ["q_proj.weight", "q_proj.bias"] {
                    edit(key(name), &|t| take_heads(t, 0, &p.heads, q_rows))?;
                }
                for name in ["k_proj.weight", "k_proj.bias", "v_proj.weight", "v_proj.bias"] {
                    edit(key(name), &|t| take_heads(t, 0, &p.kv_heads, d))?;
                }
                // Padding heads stay in place but write nothing: their o_proj columns become zero.
                let live: Vec<f32> = p
                    .heads
                    .iter()
                    .flat_map(|h| std::iter::repeat_n(if p.padding.contains(h) { 0.0 } else { 1.0 }, d))
                    .collect();
                edit(key("o_proj.weight"), &|t| {
                    let kept = take_heads(t, 1, &p.heads, d)?;
                    Ok(kept.broadcast_mul(&Tensor::new(live.as_slice(), t.device())?.to_dtype(t.dtype())?)?)
                })?;
                (heads[layer], kv_heads[layer]) = (p.heads.len(), p.kv_heads.len());
            }
        }
    }

    let mut json = source_config(folder)?;
    set_head_counts(&mut json, config, &heads, &kv_heads)?;
    let config = json;
    let parameters = write_model_folder(folder, &tensors, &config, out)?;
    write_json_atomic(&out.join("mask.json"), mask)?;
    Ok(SavedModel { parameters, heads, kv_heads })
}

/// Zeroes the `o_proj` columns of `mask`'s heads in a checkpoint's tensors: the heads then reach
/// nothing, exactly as if removed, and every shape stays as it was.
pub fn zero_pruned_heads(
    tensors: &mut HashMap<String, Tensor>,
    config: &ModelConfig,
    mask: &HeadMask,
) -> Result<()> {
    let (heads, head_dim) = (&config.heads, config.head_dim);
    for (&layer, pruned) in &mask.pruned {
        let name = format!("{}.layers.{layer}.self_attn.o_proj.weight", config.weight_prefix);
        if let Some(o) = tensors.get(&name) {
            let keep: Vec<f32> = (0..heads[layer] * head_dim)
                .map(|i| if pruned.contains(&(i / head_dim)) { 0.0 } else { 1.0 })
                .collect();
            let zeroed = o.broadcast_mul(&Tensor::new(keep.as_slice(), o.device())?.to_dtype(o.dtype())?)?;
            tensors.insert(name, zeroed);
        }
    }
    Ok(())
}

/// Values a compact model of `folder` with `mask`'s heads removed would hold (nothing is written).
pub fn compact_parameters(folder: &ModelFolder, mask: &HeadMask) -> Result<usize> {
    let c = &folder.config;
    let geometry = c.geometry();
    let per_head = c.head_dim * c.hidden;
    // Its q_proj rows (a gated head's query and gate) and o_proj columns per query head.
    let per_query_head = ((c.query_rows_per_head() + c.head_dim) * c.hidden) as isize;
    let mut removed: isize = 0;
    for layer in geometry.attending_layers() {
        let p = plan(layer, c.heads[layer], c.kv_heads[layer], mask.pruned_in(layer))?;
        // k and v rows per KV head (biases are negligible here).
        removed += (c.heads[layer] as isize - p.heads.len() as isize) * per_query_head;
        removed += 2 * (c.kv_heads[layer] as isize - p.kv_heads.len() as isize) * per_head as isize;
    }
    Ok((folder.weights.parameter_count() as isize - removed) as usize)
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

/// Writes the new head counts into `json` (with an explicit `head_dim`, which no longer follows
/// from `hidden_size / num_attention_heads`), under `text_config` where the checkpoint keeps the text
/// model there. Uniform means uniform over the layers with attention: a hybrid's linear-attention
/// layers carry the attention layers' count, unused.
fn set_head_counts(
    json: &mut serde_json::Value,
    model: &ModelConfig,
    heads: &[usize],
    kv_heads: &[usize],
) -> Result<()> {
    let root = json.as_object_mut().ok_or_else(|| bad_input!("config.json is not a JSON object"))?;
    let c = match root.contains_key("text_config") {
        true => root["text_config"]
            .as_object_mut()
            .ok_or_else(|| bad_input!("config.json: `text_config` is not a JSON object"))?,
        false => root,
    };
    c.insert("head_dim".into(), model.head_dim.into());
    c.remove("forge_heads_per_layer");
    c.remove("forge_kv_heads_per_layer");
    let attending = model.geometry().attending_layers();
    let (first_heads, first_kv) = (heads[attending[0]], kv_heads[attending[0]]);
    let uniform = attending.iter().all(|&l| heads[l] == first_heads && kv_heads[l] == first_kv);
    if uniform {
        c.insert("num_attention_heads".into(), first_heads.into());
        c.insert("num_key_value_heads".into(), first_kv.into());
    } else {
        c.insert("num_attention_heads".into(), heads.iter().max().copied().unwrap_or(0).into());
        c.insert("num_key_value_heads".into(), kv_heads.iter().max().copied().unwrap_or(0).into());
        c.insert("forge_heads_per_layer".into(), heads.into());
        c.insert("forge_kv_heads_per_layer".into(), kv_heads.into());
    }
    Ok(())
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
