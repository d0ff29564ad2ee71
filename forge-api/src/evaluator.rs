use std::collections::BTreeMap;

use crate::StrategyError;

/// Named metrics: numbers (`perplexity`) or anything JSON can hold (`samples`).
pub type Metrics = BTreeMap<String, serde_json::Value>;

/// What an evaluator may ask the host for: the model as it will be saved, its tokenizer, and data.
pub trait EvalContext {
    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>, StrategyError>;
    /// Text of token ids.
    fn decode(&self, ids: &[u32]) -> Result<String, StrategyError>;
    /// The evaluation windows of the data set the evaluator was given (`--data`), `seq_len` tokens each.
    fn windows(&mut self) -> Result<Vec<Vec<u32>>, StrategyError>;
    /// Next-token log-probabilities of each sequence: `result[i][t]` is log p(ids[i][t+1] | ids[i][..=t]).
    fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError>;
    /// Continues `prompt` greedily by up to `max_new_tokens` tokens; returns the new tokens.
    fn generate(&mut self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>, StrategyError>;
    /// The records of the data set the evaluator was given, one JSON value per JSONL line, for
    /// evaluators whose data is not text to window (multiple-choice items).
    fn records(&mut self) -> Result<Vec<serde_json::Value>, StrategyError> {
        Err(StrategyError::bad_input("this host gives evaluators no data records"))
    }
}

/// How an evaluator reads its data file, so the host prepares only that, and checks it before any work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalInput {
    /// Text documents cut into token windows ([`EvalContext::windows`]): perplexity and the like.
    Windows,
    /// JSONL records as they are ([`EvalContext::records`]): multiple-choice items and the like.
    Records,
}

/// Measures a model.
pub trait Evaluator {
    /// Evaluates the model in `ctx`.
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError>;

    /// What it reads of its data file; windows unless it says otherwise (every plugin evaluator does).
    fn input(&self) -> EvalInput {
        EvalInput::Windows
    }
}
