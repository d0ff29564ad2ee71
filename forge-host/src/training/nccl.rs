//! NCCL, loaded at run time, as the [`Communicator`] of data-parallel ranks on CUDA devices (one
//! process a GPU). forge never links NCCL: the binary builds and runs without it, and only
//! `--devices` with CUDA devices looks for `libnccl.so.2` — the file `FORGE_NCCL` names, else on the
//! loader's path or in a Python environment's `nvidia-nccl-cu13` wheel — and says how to install it
//! when none is found.
//!
//! The all-reduce runs on the packed gradients the training loop already holds on the host (the
//! optimizer works there too): copied to the device, summed by `ncclAllReduce` in place on the
//! device's stream, copied back and scaled, so every rank gets the same bits. A rank that fails
//! cannot free the others from inside NCCL; the parent that spawned the ranks sees it exit and ends
//! them all (`ranks.rs`).
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;

use libloading::Library;

use crate::{bad_input, Error, Result};

/// `ncclUniqueId`: what every rank of a group is initialised with, made by one of them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    internal: [c_char; 128],
}

type Status = c_int;
#[cfg(feature = "cuda")]
type CommHandle = *mut c_void;
#[cfg(feature = "cuda")]
const NCCL_FLOAT32: c_int = 7;
#[cfg(feature = "cuda")]
const NCCL_SUM: c_int = 0;

/// The few entry points forge uses, resolved from the library. A build without CUDA still loads it:
/// the parent of the ranks makes the group's id and checks NCCL is there before starting any.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Nccl {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> Status,
    init_rank: unsafe extern "C" fn(*mut *mut c_void, c_int, UniqueId, c_int) -> Status,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        *mut c_void,
        *mut c_void,
    ) -> Status,
    destroy: unsafe extern "C" fn(*mut c_void) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    version: unsafe extern "C" fn(*mut c_int) -> Status,
    // Kept last: the function pointers above point into it.
    _library: Library,
}

/// Where `libnccl.so.2` may be, in the order tried: `FORGE_NCCL` alone when it is set.
fn candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os("FORGE_NCCL") {
        return vec![PathBuf::from(path)];
    }
    let mut paths = vec![PathBuf::from("libnccl.so.2")];
    // pip's nvidia-nccl-cu13 (and -cu12) put it in site-packages/nvidia/nccl/lib.
    let roots = ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"];
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/lib"));
    for root in roots.iter().map(PathBuf::from).chain(home) {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for python in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")) {
            for packages in ["site-packages", "dist-packages"] {
                paths.push(python.path().join(packages).join("nvidia/nccl/lib/libnccl.so.2"));
            }
        }
    }
    paths
}

impl Nccl {
    /// Loads NCCL, or says how to get it.
    pub fn load() -> Result<Nccl> {
        let tried = candidates();
        // SAFETY: loading NCCL runs its initialisers, which have no preconditions.
        let Some(library) = tried.iter().find_map(|p| unsafe { Library::new(p) }.ok()) else {
            return Err(bad_input!(
                "--devices with CUDA devices needs NCCL (libnccl.so.2), and none was found (looked in FORGE_NCCL, the \
                 loader's path and Python's site-packages); install it with `pip install nvidia-nccl-cu13` and set \
                 FORGE_NCCL to the libnccl.so.2 it brings, or add its folder to LD_LIBRARY_PATH"
            ));
        };
        // SAFETY: each symbol is resolved with the signature of NCCL's nccl.h (2.x), whose ABI is stable.
        unsafe {
            Ok(Nccl {
                get_unique_id: *library.get(b"ncclGetUniqueId\0").map_err(missing)?,
                init_rank: *library.get(b"ncclCommInitRank\0").map_err(missing)?,
                all_reduce: *library.get(b"ncclAllReduce\0").map_err(missing)?,
                destroy: *library.get(b"ncclCommDestroy\0").map_err(missing)?,
                error_string: *library.get(b"ncclGetErrorString\0").map_err(missing)?,
                version: *library.get(b"ncclGetVersion\0").map_err(missing)?,
                _library: library,
            })
        }
    }

    /// NCCL's version, as `2.28.3`.
    pub fn version(&self) -> Result<String> {
        let mut v: c_int = 0;
        // SAFETY: `v` is a valid out-pointer.
        self.check(unsafe { (self.version)(&mut v) }, "ncclGetVersion")?;
        Ok(format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100))
    }

    /// A new group's id, for every rank to join with.
    pub fn unique_id(&self) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        // SAFETY: `id` is a valid out-pointer of NCCL's type.
        self.check(unsafe { (self.get_unique_id)(&mut id) }, "ncclGetUniqueId")?;
        Ok(id)
    }

    fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for any status.
        let text = unsafe { CStr::from_ptr((self.error_string)(status)) }.to_string_lossy().into_owned();
        Err(Error::Strategy(format!("NCCL {what}: {text} (status {status}); NCCL_DEBUG=WARN says more")))
    }
}

fn missing(e: libloading::Error) -> Error {
    bad_input!("the NCCL library found lacks a function forge needs ({e}); install nvidia-nccl-cu13 2.x")
}

impl UniqueId {
    /// As hex, to pass to a rank's process in its environment.
    pub fn to_hex(self) -> String {
        self.internal.iter().map(|&b| format!("{:02x}", b as u8)).collect()
    }

    pub fn from_hex(text: &str) -> Result<UniqueId> {
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        match bytes {
            Some(b) if b.len() == 128 => {
                let mut id = UniqueId { internal: [0; 128] };
                id.internal.iter_mut().zip(b).for_each(|(d, s)| *d = s as c_char);
                Ok(id)
            }
            _ => Err(bad_input!("FORGE_NCCL_ID must be NCCL's unique id as 256 hex digits")),
        }
    }
}

#[cfg(feature = "cuda")]
pub use device::NcclRank;

#[cfg(feature = "cuda")]
mod device {
    use std::sync::Arc;

    use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtrMut};
    use candle_core::Device;

    use super::{CommHandle, Nccl, UniqueId, NCCL_FLOAT32, NCCL_SUM};
    use crate::training::Communicator;
    use crate::{Error, Result};

    /// This process's rank of an NCCL group, on its one CUDA device.
    pub struct NcclRank {
        nccl: Nccl,
        comm: CommHandle,
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
    }

    // SAFETY: the communicator is used by one thread at a time (the training loop's), which NCCL allows.
    unsafe impl Send for NcclRank {}
    unsafe impl Sync for NcclRank {}

    impl NcclRank {
        /// Joins the group `id` as `rank` of `world`, on `device`; returns when every rank has joined.
        pub fn join(
            nccl: Nccl,
            id: UniqueId,
            rank: usize,
            world: usize,
            device: &Device,
        ) -> Result<NcclRank> {
            let Device::Cuda(cuda) = device else {
                return Err(crate::bad_input!("an NCCL rank needs a CUDA device, not {device:?}"));
            };
            let stream = cuda.cuda_stream();
            stream.context().bind_to_thread().map_err(|e| Error::Strategy(format!("CUDA context: {e}")))?;
            let mut comm: CommHandle = std::ptr::null_mut();
            // SAFETY: `comm` is a valid out-pointer; the id is the group's, the current device this rank's.
            let status = unsafe { (nccl.init_rank)(&mut comm, world as i32, id, rank as i32) };
            nccl.check(status, "ncclCommInitRank")?;
            Ok(NcclRank { nccl, comm, stream, rank, world })
        }
    }

    impl Communicator for NcclRank {
        fn rank(&self) -> usize {
            self.rank
        }

        fn world(&self) -> usize {
            self.world
        }

        fn all_reduce_mean(&self, data: &mut [f32]) -> Result<()> {
            let cuda = |e: candle_core::cuda_backend::cudarc::driver::DriverError| {
                Error::Strategy(format!("CUDA, around the all-reduce: {e}"))
            };
            let mut buffer = self.stream.clone_htod(data).map_err(cuda)?;
            {
                let (ptr, _sync) = buffer.device_ptr_mut(&self.stream);
                let ptr = ptr as *mut std::ffi::c_void;
                // SAFETY: `ptr` holds `data.len()` f32s on this rank's device, used in place; the stream
                // is the one the copies are ordered on.
                let status = unsafe {
                    (self.nccl.all_reduce)(
                        ptr,
                        ptr,
                        data.len(),
                        NCCL_FLOAT32,
                        NCCL_SUM,
                        self.comm,
                        self.stream.cu_stream() as *mut std::ffi::c_void,
                    )
                };
                self.nccl.check(status, "ncclAllReduce")?;
            }
            self.stream.memcpy_dtoh(&buffer, data).map_err(cuda)?;
            self.stream.synchronize().map_err(cuda)?;
            // Every rank holds the same sum, so the same bits after the same scaling.
            let scale = 1.0 / self.world as f32;
            data.iter_mut().for_each(|v| *v *= scale);
            Ok(())
        }

        // NCCL cannot free ranks blocked in a collective from here; the parent ends them all.
        fn abort(&self, _why: &str) {}

        fn first_failure(&self) -> Option<usize> {
            None
        }
    }

    impl Drop for NcclRank {
        fn drop(&mut self) {
            // SAFETY: the communicator was made by ncclCommInitRank and is destroyed once.
            unsafe { (self.nccl.destroy)(self.comm) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_survives_hex_and_bad_hex_is_refused() {
        let mut id = UniqueId { internal: [0; 128] };
        id.internal.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7) as u8 as c_char);
        let back = UniqueId::from_hex(&id.to_hex()).unwrap();
        assert_eq!(back.internal, id.internal);
        assert!(UniqueId::from_hex("abc").is_err());
        assert!(UniqueId::from_hex(&"zz".repeat(128)).is_err());
    }
}
