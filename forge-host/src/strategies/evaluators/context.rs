//! The host side of [`EvalContext`]: the model as it will be saved, its tokenizer and the data windows.
use candle_core::Tensor;
use forge_api::{EvalContext, StrategyError};

use crate::data::TokenWindows;
use crate::generate::{generate, SamplingConfig};
use crate::model::CausalLm;
use crate::tokenizer::Tokenizer;

/// Evaluation context over a loaded model.
pub struct ModelEvalContext<'a> {
    model: &'a CausalLm,
    tokenizer: &'a Tokenizer,
    windows: Option<&'a TokenWindows>,
}

impl<'a> ModelEvalContext<'a> {
    /// A context for `model`, with evaluation `windows` when the run has data.
    pub fn new(model: &'a CausalLm, tokenizer: &'a Tokenizer, windows: Option<&'a TokenWindows>) -> Self {
        ModelEvalContext { model, tokenizer, windows }
    }
}

fn failed(e: impl std::fmt::Display) -> StrategyError {
    StrategyError::failed(e.to_string())
}

impl EvalContext for ModelEvalContext<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, StrategyError> {
        self.tokenizer.encode(text).map_err(failed)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, StrategyError> {
        self.tokenizer.decode(ids).map_err(failed)
    }

    fn windows(&mut self) -> Result<Vec<Vec<u32>>, StrategyError> {
        let windows = self
            .windows
            .ok_or_else(|| StrategyError::bad_input("this evaluator needs data: give --data FILE"))?;
        Ok((0..windows.len()).map(|i| windows.batch(i, 1).to_vec()).collect())
    }

    fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError> {
        ids.iter()
            .map(|seq| {
                if seq.len() < 2 {
                    return Err(StrategyError::bad_input(
                        "a sequence needs at least 2 tokens to have a next-token log-probability",
                    ));
                }
                let t = Tensor::from_slice(seq, (1, seq.len()), self.model.device()).map_err(failed)?;
                let nll = self
                    .model
                    .next_token_nll(&t)
                    .and_then(|n| n.flatten_all()?.to_vec1::<f32>())
                    .map_err(failed)?;
                Ok(nll.into_iter().map(|v| -v).collect())
            })
            .collect()
    }

    fn generate(&mut self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>, StrategyError> {
        let config = SamplingConfig {
            max_new_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_token: Some(self.tokenizer.eos_id()),
        };
        generate(self.model, prompt, &config).map_err(failed)
    }
}
