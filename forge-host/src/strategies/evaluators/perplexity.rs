//! `perplexity`: exp of the mean next-token NLL over the evaluation windows (the protocol of
//! `forge eval`), computed from the host's log-probabilities.
use forge_api::{EvalContext, Evaluator, Metrics, StrategyError};

use crate::strategies::{Builtin, Factory};

struct Perplexity;

impl Evaluator for Perplexity {
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let windows = ctx.windows()?;
        let logprobs = ctx.next_token_logprobs(&windows)?;
        let tokens: usize = logprobs.iter().map(Vec::len).sum();
        let nll = -logprobs.iter().flatten().map(|&v| v as f64).sum::<f64>() / tokens as f64;
        Ok(Metrics::from([
            ("perplexity".into(), nll.exp().into()),
            ("mean_nll".into(), nll.into()),
            ("tokens".into(), tokens.into()),
        ]))
    }
}

inventory::submit! {
    Builtin {
        name: "perplexity",
        description: "perplexity on the evaluation windows of --data",
        options: Vec::new,
        factory: Factory::Evaluator(|_| Ok(Box::new(Perplexity))),
    }
}
