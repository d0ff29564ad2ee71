//! Training through the real decoder: gradients against finite differences, checkpointed against
//! plain, every LoRA parameter reached, PEFT files round-tripped, merged weights equal to the adapter.
mod common;

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use common::*;
use forge_host::loader::ModelFolder;
use forge_host::model::CausalLm;
use forge_host::strategies::adapters::{load_adapter, AttachedAdapter};
use forge_host::strategies::Registry;
use forge_host::training::{loss_and_grads, Backprop, Distill};

fn model(path: &std::path::Path) -> CausalLm {
    CausalLm::load(&ModelFolder::open(path).unwrap(), DType::F32, &Device::Cpu).unwrap()
}

fn lora(model: &mut CausalLm, targets: &str, rank: u64) -> Box<dyn AttachedAdapter> {
    let given = BTreeMap::from([
        ("targets".to_string(), serde_json::Value::from(targets)),
        ("rank".to_string(), serde_json::Value::from(rank)),
    ]);
    let (adapter, _) = Registry::builtin().unwrap().adapter("lora", &given).unwrap();
    adapter.attach(model, 3).unwrap()
}

/// Gives every B a small random value, so that A's gradients are non-zero too.
fn randomise(params: &[Var]) {
    for (i, p) in params.iter().enumerate() {
        let t = Tensor::randn(0f32, 0.05, p.shape(), &Device::Cpu).unwrap();
        if i % 2 == 1 {
            p.set(&t).unwrap();
        }
    }
}

fn ids() -> Tensor {
    let v: Vec<u32> = (0..48).map(|i| (i * 389 + 17) % 8192).collect();
    Tensor::from_vec(v, (2, 24), &Device::Cpu).unwrap()
}

#[test]
fn decoder_gradients_match_finite_differences() {
    let mut m = model(&fixture("tiny-llama"));
    let adapter = lora(&mut m, "all-linear", 4);
    let params = adapter.parameters();
    randomise(&params);
    let ids = ids();
    // Both backwards: candle's graph, and forge's tape run strictly.
    let backward = |backprop| loss_and_grads(&m, &ids, &params, false, None, backprop).unwrap().1;
    let grads = [backward(Backprop::Graph), backward(Backprop::StrictTape)];
    let loss =
        |m: &CausalLm| m.next_token_nll(&ids).unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    // A few entries of A and B of attention and MLP layers in both decoder layers.
    for (p, entry) in [(0usize, 5usize), (1, 3), (6, 17), (9, 2), (14, 40), (27, 7)] {
        let var = &params[p];
        let base = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-2f32;
        let at = |delta: f32| {
            let mut v = base.clone();
            v[entry] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
            loss(&m)
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap()).unwrap();
        for (grads, by) in grads.iter().zip(["graph", "tape"]) {
            let analytic = grads[p].flatten_all().unwrap().to_vec1::<f32>().unwrap()[entry] as f64;
            assert!(
                (numeric - analytic).abs() < 2e-4 + 0.02 * analytic.abs(),
                "param {p}[{entry}]: numeric {numeric} vs analytic {analytic} ({by})"
            );
        }
    }
}

/// forge's tape (its own layer-wise backward) against candle's graph, through every op a decoder layer
/// runs: Qwen3.5's hybrid (Gated DeltaNet and gated attention, pruned heads of both kinds and MLP
/// channels masked, a removed layer), Qwen3 (q/k norms, GQA, distilling), Qwen2 (biases) and Llama,
/// plain and checkpointed, strictly (an op the tape does not know would fail) and not: the same loss
/// and gradients.
#[test]
fn the_tape_gives_the_graphs_loss_and_gradients_through_both_layer_kinds() {
    let masked_hybrid = || {
        let mut m = model(&tiny_qwen35());
        let mask = r#"{"pruned": {"3": [1, 4]}, "pruned_linear_heads": {"0": [2], "6": [0, 5]},
            "pruned_mlp_channels": {"1": [3, 9, 100], "3": [0]}, "pruned_layers": [5]}"#;
        m.apply_head_mask(&forge_api::HeadMask::from_json(mask).unwrap()).unwrap();
        // A constant gate on a layer's residual updates (what a gate scorer's pass sees).
        m.set_layer_gate(2, Some(Tensor::new(&[0.5f32], &Device::Cpu).unwrap()));
        m
    };
    // Adapters on every linear layer, or on the mixers only (the MLP then runs frozen, one tape entry).
    let mixers = "q_proj,v_proj,o_proj,in_proj_qkv,in_proj_z,out_proj";
    // Qwen2's q/k/v biases and Llama's plain layers too; the dense Qwen3 case distils from its unadapted
    // self (the KL's gradient arrives at the last layer beside the NLL's).
    let teacher = model(&tiny_qwen3());
    let distill = Distill { teacher: &teacher, alpha: 0.5, temperature: 2.0 };
    let cases = [
        (masked_hybrid(), "all-linear", None),
        (model(&tiny_qwen3()), "all-linear", Some(&distill)),
        (masked_hybrid(), mixers, None),
        (model(&fixture("tiny-qwen2")), "all-linear", None),
        (model(&fixture("tiny-llama")), "q_proj,v_proj", None),
    ];
    for (mut m, targets, distill) in cases {
        let m = &mut m;
        let adapter = lora(m, targets, 4);
        let params = adapter.parameters();
        randomise(&params);
        for checkpoint in [false, true] {
            let run = |backprop| loss_and_grads(m, &ids(), &params, checkpoint, distill, backprop).unwrap();
            let (graph_loss, graph) = run(Backprop::Graph);
            for (tape_loss, tape) in [run(Backprop::StrictTape), run(Backprop::Tape)] {
                assert!((graph_loss.loss - tape_loss.loss).abs() < 1e-6, "{graph_loss:?} vs {tape_loss:?}");
                for (i, (a, b)) in tape.iter().zip(&graph).enumerate() {
                    // The removed layer's adapter gets no gradient either way.
                    let zero =
                        |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0;
                    if zero(b) {
                        assert!(
                            zero(a),
                            "parameter {i} (checkpoint {checkpoint}): a gradient only on the tape"
                        );
                        continue;
                    }
                    // A tensor read by several ops sums its gradients in another order than the graph's
                    // (seen up to 1.0e-5 on a layer-0 adapter, f32).
                    let diff = rel_diff(a, b);
                    assert!(
                        diff < 1e-4,
                        "{targets}, parameter {i} (checkpoint {checkpoint}): tape vs graph differ by {diff:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_lora_parameter_of_every_target_gets_a_finite_nonzero_gradient() {
    let mut m = model(&tiny_qwen3());
    let adapter = lora(&mut m, "all-linear", 8);
    let params = adapter.parameters();
    assert_eq!(params.len(), 8 * 7 * 2);
    randomise(&params);
    let (_, grads) = loss_and_grads(&m, &ids(), &params, false, None, Backprop::StrictTape).unwrap();
    for (i, g) in grads.iter().enumerate() {
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm.is_finite() && norm > 0.0, "parameter {i} has gradient norm {norm}");
    }
}

#[test]
fn checkpointed_and_plain_gradients_agree() {
    let mut m = model(&tiny_qwen3());
    let adapter = lora(&mut m, "q_proj,v_proj,down_proj", 8);
    let params = adapter.parameters();
    randomise(&params);
    let (loss_plain, plain) = loss_and_grads(&m, &ids(), &params, false, None, Backprop::Graph).unwrap();
    let (loss_ckpt, ckpt) = loss_and_grads(&m, &ids(), &params, true, None, Backprop::Graph).unwrap();
    assert!((loss_plain.loss - loss_ckpt.loss).abs() < 1e-6);
    for (i, (a, b)) in ckpt.iter().zip(&plain).enumerate() {
        let diff = rel_diff(a, b);
        assert!(diff < 1e-5, "parameter {i}: checkpointed vs plain gradient differ by {diff:e}");
    }
}

#[test]
fn a_saved_adapter_reloads_with_the_same_logits_and_merges_into_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let (adapter_dir, merged_dir) = (dir.path().join("adapter"), dir.path().join("merged"));
    let mut m = model(&fixture("tiny-llama"));
    let adapter = lora(&mut m, "all-linear", 4);
    randomise(&adapter.parameters());
    adapter.save(&adapter_dir).unwrap();
    let with_adapter = m.logits(&ids(), None).unwrap();

    let peft: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter_dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (peft["peft_type"].as_str(), peft["r"].as_u64(), peft["use_rslora"].as_bool()),
        (Some("LORA"), Some(4), Some(false))
    );
    let keys =
        candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(keys.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));

    let mut reloaded = model(&fixture("tiny-llama"));
    load_adapter(&adapter_dir, &mut reloaded, &forge_host::strategies::Registry::builtin().unwrap()).unwrap();
    assert!(rel_diff(&reloaded.logits(&ids(), None).unwrap(), &with_adapter) < 1e-6);

    forge_json(&[
        "merge",
        "-q",
        "--json",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--adapter",
        adapter_dir.to_str().unwrap(),
        "--out",
        merged_dir.to_str().unwrap(),
    ]);
    std::fs::copy(tiny_qwen3().join("tokenizer.json"), merged_dir.join("tokenizer.json")).ok();
    let merged = model(&merged_dir).logits(&ids(), None).unwrap();
    let diff = rel_diff(&merged, &with_adapter);
    assert!(diff < 1e-4, "merged vs adapter logits differ by {diff:e}");
}

#[test]
fn train_writes_a_peft_adapter_and_reports_the_contract_keys() {
    let out = tempfile::tempdir().unwrap();
    let report = forge_json(&[
        "train",
        "-q",
        "--json",
        "--model",
        tiny_qwen3().to_str().unwrap(),
        "--data",
        data("code-train.jsonl").to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--rank",
        "4",
        "--targets",
        "attention",
        "--optimizer",
        "adamw8bit",
        "--lr",
        "1e-3",
        "--eval-data",
        data("code-valid.jsonl").to_str().unwrap(),
        "--eval-windows",
        "2",
        "--eval-seq-len",
        "64",
    ]);
    for key in ["steps", "loss_first", "loss_last", "tokens_per_s", "peak_memory_bytes", "eval"] {
        assert!(report.get(key).is_some(), "train output lacks `{key}`: {report}");
    }
    assert_eq!(report["steps"], 3);
    assert!(report["eval"]["before"]["perplexity"].as_f64().unwrap() > 1.0);
    for file in
        ["adapter_config.json", "adapter_model.safetensors", "optimizer_state.safetensors", "training.json"]
    {
        assert!(out.path().join(file).is_file(), "{file} was not written");
    }
    // The adapter applies at evaluation time; before training it was the identity (B = 0).
    let with = forge_json(&[
        "eval",
        "-q",
        "--json",
        "--model",
        tiny_qwen3().to_str().unwrap(),
        "--adapter",
        out.path().to_str().unwrap(),
        "--data",
        data("code-valid.jsonl").to_str().unwrap(),
        "--max-windows",
        "2",
        "--seq-len",
        "64",
    ]);
    let after = report["eval"]["after"]["perplexity"].as_f64().unwrap();
    assert!((with["perplexity"].as_f64().unwrap() / after - 1.0).abs() < 1e-5);
}

#[test]
fn train_refuses_unknown_targets_and_optimizers() {
    let out = tempfile::tempdir().unwrap();
    let base = [
        "train",
        "--model",
        tiny_qwen3().to_str().unwrap().to_string().leak(),
        "--data",
        data("code-train.jsonl").to_str().unwrap().to_string().leak(),
        "--out",
        out.path().to_str().unwrap().to_string().leak(),
    ];
    let mut args = base.to_vec();
    args.extend(["--targets", "qkv"]);
    assert!(forge_refuses(&args).contains("LoRA target `qkv` is not a linear layer"));
    let mut args = base.to_vec();
    args.extend(["--optimizer", "sgd"]);
    assert!(forge_refuses(&args).contains("unknown optimizer `sgd`; known optimizers: adamw, adamw8bit"));
}

/// `forge train --teacher base`: on the unpruned model with alpha 1 the student starts as the teacher
/// (the adapter adds nothing yet), so the KL starts at 0 and stays there (no gradient); on a masked
/// model the KL starts above 0, with or without gradient checkpointing alike.
#[test]
fn distillation_starts_at_kl_zero_from_its_own_base() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.json");
    std::fs::write(&mask, r#"{"pruned": {"1": [0, 1, 2, 3]}, "pruned_mlp_channels": {"2": [5, 6, 7]}}"#)
        .unwrap();
    let (model, train_data) = (tiny_qwen3(), data("code-train.jsonl"));
    let run = |extra: &[&str]| {
        let out = dir.path().join(format!("run{}", extra.len()));
        let mut args = vec![
            "train",
            "-q",
            "--json",
            "--model",
            model.to_str().unwrap(),
            "--data",
            train_data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--seq-len",
            "64",
            "--teacher",
            "base",
        ];
        args.extend_from_slice(extra);
        forge_json(&args)
    };
    let same = run(&["--distill-alpha", "1"]);
    assert_eq!(same["distill"]["kl_first"], 0.0, "{same}");
    assert!(same["losses"].as_array().unwrap().iter().all(|l| l.as_f64() == Some(0.0)), "{same}");
    let masked = run(&["--mask", mask.to_str().unwrap()]);
    let checkpointed = run(&["--mask", mask.to_str().unwrap(), "--grad-checkpoint"]);
    let kl = masked["distill"]["kl_first"].as_f64().unwrap();
    assert!(kl > 1e-3, "{masked}");
    assert_eq!(masked["losses"], checkpointed["losses"]);
    assert_eq!(masked["distill"]["alpha"], 0.5);
}

/// `--devices cpu,cpu`: two ranks, each on half of every batch, one all-reduce a step, clipping on the
/// global gradient. The adapter is bit for bit one device's with the same halves as micro-batches
/// (`--batch-size 2 --grad-accum 2`: the same sums in the same order), and equals one device's
/// `--batch-size 4` within 1e-5 relative over the whole adapter (measured 9.7e-7; single tensors
/// differ by up to 2e-5, where AdamW's division by √v magnifies f32 ordering in near-zero gradients).
/// Batches that do not split, and GPU ranks without NCCL or with a GPU named twice, are refused
/// before any work.
#[test]
fn two_cpu_ranks_train_the_same_adapter_as_one_device() {
    let model = tiny_qwen3();
    let data = root().join("examples/data/code-train.jsonl");
    let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
    let train = |out: &tempfile::TempDir, extra: &[&str]| {
        let mut args = vec!["train", "-q", "--json", "--model", model.to_str().unwrap(), "--data"];
        args.extend([data.to_str().unwrap(), "--out", out.path().to_str().unwrap(), "--steps", "3"]);
        args.extend(["--seq-len", "64", "--clip-norm", "0.05", "--lr", "1e-3"]);
        args.extend_from_slice(extra);
        let report = forge_json(&args);
        let tensors =
            candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap();
        let sorted: BTreeMap<_, _> = tensors.into_iter().collect();
        let flat: Vec<Tensor> = sorted.values().map(|t| t.flatten_all().unwrap()).collect();
        (report, Tensor::cat(&flat, 0).unwrap())
    };
    let (two, ranks) = train(&dirs[0], &["--batch-size", "4", "--devices", "cpu,cpu"]);
    let (_, whole) = train(&dirs[1], &["--batch-size", "4"]);
    let (_, halves) = train(&dirs[2], &["--batch-size", "2", "--grad-accum", "2"]);
    assert_eq!(two["devices"], serde_json::json!(["cpu", "cpu"]));
    assert_eq!(rel_diff(&ranks, &halves), 0.0, "two ranks differ from the same halves as micro-batches");
    let diff = rel_diff(&ranks, &whole);
    assert!(diff < 1e-5, "two ranks differ from one device's batch of 4 by {diff:e} relative");
    let base = ["train", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out"];
    let out = dirs[0].path().join("x");
    let mut args = base.to_vec();
    args.extend([out.to_str().unwrap(), "--devices", "cpu,cpu", "--batch-size", "3"]);
    assert!(forge_refuses(&args).contains("does not split over the 2 ranks"));
    // GPU ranks look for NCCL before any work, and say how to install it; FORGE_NCCL pins where to
    // look (here: nowhere), so the test does not depend on what this machine has installed.
    let mut args = base.to_vec();
    args.extend([out.to_str().unwrap(), "--devices", "cuda:0,cuda:1"]);
    let no_nccl = std::process::Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(&args)
        .env("FORGE_NCCL", "/nonexistent/libnccl.so.2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&no_nccl.stderr);
    assert_eq!(no_nccl.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pip install nvidia-nccl-cu13") && stderr.contains("FORGE_NCCL"), "{stderr}");
    let mut args = base.to_vec();
    args.extend([out.to_str().unwrap(), "--devices", "cuda:0,cuda:0"]);
    assert!(forge_refuses(&args).contains("names cuda:0 twice"));
    assert!(!out.exists(), "a refused command wrote {}", out.display());
}

/// `--frozen-base int8`: every decoder linear layer's weight in int8 rows (half of bf16's bytes), the
/// logits within the rounding's reach of the dense model's, and LoRA trains against it through both
/// of Qwen3.5's layer kinds with checkpointing, its losses beside the dense base's.
#[test]
fn an_int8_frozen_base_stays_near_the_dense_one_and_trains() {
    let (dense, mut int8) = (model(&tiny_qwen35()), model(&tiny_qwen35()));
    let saved = int8.quantize_frozen_base().unwrap();
    assert!(saved > 0, "nothing was quantized");
    let diff = rel_diff(&int8.logits(&ids(), None).unwrap(), &dense.logits(&ids(), None).unwrap());
    assert!(diff > 0.0 && diff < 2e-2, "int8 base moves the logits by {diff:e}");

    let out = tempfile::tempdir().unwrap();
    let train =
        |base: &str| train_tiny_qwen35(&out.path().join(base), &["--grad-checkpoint", "--frozen-base", base]);
    let (dense, int8) = (train("model"), train("int8"));
    assert_eq!((dense["frozen_base"].as_str(), int8["frozen_base"].as_str()), (Some("model"), Some("int8")));
    let losses = |v: &serde_json::Value| -> Vec<f64> {
        v["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect()
    };
    let (d, q) = (losses(&dense), losses(&int8));
    assert_ne!(d, q, "the int8 base trained exactly as the dense one: was it used?");
    for (a, b) in d.iter().zip(&q) {
        assert!((a - b).abs() < 1e-2 * a, "losses {d:?} (dense) vs {q:?} (int8)");
    }
    assert!(q[3] < q[0], "{q:?}");
}
