//! What forge writes: pruned checkpoints, mask and score files, pictures — always atomically.
mod atomic;
mod chart;
mod checkpoint;
mod heatmap;

pub use atomic::{check_out, remove_leftovers, write_atomic, write_json_atomic};
pub use chart::line_chart_svg;
pub use checkpoint::{
    compact_parameters, costed_geometry, save_pruned, source_config, stored_tensors, write_model_folder,
    zero_pruned_heads, SaveMode, SavedModel,
};
pub use heatmap::heatmap_svg;
