//! `forge score`: importance of every head by a named scorer, as JSON and a heat map.
use std::path::PathBuf;

use clap::Args;

use crate::defaults;
use forge_api::{HeadScores, Options};
use serde::Serialize;

use super::{ModelArgs, Runtime};
use crate::data::{Documents, TokenWindows};
use crate::loader::ModelFolder;
use crate::model::CausalLm;
use crate::outputs::{heatmap_svg, write_atomic, write_json_atomic};
use crate::strategies::scorers::use_layer_scores_of;
use crate::strategies::{ModelProbes, Registry};
use crate::{Error, Result};

/// How to score heads: the scorer, its options and its calibration data.
#[derive(Args, Debug)]
pub struct ScoringArgs {
    /// Importance scorer (`forge list` shows them): l2, random, activation, taylor, or a plugin's.
    #[arg(long)]
    scorer: Option<String>,
    /// Take whole layers' scores from this scorer instead (e.g. block-influence, which measures how
    /// much a layer changes the residual stream; taylor's first-order layer scores can rank a layer
    /// the model cannot lose among the cheapest).
    #[arg(long, requires = "scorer")]
    layer_scorer: Option<String>,
    /// An option of the scorer, KEY=VALUE (repeatable); unknown keys are errors.
    #[arg(long = "scorer-opt", value_name = "KEY=VALUE")]
    scorer_opts: Vec<String>,
    /// Calibration data for scorers that run the model (activation, taylor): JSONL or text.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Calibration windows taken from the start of --data.
    #[arg(long, default_value_t = defaults::CALIB_WINDOWS)]
    calib_windows: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = defaults::CALIB_SEQ_LEN)]
    calib_seq_len: usize,
    /// Calibration windows per forward (and backward) pass.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    calib_batch_size: usize,
}

impl ScoringArgs {
    /// Refuses calibration settings that can score nothing, before the model loads; returns the
    /// positions a calibration window asks of the model.
    pub fn check(&self) -> Result<(usize, &'static str)> {
        if self.calib_windows == 0 || self.calib_batch_size == 0 {
            return Err(crate::bad_input!(
                "--calib-windows and --calib-batch-size must be at least 1 (given {} and {})",
                self.calib_windows,
                self.calib_batch_size
            ));
        }
        if self.calib_seq_len < 2 {
            return Err(crate::bad_input!(
                "--calib-seq-len is {}; a window needs at least 2 tokens",
                self.calib_seq_len
            ));
        }
        Ok((self.calib_seq_len, "--calib-seq-len"))
    }

    /// The name of the scorer, if one was given.
    pub fn scorer(&self) -> Option<&str> {
        self.scorer.as_deref()
    }

    /// Runs the scorer on `model`; returns its scores and resolved options.
    pub fn score(
        &self,
        name: &str,
        registry: &Registry,
        folder: &ModelFolder,
        model: &mut CausalLm,
        rt: &Runtime,
    ) -> Result<(HeadScores, Options)> {
        let given = Options::parse_pairs(&self.scorer_opts)?;
        let (scorer, options) = registry.scorer(name, &given)?;
        let calibration = match &self.data {
            Some(path) => Some(TokenWindows::from_documents(
                Documents::open(path)?,
                &folder.tokenizer()?,
                self.calib_seq_len,
                Some(self.calib_windows),
            )?),
            None => None,
        };
        let mut ctx = ModelProbes::new(
            model,
            &folder.weights,
            calibration.as_ref(),
            self.calib_batch_size,
            rt.seed,
            rt.quiet,
        );
        let mut scores = scorer.score(&mut ctx)?;
        if let Some(layer_scorer) = &self.layer_scorer {
            use_layer_scores_of(layer_scorer, registry, &mut ctx, &mut scores)?;
        }
        scores
            .validate(&folder.config.geometry())
            .map_err(|e| crate::bad_input!("scorer `{name}` returned bad scores: {e}"))?;
        Ok((scores, options))
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Write the scores JSON here (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write a layer × head heat map SVG here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ScoreReport<'a> {
    scorer: &'a str,
    options: &'a Options,
    /// `scores` per query head and, in a hybrid, `linear` per linear-attention value head: the
    /// scores file `forge prune --scores` reads back.
    #[serde(flatten)]
    scores: &'a HeadScores,
}

pub fn run(args: ScoreArgs, rt: &Runtime, registry: &Registry) -> Result<()> {
    let name = args
        .scoring
        .scorer()
        .ok_or_else(|| crate::bad_input!("give --scorer NAME (`forge list` shows them)"))?;
    registry.find(forge_api::StrategyKind::Scorer, name)?;
    let positions = args.scoring.check()?;
    let folder = args.model.open(&[positions])?;
    let mut model = args.model.build(&folder, rt)?;
    let (scores, options) = args.scoring.score(name, registry, &folder, &mut model, rt)?;
    let report = ScoreReport { scorer: name, options: &options, scores: &scores };
    if let Some(path) = &args.out {
        write_json_atomic(path, &report)?;
    }
    if let Some(path) = &args.svg {
        let svg = heatmap_svg(&scores, None, &format!("{name} scores of {}", args.model.model.display()));
        write_atomic(path, |tmp| std::fs::write(tmp, &svg).map_err(|e| Error::io(tmp, e)))?;
    }
    super::emit(&report, args.json, |r| {
        // A hybrid's layer shows the scores of its own mixer's heads.
        let rows =
            r.scores.scores.iter().zip(r.scores.linear.iter().map(Some).chain(std::iter::repeat(None)));
        rows.enumerate()
            .map(|(l, (row, linear))| {
                let (row, tag) = match linear {
                    Some(linear) if row.is_empty() => (linear, " (linear)"),
                    _ => (row, ""),
                };
                format!("layer {l:>2}{tag}: {}", row.iter().map(|s| format!("{s:9.4}")).collect::<String>())
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
