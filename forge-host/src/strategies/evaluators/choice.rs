//! `choice`: zero-shot multiple choice by log-likelihood, with lm-evaluation-harness's conventions.
//! Each record of `--data` is `{"context": …, "choices": [...], "answer": i}`; a choice is scored by
//! the summed log-probability of its tokens after the context, joined by one space (the harness's
//! `target_delimiter`). As the harness does, the context and the whole string are tokenized apart and
//! the choice's tokens are those past the context's, so a merge across the join is not split.
//! `accuracy` counts the records whose answer scores highest; `accuracy_norm` compares scores divided
//! by each choice's length in bytes (the harness's `acc_norm`), which stops long choices losing for
//! their length alone.
use forge_api::{EvalContext, EvalInput, Evaluator, Metrics, OptionKind, OptionSpec, StrategyError};

use crate::strategies::{Builtin, Factory};

struct Choice {
    /// Whether the metrics carry every choice's log-likelihood, item by item.
    details: bool,
}

/// One multiple-choice item.
#[derive(serde::Deserialize)]
struct Item {
    context: String,
    choices: Vec<String>,
    answer: usize,
}

/// The item of record `i`, checked.
fn item(i: usize, record: serde_json::Value) -> Result<Item, StrategyError> {
    let item: Item = serde_json::from_value(record).map_err(|e| {
        StrategyError::bad_input(format!(
            "record {}: {e}; a choice record is {{\"context\": ..., \"choices\": [...], \"answer\": i}}",
            i + 1
        ))
    })?;
    if item.choices.len() < 2 || item.answer >= item.choices.len() {
        return Err(StrategyError::bad_input(format!(
            "record {}: needs at least 2 choices and an answer among them (answer {}, {} choices)",
            i + 1,
            item.answer,
            item.choices.len()
        )));
    }
    Ok(item)
}

/// The log-likelihood of each choice of `item`.
fn log_likelihoods(ctx: &mut dyn EvalContext, item: &Item) -> Result<Vec<f64>, StrategyError> {
    let context = ctx.encode(&item.context)?;
    let mut sequences = Vec::new();
    let mut lengths = Vec::new();
    for choice in &item.choices {
        let whole = ctx.encode(&format!("{} {choice}", item.context))?;
        // The choice's tokens: those past the context's (at least one, and the context keeps one).
        let start = context.len().clamp(1, whole.len().saturating_sub(1));
        if whole.len() < 2 {
            return Err(StrategyError::bad_input(format!("`{}` is too short to score", item.context)));
        }
        lengths.push(whole.len() - start);
        sequences.push(whole);
    }
    let logprobs = ctx.next_token_logprobs(&sequences)?;
    Ok(logprobs
        .iter()
        .zip(&lengths)
        .map(|(lp, &n)| lp[lp.len() - n..].iter().map(|&v| v as f64).sum())
        .collect())
}

/// Index of the largest value (the first of ties).
fn best(values: impl Iterator<Item = f64>) -> usize {
    values.enumerate().fold((0, f64::NEG_INFINITY), |b, (i, v)| if v > b.1 { (i, v) } else { b }).0
}

impl Evaluator for Choice {
    fn input(&self) -> EvalInput {
        EvalInput::Records
    }

    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let items =
            ctx.records()?.into_iter().enumerate().map(|(i, r)| item(i, r)).collect::<Result<Vec<_>, _>>()?;
        if items.is_empty() {
            return Err(StrategyError::bad_input("the choice data has no records"));
        }
        let (mut correct, mut correct_norm) = (0usize, 0usize);
        let mut details = Vec::new();
        for item in &items {
            let ll = log_likelihoods(ctx, item)?;
            if self.details {
                details.push(ll.clone());
            }
            correct += usize::from(best(ll.iter().copied()) == item.answer);
            let normed = ll.iter().zip(&item.choices).map(|(l, c)| l / c.len().max(1) as f64);
            correct_norm += usize::from(best(normed) == item.answer);
        }
        let n = items.len() as f64;
        let mut metrics = Metrics::from([
            ("accuracy".into(), (correct as f64 / n).into()),
            ("accuracy_norm".into(), (correct_norm as f64 / n).into()),
            ("n".into(), items.len().into()),
        ]);
        if self.details {
            metrics.insert("log_likelihoods".into(), details.into());
        }
        Ok(metrics)
    }
}

inventory::submit! {
    Builtin {
        name: "choice",
        description: "multiple choice by log-likelihood (accuracy, accuracy_norm) on JSONL {context, choices, answer} from --data",
        options: || vec![OptionSpec::new(
            "log-likelihoods",
            OptionKind::Bool,
            false,
            "also report each record's log-likelihood of every choice (to check against other tools)",
        )],
        factory: Factory::Evaluator(|o| Ok(Box::new(Choice { details: o.bool("log-likelihoods") }))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes as tokens; log p(token) = −token / 100; records given inline.
    struct Mock(Vec<serde_json::Value>);
    impl EvalContext for Mock {
        fn encode(&self, text: &str) -> Result<Vec<u32>, StrategyError> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn decode(&self, _: &[u32]) -> Result<String, StrategyError> {
            unreachable!()
        }
        fn windows(&mut self) -> Result<Vec<Vec<u32>>, StrategyError> {
            unreachable!()
        }
        fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError> {
            Ok(ids.iter().map(|s| s[1..].iter().map(|&t| -(t as f32) / 100.0).collect()).collect())
        }
        fn generate(&mut self, _: &[u32], _: usize) -> Result<Vec<u32>, StrategyError> {
            unreachable!()
        }
        fn records(&mut self) -> Result<Vec<serde_json::Value>, StrategyError> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn scores_the_tokens_after_the_context_and_normalises_by_bytes() {
        let item = Item { context: "ab".into(), choices: vec!["a".into(), "zz".into()], answer: 0 };
        // " a" after "ab": tokens ' ' (32) and 'a' (97).
        let ll = log_likelihoods(&mut Mock(Vec::new()), &item).unwrap();
        assert!(
            (ll[0] + (32.0 + 97.0) / 100.0).abs() < 1e-6
                && (ll[1] + (32.0 + 2.0 * 122.0) / 100.0).abs() < 1e-6
        );
        // "aaaa" loses on its sum (−4.2 against −2.76 for "zz") but wins per byte (−1.05 against −1.38).
        let records = vec![serde_json::json!({"context": "ab", "choices": ["aaaa", "zz"], "answer": 0})];
        let m = Choice { details: true }.evaluate(&mut Mock(records)).unwrap();
        assert_eq!(
            (m["accuracy"].as_f64(), m["accuracy_norm"].as_f64(), m["n"].as_u64()),
            (Some(0.0), Some(1.0), Some(1))
        );
        // With the option, each choice's log-likelihood: "aaaa" −(32 + 4·97)/100, "zz" −(32 + 2·122)/100.
        let ll: Vec<f64> =
            m["log_likelihoods"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!((ll[0] + 4.2).abs() < 1e-6 && (ll[1] + 2.76).abs() < 1e-6, "{ll:?}");
    }

    #[test]
    fn a_bad_record_is_named() {
        let bad = vec![serde_json::json!({"context": "x", "choices": ["a"], "answer": 0})];
        let err = Choice { details: false }.evaluate(&mut Mock(bad)).unwrap_err();
        assert!(err.to_string().contains("record 1: needs at least 2 choices"), "{err}");
    }
}
