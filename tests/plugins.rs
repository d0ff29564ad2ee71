//! Plugins through the real binary: the example plugins under `plugins/` (built here with cargo and
//! `cc`) are loaded with `--plugin` or `FORGE_PLUGIN_PATH`, listed, chosen by name and run; broken
//! libraries and misbehaving strategies make forge exit 2 naming the plugin and write nothing.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;

/// The folder the binary under test was built into (`target/debug`).
fn build_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_forge")).parent().unwrap().to_path_buf()
}

/// Builds the Rust plugins of the workspace with the profile of the binary under test; returns the
/// path of `lib<crate>.so`.
fn rust_plugin(krate: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = if build_dir().ends_with("release") { "release" } else { "test" };
        let status = Command::new(env!("CARGO"))
            .current_dir(root())
            .args(["build", "--quiet", "--profile", profile])
            .args(["-p", "forge-entropy-scorer", "-p", "forge-code-evaluator", "-p", "forge-lowrank-adapter"])
            .args(["-p", "forge-faulty-plugin"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the plugins failed");
    });
    build_dir().join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        krate.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// Compiles C sources against `forge_plugin.h` into a shared library (or, with `shared` false, an
/// executable) in a temporary folder.
fn compile_c(source: &str, name: &str, shared: bool) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.arg("-std=c11").arg("-Wall").arg("-Werror").arg("-I").arg(root().join("forge-api/include"));
    if shared {
        cc.args(["-shared", "-fPIC"]);
    }
    let status = cc.arg(source).arg("-o").arg(&out).arg("-lm").status().expect("a C compiler (cc) runs");
    assert!(status.success(), "cc failed on {source}");
    (dir, out)
}

fn c_source(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.c");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn list_shows_plugin_strategies_with_their_origin_from_flags_and_the_plugin_path() {
    let entropy = rust_plugin("forge-entropy-scorer");
    let code = rust_plugin("forge-code-evaluator");
    let listed = forge_json(&["list", "--json", "--plugin", s(&entropy), "--plugin", s(&code)]);
    let find = |kind: &str, name: &str| {
        listed[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed"))
    };
    assert_eq!(find("scorers", "entropy")["origin"], s(&entropy));
    assert_eq!(find("scorers", "l2")["origin"], "builtin");
    let syntax = find("evaluators", "code-syntax");
    assert_eq!(syntax["origin"], s(&code));
    assert_eq!(syntax["options"][0]["name"], "samples");

    let folder = tempfile::tempdir().unwrap();
    std::fs::copy(&entropy, folder.path().join("libentropy.so")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["list", "--json"])
        .env("FORGE_PLUGIN_PATH", folder.path())
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let origin =
        &listed["scorers"].as_array().unwrap().iter().find(|e| e["name"] == "entropy").unwrap()["origin"];
    assert_eq!(origin, s(&folder.path().join("libentropy.so")));
}

#[test]
fn a_plugin_scorer_is_chosen_by_name_and_honours_its_options() {
    let entropy = rust_plugin("forge-entropy-scorer");
    let model = tiny_qwen3();
    let data = data("code-valid.jsonl");
    let score = |sharp: &str| {
        let opt = format!("sharp-is-important={sharp}");
        let args =
            ["score", "--json", "-q", "--plugin", s(&entropy), "--model", s(&model), "--scorer", "entropy"];
        forge_json(&[&args[..], &["--data", s(&data), "--calib-windows", "2", "--scorer-opt", &opt]].concat())
    };
    let sharp = score("true");
    let diffuse = score("false");
    let rows = sharp["scores"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    for (a, b) in rows.iter().zip(diffuse["scores"].as_array().unwrap()) {
        let (a, b) = (a.as_array().unwrap(), b.as_array().unwrap());
        assert_eq!(a.len(), 8);
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x.as_f64().unwrap() + y.as_f64().unwrap()).abs() < 1e-6,
                "the option must flip the sign"
            );
        }
    }
    assert!(rows.iter().flat_map(|r| r.as_array().unwrap()).any(|v| v.as_f64().unwrap().abs() > 1e-3));
    // A scorer that scores no layers cannot stand in for the layer scores (`--layer-scorer`).
    let args = ["score", "-q", "--plugin", s(&entropy), "--model", s(&model), "--scorer", "l2"];
    let more = ["--layer-scorer", "entropy", "--data", s(&data), "--calib-windows", "2"];
    assert!(forge_refuses(&[&args[..], &more].concat()).contains("layer scorer `entropy` scores no layers"));
}

/// ‖W_q[h]‖_p of every head of tiny-qwen3, read with the safetensors crate: the C scorer's
/// computation, done in Rust.
fn q_norms(power: f64) -> Vec<Vec<f64>> {
    let bytes = std::fs::read(tiny_qwen3().join("model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (0..8)
        .map(|layer| {
            let view = tensors.tensor(&format!("model.layers.{layer}.self_attn.q_proj.weight")).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::BF16);
            let values: Vec<f64> =
                view.data().chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64()).collect();
            let head_values = values.len() / 8;
            values
                .chunks(head_values)
                .map(|h| h.iter().map(|v| v.abs().powf(power)).sum::<f64>().powf(1.0 / power))
                .collect()
        })
        .collect()
}

#[test]
fn the_c_scorer_gives_the_scores_rust_computes() {
    let (_dir, lib) = compile_c(s(&root().join("plugins/c-scorer/q_norm.c")), "libq_norm.so", true);
    let model = tiny_qwen3();
    for power in [2.0, 1.0] {
        let opt = format!("power={power}");
        let args = ["score", "--json", "-q", "--plugin", s(&lib), "--model", s(&model), "--scorer", "q-norm"];
        let report = forge_json(&[&args[..], &["--scorer-opt", &opt]].concat());
        let expected = q_norms(power);
        for (layer, (got, want)) in report["scores"].as_array().unwrap().iter().zip(&expected).enumerate() {
            let got: Vec<f64> = got.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= 1e-5 * w.abs(), "layer {layer}, p={power}: C {g} vs Rust {w}");
            }
        }
    }
}

#[test]
fn the_c_header_lays_out_every_struct_as_the_rust_abi_does() {
    use forge_api::plugin::abi::*;
    use std::mem::{align_of, offset_of, size_of};
    let (_src_dir, source) = c_source(
        r#"#include <stdio.h>
#include <stddef.h>
#include "forge_plugin.h"
#define S(T) printf(#T " %zu %zu\n", sizeof(T), _Alignof(T));
#define F(T, f) printf(#T "." #f " %zu\n", offsetof(T, f));
int main(void) {
    S(ForgeStr) S(ForgeSink) S(ForgeTensorView) S(ForgeGeometry) S(ForgeScoringHost) S(ForgeEvalHost)
    S(ForgeStateSink) S(ForgeStateEntry) S(ForgeScorerMethods) S(ForgePrunerMethods)
    S(ForgeEvaluatorMethods) S(ForgeOptimizerMethods) S(ForgeAdapterMethods) S(ForgeStrategy) S(ForgePlugin)
    S(ForgeUnits)
    F(ForgeTensorView, stream) F(ForgeScoringHost, probe) F(ForgeScoringHost, extra_unit_count)
    F(ForgeScoringHost, probe_units) F(ForgePrunerMethods, prune_units) F(ForgeUnits, groups) F(ForgeEvalHost, generate)
    F(ForgeStateEntry, count) F(ForgeOptimizerMethods, load_state) F(ForgeStrategy, options_json)
    F(ForgeAdapterMethods, delta_weight) F(ForgeStrategy, adapter) F(ForgePlugin, count)
    return 0;
}"#,
    );
    let (_dir, exe) = compile_c(s(&source), "layout", false);
    let printed = String::from_utf8(Command::new(&exe).output().unwrap().stdout).unwrap();
    macro_rules! size {
        ($t:ty) => {
            format!("{} {} {}", stringify!($t), size_of::<$t>(), align_of::<$t>())
        };
    }
    macro_rules! field {
        ($t:ty, $f:ident) => {
            format!("{}.{} {}", stringify!($t), stringify!($f), offset_of!($t, $f))
        };
    }
    let expected = [
        size!(ForgeStr),
        size!(ForgeSink),
        size!(ForgeTensorView),
        size!(ForgeGeometry),
        size!(ForgeScoringHost),
        size!(ForgeEvalHost),
        size!(ForgeStateSink),
        size!(ForgeStateEntry),
        size!(ForgeScorerMethods),
        size!(ForgePrunerMethods),
        size!(ForgeEvaluatorMethods),
        size!(ForgeOptimizerMethods),
        size!(ForgeAdapterMethods),
        size!(ForgeStrategy),
        size!(ForgePlugin),
        size!(ForgeUnits),
        field!(ForgeTensorView, stream),
        field!(ForgeScoringHost, probe),
        field!(ForgeScoringHost, extra_unit_count),
        field!(ForgeScoringHost, probe_units),
        field!(ForgePrunerMethods, prune_units),
        field!(ForgeUnits, groups),
        field!(ForgeEvalHost, generate),
        field!(ForgeStateEntry, count),
        field!(ForgeOptimizerMethods, load_state),
        field!(ForgeStrategy, options_json),
        field!(ForgeAdapterMethods, delta_weight),
        field!(ForgeStrategy, adapter),
        field!(ForgePlugin, count),
    ];
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected);
}

#[test]
fn forge_run_evaluates_with_a_plugin_evaluator_and_records_the_plugin() {
    let code = rust_plugin("forge-code-evaluator");
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"model = {model:?}
[data]
train = {train:?}
eval_windows = 2
eval_seq_len = 128
[score]
scorer = "l2"
[prune]
pruner = "global"
ratio_per_cycle = 0.125
cycles = 1
[train]
steps = 2
batch_size = 2
seq_len = 64
[[evaluate]]
name = "perplexity"
data = {valid:?}
[[evaluate]]
name = "code-syntax"
data = {valid:?}
options = {{ samples = 2, prompt-tokens = 16, new-tokens = 8 }}
[guard]
metric = "perplexity:code-valid"
max_increase = 10.0
"#,
            model = tiny_qwen3(),
            train = data("code-train.jsonl"),
            valid = data("code-valid.jsonl"),
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let report =
        forge_json(&["run", "-q", "--json", "--plugin", s(&code), "--recipe", s(&recipe), "--out", s(&out)]);
    for stage in ["baseline", "final"] {
        let share =
            report[stage]["well-formed:code-valid"].as_f64().unwrap_or_else(|| panic!("{stage}: {report}"));
        assert!((0.0..=1.0).contains(&share));
        assert!(report[stage]["bracket-nll:code-valid"].as_f64().unwrap() > 0.0);
    }
    let executed = std::fs::read_to_string(out.join("recipe.executed.toml")).unwrap();
    let hash = sha2_hex(&std::fs::read(&code).unwrap());
    assert!(
        executed.contains(&format!("{:?} = \"{hash}\"", s(&code))),
        "the plugin's hash is not in the provenance"
    );
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn broken_libraries_are_refused_with_exit_2_and_a_message_that_names_them() {
    let missing = forge_refuses(&["list", "--plugin", "/no/such/libplugin.so"]);
    assert!(missing.contains("plugin /no/such/libplugin.so not found"), "{missing}");

    let (_a, source) = c_source("int not_a_plugin(void) { return 0; }\n");
    let (_b, lib) = compile_c(s(&source), "libnot_a_plugin.so", true);
    let err = forge_refuses(&["list", "--plugin", s(&lib)]);
    assert!(
        err.contains(&format!("{} is not a forge plugin: it exports no `forge_plugin_entry`", s(&lib))),
        "{err}"
    );

    let (_c, source) = c_source(
        "#include \"forge_plugin.h\"\n\
         static const ForgePlugin p = {2, 3, FORGE_STR(\"future\"), FORGE_STR(\"9\"), 0, 0};\n\
         const ForgePlugin *forge_plugin_entry(void) { return &p; }\n",
    );
    let (_d, lib) = compile_c(s(&source), "libfuture.so", true);
    let err = forge_refuses(&["list", "--plugin", s(&lib)]);
    assert!(err.contains("built for forge plugin ABI 2.3, and this forge speaks ABI 1.1"), "{err}");

    let entropy = rust_plugin("forge-entropy-scorer");
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = twin_dir.path().join("libtwin.so");
    std::fs::copy(&entropy, &twin).unwrap();
    let err = forge_refuses(&["list", "--plugin", s(&entropy), "--plugin", s(&twin)]);
    assert!(
        err.contains(&format!("scorer `entropy` is provided twice: by {} and by {}", s(&entropy), s(&twin))),
        "{err}"
    );
}

#[test]
fn a_failing_or_panicking_strategy_exits_2_and_writes_nothing() {
    let faulty = rust_plugin("forge-faulty-plugin");
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_qwen3();
    for (scorer, says) in [
        ("fails", "scorer `fails` of plugin {}: the faulty scorer gives up"),
        ("panics", "scorer `panics` of plugin {}: panicked: the faulty scorer panics"),
        ("short", "scorer `short` of plugin {}: scores of layer 0 cover 7 query heads; the layer has 8"),
    ] {
        let out = dir.path().join(format!("{scorer}.json"));
        let args = [
            "score",
            "-q",
            "--plugin",
            s(&faulty),
            "--model",
            s(&model),
            "--scorer",
            scorer,
            "--out",
            s(&out),
        ];
        let run = forge(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{scorer}: {stderr}");
        assert!(stderr.contains(&says.replace("{}", s(&faulty))), "{scorer}: {stderr}");
        assert!(!out.exists(), "{scorer}: a score file was written");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing half-done is left behind");
}

/// tiny-llama (float32, so merging loses nothing to rounding) with the bundled tokenizer.
fn f32_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(tiny_qwen3().join("tokenizer.json"), dir.path().join("tokenizer.json")).unwrap();
    dir
}

#[test]
fn a_plugin_adapter_trains_reloads_with_its_plugin_and_merges() {
    let lowrank = rust_plugin("forge-lowrank-adapter");
    let model = f32_model();
    let work = tempfile::tempdir().unwrap();
    let (adapter, merged) = (work.path().join("adapter"), work.path().join("merged"));
    let (m, p) = (s(model.path()), s(&lowrank));
    let train_data = data("code-train.jsonl");
    let train = ["train", "-q", "--json", "--plugin", p, "--model", m, "--data", s(&train_data)];
    let run = |out: &std::path::Path, backward: &str| {
        forge_json(
            &[
                &train[..],
                &[
                    "--out",
                    s(out),
                    "--adapter",
                    "lowrank",
                    "--adapter-opt",
                    "rank=4",
                    "--adapter-opt",
                    "targets=q_proj,down_proj",
                    "--backward",
                    backward,
                ],
                &["--steps", "3", "--batch-size", "2", "--seq-len", "32", "--lr", "1e-2"],
            ]
            .concat(),
        )
    };
    let report = run(&adapter, "graph");
    assert_eq!(report["adapter"], "lowrank");
    // The plugin's kernel on forge's tape (one entry through candle's graph): the same losses.
    let on_tape = run(&work.path().join("adapter-tape"), "tape");
    for (a, b) in report["losses"].as_array().unwrap().iter().zip(on_tape["losses"].as_array().unwrap()) {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() < 1e-5 * a.abs(), "losses by the graph {a} and the tape {b}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["options"]["rank"].as_u64()),
        (Some("FORGE_KERNEL"), Some(4))
    );

    let valid = data("code-valid.jsonl");
    let eval = |model: &str, extra: &[&str]| {
        let args = [
            "eval",
            "-q",
            "--json",
            "--model",
            model,
            "--data",
            s(&valid),
            "--max-windows",
            "2",
            "--seq-len",
            "64",
        ];
        forge_json(&[&args[..], extra].concat())["perplexity"].as_f64().unwrap()
    };
    let plain = eval(m, &[]);
    let adapted = eval(m, &["--plugin", p, "--adapter", s(&adapter)]);
    assert!((adapted - plain).abs() > 1e-4, "training left the model unchanged ({plain} vs {adapted})");

    let err = forge_refuses(&["eval", "--model", m, "--data", s(&valid), "--adapter", s(&adapter)]);
    assert!(
        err.contains(&format!("adapter `lowrank` comes from plugin {p}; load it with --plugin")),
        "{err}"
    );

    forge_json(&[
        "merge",
        "-q",
        "--json",
        "--plugin",
        p,
        "--model",
        m,
        "--adapter",
        s(&adapter),
        "--out",
        s(&merged),
    ]);
    std::fs::copy(model.path().join("tokenizer.json"), merged.join("tokenizer.json")).ok();
    let folded = eval(s(&merged), &[]);
    assert!((folded - adapted).abs() < 1e-4 * adapted, "merged {folded} vs adapted {adapted}");
}

/// A plugin scorer that scores query heads only, on the Qwen3.5 hybrid: its scores cross with the
/// linear-attention heads unscored, the built-in pruner refuses to prune those naming the fix, and
/// with `linear-ratio=0` prunes the query heads alone.
#[test]
fn a_plugin_scoring_query_heads_only_prunes_a_hybrid_with_linear_ratio_0() {
    let entropy = rust_plugin("forge-entropy-scorer");
    let (dir, model, data) = (tempfile::tempdir().unwrap(), tiny_qwen35(), data("code-valid.jsonl"));
    let out = dir.path().join("pruned");
    let args = [
        "prune",
        "-q",
        "--json",
        "--plugin",
        s(&entropy),
        "--model",
        s(&model),
        "--scorer",
        "entropy",
        "--data",
        s(&data),
        "--calib-windows",
        "2",
        "--pruner",
        "global",
        "--ratio",
        "0.25",
        "--out",
        s(&out),
    ];
    assert!(forge_refuses(&args).contains("--pruner-opt linear-ratio=0"));
    let report = forge_json(&[&args[..], &["--pruner-opt", "linear-ratio=0"]].concat());
    assert_eq!((report["heads_after"].as_u64(), report["linear_heads_after"].as_u64()), (Some(12), Some(48)));
    assert!(report.get("pruned_linear_heads").is_none(), "{report}");
}

/// The C pruner (plugins/c-pruner) removes, through ABI 1.1's prune_units, exactly the lowest-scored
/// quarter of each layer's MLP channels by the scores forge wrote, and nothing else; its option is
/// honoured; the compact model it leads to evaluates as the masked model does.
#[test]
fn the_c_pruner_removes_the_lowest_scored_mlp_channels_through_the_abi() {
    let (_dir, lib) =
        compile_c(s(&root().join("plugins/c-pruner/mlp_channels.c")), "libmlp_channels.so", true);
    let work = tempfile::tempdir().unwrap();
    let (scores, out) = (work.path().join("scores.json"), work.path().join("pruned"));
    let model = tiny_qwen3();
    forge_json(&["score", "-q", "--json", "--model", s(&model), "--scorer", "l2", "--out", s(&scores)]);
    let prune = |extra: &[&str]| {
        let args =
            ["prune", "-q", "--json", "--plugin", s(&lib), "--model", s(&model), "--scores", s(&scores)];
        forge_json(
            &[&args[..], &["--pruner", "mlp-channels", "--ratio", "0.25", "--out", s(&out)], extra].concat(),
        )
    };
    prune(&[]);
    let mask: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mask.json")).unwrap()).unwrap();
    assert!(mask["pruned"].as_object().unwrap().is_empty(), "no query head is removed: {}", mask["pruned"]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    for layer in 0..8 {
        let row: Vec<f64> =
            written["mlp"][layer].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        let mut want = order[..row.len() / 4].to_vec();
        want.sort();
        let got: Vec<usize> = mask["pruned_mlp_channels"][layer.to_string()]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want, "layer {layer}: the lowest-scored quarter of 768 channels");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["intermediate_size"], 576);
    let compact = quick_perplexity(&["--model", s(&out)]);
    let masked = quick_perplexity(&["--model", s(&model), "--mask", s(&out.join("mask.json"))]);
    assert!((compact - masked).abs() <= 1e-4 * masked, "compact {compact} vs masked {masked}");
    // floor=700 leaves 700 of 768 channels in every layer, whatever the ratio asks.
    prune(&["--pruner-opt", "floor=700"]);
    let mask: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mask.json")).unwrap()).unwrap();
    assert!((0..8).all(|l| mask["pruned_mlp_channels"][l.to_string()].as_array().unwrap().len() == 68));
    let refused = forge_refuses(&[
        "prune",
        "--plugin",
        s(&lib),
        "--model",
        s(&model),
        "--scores",
        s(&scores),
        "--pruner",
        "mlp-channels",
        "--count",
        "3",
        "--out",
        s(&out),
    ]);
    assert!(refused.contains("give --ratio"), "{refused}");
}
