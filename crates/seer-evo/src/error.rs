//! The crate's one error type.

/// A boxed error returned by a [`crate::Problem`]'s fitness function.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in an evolutionary or random search.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field is out of range (field name and why).
    #[error("invalid evolutionary-search setting `{field}`: {why}")]
    InvalidConfig {
        /// The offending [`crate::EvoConfig`] field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The problem itself is malformed (no genes, a gene without candidates, ...).
    #[error("invalid problem: {0}")]
    InvalidProblem(String),
    /// The complexity band excludes every genome.
    #[error("complexity band [{lo}, {hi}] is infeasible: achievable complexity is [{min}, {max}]")]
    InfeasibleBand {
        /// Lower end of the requested band.
        lo: f64,
        /// Upper end of the requested band.
        hi: f64,
        /// Smallest achievable complexity.
        min: f64,
        /// Largest achievable complexity.
        max: f64,
    },
    /// The band overlaps the achievable range but repair found no genome inside it.
    #[error(
        "no genome with complexity in [{lo}, {hi}] found after {attempts} repaired random draws \
         (achievable complexity is [{min}, {max}]; widen the band)"
    )]
    NoFeasibleGenome {
        /// Lower end of the band.
        lo: f64,
        /// Upper end of the band.
        hi: f64,
        /// Smallest achievable complexity.
        min: f64,
        /// Largest achievable complexity.
        max: f64,
        /// How many random draws were repaired without success.
        attempts: usize,
    },
    /// The problem's fitness function failed.
    #[error("fitness evaluation failed: {0}")]
    Fitness(#[source] BoxError),
    /// The fitness function returned the wrong number of scores.
    #[error("fitness returned {got} scores for a batch of {expected} genomes")]
    FitnessLength {
        /// Batch size.
        expected: usize,
        /// Scores returned.
        got: usize,
    },
    /// The fitness function returned NaN or an infinity.
    #[error("fitness of genome {genome:?} is not finite ({value})")]
    NonFiniteFitness {
        /// The genome.
        genome: Vec<usize>,
        /// Its score.
        value: f64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
