//! forge's stable contract: the types every part of forge — the host, built-in strategies and, later,
//! plugins — agree on. Nothing here depends on candle, so the contract does not move when the tensor
//! library does.
#![deny(missing_docs)]

mod geometry;
mod head_mask;

pub use geometry::ModelGeometry;
pub use head_mask::{HeadMask, HeadMaskError};
