//! `samples`: greedy continuations of fixed prompts, for a person to read in the report.
use forge_api::{EvalContext, Evaluator, Metrics, OptionKind, OptionSpec, StrategyError};

use crate::strategies::{Builtin, Factory};

struct Samples {
    prompts: Vec<String>,
    max_new_tokens: usize,
}

impl Evaluator for Samples {
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let samples = self
            .prompts
            .iter()
            .map(|prompt| {
                let ids = ctx.encode(prompt)?;
                let new = ctx.generate(&ids, self.max_new_tokens)?;
                Ok(serde_json::json!({"prompt": prompt, "continuation": ctx.decode(&new)?}))
            })
            .collect::<Result<Vec<_>, StrategyError>>()?;
        Ok(Metrics::from([("samples".into(), samples.into())]))
    }
}

inventory::submit! {
    Builtin {
        name: "samples",
        description: "greedy continuations of fixed prompts, to read",
        options: || vec![
            OptionSpec::new("prompts", OptionKind::String, "The kernel scheduler\nfn main() {\n    let", "prompts, one per line"),
            OptionSpec::new("max-new-tokens", OptionKind::Int, 40, "tokens generated per prompt"),
        ],
        factory: Factory::Evaluator(|o| {
            let prompts: Vec<String> = o.string("prompts").split('\n').filter(|p| !p.is_empty()).map(String::from).collect();
            if prompts.is_empty() {
                return Err(StrategyError::bad_input("option `prompts` of evaluator `samples` has no prompt"));
            }
            Ok(Box::new(Samples { prompts, max_new_tokens: o.int("max-new-tokens") as usize }))
        }),
    }
}
