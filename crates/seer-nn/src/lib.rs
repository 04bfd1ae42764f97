//! seer-nn: datasets, quantizable layers, the CNN model zoo, training with quantization-aware
//! fine-tuning, and physical channel pruning (docs/method.md §3, §7).
//!
//! ```
//! use seer_nn::data::{DatasetName, split_indices};
//! let name = DatasetName::parse("fashion-mnist").unwrap();
//! assert_eq!(name.shape(), [1, 28, 28]);
//! let [train, val, test] = split_indices(1000, 100, 200, 0).unwrap();
//! assert_eq!((train.len(), val.len(), test.len()), (700, 100, 200));
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
mod error;
pub mod eval;
pub mod export;
pub mod labeler;
pub mod model;
pub mod ops;
pub mod train;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
