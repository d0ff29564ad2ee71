//! `forge run` end to end through the real binary: outputs, memory budget, resume after a kill,
//! failures that leave nothing half-written, and recipes refused before any work.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn recipe() -> String {
    root().join("examples/code.toml").to_str().unwrap().to_string()
}

/// Overrides that shrink the example recipe to seconds (and keep the guard from stopping a run whose
/// two training steps cannot recover much).
const SMALL: [&str; 10] = [
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
];

fn run_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "-q", "--json", "--recipe", recipe().leak(), "--out", out];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    args
}

fn no_partial_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            no_partial_files(&path);
        } else {
            assert!(
                !path.file_name().unwrap().to_string_lossy().contains(".partial-"),
                "half-written file {}",
                path.display()
            );
            if path.extension().is_some_and(|e| e == "json") {
                serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} is not complete JSON: {e}", path.display()));
            }
        }
    }
}

#[test]
fn a_small_recipe_writes_every_output_and_a_smaller_model() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let report = forge_json(&run_args(o, &["--set", "prune.cycles=1"]));
    for key in ["baseline", "cycles", "final", "outputs"] {
        assert!(report.get(key).is_some(), "run output lacks `{key}`");
    }
    assert!(report["parameters_after"].as_u64() < report["parameters_before"].as_u64());
    assert_eq!(report["heads_after"], 56);
    for file in [
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "mask.json",
        "report.json",
        "report.md",
        "heatmap.svg",
        "loss.svg",
        "perplexity.svg",
        "recipe.executed.toml",
        "cycles/1/adapter/adapter_model.safetensors",
        "cycles/1/adapter/adapter_config.json",
        "cycles/1/cycle.json",
    ] {
        assert!(out.path().join(file).is_file(), "{file} was not written");
    }
    let executed = std::fs::read_to_string(out.path().join("recipe.executed.toml")).unwrap();
    assert!(
        executed.contains("[provenance.inputs]")
            && executed.contains("tiny-qwen3/model.safetensors")
            && executed.contains("[provenance.outputs]")
    );
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Metrics") && md.contains("## Samples"));
    // The final model is what the report says: reloaded by forge, it has the reported head count.
    let inspect = forge_json(&["inspect", "--json", "--model", out.path().join("model").to_str().unwrap()]);
    assert_eq!(inspect["parameters"], report["parameters_after"]);
    no_partial_files(out.path());
}

#[test]
fn the_guard_rolls_back_a_cycle_that_makes_the_metric_worse() {
    let out = tempfile::tempdir().unwrap();
    let report = forge_json(&run_args(
        out.path().to_str().unwrap(),
        &["--set", "guard.max_increase=0.0", "--set", "prune.cycles=2"],
    ));
    let cycles = report["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 1, "the run went on after a rolled-back cycle");
    assert_eq!(cycles[0]["accepted"], false);
    assert_eq!(report["heads_after"], 64, "the final model kept the rolled-back cycle's pruning");
    let (baseline, last) =
        (&report["baseline"]["perplexity:code-valid"], &report["final"]["perplexity:code-valid"]);
    assert_eq!(baseline, last, "the final model is not the baseline's");
}

#[test]
fn a_budget_too_small_is_refused_before_anything_is_allocated_or_written() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("run");
    let err = forge_refuses(&run_args(o.to_str().unwrap(), &["--memory-budget", "200MiB"]));
    assert!(
        err.contains("phase needs an estimated")
            && err.contains("weights")
            && err.contains("--memory-budget is 200 MiB"),
        "{err}"
    );
    assert!(err.contains("to fit, use"), "{err}");
    assert!(!o.exists(), "a refused run created its output folder");
    // The training phase names checkpointing as the knob when it is off.
    let err = forge_refuses(&run_args(
        o.to_str().unwrap(),
        &["--memory-budget", "2GiB", "--set", "train.seq_len=512", "--set", "train.batch_size=16"],
    ));
    assert!(err.contains("the train phase") && err.contains("train.grad_checkpoint = true"), "{err}");
}

#[test]
fn a_run_that_fits_stays_under_its_budget() {
    let out = tempfile::tempdir().unwrap();
    let budget: u64 = 4 << 30;
    let report = forge_json(&run_args(
        out.path().to_str().unwrap(),
        &["--memory-budget", "4GiB", "--set", "prune.cycles=1"],
    ));
    let peaks = report["peak_memory_bytes"].as_object().unwrap();
    assert!(!peaks.is_empty());
    for (phase, bytes) in peaks {
        assert!(
            bytes.as_u64().unwrap() <= budget,
            "phase {phase} peaked at {bytes} over a budget of {budget}"
        );
    }
}

fn metrics_and_model(out: &Path) -> (serde_json::Value, Vec<u8>, String) {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let strip = |c: &serde_json::Value| serde_json::json!({"pruned": c["pruned"], "trained": c["trained"], "mask": c["mask"], "losses": c["train"]["losses"]});
    let cycles: Vec<_> = report["cycles"].as_array().unwrap().iter().map(strip).collect();
    let summary =
        serde_json::json!({"baseline": report["baseline"], "cycles": cycles, "final": report["final"]});
    (
        summary,
        std::fs::read(out.join("model/model.safetensors")).unwrap(),
        std::fs::read_to_string(out.join("mask.json")).unwrap(),
    )
}

#[test]
fn an_interrupted_run_resumes_to_the_same_outputs() {
    let whole = tempfile::tempdir().unwrap();
    forge_json(&run_args(whole.path().to_str().unwrap(), &[]));

    let cut = tempfile::tempdir().unwrap();
    let args = run_args(cut.path().to_str().unwrap(), &[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = cut.path().join("cycles/1/cycle.json");
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed().as_secs() < 300, "cycle 1 never finished");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!cut.path().join("report.json").exists(), "the kill came too late to test resuming");
    let err = forge_refuses(&args);
    assert!(err.contains("--resume"), "{err}");
    let mut resume = args.clone();
    resume.push("--resume");
    forge_json(&resume);

    let (a, b) = (metrics_and_model(whole.path()), metrics_and_model(cut.path()));
    assert_eq!(a.0, b.0, "metrics differ between the whole and the resumed run");
    assert!(a.1 == b.1, "the final model differs between the whole and the resumed run");
    assert_eq!(a.2, b.2);
    no_partial_files(cut.path());
}

#[test]
fn a_failed_run_leaves_no_half_written_file() {
    let out = tempfile::tempdir().unwrap();
    // Fails when the samples evaluator is first built, after the output folder exists.
    let err = forge_refuses(&run_args(out.path().to_str().unwrap(), &["--set", "evaluate=[{name = \"samples\", options = {prompts = \"\"}}, {name = \"perplexity\", data = \"data/code-valid.jsonl\"}]"]));
    assert!(err.contains("has no prompt"), "{err}");
    no_partial_files(out.path());
}

#[test]
fn bad_recipes_fail_before_any_work_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--set", "train.stepz=3"], "unknown field `stepz`"),
        (&["--set", "train.steps=\"many\""], "invalid type"),
        (&["--set", "score.scorer=\"magnitude\""], "recipe key `score.scorer`: unknown scorer `magnitude`; known scorers: activation, l2, random, taylor"),
        (&["--set", "prune.options={ min-heads = 2 }"], "pruner `global` has no option `min-heads`"),
        (&["--set", "prune.cycles=8"], "would remove every head"),
    ];
    for (extra, message) in cases {
        let err = forge_refuses(&run_args(o, extra));
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: a refused recipe created its output folder");
    }
}
