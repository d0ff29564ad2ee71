//! Qwen3.5 (Gated DeltaNet and gated full attention) against transformers 5.17 in float32 on the CPU:
//! logits, greedy continuations through the recurrent state, and perplexity under the reference
//! protocol, in both checkpoint layouts (`tests/fixtures/reference/tiny-qwen35*`, copied from
//! `../shared/fixtures/reference`; the logits file keeps the first of its four sequences).
mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use forge_host::loader::ModelFolder;
use forge_host::model::{CausalLm, KvCache};

fn reference() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("reference/tiny-qwen35.json")).unwrap()).unwrap()
}

fn load(dir: &std::path::Path) -> (ModelFolder, CausalLm) {
    let folder = ModelFolder::open(dir).unwrap();
    let model = CausalLm::load(&folder, DType::F32, &Device::Cpu).unwrap();
    (folder, model)
}

fn logits_within_2e3(dir: &std::path::Path) {
    let (_, model) = load(dir);
    let tensors =
        candle_core::safetensors::load(fixture("reference/tiny-qwen35-logits.safetensors"), &Device::Cpu)
            .unwrap();
    let ids = tensors["input_ids"].to_dtype(DType::U32).unwrap();
    let got = model.logits(&ids, None).unwrap();
    let diff =
        (got - &tensors["logits"]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 2e-3, "{}: logits differ from transformers' by up to {diff}", dir.display());
}

#[test]
fn logits_match_transformers_in_both_layouts() {
    logits_within_2e3(&tiny_qwen35());
    let vl = tempfile::tempdir().unwrap();
    write_tiny_qwen35_vl(vl.path());
    logits_within_2e3(vl.path());
}

#[test]
fn greedy_continuations_match_transformers_through_the_recurrent_state() {
    assert_greedy_matches(&tiny_qwen35(), "tiny-qwen35.json");
}

#[test]
fn a_prompt_then_cached_steps_give_the_logits_of_a_full_pass() {
    // 70 tokens: the prompt crosses a 64-token chunk, then each step goes through the convolution
    // state and the recurrent state of every linear layer and the KV cache of the full ones.
    let (folder, model) = load(&tiny_qwen35());
    let ids: Vec<u32> = (0..75).map(|i| (i * 677 + 5) % 8192).collect();
    let row = |ids: &[u32]| Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full = model.logits(&row(&ids), None).unwrap();
    let mut cache = KvCache::new(folder.config.layers);
    let mut steps = vec![model.logits(&row(&ids[..70]), Some(&mut cache)).unwrap()];
    for &id in &ids[70..] {
        steps.push(model.logits(&row(&[id]), Some(&mut cache)).unwrap());
    }
    let cached = Tensor::cat(&steps, 1).unwrap();
    assert!(rel_diff(&cached, &full) < 1e-5, "cached decoding differs: {}", rel_diff(&cached, &full));
}

#[test]
fn perplexity_matches_transformers_in_both_layouts_on_both_domains() {
    let reference = reference();
    let vl = tempfile::tempdir().unwrap();
    write_tiny_qwen35_vl(vl.path());
    for model in [tiny_qwen35(), vl.path().to_path_buf()] {
        for domain in ["code", "prose"] {
            let report = eval_reference_protocol(&model, domain);
            let want = reference[format!("{domain}_valid_ppl")].as_f64().unwrap();
            let got = report["perplexity"].as_f64().unwrap();
            assert!(
                (got / want - 1.0).abs() < 1e-3,
                "{}: {domain}-valid perplexity {got} vs transformers {want}",
                model.display()
            );
        }
    }
}

#[test]
fn bad_hybrid_configs_are_refused_naming_the_key() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        (
            "layer_types",
            serde_json::json!(["linear_attention"]),
            "`layer_types` lists 1 layers but `num_hidden_layers` is 8",
        ),
        (
            "layer_types",
            serde_json::json!([
                "linear_attention",
                "linear_attention",
                "linear_attention",
                "sliding_attention",
                "linear_attention",
                "linear_attention",
                "linear_attention",
                "full_attention"
            ]),
            "`layer_types[3]` is `sliding_attention`",
        ),
        (
            "linear_num_value_heads",
            serde_json::json!(6),
            "`linear_num_value_heads` (6) is not a multiple of `linear_num_key_heads` (4)",
        ),
        ("architectures", serde_json::json!(["Qwen3_5MoeForConditionalGeneration"]), "is not supported yet"),
    ];
    for (key, value, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        copy_model(&tiny_qwen35(), dir.path());
        edit_config(dir.path(), |config| config[key] = value);
        let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
        assert!(err.contains(message), "{key}: {err}");
    }
}

#[test]
fn a_checkpoint_missing_a_linear_attention_tensor_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_qwen35(), dir.path());
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("model.layers.2.linear_attn.dt_bias").unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let data = data("code-valid.jsonl");
    let err =
        forge_refuses(&["eval", "--model", dir.path().to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(err.contains("tensor `model.layers.2.linear_attn.dt_bias` is missing"), "{err}");
}

#[test]
fn inspect_shows_the_layer_mix_and_counts_the_vision_tower_apart() {
    let report = forge_json(&["inspect", "--json", "--model", tiny_qwen35().to_str().unwrap()]);
    assert_eq!(report["architecture"], "Qwen3_5ForCausalLM");
    assert_eq!(report["layer_pattern"], "LLLFLLLF");
    assert_eq!(report["linear_attention"]["value_heads"], 8);
    assert_eq!(report["linear_attention"]["rotary_dim"], 16);
    let kinds = report["parameters_by_kind"].as_object().unwrap();
    let sum: u64 = kinds.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, report["parameters"].as_u64().unwrap());
    assert!(kinds["linear_attention"].as_u64().unwrap() > kinds["full_attention"].as_u64().unwrap());
    assert!(!kinds.contains_key("other"), "{kinds:?}");

    let vl = tempfile::tempdir().unwrap();
    write_tiny_qwen35_vl(vl.path());
    let report = forge_json(&["inspect", "--json", "--model", vl.path().to_str().unwrap()]);
    assert_eq!(report["architecture"], "Qwen3_5ForConditionalGeneration");
    let visual: usize =
        candle_core::safetensors::load(fixture("tiny-qwen35-vl/visual.safetensors"), &Device::Cpu)
            .unwrap()
            .values()
            .map(|t| t.elem_count())
            .sum();
    assert_eq!(report["parameters_by_kind"]["other"].as_u64().unwrap() as usize, visual);
}

/// Every tensor of a safetensors file: name → (dtype, shape, raw bytes).
fn raw_tensors(path: &std::path::Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, t)| (name, (format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec())))
        .collect()
}

/// A PEFT LoRA adapter (r 4, alpha 8: scale 2) for the vision-layout checkpoint in `model`, on a
/// module of each kind: `q_proj` (full attention), `in_proj_qkv` (Gated DeltaNet), `gate_proj` (every
/// layer's MLP), with random A and B. Returns the adapted weights' names.
fn write_hybrid_adapter(model: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let base = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let targets = [".self_attn.q_proj.weight", ".linear_attn.in_proj_qkv.weight", ".mlp.gate_proj.weight"];
    let mut adapted: Vec<String> =
        base.keys().filter(|n| targets.iter().any(|t| n.ends_with(t))).cloned().collect();
    adapted.sort();
    let mut tensors = std::collections::HashMap::new();
    for (i, name) in adapted.iter().enumerate() {
        let (out, inp) = base[name].dims2().unwrap();
        let module = name.strip_suffix(".weight").unwrap();
        let random = |shape: (usize, usize), seed: usize| {
            let values: Vec<f32> = (0..shape.0 * shape.1)
                .map(|j| (((j * 7919 + seed * 104729) % 2003) as f32 / 2003.0 - 0.5) * 0.04)
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
        };
        tensors.insert(format!("base_model.model.{module}.lora_A.weight"), random((4, inp), 2 * i));
        tensors.insert(format!("base_model.model.{module}.lora_B.weight"), random((out, 4), 2 * i + 1));
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "in_proj_qkv", "gate_proj"],
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    adapted
}

#[test]
fn merging_into_the_vision_layout_keeps_its_tower_byte_for_byte_and_its_layout() {
    let (vl, adapter, out) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tiny_qwen35_vl(vl.path());
    let adapted = write_hybrid_adapter(vl.path(), adapter.path());
    // 2 full-attention q_proj, 6 in_proj_qkv, 8 gate_proj.
    assert_eq!(adapted.len(), 16, "{adapted:?}");
    let merged = out.path().join("merged");
    let (m, a, o) = (vl.path().to_str().unwrap(), adapter.path().to_str().unwrap(), merged.to_str().unwrap());
    let report = forge_json(&["merge", "--json", "--model", m, "--adapter", a, "--out", o]);
    assert_eq!(report["merged_tensors"], 16);

    let config = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(
        config(&merged),
        config(vl.path()),
        "the config (Qwen3_5ForConditionalGeneration, text_config) changed"
    );
    let (before, after) =
        (raw_tensors(&vl.path().join("model.safetensors")), raw_tensors(&merged.join("model.safetensors")));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "tensor names changed");
    let visual = before.keys().filter(|n| n.starts_with("model.visual.")).count();
    assert!(visual > 0);
    for (name, (dtype, shape, bytes)) in &before {
        let (new_dtype, new_shape, new_bytes) = &after[name];
        assert_eq!((dtype, shape), (new_dtype, new_shape), "{name}");
        let changed = new_bytes != bytes;
        assert_eq!(changed, adapted.contains(name), "{name}: changed {changed}");
    }
    // A merged weight is the base plus 2 · B · A (rounded back to bf16).
    let name = adapted.iter().find(|n| n.contains("in_proj_qkv")).unwrap();
    let module = name.strip_suffix(".weight").unwrap();
    let load = |dir: &std::path::Path, file: &str| {
        candle_core::safetensors::load(dir.join(file), &Device::Cpu).unwrap()
    };
    let (base, lora, new) = (
        load(vl.path(), "model.safetensors"),
        load(adapter.path(), "adapter_model.safetensors"),
        load(&merged, "model.safetensors"),
    );
    let delta = (lora[&format!("base_model.model.{module}.lora_B.weight")]
        .matmul(&lora[&format!("base_model.model.{module}.lora_A.weight")])
        .unwrap()
        * 2.0)
        .unwrap();
    let want = (base[name].to_dtype(DType::F32).unwrap() + delta).unwrap();
    let rel = rel_diff(&new[name].to_dtype(DType::F32).unwrap(), &want);
    assert!(rel < 4e-3, "{name} merged off by {rel}");

    // The merged model evaluates as the base with the adapter applied (up to the bf16 rounding).
    let eval = quick_perplexity;
    let (merged_ppl, applied, plain) =
        (eval(&["--model", o]), eval(&["--model", m, "--adapter", a]), eval(&["--model", m]));
    assert!((merged_ppl / applied - 1.0).abs() < 5e-3, "merged {merged_ppl} vs adapter applied {applied}");
    assert!((applied / plain - 1.0).abs() > 1e-3, "the adapter changed nothing ({applied} vs {plain})");
}

#[test]
fn a_lora_target_no_layer_has_is_refused_by_name() {
    let (m, code) = (tiny_qwen3(), data("code-train.jsonl"));
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("adapter");
    let err = forge_refuses(&[
        "train",
        "--model",
        m.to_str().unwrap(),
        "--data",
        code.to_str().unwrap(),
        "--targets",
        "q_proj,in_proj_qkv",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(err.contains("LoRA target `in_proj_qkv` is in no layer of this model"), "{err}");
    assert!(!o.exists());
}

#[test]
fn eval_checks_its_memory_estimate_against_the_budget_before_loading() {
    let (m, code) = (tiny_qwen35(), data("code-valid.jsonl"));
    let (m, code) = (m.to_str().unwrap(), code.to_str().unwrap());
    let err = forge_refuses(&["eval", "--memory-budget", "1MiB", "--model", m, "--data", code]);
    assert!(
        err.contains("the eval phase needs an estimated") && err.contains("--memory-budget is 1 MiB"),
        "{err}"
    );
    assert!(err.contains("a smaller --batch-size or --seq-len"), "{err}");
    let report = forge_json(&[
        "eval",
        "-q",
        "--json",
        "--memory-budget",
        "64GiB",
        "--model",
        m,
        "--data",
        code,
        "--seq-len",
        "128",
        "--max-windows",
        "4",
    ]);
    // Weights alone (9.35M values in f32) are part of the prediction.
    assert!(report["predicted_peak_bytes"].as_u64().unwrap() > 37_000_000, "{report}");
}

/// The backward of both layer kinds against central differences, in f64 on the CPU (the delta rule's
/// core computes in f32): layer 0 is Gated DeltaNet (projections, causal conv, delta rule with its
/// per-chunk recomputation over 70 tokens, gated norm), layer 3 gated full attention (q/k norms,
/// partial RoPE, the output gate); each with its MLP and residuals.
#[test]
fn gradients_through_both_layer_kinds_match_finite_differences() {
    let folder = ModelFolder::open(&tiny_qwen35()).unwrap();
    let model = CausalLm::load(&folder, DType::F64, &Device::Cpu).unwrap();
    let (seq, hidden) = (70, model.config().hidden);
    let wave = |n: usize, seed: usize| -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 1999) as f64 / 1999.0 - 0.5) * 2.0).collect()
    };
    let x0 = Tensor::from_vec(wave(seq * hidden, 1), (1, seq, hidden), &Device::Cpu).unwrap();
    let weights = Tensor::from_vec(wave(seq * hidden, 2), (1, seq, hidden), &Device::Cpu).unwrap();
    let rope = model.rope(0, seq).unwrap();
    for layer in [0, 3] {
        let loss = |x: &Tensor| -> Tensor {
            (model.layer_forward(layer, x, &rope).unwrap() * &weights).unwrap().sum_all().unwrap()
        };
        let var = candle_core::Var::from_tensor(&x0).unwrap();
        let grads = loss(var.as_tensor()).backward().unwrap();
        let dx = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let flat = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let eps = 1e-3;
        for at in [5, 33 * hidden + 17, 64 * hidden + 200, 69 * hidden + 3] {
            let nudged = |by: f64| {
                let mut v = flat.clone();
                v[at] += by;
                let x = Tensor::from_vec(v, (1, seq, hidden), &Device::Cpu).unwrap();
                loss(&x).to_scalar::<f64>().unwrap()
            };
            let fd = (nudged(eps) - nudged(-eps)) / (2.0 * eps);
            assert!(
                (fd - dx[at]).abs() <= 1e-3 * (1.0 + fd.abs()),
                "layer {layer}, input element {at}: backward {} vs finite differences {fd}",
                dx[at]
            );
        }
    }
}

/// LoRA on every linear layer of both kinds trains through the hybrid (backward through the delta rule,
/// conv, gated norm, output gate and partial RoPE; their gradients are checked against finite
/// differences above), with and without checkpointing alike, and saves PEFT's names.
#[test]
fn lora_trains_through_both_layer_kinds_with_or_without_checkpointing() {
    let out = tempfile::tempdir().unwrap();
    let train = |name: &str, extra: &[&str]| train_tiny_qwen35(&out.path().join(name), extra);
    let (plain, checkpointed) = (train("plain", &[]), train("checkpointed", &["--grad-checkpoint"]));
    assert_eq!(plain["losses"], checkpointed["losses"], "checkpointing changed the losses");
    let losses: Vec<f64> = plain["losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite()) && losses[3] < losses[0], "{losses:?}");
    let adapter =
        candle_core::safetensors::load(out.path().join("plain/adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    // B starts at zero: a nonzero B is a gradient that reached the module.
    for module in [
        "layers.0.linear_attn.in_proj_qkv",
        "layers.0.linear_attn.in_proj_a",
        "layers.3.self_attn.q_proj",
        "layers.3.mlp.down_proj",
    ] {
        let b = &adapter[&format!("base_model.model.model.{module}.lora_B.weight")];
        let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "{module}: no update");
    }
    assert!(!adapter.keys().any(|k| k.contains("layers.0.self_attn") || k.contains("layers.3.linear_attn")));
}

/// Every built-in scorer scores both kinds of heads: the full-attention query heads of layers 3 and 7
/// (`scores`) and the Gated DeltaNet value heads of the others (`linear`).
#[test]
fn every_scorer_scores_both_kinds_of_heads() {
    let (m, code) = (tiny_qwen35(), data("code-valid.jsonl"));
    for scorer in ["l2", "random", "activation", "taylor"] {
        let report = forge_json(&[
            "score",
            "-q",
            "--json",
            "--model",
            m.to_str().unwrap(),
            "--scorer",
            scorer,
            "--data",
            code.to_str().unwrap(),
            "--calib-windows",
            "2",
        ]);
        for (key, lens) in [("scores", [0, 0, 0, 8, 0, 0, 0, 8]), ("linear", [8, 8, 8, 0, 8, 8, 8, 0])] {
            let scores: Vec<Vec<f64>> = serde_json::from_value(report[key].clone()).unwrap();
            assert_eq!(scores.iter().map(Vec::len).collect::<Vec<_>>(), lens, "{scorer} {key}");
            assert!(scores.iter().flatten().all(|s| s.is_finite() && *s >= 0.0), "{scorer}: {scores:?}");
            let distinct =
                scores.iter().flatten().map(|s| s.to_bits()).collect::<std::collections::BTreeSet<_>>();
            assert!(distinct.len() > 8, "{scorer} {key}: scores do not tell heads apart: {scores:?}");
        }
    }
}

/// `forge prune` of `model` into `out/name` with l2 scores, `--ratio 0.5` and pruner options `opts`;
/// returns the folder and the report.
fn prune_half(
    model: &std::path::Path,
    out: &std::path::Path,
    (name, pruner, opts, mode): (&str, &str, &[&str], &str),
) -> (std::path::PathBuf, serde_json::Value) {
    let dir = out.join(name);
    let mut args = vec!["prune", "-q", "--json", "--model", model.to_str().unwrap(), "--pruner", pruner];
    args.extend(["--scorer", "l2", "--ratio", "0.5", "--save-mode", mode, "--out", dir.to_str().unwrap()]);
    opts.iter().for_each(|o| args.extend(["--pruner-opt", o]));
    let report = forge_json(&args);
    (dir, report)
}

/// The logits of `dir` against `base` under `mask`, as a relative difference.
fn compact_vs_masked(dir: &std::path::Path, base: &std::path::Path, mask: &std::path::Path) -> f64 {
    let ids = Tensor::new(&[[17u32, 912, 4, 1880, 33, 7, 250, 6001, 45, 45, 2, 900]], &Device::Cpu).unwrap();
    let (_, compact) = load(dir);
    let (_, mut masked) = load(base);
    let mask = forge_api::HeadMask::from_json(&std::fs::read_to_string(mask).unwrap()).unwrap();
    masked.apply_head_mask(&mask).unwrap();
    rel_diff(&compact.logits(&ids, None).unwrap(), &masked.logits(&ids, None).unwrap())
}

/// Both kinds pruned, written compact two ways. Per-layer with whole groups keeps every layer of a
/// kind alike, so the config stays standard (`linear_num_value_heads` 6 over 3 key heads); global
/// without groups leaves layers uneven, so forge writes its per-layer keys and reads them back. Both
/// give the logits of the base model under the mask, and the masked file (out_proj columns zeroed)
/// evaluates as the mask does.
#[test]
fn pruned_linear_heads_agree_across_mask_and_compact_uniform_or_per_layer() {
    let (out, m) = (tempfile::tempdir().unwrap(), tiny_qwen35());
    let prune = |name, pruner, opts, mode| prune_half(&m, out.path(), (name, pruner, opts, mode));
    let (uniform, report) =
        prune("uniform", "per-layer", &["whole-groups=true", "linear-ratio=0.25"], "compact");
    assert_eq!((report["heads_after"].as_u64(), report["linear_heads_after"].as_u64()), (Some(8), Some(36)));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(uniform.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["linear_num_value_heads"].as_u64(), config["linear_num_key_heads"].as_u64()),
        (Some(6), Some(3))
    );
    assert!(config.get("forge_linear_num_value_heads_per_layer").is_none(), "{config}");
    let (uneven, report) = prune("uneven", "global", &["linear-ratio=0.3"], "compact");
    let (masked, _) = prune("masked", "global", &["linear-ratio=0.3"], "mask");
    let per_layer: Vec<usize> = serde_json::from_value(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(uneven.join("config.json")).unwrap())
            .unwrap()["forge_linear_num_value_heads_per_layer"]
            .clone(),
    )
    .unwrap();
    assert!(per_layer.iter().any(|&n| n != per_layer[0]), "{per_layer:?}");
    let inspect = forge_json(&["inspect", "--json", "--model", uneven.to_str().unwrap()]);
    assert_eq!(inspect["parameters"], report["parameters_after"]);
    for dir in [&uniform, &uneven] {
        let diff = compact_vs_masked(dir, &m, &dir.join("mask.json"));
        assert!(diff < 1e-4, "{}: compact logits differ from masked ones by {diff}", dir.display());
    }
    let mask = masked.join("mask.json");
    let (file, flag) = (
        quick_perplexity(&["--model", masked.to_str().unwrap()]),
        quick_perplexity(&["--model", m.to_str().unwrap(), "--mask", mask.to_str().unwrap()]),
    );
    assert!((file / flag - 1.0).abs() < 1e-4, "{file} vs {flag}");
    assert!(flag > quick_perplexity(&["--model", m.to_str().unwrap()]), "removing heads cost nothing");
}

/// Whole KV groups of the gated attention pruned from the vision layout: the masked model, the
/// compact one (`text_config` rewritten, each head's query and gate rows of `q_proj` removed) and the
/// base under `--mask` evaluate alike, and both outputs keep the vision tower byte for byte.
#[test]
fn pruned_full_attention_heads_agree_across_mask_compact_and_the_vision_layout() {
    let (vl, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_tiny_qwen35_vl(vl.path());
    let m = vl.path().to_str().unwrap();
    let prune = |mode| prune_half(vl.path(), out.path(), (mode, "per-layer", &["whole-groups=true"], mode));
    let ((masked, report), (compact, compact_report)) = (prune("mask"), prune("compact"));
    assert_eq!(report["heads_before"], 16);
    assert_eq!(report["heads_after"], 8);
    let pruned = report["pruned"].as_object().unwrap();
    assert_eq!(pruned.keys().collect::<Vec<_>>(), ["3", "7"]);
    let before = raw_tensors(&vl.path().join("model.safetensors"));
    for dir in [&masked, &compact] {
        let after = raw_tensors(&dir.join("model.safetensors"));
        for (name, tensor) in before.iter().filter(|(n, _)| n.starts_with("model.visual.")) {
            assert_eq!(&after[name], tensor, "{}: {name} changed", dir.display());
        }
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(compact.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "Qwen3_5ForConditionalGeneration");
    assert_eq!(
        (
            config["text_config"]["num_attention_heads"].as_u64(),
            config["text_config"]["num_key_value_heads"].as_u64()
        ),
        (Some(4), Some(1))
    );
    let inspect = forge_json(&["inspect", "--json", "--model", compact.to_str().unwrap()]);
    assert_eq!(inspect["parameters"], compact_report["parameters_after"]);
    let eval = quick_perplexity;
    let mask_file = masked.join("mask.json");
    let runs = [
        eval(&["--model", masked.to_str().unwrap()]),
        eval(&["--model", compact.to_str().unwrap()]),
        eval(&["--model", m, "--mask", mask_file.to_str().unwrap()]),
    ];
    assert!(runs.iter().all(|p| (p / runs[0] - 1.0).abs() < 1e-4), "{runs:?}");
    assert!(runs[0] > eval(&["--model", m]), "removing half the heads cost nothing: {runs:?}");
}

/// `forge run` of `examples/qwen35-code.toml`, shrunk to seconds: taylor scores over both kinds of
/// heads, a KV group of gated attention and six Gated DeltaNet key heads removed, LoRA recovery through both layer kinds, and a final compact model
/// that loads with the heads it should have.
#[test]
fn a_small_recipe_runs_on_the_hybrid_and_writes_a_smaller_model() {
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let recipe = root().join("examples/qwen35-code.toml");
    let mut args =
        vec!["run", "-q", "--json", "--recipe", recipe.to_str().unwrap(), "--out", run.to_str().unwrap()];
    args.extend_from_slice(&SMALL_RUN);
    let report = forge_json(&args);
    assert!(report["parameters_after"].as_u64() < report["parameters_before"].as_u64(), "{report}");
    let inspect = forge_json(&["inspect", "--json", "--model", run.join("model").to_str().unwrap()]);
    let heads: Vec<usize> = serde_json::from_value(inspect["heads"].clone()).unwrap();
    // One whole group (4 query heads) gone from layer 3 or 7; the linear layers carry 8, unused.
    assert_eq!(heads[3] + heads[7], 12, "{heads:?}");
    // A quarter of the 48 value heads gone, in whole key heads (2 value heads each).
    let value_heads: Vec<usize> = serde_json::from_value(inspect["linear_attention"]["value_heads"].clone())
        .unwrap_or_else(|_| vec![8; 6]);
    assert_eq!(value_heads.iter().sum::<usize>(), 36, "{inspect}");
    assert!(value_heads.iter().all(|v| v % 2 == 0), "{value_heads:?}");
    assert_eq!(inspect["layer_pattern"], "LLLFLLLF");
}
