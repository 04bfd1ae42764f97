//! seernet: the SeerNet-rs facade. It wires the crates together (the compression pipeline)
//! and hosts the `seernet` command-line tool; the logic lives in the `seer-*` crates.
//!
//! The policy layer is re-exported as [`policy`]:
//!
//! ```
//! use seernet::policy::{builtin, SearchSpace, SpaceConfig};
//!
//! let space = SearchSpace::new(builtin("resnet18", None, None)?, SpaceConfig::default())?;
//! let costs = space.cost(&space.uniform(8, 8, 0.0)?)?;
//! assert_eq!(costs.total_macs, 1_814_073_344);
//! # Ok::<(), seernet::policy::Error>(())
//! ```
#![warn(missing_docs)]

/// The integer inference engine: packed low-bit formats, integer kernels, the exported-model
/// file format (`model-*.safetensors`) and its interpreter (the `seer-int` crate).
pub use seer_int as int;
/// Network specs, search space, policies and complexity (the `seer-policy` crate).
pub use seer_policy as policy;

pub mod budget;
pub mod error;
pub mod labeler;
pub mod manifest;
pub mod pipeline;
pub mod report;
pub mod search;
pub mod store;

pub use error::{Error, Result};
