//! The host side of [`EvalContext`]: the model as it will be saved, its tokenizer and the data windows.
use std::path::Path;

use candle_core::Tensor;
use forge_api::{EvalContext, StrategyError};

use crate::data::TokenWindows;
use crate::defaults;
use crate::eval::rows_nll;
use crate::generate::{generate, SamplingConfig};
use crate::model::CausalLm;
use crate::tokenizer::Tokenizer;

/// Evaluation context over a loaded model.
pub struct ModelEvalContext<'a> {
    model: &'a CausalLm,
    tokenizer: &'a Tokenizer,
    windows: Option<&'a TokenWindows>,
    data: Option<&'a Path>,
}

impl<'a> ModelEvalContext<'a> {
    /// A context for `model`, with evaluation `windows` when the run has data.
    pub fn new(model: &'a CausalLm, tokenizer: &'a Tokenizer, windows: Option<&'a TokenWindows>) -> Self {
        ModelEvalContext { model, tokenizer, windows, data: None }
    }

    /// The context with `data`'s JSONL records offered to the evaluator.
    pub fn with_records(self, data: Option<&'a Path>) -> Self {
        ModelEvalContext { data, ..self }
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

    /// Runs of sequences of one length go through the model `BATCH_SIZE` at a time, as `forge eval`
    /// batches its windows (the same path, [`rows_nll`]).
    fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError> {
        if ids.iter().any(|seq| seq.len() < 2) {
            return Err(StrategyError::bad_input(
                "a sequence needs at least 2 tokens to have a next-token log-probability",
            ));
        }
        let mut out = Vec::with_capacity(ids.len());
        for run in ids.chunk_by(|a, b| a.len() == b.len()) {
            for batch in run.chunks(defaults::BATCH_SIZE) {
                let flat: Vec<u32> = batch.concat();
                let t = Tensor::from_vec(flat, (batch.len(), batch[0].len()), self.model.device())
                    .map_err(failed)?;
                let nll = rows_nll(self.model, &t).map_err(failed)?;
                out.extend(nll.into_iter().map(|row| row.into_iter().map(|v| -v).collect::<Vec<f32>>()));
            }
        }
        Ok(out)
    }

    fn records(&mut self) -> Result<Vec<serde_json::Value>, StrategyError> {
        let path = self
            .data
            .ok_or_else(|| StrategyError::bad_input("this evaluator needs data: give --data FILE"))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| StrategyError::bad_input(format!("{}: {e}", path.display())))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line).map_err(|e| {
                    StrategyError::bad_input(format!("{}:{}: not a JSON value ({e})", path.display(), i + 1))
                })
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
