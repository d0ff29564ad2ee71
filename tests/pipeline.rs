//! `forge run` end to end through the real binary: outputs, memory budget, resume after a kill,
//! failures that leave nothing half-written, and recipes refused before any work.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn recipe() -> String {
    root().join("examples/code.toml").to_str().unwrap().to_string()
}

fn run_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "-q", "--json", "--recipe", recipe().leak(), "--out", out];
    args.extend_from_slice(&SMALL_RUN);
    args.extend_from_slice(extra);
    args
}

fn no_partial_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            no_partial_files(&path);
        } else {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                !name.contains(".partial-") && !name.starts_with(".tmp"),
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

/// The example recipe with paths made absolute and a `choice` evaluator on the first 3 records of the
/// bundled set added, written into `dir`.
fn recipe_with_choice(dir: &Path) -> String {
    let examples = root().join("examples");
    let e = examples.to_str().unwrap();
    let choice = dir.join("choice.jsonl");
    let records = std::fs::read_to_string(examples.join("data/code-choice.jsonl")).unwrap();
    std::fs::write(&choice, records.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let text =
        std::fs::read_to_string(recipe()).unwrap().replace("\"tiny-qwen3\"", &format!("\"{e}/tiny-qwen3\""));
    let text = text.replace("\"data/", &format!("\"{e}/data/"));
    let path = dir.join("recipe.toml");
    let added = format!("\n[[evaluate]]\nname = \"choice\"\ndata = \"{}\"\n", choice.display());
    std::fs::write(&path, text + &added).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_small_recipe_writes_every_output_and_a_smaller_model() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    let mut args = run_args(o, &["--set", "prune.cycles=1"]);
    args[4] = recipe_with_choice(inputs.path()).leak();
    let report = forge_json(&args);
    for key in ["baseline", "cycles", "final", "outputs"] {
        assert!(report.get(key).is_some(), "run output lacks `{key}`");
    }
    assert!(report["parameters_after"].as_u64() < report["parameters_before"].as_u64());
    assert_eq!(report["heads_after"], 56);
    // The choice evaluator reads its records (no windows are cut from them) beside the perplexities.
    let final_metrics = &report["final"];
    assert_eq!(final_metrics["n:choice"], 3, "{final_metrics}");
    assert!(final_metrics["accuracy_norm:choice"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)));
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
fn the_baseline_guard_stops_cycles_that_drift_past_the_unpruned_model() {
    // Each cycle may be far worse than the one before (max_increase 10), but none may end worse than
    // the unpruned baseline: two training steps cannot make up for pruning, so cycle 1 is refused.
    let out = tempfile::tempdir().unwrap();
    let report = forge_json(&run_args(
        out.path().to_str().unwrap(),
        &["--set", "guard.max_increase_over_baseline=0.0", "--set", "prune.cycles=2"],
    ));
    let cycles = report["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 1, "the run went on after a rolled-back cycle");
    assert_eq!(cycles[0]["accepted"], false);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("cycles/1/cycle.json")).unwrap()).unwrap();
    let why = record["rejected_by"].as_str().unwrap();
    assert!(
        why.contains("above the unpruned baseline") && why.contains("guard.max_increase_over_baseline"),
        "{why}"
    );
    assert_eq!(report["heads_after"], 64);
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
    let cases: [(&[&str], &str); 16] = [
        (&["--set", "train.stepz=3"], "unknown field `stepz`"),
        (&["--set", "train.steps=\"many\""], "invalid type"),
        (&["--set", "score.scorer=\"magnitude\""], "recipe key `score.scorer`: unknown scorer `magnitude`; known scorers: activation, angular, block-influence, l2, random, taylor"),
        (&["--set", "prune.options={ min-heads = 2 }"], "pruner `global` has no option `min-heads`"),
        (&["--set", "score.layer_scorer=\"depth\""], "recipe key `score.layer_scorer`: unknown scorer `depth`"),
        (&["--set", "prune.cycles=8"], "would remove every head"),
        (&["--set", "train.steps=0"], "train.steps is 0; give at least 1"),
        (&["--set", "train.lr=nan"], "train.lr is NaN; give a positive learning rate"),
        (&["--set", "train.clip_norm=-1.0"], "train.clip_norm is -1; give a positive gradient-norm bound"),
        (&["--set", "data.eval_windows=0"], "recipe key `data.eval_windows` is 0; give at least 1"),
        (&["--set", "score.calib_windows=0"], "recipe key `score.calib_windows` is 0; give at least 1"),
        (&["--set", "train.steps=\"twelve\""], "recipe key `train.steps`: invalid type: string \"twelve\""),
        (&["--set", "train.seq_len=4096"], "recipe key `train.seq_len` asks for 4096 positions, but the model's context is 2048"),
        (&["--set", "data.eval_seq_len=3000"], "recipe key `data.eval_seq_len` asks for 3000 positions"),
        (&["--set", "train.adapter_options={ rank = 100000 }"], "rank of at most 128"),
        (&["--set", "guard.max_increase_over_baseline=nan"], "guard.max_increase_over_baseline"),
    ];
    for (extra, message) in cases {
        let err = forge_refuses(&run_args(o, extra));
        assert!(err.contains(message), "{extra:?}: {err}");
        assert!(!out.exists(), "{extra:?}: a refused recipe created its output folder");
    }
}

#[test]
fn an_output_folder_that_is_the_model_or_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    copy_model(&tiny_qwen3(), &model);
    let before = std::fs::read_dir(&model).unwrap().count();
    let m = format!("model={:?}", model.to_str().unwrap());
    let err = forge_refuses(&run_args(model.to_str().unwrap(), &["--set", &m]));
    assert!(err.contains("is the input model folder; forge never writes over its input"), "{err}");
    assert_eq!(std::fs::read_dir(&model).unwrap().count(), before, "the input model folder was written to");
    let file = dir.path().join("taken");
    std::fs::write(&file, "").unwrap();
    let err = forge_refuses(&run_args(file.to_str().unwrap(), &[]));
    assert!(err.contains("is an existing file; give a folder path"), "{err}");
}

/// Every temporary file the run writes (`.NAME.partial-PID`, or the safetensors writer's `.tmpXXXXXX`).
fn temporaries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if path.is_dir() {
            found.extend(temporaries(&path));
        } else if name.contains(".partial-") || name.starts_with(".tmp") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_kill_mid_write_leaves_no_temporary_file_after_resume() {
    let cut = tempfile::tempdir().unwrap();
    let args = run_args(cut.path().to_str().unwrap(), &["--set", "prune.cycles=1"]);
    // Kill at the first sight of a temporary file: a write in progress. Retried, as a write of the
    // tiny model can finish between two looks.
    let mut caught = Vec::new();
    for _ in 0..5 {
        let _ = std::fs::remove_dir_all(cut.path().join("cycles"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            caught = temporaries(cut.path());
            if !caught.is_empty() {
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        if !caught.is_empty() && !cut.path().join("report.json").exists() {
            break;
        }
    }
    assert!(!caught.is_empty(), "no write was caught in progress in five runs");
    let mut resume = args.clone();
    resume.push("--resume");
    forge_json(&resume);
    assert_eq!(
        temporaries(cut.path()),
        Vec::<std::path::PathBuf>::new(),
        "temporary files left after --resume"
    );
}

/// SIGINT mid-training stops at the next step with exit 130 and the command that resumes; the
/// training phase is saved (adapter, optimizer moments, progress) and `--resume` continues it to the
/// outputs of the uninterrupted run — which fresh moments would not reach.
/// Starts `forge args`, SIGINTs it a few steps into its first training phase, and checks that it
/// stopped there as a resumable run: exit 130 with the hint, the phase's state saved mid-way (of
/// `steps`), no temporary or partial file in `out`.
fn interrupt_mid_training(args: &[&str], out: &Path, steps: u64) {
    // Logging on (FORGE_LOG overrides -q's filter): the trainer says when it starts.
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .env("FORGE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap());
    while !stderr.contains("training from step 0") {
        let mut line = String::new();
        assert!(
            std::io::BufRead::read_line(&mut lines, &mut line).unwrap() > 0,
            "training never started: {stderr}"
        );
        stderr += &line;
    }
    // A few steps in (each takes a fraction of a second), then the interrupt.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    std::io::Read::read_to_string(&mut lines, &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted") && stderr.contains("--resume"), "{stderr}");
    let progress = std::fs::read(out.join("cycles/1/train-state/progress.json"));
    let progress: serde_json::Value =
        serde_json::from_slice(&progress.expect("the training state was saved")).unwrap();
    let step = progress["step"].as_u64().unwrap();
    assert!((1..steps).contains(&step), "the interrupt landed at step {step}, not mid-training: {stderr}");
    assert_eq!(temporaries(out), Vec::<std::path::PathBuf>::new());
    no_partial_files(out);
}

/// Resumes the run `args` stopped and checks it ends as the uninterrupted run in `whole` did.
fn resume_to_the_same_outputs(args: &[&str], out: &Path, whole: &Path) {
    let mut resume = args.to_vec();
    resume.push("--resume");
    forge_json(&resume);
    assert!(!out.join("cycles/1/train-state").exists(), "the finished phase kept its resume point");
    let (a, b) = (metrics_and_model(whole), metrics_and_model(out));
    assert_eq!(a.0, b.0, "metrics differ between the whole and the resumed run");
    assert!(a.1 == b.1, "the final model differs between the whole and the resumed run");
}

#[test]
fn sigint_mid_training_resumes_the_phase_with_its_optimizer_state() {
    let long = ["--set", "prune.cycles=1", "--set", "train.steps=20"];
    let whole = tempfile::tempdir().unwrap();
    forge_json(&run_args(whole.path().to_str().unwrap(), &long));
    let out = tempfile::tempdir().unwrap();
    let args = run_args(out.path().to_str().unwrap(), &long);
    interrupt_mid_training(&args, out.path(), 20);
    resume_to_the_same_outputs(&args, out.path(), whole.path());
}

/// `forge run --devices cpu,cpu`: two ranks run the recipe and all-reduce their training steps. The
/// result is one device's within floating-point order (the guarded perplexity within 1e-4
/// relative); an interrupt stops both ranks after the same step, and `--resume` continues from rank
/// 0's state to the uninterrupted two-rank run's outputs, byte for byte; the other rank's scratch
/// folder beside `--out` is gone at the end.
#[test]
fn two_cpu_ranks_run_a_recipe_interrupted_and_resumed() {
    let long = ["--set", "prune.cycles=1", "--set", "train.steps=20", "--devices", "cpu,cpu"];
    let (whole, one) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let two = forge_json(&run_args(whole.path().to_str().unwrap(), &long));
    let single = forge_json(&run_args(one.path().to_str().unwrap(), &long[..4]));
    let metric = |r: &serde_json::Value| r["final"]["perplexity:code-valid"].as_f64().unwrap();
    let diff = (metric(&two) / metric(&single) - 1.0).abs();
    assert!(
        diff < 1e-4,
        "two ranks end {diff:e} away from one device: {} against {}",
        metric(&two),
        metric(&single)
    );

    let out = tempfile::tempdir().unwrap();
    let args = run_args(out.path().to_str().unwrap(), &long);
    interrupt_mid_training(&args, out.path(), 20);
    resume_to_the_same_outputs(&args, out.path(), whole.path());
    let name = out.path().file_name().unwrap().to_string_lossy();
    let scratch = out.path().with_file_name(format!(".{name}.ranks"));
    assert!(!scratch.exists(), "the second rank's scratch folder {} was left", scratch.display());
}

/// `train.teacher = "base"` distils each cycle from the unpruned model: the cycle's training reports
/// its KL part (above 0: the pruned student differs from its teacher), the memory budget counts the
/// teacher, and a distill_alpha outside [0, 1] is refused naming the key.
#[test]
fn a_recipe_distils_from_the_unpruned_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let report = forge_json(&run_args(out.to_str().unwrap(), &["--set", "train.teacher=\"base\""]));
    assert!(report["cycles"].as_array().is_some_and(|c| !c.is_empty()), "{report}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("cycles/1/cycle.json")).unwrap()).unwrap();
    let kl = record["train"]["distill"]["kl_first"].as_f64().unwrap();
    assert!(kl > 0.0, "{}", record["train"]);
    let estimates = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert!(estimates.contains("teacher forward"), "the budget does not count the teacher");
    let err = forge_refuses(&run_args(
        dir.path().join("bad").to_str().unwrap(),
        &["--set", "train.distill_alpha=1.5"],
    ));
    assert!(err.contains("train.distill_alpha is 1.5"), "{err}");
}
