//! Peak memory of a piece of work. On the CPU this is the process's high-water resident set
//! (`VmHWM`). On CUDA it is the high-water mark of the device's default memory pool (candle allocates
//! through it with `cuMemAllocAsync`), reset when measuring starts: the most memory live tensors held
//! at any instant, the quantity PyTorch's `max_memory_allocated` reports.
use candle_core::Device;

/// Tracks the peak memory of work on one device.
pub struct PeakMemory {
    device: Device,
}

impl PeakMemory {
    /// Starts measuring on `device` (on CUDA, from what is allocated now).
    pub fn start(device: &Device) -> Self {
        if !device.is_cpu() {
            pool::reset_high_water(device);
        }
        PeakMemory { device: device.clone() }
    }

    /// The peak in bytes since [`PeakMemory::start`] (on the CPU, since the process started).
    pub fn peak_bytes(&self) -> u64 {
        if self.device.is_cpu() {
            process_peak_rss().unwrap_or(0)
        } else {
            pool::high_water(&self.device).unwrap_or(0)
        }
    }
}

/// Free memory of a CUDA device (None on the CPU or when it cannot be read).
pub fn free_device_memory(device: &Device) -> Option<u64> {
    pool::free(device)
}

/// A CUDA device pool's bytes in use now and its high-water mark, for the profile's sections (None on
/// the CPU).
pub fn pool_usage(device: &Device) -> Option<(u64, u64)> {
    Some((pool::in_use(device)?, pool::high_water(device)?))
}

/// The process's peak resident set, from `/proc/self/status` (Linux).
fn process_peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(feature = "cuda")]
mod pool {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    fn default_pool(device: &Device) -> Option<sys::CUmemoryPool> {
        let Device::Cuda(cuda) = device else { return None };
        device.synchronize().ok()?;
        let context = cuda.cuda_stream().context().clone();
        context.bind_to_thread().ok()?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        let status = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()) };
        (status == sys::CUresult::CUDA_SUCCESS).then_some(pool)
    }

    pub fn reset_high_water(device: &Device) {
        if let Some(pool) = default_pool(device) {
            // Setting the high-water attribute resets it to the memory in use now (the value must be 0).
            let mut zero: u64 = 0;
            // SAFETY: the attribute takes a pointer to a u64, as given.
            unsafe {
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                    (&mut zero as *mut u64).cast(),
                )
            };
        }
    }

    pub fn free(device: &Device) -> Option<u64> {
        let Device::Cuda(cuda) = device else { return None };
        cuda.cuda_stream().context().mem_get_info().ok().map(|(free, _)| free as u64)
    }

    pub fn high_water(device: &Device) -> Option<u64> {
        attribute(device, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    pub fn in_use(device: &Device) -> Option<u64> {
        attribute(device, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    fn attribute(device: &Device, which: sys::CUmemPool_attribute) -> Option<u64> {
        let pool = default_pool(device)?;
        let mut value: u64 = 0;
        // SAFETY: the attribute writes one u64 through the pointer given.
        let status = unsafe { sys::cuMemPoolGetAttribute(pool, which, (&mut value as *mut u64).cast()) };
        (status == sys::CUresult::CUDA_SUCCESS).then_some(value)
    }
}

#[cfg(not(feature = "cuda"))]
mod pool {
    use candle_core::Device;

    pub fn reset_high_water(_: &Device) {}

    pub fn free(_: &Device) -> Option<u64> {
        None
    }

    pub fn high_water(_: &Device) -> Option<u64> {
        None
    }

    pub fn in_use(_: &Device) -> Option<u64> {
        None
    }
}
