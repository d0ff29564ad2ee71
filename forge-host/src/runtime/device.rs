//! `--device cpu|cuda[:N]` and `--dtype`, resolved to candle's types with errors a user can act on.
use candle_core::{DType, Device};

use crate::{bad_input, Result};

/// A device named on the command line, before it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The host CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl std::fmt::Display for DeviceChoice {
    /// As it is written on the command line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("`{s}` is not a device; use cpu, cuda or cuda:N")),
        }
    }
}

/// Opens the chosen device.
pub fn parse_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(n) if cfg!(feature = "cuda") => {
            let device = Device::new_cuda(n).map_err(|e| {
                bad_input!("cannot open CUDA device {n}: {e}; is a GPU present and its driver loaded?")
            })?;
            untracked(&device);
            Ok(device)
        }
        DeviceChoice::Cuda(_) => Err(bad_input!(
            "this forge was built without CUDA; rebuild with `cargo build --release --features cuda`, or use --device cpu"
        )),
    }
}

/// Turns off cudarc's event tracking for every buffer `device` allocates from now on. cudarc creates
/// two CUDA events with each allocation and destroys them with it, to order uses across streams; it
/// records them only when a context has several streams, but creates them always: four driver calls
/// an op, in generation (launch-bound) a share of each token's host time. forge runs each device on
/// its one stream (candle's), so there is nothing for the events to order.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn untracked(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        // SAFETY: forge creates no second stream on a device (candle's own is the only one), so no
        // buffer is used on a stream other than the one that allocated it.
        unsafe { cuda.disable_event_tracking() };
    }
}

/// The dtype to run in: the one asked for, else f32 on the CPU and bf16 on CUDA.
pub fn resolve_dtype(asked: Option<&str>, device: &Device) -> Result<DType> {
    match asked {
        None if device.is_cpu() => Ok(DType::F32),
        None => Ok(DType::BF16),
        Some("f32") => Ok(DType::F32),
        Some("bf16") => Ok(DType::BF16),
        Some("f16") => Ok(DType::F16),
        Some(other) => Err(bad_input!("--dtype `{other}` is not supported; use f32, bf16 or f16")),
    }
}
