//! seer-barrier: log-barrier constrained policy search (docs/method.md §6).
//!
//! Given an accuracy predictor μ (through the [`Objective`] trait) and a discrete policy space
//! with exact and relaxed costs (through the [`Space`] trait), [`search`] finds the policy with
//! the highest predicted accuracy within a BOPs and/or model-size [`Budget`]: an interior-point
//! path on J_t(x) = μ(x) + t·log(B − C(x)) with Adam steps from several starts in parallel,
//! then nearest-candidate rounding, greedy repair, greedy fill and two-gene moves that spend the
//! slack a single change cannot. The returned policy is always within budget; a budget below the cheapest policy is an error stating the minimum.
//! [`Method::Pgd`] is the authors' hard-stop normalised-gradient ascent, kept as an ablation.
//! [`PolicySpace`] adapts seer-policy's `SearchSpace`; [`mckp_optimum`] solves separable instances exactly, the reference for tests and benchmarks.
//!
//! ```
//! use seer_barrier::{search, Budget, SearchConfig};
//! use seer_barrier::synthetic::{SeparableObjective, TableSpace};
//! use seer_barrier::Cost;
//!
//! // Two genes with three candidates each; value and cost grow with the index.
//! let coords = vec![vec![0.0, 0.5, 1.0]; 2];
//! let space = TableSpace {
//!     coords: coords.clone(),
//!     bops: vec![vec![1.0, 2.0, 4.0], vec![1.0, 3.0, 9.0]],
//!     size_bits: vec![vec![1.0, 2.0, 3.0]; 2],
//!     fixed: Cost::default(),
//! };
//! let objective = SeparableObjective { coords, values: vec![vec![0.0, 2.0, 3.0], vec![0.0, 1.0, 1.5]] };
//! let out = search(&space, &objective, &Budget::bops(7.0), &SearchConfig::default()).unwrap();
//! assert!(out.cost.bops <= 7.0);
//! assert_eq!(out.indices, vec![2, 1]); // value 4 at cost 7: the optimum
//!
//! let err = search(&space, &objective, &Budget::bops(1.5), &SearchConfig::default()).unwrap_err();
//! assert!(err.to_string().contains("cheapest policy's BOPs of 2"));
//! ```
#![warn(missing_docs)]

mod error;
mod exact;
mod model;
mod policy_space;
mod search;
pub mod synthetic;

pub use error::{BoxError, Error, Result};
pub use exact::mckp_optimum;
pub use model::{Budget, Cost, CostKind, Objective, Space};
pub use policy_space::PolicySpace;
pub use search::{
    Filled, Method, SearchConfig, SearchResult, StartTrace, Trace, fill_from, search,
};

#[cfg(test)]
mod tests;
