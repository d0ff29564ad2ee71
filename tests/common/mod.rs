//! Helpers shared by the end-to-end tests: where the vendored fixtures are, and how to compare tensors.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use candle_core::Tensor;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("forge-host sits in the workspace")
        .to_path_buf()
}

/// The bundled `tiny-qwen3` (a copy of `../shared/fixtures/tiny-qwen3`).
pub fn tiny_qwen3() -> PathBuf {
    root().join("examples/tiny-qwen3")
}

/// A vendored fixture model or reference file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// A bundled data slice (the first documents of the shared splits).
pub fn data(name: &str) -> PathBuf {
    root().join("examples/data").join(name)
}

/// ‖a − b‖ / ‖b‖, computed in f64.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let b = b.flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Runs the real `forge` binary.
pub fn forge(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .output()
        .expect("the forge binary runs")
}

/// Stdout of a successful run, parsed as the one JSON object `--json` promises.
pub fn forge_json(args: &[&str]) -> serde_json::Value {
    let out = forge(args);
    assert!(out.status.success(), "forge {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout of forge {args:?} is not one JSON object: {e}"))
}

/// Stderr of a run that must fail with exit status 2 (bad input).
pub fn forge_refuses(args: &[&str]) -> String {
    let out = forge(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "forge {args:?} should exit 2; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "forge {args:?} panicked: {stderr}");
    stderr
}

/// The bundled `tiny-qwen35` (a copy of `../shared/fixtures/tiny-qwen35`: a trained Qwen3.5 hybrid,
/// `Qwen3_5ForCausalLM` layout).
pub fn tiny_qwen35() -> PathBuf {
    root().join("examples/tiny-qwen35")
}

/// Writes `tiny-qwen35-vl` into `dir`: the same weights in the `Qwen3_5ForConditionalGeneration` layout
/// (text under `model.language_model`, beside the fixture's tiny random vision tower `model.visual.*`),
/// with its config. transformers' own file of that layout gives the same text logits to the last bit
/// (`vl_layout_max_abs_logit_diff` 0 in the reference); assembling it here saves the repository 19 MB.
pub fn write_tiny_qwen35_vl(dir: &std::path::Path) {
    let text =
        candle_core::safetensors::load(tiny_qwen35().join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let vl = fixture("tiny-qwen35-vl");
    let mut tensors =
        candle_core::safetensors::load(vl.join("visual.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (name, tensor) in text {
        let renamed = match name.strip_prefix("model.") {
            Some(rest) => format!("model.language_model.{rest}"),
            None => name,
        };
        tensors.insert(renamed, tensor);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::copy(vl.join("config.json"), dir.join("config.json")).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(tiny_qwen35().join(file), dir.join(file)).unwrap();
    }
}

/// A copy of a fixture model's files into `dir`, where a test may break them.
pub fn copy_model(from: &std::path::Path, dir: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
}

pub fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

/// `forge eval` of `model` on the `domain`-valid slice under the reference protocol (32 windows of
/// 512 tokens), as its JSON report.
pub fn eval_reference_protocol(model: &std::path::Path, domain: &str) -> serde_json::Value {
    let data = data(&format!("{domain}-valid.jsonl"));
    forge_json(&[
        "eval",
        "-q",
        "--json",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "512",
        "--max-windows",
        "32",
    ])
}

/// Overrides that shrink the example recipe to seconds (and keep the guard from stopping a run whose
/// two training steps cannot recover much).
pub const SMALL_RUN: [&str; 12] = [
    "--set",
    "train.steps=2",
    "--set",
    "data.eval_windows=2",
    "--set",
    "score.calib_windows=2",
    "--set",
    "train.seq_len=64",
    "--set",
    "guard.max_increase=10.0",
    "--set",
    "guard.max_increase_over_baseline=10.0",
];

/// Perplexity of a quick `forge eval` (code-valid, 4 windows of 128 tokens) with `extra` arguments
/// (the model, and `--mask` or `--adapter`), for tests that compare models with each other.
pub fn quick_perplexity(extra: &[&str]) -> f64 {
    let data = data("code-valid.jsonl");
    let mut args = vec![
        "eval",
        "-q",
        "--json",
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "128",
        "--max-windows",
        "4",
    ];
    args.extend_from_slice(extra);
    forge_json(&args)["perplexity"].as_f64().unwrap()
}

/// Greedy decoding of `model` (f32, CPU) against the reference file's `greedy` cases: the prompt's
/// tokenization, the new tokens one for one, and their text.
pub fn assert_greedy_matches(model: &std::path::Path, reference: &str) {
    use forge_host::generate::{generate, SamplingConfig};
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("reference/{reference}"))).unwrap()).unwrap();
    let folder = forge_host::loader::ModelFolder::open(model).unwrap();
    let model =
        forge_host::model::CausalLm::load(&folder, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let tokenizer = folder.tokenizer().unwrap();
    for case in reference["greedy"].as_array().unwrap() {
        let ids = |key: &str| -> Vec<u32> {
            case[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
        };
        let prompt = tokenizer.encode(case["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt, ids("prompt_ids"), "tokenization of {:?}", case["prompt"]);
        let want = ids("greedy_ids");
        let config = SamplingConfig {
            max_new_tokens: want.len(),
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token: None,
        };
        let got = generate(&model, &prompt, &config).unwrap();
        assert_eq!(got, want, "greedy continuation of {:?}", case["prompt"]);
        assert_eq!(tokenizer.decode(&got).unwrap(), case["greedy_text"].as_str().unwrap());
    }
}

/// `forge train --json` of a small LoRA (rank 8, 4 steps of 2 × 128 code tokens, lr 1e-3) on
/// `tiny-qwen35` into `out`, with `extra` flags.
pub fn train_tiny_qwen35(out: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let (m, code) = (tiny_qwen35(), data("code-train.jsonl"));
    let mut args = vec![
        "train",
        "-q",
        "--json",
        "--model",
        m.to_str().unwrap(),
        "--data",
        code.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "4",
        "--rank",
        "8",
        "--seq-len",
        "128",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
    ];
    args.extend_from_slice(extra);
    forge_json(&args)
}
