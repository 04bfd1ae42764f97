//! seer-policy: network specs, the compression search space, policies, and exact
//! MACs / BOPs / model size with analytic gradients (docs/method.md §1–§2). No tensors.
//!
//! A [`NetworkSpec`] is a layer graph (built in by [`builtin`], or read from the user JSON
//! format by [`NetworkSpec::from_json_file`]). A [`SearchSpace`] groups its weighted layers
//! into searchable units (residual tie groups in `tied` mode) with candidate pruning ratios
//! and bit-widths; a [`Policy`] picks one candidate per gene. Costs are exact for discrete
//! policies ([`SearchSpace::cost`]) and smooth, with gradients, for the continuous
//! relaxation that the barrier optimizer moves ([`SearchSpace::relaxed_cost`]).
//!
//! ```
//! use seer_policy::{builtin, InputShape, SearchSpace, SpaceConfig};
//!
//! let spec = builtin("resnet20", Some("32x32x3".parse::<InputShape>()?), None)?;
//! let space = SearchSpace::new(spec, SpaceConfig::default())?;
//! let w8a8 = space.uniform(8, 8, 0.0)?;
//! let c = space.cost(&w8a8)?;
//! assert_eq!(c.total_macs, 40_551_040);
//! assert_eq!(c.total_bops, 64 * c.total_macs);
//!
//! // The encoding of docs/method.md §1 and the relaxed cost with its gradient.
//! let x = space.encode(&w8a8)?;
//! let r = space.relaxed_cost(&x)?;
//! assert_eq!(r.grad_bops.len(), space.dim());
//! assert_eq!(space.decode(&x)?, w8a8);
//! # Ok::<(), seer_policy::Error>(())
//! ```
#![warn(missing_docs)]

mod alloc;
pub mod budget;
mod builtin;
mod cost;
mod error;
mod graph;
mod json;
mod policy;
mod space;
mod spec;

pub use alloc::{AllocLimits, Allocation};
pub use builtin::{builtin, builtin_names};
pub use cost::{Costs, LayerCost, RelaxedCost, Totals, kept_channels};
pub use error::{Error, Result};
pub use json::{NETWORK_FORMAT, NETWORK_VERSION};
pub use policy::{POLICY_FORMAT, POLICY_VERSION, Policy, UnitPolicy};
pub use space::{
    Gene, GeneKind, IMAGE_BITS, MAX_BITS, MIN_BITS, ResidualPruning, SearchSpace, SpaceConfig,
    Unit, UnitGenes,
};
pub use spec::{
    ConvOpts, InputShape, Layer, LayerKind, MAX_DIM, NetworkSpec, SpecBuilder, conv_out,
    conv_out_padded,
};

#[cfg(test)]
mod tests;
