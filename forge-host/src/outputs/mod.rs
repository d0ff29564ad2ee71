//! What forge writes: pruned checkpoints, mask and score files, pictures — always atomically.
mod atomic;
mod checkpoint;
mod heatmap;

pub use atomic::{write_atomic, write_json_atomic};
pub use checkpoint::{save_pruned, source_config, stored_tensors, write_model_folder, SaveMode, SavedModel};
pub use heatmap::heatmap_svg;
