//! Evaluators across the boundary: the host lends tokenizer, data, log-probs and generation through
//! callbacks; the plugin answers with a JSON object of metrics.
use std::ffi::c_void;

use super::abi::*;
use super::boundary::{request, serve, sink_into, slice, slice_mut, write_to};
use super::strategy::{describe, Export, Instance, PluginStrategy};
use crate::{EvalContext, Evaluator, Metrics, Options, StrategyError};

/// The table entry of evaluator `T`.
pub fn export<T: Export + Evaluator>() -> ForgeStrategy {
    let methods: &'static ForgeEvaluatorMethods =
        Box::leak(Box::new(ForgeEvaluatorMethods { evaluate: evaluate::<T> }));
    ForgeStrategy { evaluator: methods, ..describe::<T>(FORGE_KIND_EVALUATOR) }
}

unsafe extern "C" fn evaluate<T: Evaluator>(
    instance: *mut c_void,
    host: *const ForgeEvalHost,
    metrics: *const ForgeSink,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let mut ctx = HostEval(&*host);
        let result = (*(instance as *const T)).evaluate(&mut ctx)?;
        let json = serde_json::to_string(&result).expect("metrics are JSON values");
        write_to(metrics, json.as_bytes());
        Ok(())
    })
}

/// The host's callback table, seen from the plugin as an [`EvalContext`].
struct HostEval<'a>(&'a ForgeEvalHost);

impl EvalContext for HostEval<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, StrategyError> {
        let mut ids = Vec::<u32>::new();
        let sink = sink_into(&mut ids);
        // SAFETY: `text` and `sink` outlive the call.
        request(|error| unsafe { (self.0.encode)(self.0.ctx, ForgeStr::new(text), &sink, error) })?;
        Ok(ids)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, StrategyError> {
        let mut bytes = Vec::<u8>::new();
        let sink = sink_into(&mut bytes);
        // SAFETY: `ids` and `sink` outlive the call.
        request(|error| unsafe { (self.0.decode)(self.0.ctx, ids.as_ptr(), ids.len(), &sink, error) })?;
        String::from_utf8(bytes).map_err(|e| StrategyError::failed(format!("decoded text is not UTF-8: {e}")))
    }

    fn windows(&mut self) -> Result<Vec<Vec<u32>>, StrategyError> {
        let mut ids = Vec::<u32>::new();
        let sink = sink_into(&mut ids);
        let mut window_len = 0usize;
        // SAFETY: `sink` and `window_len` outlive the call.
        request(|error| unsafe { (self.0.windows)(self.0.ctx, &sink, &mut window_len, error) })?;
        if window_len == 0 {
            return Ok(Vec::new());
        }
        Ok(ids.chunks(window_len).map(<[u32]>::to_vec).collect())
    }

    fn next_token_logprobs(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, StrategyError> {
        if let Some(short) = ids.iter().position(|s| s.len() < 2) {
            return Err(StrategyError::bad_input(format!(
                "sequence {short} has fewer than 2 tokens, so no next-token log-probability"
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let mut offsets = vec![0usize];
        for seq in ids {
            offsets.push(offsets.last().copied().unwrap_or(0) + seq.len());
        }
        let mut out = vec![0f32; flat.len() - ids.len()];
        // SAFETY: the buffers have the lengths the call documents and outlive it.
        request(|error| unsafe {
            (self.0.next_token_logprobs)(
                self.0.ctx,
                flat.as_ptr(),
                offsets.as_ptr(),
                ids.len(),
                out.as_mut_ptr(),
                error,
            )
        })?;
        let mut at = 0;
        Ok(ids
            .iter()
            .map(|seq| {
                let row = out[at..at + seq.len() - 1].to_vec();
                at += seq.len() - 1;
                row
            })
            .collect())
    }

    fn generate(&mut self, prompt: &[u32], max_new_tokens: usize) -> Result<Vec<u32>, StrategyError> {
        let mut ids = Vec::<u32>::new();
        let sink = sink_into(&mut ids);
        // SAFETY: `prompt` and `sink` outlive the call.
        request(|error| unsafe {
            (self.0.generate)(self.0.ctx, prompt.as_ptr(), prompt.len(), max_new_tokens, &sink, error)
        })?;
        Ok(ids)
    }
}

/// The host's context during one `evaluate` call.
struct EvalState<'a>(&'a mut dyn EvalContext);

unsafe fn state<'a>(ctx: *mut c_void) -> &'a mut EvalState<'a> {
    &mut *(ctx as *mut EvalState)
}

unsafe extern "C" fn host_encode(
    ctx: *mut c_void,
    text: ForgeStr,
    ids: *const ForgeSink,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        write_to(ids, &state(ctx).0.encode(text.to_str()?)?);
        Ok(())
    })
}

unsafe extern "C" fn host_decode(
    ctx: *mut c_void,
    ids: *const u32,
    len: usize,
    text: *const ForgeSink,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        write_to(text, state(ctx).0.decode(slice(ids, len))?.as_bytes());
        Ok(())
    })
}

unsafe extern "C" fn host_windows(
    ctx: *mut c_void,
    ids: *const ForgeSink,
    window_len: *mut usize,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let windows = state(ctx).0.windows()?;
        *window_len = windows.first().map_or(0, Vec::len);
        for window in &windows {
            write_to(ids, window);
        }
        Ok(())
    })
}

unsafe extern "C" fn host_logprobs(
    ctx: *mut c_void,
    ids: *const u32,
    offsets: *const usize,
    count: usize,
    out: *mut f32,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        let offsets = slice(offsets, count + 1);
        if offsets.windows(2).any(|w| w[1] < w[0] + 2) {
            return Err(StrategyError::bad_input(
                "offsets must increase by at least 2 (a sequence needs 2 tokens for a next-token log-probability)",
            ));
        }
        let ids = slice(ids, offsets[count]);
        let seqs: Vec<Vec<u32>> = offsets.windows(2).map(|w| ids[w[0]..w[1]].to_vec()).collect();
        let rows = state(ctx).0.next_token_logprobs(&seqs)?;
        let out = slice_mut(out, offsets[count] - count);
        let mut at = 0;
        for row in rows {
            out[at..at + row.len()].copy_from_slice(&row);
            at += row.len();
        }
        Ok(())
    })
}

unsafe extern "C" fn host_generate(
    ctx: *mut c_void,
    prompt: *const u32,
    len: usize,
    max_new_tokens: usize,
    ids: *const ForgeSink,
    error: *const ForgeSink,
) -> ForgeStatus {
    serve(error, || {
        write_to(ids, &state(ctx).0.generate(slice(prompt, len), max_new_tokens)?);
        Ok(())
    })
}

struct PluginEvaluator(Instance);

impl Evaluator for PluginEvaluator {
    fn evaluate(&self, ctx: &mut dyn EvalContext) -> Result<Metrics, StrategyError> {
        let mut state = EvalState(ctx);
        let host = ForgeEvalHost {
            ctx: &mut state as *mut EvalState as *mut c_void,
            encode: host_encode,
            decode: host_decode,
            windows: host_windows,
            next_token_logprobs: host_logprobs,
            generate: host_generate,
        };
        let mut json = Vec::<u8>::new();
        let sink = sink_into(&mut json);
        let methods = unsafe { &*self.0.raw.evaluator };
        // SAFETY: `host`, `state` and `sink` outlive the call; the instance is live.
        self.0.call(|error| unsafe { (methods.evaluate)(self.0.ptr, &host, &sink, error) })?;
        serde_json::from_slice(&json).map_err(|e| {
            self.0.blame(StrategyError::bad_input(format!(
                "its metrics are not a JSON object of named values: {e}"
            )))
        })
    }
}

impl PluginStrategy {
    /// Builds this plugin evaluator with resolved options.
    pub fn evaluator(&self, options: &Options) -> Result<Box<dyn Evaluator>, StrategyError> {
        Ok(Box::new(PluginEvaluator(self.instantiate(options)?)))
    }
}
