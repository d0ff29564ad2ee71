//! Checkpoint bytes to the GPU through pinned staging buffers that every core fills.
//!
//! candle uploads a tensor from the memory map in one driver copy from pageable memory: the driver
//! copies it through a staging buffer of its own on the calling thread, and the mapping's page faults
//! are taken there too. That was about 0.1 s a GB on an H200 host, the part of qwen3-4b's load that
//! grows with the model (docs/BENCHMARKS.md, session 2). Here the mapped bytes are copied into two
//! pinned buffers by all cores at once (faults included), and each buffer goes to the device by DMA,
//! in order on the device's stream, while the other fills.
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, DeviceRepr, PinnedHostSlice};
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

/// Bytes a staging buffer holds.
const STAGE: usize = 32 << 20;
/// Bytes one thread copies at a time.
const PIECE: usize = 1 << 20;
/// Tensors smaller than this go up by candle's one copy: the hand-off costs more than it saves.
pub const STAGED_FROM: usize = 4 << 20;

/// Two pinned buffers, each with the event of the copy that last read it.
pub struct Staging {
    buffers: Vec<(PinnedHostSlice<u8>, Option<CudaEvent>)>,
    next: usize,
}

fn driver(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("uploading weights: {what}: {e}"))
}

impl Staging {
    /// Pins `2 × STAGE` bytes of host memory on `device`'s context.
    pub fn new(device: &CudaDevice) -> candle_core::Result<Self> {
        let context = device.cuda_stream().context().clone();
        let buffers = (0..2)
            .map(|_| {
                // SAFETY: the buffer is written (by `upload`) before any byte of it is read.
                let buffer = unsafe { context.alloc_pinned::<u8>(STAGE) };
                buffer.map(|b| (b, None)).map_err(|e| driver("pinning a staging buffer", e))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Staging { buffers, next: 0 })
    }

    /// `bytes` (a tensor's, as stored) as a tensor of `dtype` and `shape` on `device`; dtypes the
    /// staging does not take go up by candle's copy.
    pub fn upload(
        &mut self,
        bytes: &[u8],
        dtype: DType,
        shape: &[usize],
        device: &CudaDevice,
    ) -> candle_core::Result<Tensor> {
        let storage = match dtype {
            DType::BF16 => self.upload_as::<half::bf16>(bytes, device)?,
            DType::F16 => self.upload_as::<half::f16>(bytes, device)?,
            DType::F32 => self.upload_as::<f32>(bytes, device)?,
            DType::U8 => self.upload_as::<u8>(bytes, device)?,
            other => return Tensor::from_raw_buffer(bytes, other, shape, &Device::Cuda(device.clone())),
        };
        Ok(Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false))
    }

    fn upload_as<T: DeviceRepr + candle_core::cuda_backend::CudaDType>(
        &mut self,
        bytes: &[u8],
        device: &CudaDevice,
    ) -> candle_core::Result<CudaStorage> {
        let size = std::mem::size_of::<T>();
        if !bytes.len().is_multiple_of(size) {
            candle_core::bail!("uploading weights: {} bytes are not whole values of {size}", bytes.len());
        }
        let stream = device.cuda_stream();
        // SAFETY: every element is written by the copies below before the tensor is used (the copies
        // come first on the stream every later use is ordered on).
        let mut out =
            unsafe { stream.alloc::<T>(bytes.len() / size) }.map_err(|e| driver("allocating", e))?;
        for (i, chunk) in bytes.chunks(STAGE).enumerate() {
            let (buffer, copied) = &mut self.buffers[self.next];
            self.next = (self.next + 1) % 2;
            if let Some(event) = copied.take() {
                event.synchronize().map_err(|e| driver("waiting for a staging buffer", e))?;
            }
            let staged = &mut buffer.as_mut_slice().map_err(|e| driver("staging", e))?[..chunk.len()];
            staged
                .par_chunks_mut(PIECE)
                .zip(chunk.par_chunks(PIECE))
                .for_each(|(to, from)| to.copy_from_slice(from));
            // SAFETY: pinned memory is page-aligned and STAGE a multiple of any T's size, so the staged
            // bytes are whole, aligned values of T.
            let values =
                unsafe { std::slice::from_raw_parts(staged.as_ptr() as *const T, staged.len() / size) };
            let start = i * STAGE / size;
            stream
                .memcpy_htod(values, &mut out.slice_mut(start..start + values.len()))
                .map_err(|e| driver("copying to the device", e))?;
            *copied = Some(stream.record_event(None).map_err(|e| driver("recording a copy", e))?);
        }
        Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
    }
}

/// `forge kernels`' check of the staged upload: tensors of several sizes (a partial last stage, one
/// past two stages, from an unaligned start in the source) arrive as candle's own copy brings them,
/// byte for byte.
pub fn check(
    device: &Device,
    rng: &mut forge_kernels::SplitMix64,
) -> crate::Result<Vec<forge_kernels::checks::Check>> {
    let Device::Cuda(cuda) = device else { return Ok(Vec::new()) };
    let mut staging = Staging::new(cuda)?;
    let bytes: Vec<u8> = (0..2 * STAGE + 3 * PIECE + 64).map(|_| rng.next_u64() as u8).collect();
    let mut differ = 0usize;
    let sizes = [(STAGED_FROM, 2usize), (STAGE + 6, 0), (2 * STAGE + 2 * PIECE + 40, 2)];
    for (len, offset) in sizes {
        let source = &bytes[offset..offset + len];
        let staged = staging.upload(source, DType::BF16, &[len / 2], cuda)?;
        let direct = Tensor::from_raw_buffer(source, DType::BF16, &[len / 2], device)?;
        let (staged, direct) = (staged.to_vec1::<half::bf16>()?, direct.to_vec1::<half::bf16>()?);
        differ += staged.iter().zip(&direct).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    }
    Ok(vec![forge_kernels::checks::Check::forward_only(
        "weights staged through pinned buffers vs candle's copy",
        sizes.iter().map(|s| s.0).collect(),
        differ as f64,
        0.0,
        differ == 0,
    )])
}
