//! Where work runs: the device and dtype chosen on the command line, and the memory it used.
pub mod child;
mod device;
pub mod interrupt;
mod memory;

pub use device::{parse_device, resolve_dtype, DeviceChoice};
pub use memory::{free_device_memory, pool_usage, PeakMemory};
