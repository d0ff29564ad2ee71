//! Datasets: documents from JSONL (`{"text": …}` a line) or plain-text files, and the token windows
//! that evaluation and training consume.
mod documents;
mod windows;

pub use documents::Documents;
pub use windows::TokenWindows;
