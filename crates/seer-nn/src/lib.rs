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
pub mod sensitivity;
pub mod train;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};

/// Runs candle's element-wise operations on the calling thread (sets `CANDLE_NUM_THREADS=1`
/// unless it is already set), for programs whose heavy work is seer-kernels' rayon-parallel
/// ops. candle 0.11 runs element-wise ops (the SGD update, gradient accumulation, bias and
/// mask broadcasts) on its own pool of spin-waiting threads, separate from rayon's; on a
/// 2-core machine the two pools contend, and under load a descheduled worker leaves the
/// caller spinning. Measured (docs/benchmarks.md, `cargo xtask bench label`): a ResNet-20
/// label's fine-tune 2.3× faster with it at load average ~14. Results are unchanged (each
/// element is computed alike). Matrix products keep rayon's thread count.
///
/// # Safety
/// It sets an environment variable: call it first thing in `main`, before any other thread
/// exists (and before candle's pool starts, which reads the variable once).
pub unsafe fn candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
