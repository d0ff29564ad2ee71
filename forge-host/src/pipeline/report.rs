//! The run's report: `report.json` (everything, for scripts), `report.md` (a model card for people),
//! pictures as SVG (head heat map with removed heads crossed out, loss curves, the guarded metric per
//! cycle), and `recipe.executed.toml`: the recipe as run, forge's version and the sha256 of every
//! input and output, so a run can be reproduced and audited.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use forge_api::{HeadScores, Metrics};
use serde_json::Value;

use super::budget::human;
use super::provenance::{hash_folder, sha256_file};
use super::record::RunReport;
use crate::outputs::{heatmap_svg, line_chart_svg, write_atomic, write_json_atomic};
use crate::{Error, Result};

fn write_text(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e)))
}

fn number(metrics: &Metrics, key: &str) -> String {
    metrics.get(key).and_then(Value::as_f64).map_or("—".into(), |v| format!("{v:.4}"))
}

/// Writes every report file into `out` and returns the report with its output hashes.
pub fn write_report(mut report: RunReport, out: &Path) -> Result<RunReport> {
    let last_scores = report.cycles.last().map(|c| HeadScores::attention(c.scores.clone()));
    if let Some(scores) = &last_scores {
        write_text(
            &out.join("heatmap.svg"),
            &heatmap_svg(scores, Some(&report.mask), "head importance (last cycle) and removed heads"),
        )?;
    }
    let losses: Vec<(String, Vec<(f64, f64)>)> = report
        .cycles
        .iter()
        .map(|c| {
            let l = c.train["losses"].as_array().cloned().unwrap_or_default();
            (
                format!("cycle {}", c.cycle),
                l.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, v.as_f64().unwrap_or(f64::NAN))).collect(),
            )
        })
        .collect();
    write_text(
        &out.join("loss.svg"),
        &line_chart_svg("training loss per cycle", "step", "loss (nats)", &losses),
    )?;
    let metric = &report.guard_metric;
    let value = |m: &Metrics| m.get(metric).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut after = vec![(0.0, value(&report.baseline))];
    let mut before = vec![(0.0, value(&report.baseline))];
    for c in &report.cycles {
        before.push((c.cycle as f64, value(&c.pruned)));
        after.push((c.cycle as f64, value(&c.trained)));
    }
    let series = [
        ("pruned, before training".to_string(), before),
        ("after training (saved model)".to_string(), after),
    ];
    write_text(
        &out.join("perplexity.svg"),
        &line_chart_svg(&format!("{metric} per cycle"), "cycle", metric, &series),
    )?;
    write_text(&out.join("report.md"), &markdown(&report))?;

    for file in ["mask.json", "heatmap.svg", "loss.svg", "perplexity.svg", "report.md"] {
        let path = out.join(file);
        if path.is_file() {
            report.outputs.insert(file.to_string(), sha256_file(&path)?);
        }
    }
    for (path, hash) in hash_folder(&out.join("model"))? {
        report.outputs.insert(
            path.strip_prefix(&out.display().to_string())
                .unwrap_or(&path)
                .trim_start_matches('/')
                .to_string(),
            hash,
        );
    }
    write_json_atomic(&out.join("report.json"), &report)?;
    report.outputs.insert("report.json".into(), sha256_file(&out.join("report.json"))?);
    write_text(&out.join("recipe.executed.toml"), &executed_recipe(&report)?)?;
    Ok(report)
}

fn executed_recipe(report: &RunReport) -> Result<String> {
    let r = &report.recipe;
    let mut inputs = BTreeMap::new();
    for (path, hash) in hash_folder(&r.model)? {
        inputs.insert(path, hash);
    }
    let mut data = vec![r.data.train.clone()];
    data.extend(r.data.calibration.clone());
    data.extend(r.evaluate.iter().filter_map(|e| e.data.clone()));
    data.extend(report.plugins.iter().map(std::path::PathBuf::from));
    for path in data {
        inputs.insert(path.display().to_string(), sha256_file(&path)?);
    }
    let mut text = format!(
        "# The recipe as forge {} ran it, with sha256 of its inputs and outputs.\n",
        report.forge_version
    );
    text += &r.to_toml();
    let _ = writeln!(text, "\n[provenance]\nforge_version = \"{}\"", report.forge_version);
    text += "\n[provenance.inputs]\n";
    for (path, hash) in &inputs {
        let _ = writeln!(text, "{} = \"{hash}\"", toml::Value::String(path.clone()));
    }
    text += "\n[provenance.outputs]\n";
    for (path, hash) in &report.outputs {
        let _ = writeln!(text, "{} = \"{hash}\"", toml::Value::String(path.clone()));
    }
    Ok(text)
}

fn markdown(r: &RunReport) -> String {
    let mut md = summary(r);
    md += &metrics_table(r);
    md += "\n## Heads per layer\n\n| layer | removed | kept |\n| --- | --- | --- |\n";
    for (layer, &heads) in rec_heads(r).iter().enumerate() {
        let removed = r.mask.pruned_in(layer);
        let _ = writeln!(md, "| {layer} | {:?} | {} |", removed, heads - removed.len());
    }
    md += "\n## Training\n\n| cycle | loss first | loss last | tokens/s |\n| --- | --- | --- | --- |\n";
    for c in &r.cycles {
        let f = |key: &str| c.train[key].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "| {} | {:.4} | {:.4} | {:.0} |",
            c.cycle,
            f("loss_first"),
            f("loss_last"),
            f("tokens_per_s")
        );
    }
    md += "\n## Pictures\n\n![heads](heatmap.svg)\n\n![loss](loss.svg)\n\n![metric](perplexity.svg)\n";
    if let Some(samples) = r.final_metrics.get("samples").and_then(Value::as_array) {
        md += "\n## Samples (final model, greedy)\n\n";
        for s in samples {
            let text = |key: &str| s[key].as_str().unwrap_or("").replace('\n', "⏎");
            let _ = writeln!(md, "**{}** → {}\n", text("prompt"), text("continuation"));
        }
    }
    md += &memory_table(r);
    let _ = writeln!(md, "\nforge {} · {:.1} s · the executed recipe with input and output hashes is in `recipe.executed.toml`.", r.forge_version, r.seconds);
    md
}

/// The title and the paragraph that says what was done.
fn summary(r: &RunReport) -> String {
    let rec = &r.recipe;
    let mut md = format!("# {} — pruned by forge\n\n", rec.model.display());
    let _ = writeln!(
        md,
        "{} of {} attention heads removed by {} accepted cycle(s) of score (`{}`) → prune (`{}`) → train (`{}` with `{}`, {} steps) → merge; \
         parameters {} → {} ({} model). Guarded metric: `{}` (a cycle more than {:.0}% worse than the one before, or {:.0}% worse than the baseline, is rolled back).\n",
        r.heads_before - r.heads_after,
        r.heads_before,
        r.cycles.iter().filter(|c| c.accepted).count(),
        rec.score.scorer,
        rec.prune.pruner,
        rec.train.adapter,
        rec.train.optimizer,
        rec.train.steps,
        r.base_parameters,
        r.final_parameters,
        format!("{:?}", rec.prune.save_mode).to_lowercase(),
        r.guard_metric,
        rec.guard.max_increase * 100.0,
        rec.guard.max_increase_over_baseline * 100.0
    );
    for c in r.cycles.iter().filter_map(|c| c.rejected_by.as_ref().map(|why| (c.cycle, why))) {
        let _ = writeln!(md, "Cycle {} was rolled back: {}.\n", c.0, c.1);
    }
    md
}

/// Every perplexity metric of every stage.
fn metrics_table(r: &RunReport) -> String {
    let keys: Vec<&String> =
        r.baseline.keys().filter(|k| r.baseline[*k].is_number() && k.starts_with("perplexity")).collect();
    let mut md = "## Metrics\n\n| stage | heads left | ".to_string();
    md += &keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(" | ");
    md += " |\n| --- | --- |";
    md += &" --- |".repeat(keys.len());
    md += "\n";
    let row = |md: &mut String, stage: String, heads: usize, m: &Metrics| {
        let cells: Vec<String> = keys.iter().map(|k| number(m, k)).collect();
        let _ = writeln!(md, "| {stage} | {heads} | {} |", cells.join(" | "));
    };
    row(&mut md, "baseline".into(), r.heads_before, &r.baseline);
    for c in &r.cycles {
        row(&mut md, format!("cycle {}: pruned", c.cycle), c.heads_left, &c.pruned);
        let verdict = if c.accepted { "" } else { " (rolled back)" };
        row(&mut md, format!("cycle {}: trained{verdict}", c.cycle), c.heads_left, &c.trained);
    }
    row(&mut md, "final (reloaded from `model/`)".into(), r.heads_after, &r.final_metrics);
    md
}

/// Each phase's estimate beside its measured peak.
fn memory_table(r: &RunReport) -> String {
    let mut md = "\n## Memory\n\n| phase | estimated | measured peak |\n| --- | --- | --- |\n".to_string();
    for e in &r.estimates {
        let peak = r.peak_memory_bytes.get(e.phase).map_or("—".into(), |b| human(*b));
        let _ = writeln!(md, "| {} | {} | {peak} |", e.phase, human(e.total()));
    }
    if let Some(b) = r.budget {
        let _ = writeln!(md, "\nBudget: {}. Measured peaks on the CPU are the process's high-water mark at the end of each phase.", human(b));
    }
    md
}

fn rec_heads(r: &RunReport) -> Vec<usize> {
    let layers = r.cycles.last().map_or(0, |c| c.scores.len());
    r.cycles.last().map_or(vec![0; layers], |c| c.scores.iter().map(Vec::len).collect())
}
