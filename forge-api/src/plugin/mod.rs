//! Strategies from dynamic libraries, through a C ABI.
//!
//! Rust trait objects and the host's tensors cannot cross a library boundary (their layout belongs
//! to one compiler and one candle version), and `inventory` does not see registrations inside a
//! `dlopen`ed library. So a plugin exports one C function, `forge_plugin_entry`, returning a
//! [`abi::ForgePlugin`] table, and everything after that is C: [`abi`] holds every type that crosses,
//! mirrored in `include/forge_plugin.h`.
//!
//! Each kind of strategy has one module laid out the same way: `export::<T>()` builds the table entry
//! of a Rust strategy on the plugin's side, and [`PluginStrategy`] wraps the entry as the same trait
//! on the host's side, lending the host's context as a callback table. A Rust plugin therefore writes
//! an ordinary [`crate::ImportanceScorer`] (or pruner, evaluator, optimizer), implements [`Export`],
//! and lists it in [`crate::export_plugin!`]; the SDK catches its panics and frees what it allocates.
pub mod abi;
mod adapter;
mod boundary;
mod evaluator;
mod optimizer;
mod pruner;
mod scorer;
mod strategy;

pub use strategy::{entry, read_plugin, Export, PluginContents, PluginStrategy, PluginTable};

/// Table entries of Rust strategies, by kind; used by [`crate::export_plugin!`].
pub mod export {
    pub use super::adapter::export as adapter;
    pub use super::evaluator::export as evaluator;
    pub use super::optimizer::export as optimizer;
    pub use super::pruner::export as pruner;
    pub use super::scorer::export as scorer;
}
#[cfg(test)]
mod tests;
