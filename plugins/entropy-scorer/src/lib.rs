//! `entropy`: a head that spreads its attention evenly over the context (high entropy) mostly
//! averages, and a head that attends sharply (low entropy) has learned to look for something. This
//! scorer ranks heads by how sharp their attention is on the calibration data, relative to the other
//! heads of their layer (so that layers with longer-range attention are not emptied wholesale).
use forge_api::plugin::Export;
use forge_api::{
    HeadScores, ImportanceScorer, OptionKind, OptionSpec, Options, ScoringContext, StrategyError,
};

struct Entropy {
    sharp_is_important: bool,
    per_layer: bool,
}

impl Export for Entropy {
    const NAME: &'static str = "entropy";
    const DESCRIPTION: &'static str =
        "sharpness of each head's attention on calibration data (low entropy = important); needs --data";

    fn options() -> Vec<OptionSpec> {
        vec![
            OptionSpec::new(
                "sharp-is-important",
                OptionKind::Bool,
                true,
                "score low-entropy (sharp) heads high; false scores diffuse heads high",
            ),
            OptionSpec::new(
                "per-layer",
                OptionKind::Bool,
                true,
                "compare each head with the mean entropy of its layer rather than across layers",
            ),
        ]
    }

    fn new(options: &Options) -> Result<Self, StrategyError> {
        Ok(Entropy {
            sharp_is_important: options.bool("sharp-is-important"),
            per_layer: options.bool("per-layer"),
        })
    }
}

impl ImportanceScorer for Entropy {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let entropy = ctx.attention_entropy()?;
        let sign = if self.sharp_is_important { -1.0 } else { 1.0 };
        let scores = entropy
            .iter()
            .map(|row| {
                let mean =
                    if self.per_layer { row.iter().sum::<f32>() / row.len().max(1) as f32 } else { 0.0 };
                row.iter().map(|e| sign * (e - mean)).collect()
            })
            .collect();
        Ok(HeadScores::attention(scores))
    }
}

forge_api::export_plugin! {
    name: "entropy-scorer",
    version: env!("CARGO_PKG_VERSION"),
    strategies: [scorer(Entropy)],
}
