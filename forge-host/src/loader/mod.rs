//! Reading a checkpoint before any layer is built: the model folder, its `config.json` (checked
//! against its weights), the memory-mapped safetensors, and the scoped access layers load from.
mod config;
mod folder;
mod scope;
#[cfg(feature = "cuda")]
pub mod upload;
mod weights;

pub use config::{Architecture, Hybrid, LayerKind, ModelConfig, RopeConfig, RopeScaling};
pub use folder::ModelFolder;
pub use scope::WeightScope;
pub use weights::WeightStore;
