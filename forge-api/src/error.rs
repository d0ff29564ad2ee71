/// What a strategy returns when it cannot do its work. The message names the culprit and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StrategyError {
    /// The input or options cannot work (user-fixable; forge exits 2).
    #[error("{0}")]
    BadInput(String),
    /// The strategy failed for another reason (forge exits 1).
    #[error("{0}")]
    Failed(String),
}

impl StrategyError {
    /// A user-fixable error.
    pub fn bad_input(message: impl Into<String>) -> Self {
        StrategyError::BadInput(message.into())
    }

    /// Any other failure.
    pub fn failed(message: impl Into<String>) -> Self {
        StrategyError::Failed(message.into())
    }
}
