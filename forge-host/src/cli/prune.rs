//! `forge prune`: score heads (or read scores), choose the ones to remove with a named pruner, and
//! write the pruned model.
use std::path::PathBuf;

use clap::Args;
use forge_api::{HeadScores, Options, PruneTarget, UnitKind, UnitSet};
use serde::Serialize;

use super::score::ScoringArgs;
use super::{ModelArgs, Runtime};
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::outputs::{costed_geometry, heatmap_svg, save_pruned, write_atomic, SaveMode};
use crate::strategies::Registry;
use crate::{bad_input, Error, Result};

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pruner (`forge list` shows them): global or per-layer (shares of each kind), budget (a
    /// parameter target).
    #[arg(long)]
    pruner: String,
    /// An option of the pruner, KEY=VALUE (repeatable).
    #[arg(long = "pruner-opt", value_name = "KEY=VALUE")]
    pruner_opts: Vec<String>,
    /// Share of all query heads to remove, in (0, 1) (and of a hybrid's linear-attention heads unless
    /// `--pruner-opt linear-ratio` says otherwise). Other units go by pruner options: `mlp-ratio`,
    /// `layer-ratio`; with only those, leave `--ratio` and `--count` out.
    #[arg(long, conflicts_with = "count")]
    ratio: Option<f64>,
    /// Number of query heads to remove.
    #[arg(long)]
    count: Option<usize>,
    /// Keep this share of the model's parameters, in (0, 1), as `forge inspect` counts them (with
    /// `--pruner budget`), removing units of the kinds `--units` names.
    #[arg(long, conflicts_with_all = ["ratio", "count"])]
    target_params: Option<f64>,
    /// The kinds of units `--target-params` may remove, comma-separated: heads (query heads),
    /// linear-heads (Gated DeltaNet value heads), mlp (MLP channels), layers (whole layers).
    #[arg(long, value_delimiter = ',', default_value = "heads,linear-heads,mlp", requires = "target_params")]
    units: Vec<String>,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Scores JSON written by `forge score --out`, instead of running a scorer.
    #[arg(long, conflicts_with = "scorer")]
    scores: Option<PathBuf>,
    /// `compact` removes the heads' weights (smaller model); `mask` keeps shapes and zeroes their o_proj columns.
    #[arg(long, value_enum, default_value = "compact")]
    save_mode: SaveMode,
    /// Output folder: the pruned model (config.json, model.safetensors, tokenizer), mask.json, scores.svg.
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct PruneReport {
    /// The mask file's maps: `pruned` (layer → removed query heads) and, in a hybrid,
    /// `pruned_linear_heads` (layer → removed linear-attention value heads).
    #[serde(flatten)]
    mask: forge_api::HeadMask,
    heads_before: usize,
    heads_after: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    linear_heads_before: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    linear_heads_after: Option<usize>,
    mlp_channels_before: usize,
    mlp_channels_after: usize,
    layers_before: usize,
    layers_after: usize,
    parameters_before: usize,
    parameters_after: usize,
    save_mode: SaveMode,
    scorer: Option<String>,
    pruner: String,
    pruner_options: Options,
    out: PathBuf,
}

pub fn run(args: PruneArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    let target = target_of(&args)?;
    let (pruner, pruner_options) =
        registry.pruner(&args.pruner, &Options::parse_pairs(&args.pruner_opts)?)?;
    if let Some(name) = args.scoring.scorer() {
        registry.find(forge_api::StrategyKind::Scorer, name)?;
    }
    let positions = args.scoring.check()?;
    crate::outputs::check_out(&args.out, &[args.model.model.as_path()], "--out")?;
    let folder = args.model.open(&[positions])?;
    let mut model = args.model.build(&folder, rt)?;
    let geometry = costed_geometry(&folder);
    let scores = scores_for(&args, registry, &folder, &mut model, rt)?;
    let total = geometry.total_heads();
    if let (PruneTarget::Count(n), Some(_)) = (target, args.count) {
        if n == 0 || n >= total {
            return Err(bad_input!("--count is {n}; the model has {total} heads, so give 1..={}", total - 1));
        }
    }
    let mask = pruner.prune(&scores, &geometry, target)?;
    if UnitKind::ALL.iter().all(|&k| mask.count_of(k) == 0) {
        return Err(bad_input!(
            "pruner `{}` removed nothing: give --ratio or --count for heads, or --pruner-opt mlp-ratio=R or \
             layer-ratio=R for MLP channels or whole layers",
            args.pruner
        ));
    }
    mask.validate(&geometry).map_err(|e| bad_input!("pruner `{}` returned a bad mask: {e}", args.pruner))?;
    let saved = save_pruned(&folder, &mask, args.save_mode, &args.out)?;
    let svg = heatmap_svg(
        &scores,
        Some(&mask),
        &format!("{} query heads removed by {}", mask.count(), args.pruner),
    );
    let svg_path = args.out.join("scores.svg");
    write_atomic(&svg_path, |tmp| std::fs::write(tmp, &svg).map_err(|e| Error::io(tmp, e)))?;
    let linear_total = geometry.total_linear_heads();
    let linear_left = (linear_total > 0).then(|| linear_total - mask.count_of(UnitKind::LinearHead));
    let report = PruneReport {
        heads_before: total,
        heads_after: total - mask.count(),
        linear_heads_before: (linear_total > 0).then_some(linear_total),
        linear_heads_after: linear_left,
        mlp_channels_before: geometry.total(UnitKind::MlpChannel),
        mlp_channels_after: geometry.total(UnitKind::MlpChannel) - mask.count_of(UnitKind::MlpChannel),
        layers_before: geometry.layers,
        layers_after: geometry.layers - mask.count_of(UnitKind::Layer),
        parameters_before: folder.weights.parameter_count(),
        parameters_after: saved.parameters,
        mask,
        save_mode: args.save_mode,
        scorer: args.scoring.scorer().map(String::from),
        pruner: args.pruner.clone(),
        pruner_options,
        out: args.out.clone(),
    };
    super::emit(&report, args.json, PruneReport::summary);
    Ok(())
}

impl PruneReport {
    /// One line: what went, of each kind that lost any, and where it was written.
    fn summary(&self) -> String {
        let linear = match (self.linear_heads_before, self.linear_heads_after) {
            (Some(before), Some(after)) => {
                format!(" and {} of {before} linear-attention value heads", before - after)
            }
            _ => String::new(),
        };
        let others = [
            ("MLP channels", self.mlp_channels_before, self.mlp_channels_after),
            ("layers", self.layers_before, self.layers_after),
        ]
        .iter()
        .filter(|(_, before, after)| before > after)
        .map(|(noun, before, after)| format!(" and {} of {before} {noun}", before - after))
        .collect::<String>();
        format!(
            "removed {} of {} heads{linear}{others} ({:?}); parameters {} → {}; wrote {}",
            self.heads_before - self.heads_after,
            self.heads_before,
            self.save_mode,
            self.parameters_before,
            self.parameters_after,
            self.out.display()
        )
    }
}

/// What to remove, from `--ratio`, `--count` or `--target-params` and `--units`; with none of them,
/// no query heads (the pruner's options name the units to remove).
fn target_of(args: &PruneArgs) -> Result<PruneTarget> {
    Ok(match (args.ratio, args.count, args.target_params) {
        (Some(r), _, _) | (_, _, Some(r)) if !(r > 0.0 && r < 1.0) => {
            let flag = if args.ratio.is_some() { "--ratio" } else { "--target-params" };
            return Err(bad_input!("{flag} is {r}; it must be in (0, 1), e.g. 0.75"));
        }
        (Some(r), _, _) => PruneTarget::Ratio(r),
        (None, Some(n), _) => PruneTarget::Count(n),
        (None, None, Some(keep)) => {
            let kinds = args.units.iter().map(|u| match u.as_str() {
                "heads" => Ok(UnitKind::QueryHead),
                "linear-heads" => Ok(UnitKind::LinearHead),
                "mlp" => Ok(UnitKind::MlpChannel),
                "layers" => Ok(UnitKind::Layer),
                other => Err(bad_input!("--units names `{other}`; give heads, linear-heads, mlp or layers")),
            });
            PruneTarget::Params { keep, units: UnitSet::of(&kinds.collect::<Result<Vec<_>>>()?) }
        }
        (None, None, None) => PruneTarget::Count(0),
    })
}

/// The scores to prune by: a scores file (`--scores`), else the scorer's on the model.
fn scores_for(
    args: &PruneArgs,
    registry: &Registry,
    folder: &ModelFolder,
    model: &mut CausalLm,
    rt: &Runtime,
) -> Result<HeadScores> {
    let geometry = folder.config.geometry();
    Ok(match (&args.scores, args.scoring.scorer()) {
        (Some(path), _) => {
            let text = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let scores: HeadScores = serde_json::from_slice(&text).map_err(|e| {
                bad_input!(
                    "{} is not a scores file ({e}); write one with `forge score --out`",
                    path.display()
                )
            })?;
            scores.validate(&geometry).map_err(|e| bad_input!("{}: {e}", path.display()))?;
            scores
        }
        (None, Some(name)) => args.scoring.score(name, registry, folder, model, rt)?.0,
        (None, None) => {
            return Err(bad_input!("give --scorer NAME or --scores FILE to say which heads matter"))
        }
    })
}
