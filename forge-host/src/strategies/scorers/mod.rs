//! Built-in importance scorers, one per file.
mod activation;
mod l2;
mod random;
mod taylor;
