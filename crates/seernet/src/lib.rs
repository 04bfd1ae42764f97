//! seernet: the SeerNet-rs facade. It wires the crates together (the compression pipeline);
//! the logic lives in the `seer-*` crates and the `seernet` command-line tool in `seernet-cli`.
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

/// The log-barrier budget search and its rounding (the `seer-barrier` crate).
pub use seer_barrier as barrier;
/// The evolutionary sampler and random search over discrete genomes (the `seer-evo` crate).
pub use seer_evo as evo;
/// The integer inference engine: packed low-bit formats, integer kernels, the exported-model
/// file format (`model-*.safetensors`) and its interpreter (the `seer-int` crate).
pub use seer_int as int;
/// Training ops with backward (conv, fake quantization with STE, channel masks, BatchNorm) and
/// their slow references (the `seer-kernels` crate).
pub use seer_kernels as kernels;
/// Datasets, the model zoo, QAT fine-tuning and physical pruning (the `seer-nn` crate).
pub use seer_nn as nn;
/// ONNX import (`seernet import`).
pub use seer_onnx as onnx;
/// Network specs, search space, policies and complexity (the `seer-policy` crate).
pub use seer_policy as policy;
/// The MLP-ensemble accuracy predictor (μ, σ, ∇μ), ridge baseline and rank metrics (the
/// `seer-predictor` crate).
pub use seer_predictor as predictor;

/// CUDA kernels with CPU counterparts behind one device switch (the `seer-kernels-cuda`
/// crate; only with this crate's `cuda` feature, so the default build never needs CUDA).
#[cfg(feature = "cuda")]
pub use seer_kernels_cuda as cuda;
/// The label store, labelling protocol and shard manifests (the `seer-label` crate).
pub use seer_label as label;
/// Shard manifests, per-policy result files and merging (`seer_label::manifest`, kept at its
/// old path `seernet::manifest`).
pub use seer_label::manifest;
/// The durable label store and the labelling protocol (`seer_label::store`, kept at its old
/// path `seernet::store`).
pub use seer_label::store;
/// The run report: Markdown, HTML and SVG plots rendered from a plain
/// [`RunReport`](report::RunReport) (the `seer-report` crate, re-exported here so that
/// `seernet::report::...` paths keep working).
pub use seer_report as report;

/// Complexity budgets (`--max-bops`, `--max-size`, `--bops-frac`): `seer_policy::budget`, kept
/// at its old path `seernet::budget`.
pub use seer_policy::budget;
pub mod error;
/// Labelling a policy with our models (docs/method.md §3): `seer_nn::labeler`, kept at its old
/// path `seernet::labeler`.
pub use seer_nn::labeler;
pub mod pipeline;
pub mod search;

pub use error::{Error, Result};
