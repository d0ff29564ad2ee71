//! Built-in evaluators, one per file, and the host's [`EvalContext`] they (and plugins) run against.
mod choice;
mod context;
mod perplexity;
mod samples;

pub use context::ModelEvalContext;
