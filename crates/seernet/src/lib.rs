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

/// Network specs, search space, policies and complexity (the `seer-policy` crate).
pub use seer_policy as policy;

/// The run report: Markdown, HTML and SVG plots rendered from a plain
/// [`RunReport`](report::RunReport) (the `seer-report` crate, re-exported here so that
/// `seernet::report::...` paths keep working).
pub use seer_report as report;

pub mod budget;
pub mod error;
pub mod labeler;
pub mod manifest;
pub mod pipeline;
pub mod search;
pub mod store;

pub use error::{Error, Result};
