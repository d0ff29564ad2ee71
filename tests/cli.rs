//! The command-line contract through the real binary: JSON keys, and bad input refused with exit 2
//! and a message that names the culprit — never a panic.
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;

fn keys(value: &serde_json::Value, expected: &[&str]) {
    for key in expected {
        assert!(value.get(key).is_some(), "JSON output lacks `{key}`: {value}");
    }
}

#[test]
fn inspect_reports_the_contract_keys() {
    let report = forge_json(&["inspect", "--json", "--model", tiny_qwen3().to_str().unwrap()]);
    keys(
        &report,
        &[
            "architecture",
            "layers",
            "heads",
            "kv_heads",
            "head_dim",
            "hidden",
            "vocab",
            "parameters",
            "dtype",
        ],
    );
    assert_eq!(report["architecture"], "Qwen3ForCausalLM");
    assert_eq!(
        (report["layers"].as_u64(), report["heads"].as_u64(), report["kv_heads"].as_u64()),
        (Some(8), Some(8), Some(4))
    );
    assert_eq!(report["parameters"], 8_393_472);
    assert_eq!(report["dtype"], "bf16");
}

#[test]
fn eval_reports_the_contract_keys() {
    let report = forge_json(&[
        "eval",
        "-q",
        "--json",
        "--model",
        tiny_qwen3().to_str().unwrap(),
        "--data",
        data("code-valid.jsonl").to_str().unwrap(),
        "--max-windows",
        "2",
        "--seq-len",
        "64",
    ]);
    keys(
        &report,
        &[
            "perplexity",
            "mean_nll",
            "tokens",
            "windows",
            "seq_len",
            "seconds",
            "tokens_per_s",
            "peak_memory_bytes",
        ],
    );
    assert_eq!((report["tokens"].as_u64(), report["windows"].as_u64()), (Some(126), Some(2)));
    let (ppl, nll) = (report["perplexity"].as_f64().unwrap(), report["mean_nll"].as_f64().unwrap());
    assert!((ppl.ln() - nll).abs() < 1e-9 && ppl > 1.0);
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn eval_reads_plain_text_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "The scheduler runs each task in turn. ".repeat(40)).unwrap();
    let report = forge_json(&[
        "eval",
        "-q",
        "--json",
        "--model",
        tiny_qwen3().to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--seq-len",
        "32",
    ]);
    assert!(report["windows"].as_u64().unwrap() >= 2);
}

#[test]
fn batch_size_does_not_change_the_result() {
    let run = |batch: &str| {
        forge_json(&[
            "eval",
            "-q",
            "--json",
            "--model",
            tiny_qwen3().to_str().unwrap(),
            "--data",
            data("prose-valid.jsonl").to_str().unwrap(),
            "--max-windows",
            "3",
            "--seq-len",
            "128",
            "--batch-size",
            batch,
        ])["perplexity"]
            .as_f64()
            .unwrap()
    };
    let (one, three) = (run("1"), run("3"));
    assert!((one / three - 1.0).abs() < 1e-6, "{one} vs {three}");
}

#[test]
fn generate_reports_the_contract_keys() {
    let report = forge_json(&[
        "generate",
        "-q",
        "--json",
        "--model",
        tiny_qwen3().to_str().unwrap(),
        "--prompt",
        "fn main() {\n    let",
        "--max-new-tokens",
        "5",
    ]);
    keys(&report, &["prompt_ids", "token_ids", "text"]);
    assert_eq!(report["prompt_ids"], serde_json::json!([1084, 3132, 337, 326, 277, 445]));
    assert_eq!(report["token_ids"], serde_json::json!([970, 3394, 286, 3580, 283]));
    assert_eq!(report["text"], " mut buf = String::");
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let run = |seed: &str| {
        forge_json(&[
            "generate",
            "-q",
            "--json",
            "--model",
            tiny_qwen3().to_str().unwrap(),
            "--prompt",
            "The kernel",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ])["token_ids"]
            .clone()
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

#[test]
fn a_missing_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_qwen3().join("model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(err.contains("config.json not found"), "{err}");
}

#[test]
fn missing_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(tiny_qwen3().join("config.json"), dir.path().join("config.json")).unwrap();
    let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(err.contains("no weights in") && err.contains("model.safetensors"), "{err}");
}

#[test]
fn a_missing_tokenizer_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    let err = forge_refuses(&["generate", "--model", dir.path().to_str().unwrap(), "--prompt", "hi"]);
    assert!(err.contains("tokenizer.json not found"), "{err}");
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    edit_config(dir.path(), |c| c["architectures"] = serde_json::json!(["MistralForCausalLM"]));
    let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(err.contains("`MistralForCausalLM` is not supported"), "{err}");
    assert!(err.contains("LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"), "{err}");
}

#[test]
fn a_missing_tensor_is_named_with_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 3.into());
    let err = forge_refuses(&["score", "--model", dir.path().to_str().unwrap(), "--scorer", "l2"]);
    assert!(err.contains("tensor `model.layers.2.input_layernorm.weight` is missing"), "{err}");
    assert!(err.contains("expected shape [64]"), "{err}");
}

#[test]
fn a_tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    edit_config(dir.path(), |c| c["intermediate_size"] = 256.into());
    let err = forge_refuses(&["score", "--model", dir.path().to_str().unwrap(), "--scorer", "l2"]);
    assert!(err.contains("tensor `model.layers.0.mlp.gate_proj.weight`"), "{err}");
    assert!(err.contains("has shape [128, 64], expected [256, 64]"), "{err}");
}

#[test]
fn a_truncated_safetensors_file_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(err.contains("model.safetensors is not a valid safetensors file"), "{err}");
    assert!(err.contains("truncated or corrupt"), "{err}");
}

#[test]
fn a_corrupt_shard_index_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&fixture("tiny-llama"), dir.path());
    std::fs::write(dir.path().join("model.safetensors.index.json"), b"{\"weight_map\": [1, 2]").unwrap();
    let err = forge_refuses(&["inspect", "--model", dir.path().to_str().unwrap()]);
    assert!(err.contains("model.safetensors.index.json is not a valid shard index"), "{err}");
}

#[test]
fn a_sharded_checkpoint_loads_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny-llama/config.json"), dir.path().join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(fixture("tiny-llama/model.safetensors"), &Device::Cpu).unwrap();
    let (mut first, mut second): (HashMap<String, Tensor>, HashMap<String, Tensor>) = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (name, tensor) in tensors {
        let shard = if name.contains("layers.1.") || name.starts_with("lm_head") { 2 } else { 1 };
        let file = format!("model-0000{shard}-of-00002.safetensors");
        weight_map.insert(name.clone(), file.into());
        if shard == 1 {
            first.insert(name, tensor)
        } else {
            second.insert(name, tensor)
        };
    }
    candle_core::safetensors::save(&first, dir.path().join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&second, dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();

    let load = |path: &Path| {
        let folder = forge_host::loader::ModelFolder::open(path).unwrap();
        let model =
            forge_host::model::CausalLm::load(&folder, candle_core::DType::F32, &Device::Cpu).unwrap();
        model.logits(&Tensor::new(&[[1u32, 2, 3, 500]], &Device::Cpu).unwrap(), None).unwrap()
    };
    assert_eq!(rel_diff(&load(dir.path()), &load(&fixture("tiny-llama"))), 0.0);
    let report = forge_json(&["inspect", "--json", "--model", dir.path().to_str().unwrap()]);
    assert_eq!(report["architecture"], "LlamaForCausalLM");
}

fn eval_refuses(data_file: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "eval",
        "--model",
        tiny_qwen3().to_str().unwrap().to_string().leak() as &str,
        "--data",
        data_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    forge_refuses(&args)
}

#[test]
fn an_empty_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert!(eval_refuses(&empty, &[]).contains("empty.jsonl has no documents"));
}

#[test]
fn data_shorter_than_one_window_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.jsonl");
    std::fs::write(&short, "{\"text\": \"just a few words\"}\n").unwrap();
    let err = eval_refuses(&short, &["--seq-len", "512"]);
    assert!(
        err.contains("fewer than one window of --seq-len 512") && err.contains("smaller --seq-len"),
        "{err}"
    );
}

#[test]
fn a_non_utf8_line_is_named_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, b"{\"text\": \"fine\"}\n{\"text\": \"caf\xe9\"}\n").unwrap();
    assert!(eval_refuses(&bad, &["--seq-len", "4"]).contains("bad.jsonl:2: the line is not valid UTF-8"));
}

#[test]
fn a_jsonl_line_without_text_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"content\": \"x\"}\n").unwrap();
    assert!(eval_refuses(&bad, &[]).contains("bad.jsonl:1: expected a JSON object with a string `text`"));
}

#[test]
fn a_mask_naming_a_missing_head_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.json");
    std::fs::write(&mask, r#"{"pruned": {"3": [9]}}"#).unwrap();
    let err = eval_refuses(&data("code-valid.jsonl"), &["--mask", mask.to_str().unwrap()]);
    assert!(err.contains("head 9 of layer 3 does not exist: that layer has query heads 0..=7"), "{err}");
}

#[test]
fn cuda_without_the_feature_says_how_to_get_it() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = forge_refuses(&["inspect", "--device", "cuda", "--model", tiny_qwen3().to_str().unwrap()]);
    assert!(err.contains("--features cuda"), "{err}");
}

/// Runs `args` (with `{out}` replaced by a fresh output path) expecting exit 2 with `message` and no
/// output folder left behind.
fn refused_before_work(args: &[&str], message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args: Vec<String> = args.iter().map(|a| a.replace("{out}", out.to_str().unwrap())).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let err = forge_refuses(&args);
    assert!(err.contains(message), "forge {args:?}: expected `{message}` in: {err}");
    assert!(!out.exists(), "forge {args:?} left {} behind", out.display());
}

#[test]
fn positions_beyond_the_context_are_refused_naming_the_flag() {
    let (m, code) = (tiny_qwen3(), data("code-valid.jsonl"));
    let (m, code) = (m.to_str().unwrap(), code.to_str().unwrap());
    let context = "positions, but the model's context is 2048 (`max_position_embeddings` in config.json); give at most 2048";
    refused_before_work(
        &["eval", "--model", m, "--data", code, "--seq-len", "4096"],
        &format!("--seq-len asks for 4096 {context}"),
    );
    refused_before_work(
        &["train", "--model", m, "--data", code, "--out", "{out}", "--seq-len", "4096"],
        &format!("--seq-len asks for 4096 {context}"),
    );
    refused_before_work(
        &["score", "--model", m, "--scorer", "taylor", "--data", code, "--calib-seq-len", "3000"],
        &format!("--calib-seq-len asks for 3000 {context}"),
    );
    refused_before_work(
        &["generate", "--model", m, "--prompt", "fn main() {", "--max-new-tokens", "5000"],
        "--max-new-tokens 5000 asks for 5004 positions",
    );
}

#[test]
fn a_config_with_fewer_layers_than_its_weights_names_both() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_qwen3(), dir.path());
    edit_config(dir.path(), |c| c["num_hidden_layers"] = 4.into());
    let err = forge_refuses(&[
        "eval",
        "--model",
        dir.path().to_str().unwrap(),
        "--data",
        data("code-valid.jsonl").to_str().unwrap(),
    ]);
    assert!(err.contains("`num_hidden_layers` is 4 but the weights hold layers 0–7"), "{err}");
    assert!(err.contains("fix num_hidden_layers to 8"), "{err}");
}

#[test]
fn tensors_the_model_does_not_use_are_named_in_a_warning_except_known_families() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_qwen3(), dir.path());
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let extra = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    tensors.insert("model.layers.0.mlp.extra_proj.weight".into(), extra.clone());
    tensors.insert("mtp.layers.0.weight".into(), extra.clone());
    tensors.insert("model.visual.patch_embed.weight".into(), extra);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let out = forge(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("1 tensors in") && stderr.contains("model.layers.0.mlp.extra_proj.weight"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("mtp.") && !stderr.contains("visual"),
        "known families were warned of: {stderr}"
    );
}

#[test]
fn training_options_that_cannot_work_are_refused_before_loading() {
    let (m, code) = (tiny_qwen3(), data("code-train.jsonl"));
    let (m, code) = (m.to_str().unwrap(), code.to_str().unwrap());
    let train = |extra: &[&str], message: &str| {
        let mut args = vec!["train", "--model", m, "--data", code, "--out", "{out}"];
        args.extend_from_slice(extra);
        refused_before_work(&args, message);
    };
    train(
        &["--rank", "100000"],
        "adapter option `rank` is 100000 but `k_proj` of layer 0 is 256 → 128; give a rank of at most 128",
    );
    train(&["--clip-norm", "NaN"], "--clip-norm is NaN; give a positive gradient-norm bound");
    train(&["--clip-norm=-1"], "--clip-norm is -1; give a positive gradient-norm bound");
    train(&["--steps", "0"], "--steps is 0; give at least 1");
    train(&["--frozen-base", "int8"], "--frozen-base int8 needs --grad-checkpoint");
}

#[test]
fn scoring_nothing_is_refused() {
    let (m, code) = (tiny_qwen3(), data("code-valid.jsonl"));
    refused_before_work(
        &[
            "score",
            "--model",
            m.to_str().unwrap(),
            "--scorer",
            "taylor",
            "--data",
            code.to_str().unwrap(),
            "--calib-windows",
            "0",
        ],
        "--calib-windows and --calib-batch-size must be at least 1 (given 0 and 4)",
    );
}

#[test]
fn an_output_that_is_the_input_model_or_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(&tiny_qwen3(), dir.path());
    let m = dir.path().to_str().unwrap();
    let before: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    let err = forge_refuses(&[
        "prune", "--model", m, "--pruner", "global", "--scorer", "l2", "--ratio", "0.25", "--out", m,
    ]);
    assert!(
        err.contains("--out") && err.contains("is the input model folder; forge never writes over its input"),
        "{err}"
    );
    let code = data("code-train.jsonl");
    let err = forge_refuses(&["train", "--model", m, "--data", code.to_str().unwrap(), "--out", m]);
    assert!(err.contains("is the input model folder"), "{err}");
    let after: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(before.len(), after.len(), "the input model folder was written to");
    let file = dir.path().join("config.json");
    let err = forge_refuses(&[
        "prune",
        "--model",
        m,
        "--pruner",
        "global",
        "--scorer",
        "l2",
        "--ratio",
        "0.25",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(err.contains("is an existing file; give a folder path"), "{err}");
}

#[test]
fn sigterm_stops_work_at_a_safe_point_with_exit_130() {
    // An evaluation of every window of the prose slice: long enough to be stopped mid-way.
    let data = data("prose-valid.jsonl");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args([
            "eval",
            "--model",
            tiny_qwen3().to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--seq-len",
            "64",
        ])
        .env("FORGE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupt received") && stderr.contains("forge: interrupted"), "{stderr}");
}

/// `forge eval --evaluator choice`: multiple choice by log-likelihood on the bundled "which line comes
/// next" set (bench/make_choice_set.py), better than the 1-in-4 of chance on code; a file that is
/// not choice records is refused naming the record, and so is --max-windows, which cuts text windows.
#[test]
fn multiple_choice_evaluation_beats_chance_on_code() {
    let model = tiny_qwen3();
    let set = root().join("examples/data/code-choice.jsonl");
    let report = forge_json(&[
        "eval",
        "-q",
        "--json",
        "--model",
        model.to_str().unwrap(),
        "--evaluator",
        "choice",
        "--data",
        set.to_str().unwrap(),
    ]);
    assert_eq!(report["n"], 40);
    let (acc, norm) = (report["accuracy"].as_f64().unwrap(), report["accuracy_norm"].as_f64().unwrap());
    assert!(acc >= 0.4 && norm >= 0.4, "{report}");
    let text = data("code-valid.jsonl");
    let choice = ["eval", "--model", model.to_str().unwrap(), "--evaluator", "choice", "--data"];
    let err = forge_refuses(&[&choice[..], &[text.to_str().unwrap()]].concat());
    assert!(err.contains("record 1: missing field `context`"), "{err}");
    // Window options do not shape records: refused, not silently ignored.
    let err = forge_refuses(&[&choice[..], &[set.to_str().unwrap(), "--max-windows", "10"]].concat());
    assert!(err.contains("reads whole records") && err.contains("head -n N"), "{err}");
}
