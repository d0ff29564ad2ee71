//! A plugin that misbehaves on purpose: one scorer returns an error, one panics, one returns
//! scores for the wrong number of heads. forge must exit 2 naming the plugin and write nothing.
use forge_api::plugin::Export;
use forge_api::{HeadScores, ImportanceScorer, Options, ScoringContext, StrategyError};

struct Fails;
impl Export for Fails {
    const NAME: &'static str = "fails";
    const DESCRIPTION: &'static str = "always returns an error";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Fails)
    }
}
impl ImportanceScorer for Fails {
    fn score(&self, _: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        Err(StrategyError::failed("the faulty scorer gives up"))
    }
}

struct Panics;
impl Export for Panics {
    const NAME: &'static str = "panics";
    const DESCRIPTION: &'static str = "always panics";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Panics)
    }
}
impl ImportanceScorer for Panics {
    fn score(&self, _: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        panic!("the faulty scorer panics")
    }
}

struct Short;
impl Export for Short {
    const NAME: &'static str = "short";
    const DESCRIPTION: &'static str = "scores one head too few";
    fn new(_: &Options) -> Result<Self, StrategyError> {
        Ok(Short)
    }
}
impl ImportanceScorer for Short {
    fn score(&self, ctx: &mut dyn ScoringContext) -> Result<HeadScores, StrategyError> {
        let mut scores: Vec<Vec<f32>> = ctx.geometry().heads.iter().map(|&h| vec![1.0; h]).collect();
        scores[0].pop();
        Ok(HeadScores::attention(scores))
    }
}

forge_api::export_plugin! {
    name: "faulty",
    version: "0.0.0",
    strategies: [scorer(Fails), scorer(Panics), scorer(Short)],
}
