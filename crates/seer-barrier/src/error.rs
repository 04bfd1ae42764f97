//! The crate's one error type.

use crate::model::CostKind;

/// A boxed error from an [`crate::Objective`] or a [`crate::Space`] implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in a constrained policy search.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The budget is below the cheapest policy's cost.
    #[error("{kind} budget {budget} is below the cheapest policy's {kind} of {minimum}")]
    BudgetBelowMinimum {
        /// Which cost.
        kind: CostKind,
        /// The requested budget.
        budget: f64,
        /// The cheapest policy's cost: the smallest feasible budget.
        minimum: f64,
    },
    /// No budget was given, or one is not a positive finite number.
    #[error("invalid budget: {0}")]
    InvalidBudget(String),
    /// A configuration field is out of range.
    #[error("invalid search setting `{field}`: {why}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Objective and space disagree, or the space is malformed.
    #[error("invalid problem: {0}")]
    InvalidProblem(String),
    /// The objective (predictor) failed.
    #[error("objective evaluation failed: {0}")]
    Objective(#[source] BoxError),
    /// The objective returned NaN or an infinity.
    #[error("objective returned a non-finite value ({value}) at row {row}")]
    NonFinite {
        /// Row of the batch.
        row: usize,
        /// The value.
        value: f64,
    },
    /// The space's cost function failed.
    #[error("cost evaluation failed: {0}")]
    Cost(#[source] BoxError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
