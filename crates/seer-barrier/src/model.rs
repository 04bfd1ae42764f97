//! What the optimizer sees: the objective (a trait, e.g. the predictor's μ), the discrete space
//! with its exact and relaxed costs (a trait, e.g. seer-policy's search space) and the budget.

use crate::error::{BoxError, Error, Result};

/// The function to maximise: predicted accuracy μ(x) of encoded policies x ∈ \[0,1\]^dim.
///
/// All methods are batched over rows of a row-major matrix `xs` of shape `[n, dim]`. They may
/// be called from several threads at once and must be deterministic per row (a row's result
/// may not depend on the other rows of the batch).
pub trait Objective: Sync {
    /// Input dimension (must equal the space's `dim()`).
    fn dim(&self) -> usize;

    /// μ of every row into `mean` (`[n]`).
    fn mean(&self, xs: &[f64], mean: &mut [f64]) -> std::result::Result<(), BoxError>;

    /// μ into `mean` (`[n]`) and ∇ₓμ into `grad` (`[n, dim]`, row-major).
    fn mean_grad(
        &self,
        xs: &[f64],
        mean: &mut [f64],
        grad: &mut [f64],
    ) -> std::result::Result<(), BoxError>;

    /// The predictive standard deviation σ of every row into `std`, if the objective has one
    /// (returns `Ok(false)` and leaves `std` alone otherwise).
    fn std(&self, xs: &[f64], std: &mut [f64]) -> std::result::Result<bool, BoxError> {
        let _ = (xs, std);
        Ok(false)
    }
}

/// Exact complexity of a discrete policy, or its continuous relaxation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Bit operations (docs/method.md §2).
    pub bops: f64,
    /// Model size in bits (docs/method.md §2).
    pub size_bits: f64,
}

impl Cost {
    /// The component of the given kind.
    pub fn get(&self, kind: CostKind) -> f64 {
        match kind {
            CostKind::Bops => self.bops,
            CostKind::SizeBits => self.size_bits,
        }
    }
}

/// Which complexity a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CostKind {
    /// BOPs.
    Bops,
    /// Model size in bits.
    SizeBits,
}

impl std::fmt::Display for CostKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CostKind::Bops => "BOPs",
            CostKind::SizeBits => "size (bits)",
        })
    }
}

/// The discrete policy space, as the optimizer needs it.
///
/// A policy is one candidate index per gene; gene `g`'s candidates sit at the encoded
/// coordinates `coords(g)` (ascending, in [0, 1]: docs/method.md §1). Costs must be non-decreasing
/// along the box's "more expensive" directions so that [`Space::cheapest`] is cheapest in every
/// cost. Implementations must be deterministic and cheap (called thousands of times).
pub trait Space: Sync {
    /// Number of genes (coordinates of the encoding).
    fn dim(&self) -> usize;

    /// Encoded coordinate of each candidate of gene `gene`, ascending.
    fn coords(&self, gene: usize) -> &[f64];

    /// Exact cost of the discrete policy with candidate indices `idx` (`[dim]`).
    fn cost(&self, idx: &[usize]) -> std::result::Result<Cost, BoxError>;

    /// Cost of the continuous relaxation at `x` (`[dim]`, in the box) with its gradients
    /// written to `grad_bops` and `grad_size` (`[dim]` each).
    fn relaxed_cost(
        &self,
        x: &[f64],
        grad_bops: &mut [f64],
        grad_size: &mut [f64],
    ) -> std::result::Result<Cost, BoxError>;

    /// Candidate indices of the cheapest policy.
    fn cheapest(&self) -> Vec<usize>;

    /// Candidate indices of the most expensive policy.
    fn most_expensive(&self) -> Vec<usize>;
}

/// Upper limits on BOPs and/or model size; at least one must be set.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Budget {
    /// Maximum BOPs (inclusive).
    pub max_bops: Option<f64>,
    /// Maximum model size in bits (inclusive).
    pub max_size_bits: Option<f64>,
}

impl Budget {
    /// A BOPs budget.
    pub fn bops(max: f64) -> Self {
        Self {
            max_bops: Some(max),
            max_size_bits: None,
        }
    }

    /// A model-size budget in bits.
    pub fn size_bits(max: f64) -> Self {
        Self {
            max_bops: None,
            max_size_bits: Some(max),
        }
    }

    /// The active limits as (kind, budget) pairs; errors when none is set or one is not a
    /// positive finite number.
    pub fn limits(&self) -> Result<Vec<(CostKind, f64)>> {
        let mut out = Vec::with_capacity(2);
        for (kind, b) in [
            (CostKind::Bops, self.max_bops),
            (CostKind::SizeBits, self.max_size_bits),
        ] {
            if let Some(b) = b {
                if !(b.is_finite() && b > 0.0) {
                    return Err(Error::InvalidBudget(format!(
                        "{kind} budget must be a positive finite number, got {b}"
                    )));
                }
                out.push((kind, b));
            }
        }
        if out.is_empty() {
            return Err(Error::InvalidBudget(
                "give a BOPs budget, a size budget, or both".into(),
            ));
        }
        Ok(out)
    }

    /// Whether `cost` satisfies every limit.
    pub fn admits(&self, cost: &Cost) -> bool {
        self.max_bops.is_none_or(|b| cost.bops <= b)
            && self.max_size_bits.is_none_or(|b| cost.size_bits <= b)
    }
}
