//! The [`Problem`] trait the search optimises, and the complexity [`Band`].

use crate::error::BoxError;

/// A genome: one candidate index per gene, `genome[i] < cardinalities()[i]`.
pub type Genome = Vec<usize>;

/// What the evolutionary search needs to know about a discrete search space.
///
/// Implementations must be deterministic (the same genome always gets the same fitness and
/// complexity) for seeded runs to be reproducible. `fitness` is called on batches from several
/// rayon threads at once; `complexity` is called many times per generation (during repair) and
/// should be cheap.
pub trait Problem: Sync {
    /// Number of candidates of every gene (each ≥ 1).
    fn cardinalities(&self) -> &[usize];

    /// Fitness of each genome of the batch, higher is better; must return `genomes.len()`
    /// finite values.
    fn fitness(&self, genomes: &[Genome]) -> Result<Vec<f64>, BoxError>;

    /// Complexity of a genome (BOPs, size bits, ...), in the unit the [`Band`] uses.
    fn complexity(&self, genome: &[usize]) -> f64;

    /// Smallest and largest achievable complexity.
    ///
    /// The default assumes complexity is non-decreasing in every gene's index (true for
    /// BOPs and size when candidates are sorted so that a higher index costs more): it returns
    /// the complexity of the all-lowest and all-highest genomes. Override it otherwise.
    fn complexity_range(&self) -> (f64, f64) {
        let cards = self.cardinalities();
        let lo: Vec<usize> = vec![0; cards.len()];
        let hi: Vec<usize> = cards.iter().map(|&c| c.saturating_sub(1)).collect();
        (self.complexity(&lo), self.complexity(&hi))
    }
}

/// A closed complexity interval `[lo, hi]`: the feasibility constraint of the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    /// Smallest allowed complexity (inclusive).
    pub lo: f64,
    /// Largest allowed complexity (inclusive).
    pub hi: f64,
}

impl Band {
    /// The band `[lo, hi]`.
    pub fn new(lo: f64, hi: f64) -> Self {
        Self { lo, hi }
    }

    /// Everything up to a budget: `[-inf, hi]`.
    pub fn at_most(hi: f64) -> Self {
        Self {
            lo: f64::NEG_INFINITY,
            hi,
        }
    }

    /// No constraint at all.
    pub fn unbounded() -> Self {
        Self {
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
        }
    }

    /// Whether `c` lies in the band.
    pub fn contains(&self, c: f64) -> bool {
        c >= self.lo && c <= self.hi
    }
}
