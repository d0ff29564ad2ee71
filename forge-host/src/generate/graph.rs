//! Decoding as one CUDA graph a token. Op by op, a decoding step of qwen2.5-0.5b is several hundred
//! launches, each paying candle's and the driver's host cost, for 1 GB of weights that stream in a
//! third of a millisecond: generation ran at 3–8 % of the bandwidth limit. Here the step is captured
//! once and replayed: its buffers are fixed (a KV cache of set capacity, written in place; for
//! Qwen3.5's linear attention, the convolution inputs and the recurrent state, overwritten each step),
//! and what moves between tokens — the position, the last token — is read from device memory, so
//! the same graph serves every position up to the capacity (one graph, not one a length). Measured
//! on an H200, 128 new tokens, capture included: qwen2.5-0.5b 129 → 334–351 tokens/s, qwen3-1.7b
//! 105 → 220–243 (the PyTorch peer: 41 and 40).
//!
//! What candle does inside the captured region: its allocations are stream-ordered
//! (`cuMemAllocAsync`), which capture turns into the graph's own allocation nodes, freed inside the
//! graph as the step's temporaries drop; cudarc's per-allocation events are off (`runtime::device`);
//! the kernels of strided views upload their dims and strides from the host, which capture does not
//! allow, so the first step runs uncaptured under candle's upload cache
//! (`enable_cuda_graph_htod_cache`) and capture reuses what it uploaded. That step also loads every
//! kernel module and lets cuBLAS set itself up, so that capture records only launches. The rotary
//! rows are picked on the device by the position.
use candle_core::cuda_backend::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use candle_core::cuda_backend::cudarc::driver::CudaGraph;
use candle_core::{CudaDevice, DType, Device, Tensor};

use super::Picker;
use crate::autograd::frozen_matmul;
use crate::model::{CausalLm, KvCache};

/// Positions a fixed cache is made for are rounded up to this.
const BUCKET: usize = 256;

pub(super) struct Decoder<'a> {
    model: &'a CausalLm,
    cache: KvCache,
    /// The last token `(1, 1)`, read by the step; written from the host before each.
    token: Tensor,
    /// The step's logits `(1, vocab)`, for sampling on the host.
    logits: Tensor,
    /// Greedy: the step's pick `(1)`, made on the device.
    pick: Tensor,
    greedy: bool,
    /// Positions seen: the next token's position.
    position: usize,
    cuda: CudaDevice,
    /// `None` before the first step (which runs uncaptured) and after a capture failed.
    graph: Option<CudaGraph>,
    /// Whether capture was tried (after the first step).
    captured: bool,
}

impl<'a> Decoder<'a> {
    /// A decoder continuing `cache` (the prompt's) up to `positions` in all; `None` where a step
    /// cannot be captured: not bf16 on CUDA, or heads the flash kernel does not take.
    pub(super) fn new(
        model: &'a CausalLm,
        cache: &KvCache,
        positions: usize,
        picker: &Picker,
    ) -> candle_core::Result<Option<Self>> {
        let config = model.config();
        let Device::Cuda(cuda) = model.device() else { return Ok(None) };
        if model.dtype() != DType::BF16 || !forge_kernels::takes_head_dim(config.head_dim) {
            return Ok(None);
        }
        let capacity = positions.div_ceil(BUCKET) * BUCKET;
        let cache = cache.fixed(capacity, model.rope(0, capacity)?)?;
        let device = model.device();
        let vocab = model.lm_head().dim(0)?;
        Ok(Some(Decoder {
            model,
            position: cache.seen(),
            cache,
            token: Tensor::zeros((1, 1), DType::U32, device)?,
            logits: Tensor::zeros((1, vocab), DType::BF16, device)?,
            pick: Tensor::zeros(1, DType::U32, device)?,
            greedy: picker.greedy(),
            cuda: cuda.clone(),
            graph: None,
            captured: false,
        }))
    }

    /// Whether the steps after the first replay a captured graph.
    pub(super) fn replays(&self) -> bool {
        self.graph.is_some()
    }

    /// The token after `last`.
    pub(super) fn next(&mut self, last: u32, picker: &mut Picker) -> candle_core::Result<u32> {
        self.cache.set_position(self.position)?;
        self.token.slice_set(&Tensor::from_slice(&[last], (1, 1), self.model.device())?, 0, 0)?;
        match &self.graph {
            Some(graph) => {
                graph.launch().map_err(|e| candle_core::Error::Msg(format!("replaying decoding: {e}")))?
            }
            None if self.captured => crate::autograd::no_grad(|| self.step())?,
            None => {
                let _uploads = self.cuda.enable_cuda_graph_htod_cache();
                crate::autograd::no_grad(|| self.step())?;
                self.graph = self.capture();
                self.captured = true;
            }
        }
        self.position += 1;
        match self.greedy {
            true => Ok(self.pick.to_vec1::<u32>()?[0]),
            false => Ok(picker.pick(&self.logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
        }
    }

    /// The work of one token, in place: the logits into `logits`, or the greedy pick into `pick`.
    fn step(&mut self) -> candle_core::Result<()> {
        let hidden = self.model.hidden_states(&self.token, Some(&mut self.cache))?;
        let logits = frozen_matmul(&hidden, self.model.lm_head())?.reshape(self.logits.shape())?;
        match self.greedy {
            true => self.pick.slice_set(&forge_kernels::argmax_rows(&logits)?, 0, 0),
            false => self.logits.slice_set(&logits, 0, 0),
        }
    }

    /// The step as a graph, under the upload cache the uncaptured step filled; `None` (said on
    /// stderr) where capture fails, and steps run uncaptured.
    fn capture(&mut self) -> Option<CudaGraph> {
        let stream = self.cuda.cuda_stream();
        let begun = stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
        let recorded = begun.map_err(|e| e.to_string()).and_then(|()| {
            let work = crate::autograd::no_grad(|| self.step()).map_err(|e| e.to_string());
            // Ended whatever the work did: a stream left capturing fails everything after it.
            let flags = CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
            let graph = stream.end_capture(flags).map_err(|e| e.to_string());
            work.and(graph)
        });
        match recorded {
            Ok(Some(graph)) => Some(graph),
            failed => {
                let why = failed.err().unwrap_or_else(|| "the capture was empty".into());
                eprintln!("forge: decoding op by op: capturing the step as a CUDA graph failed ({why})");
                None
            }
        }
    }
}
