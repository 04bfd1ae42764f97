//! seer-predictor: the accuracy predictor of SeerNet-rs (docs/method.md §4).
//!
//! An ensemble of M small MLPs maps a policy encoding (or any feature row) to predicted
//! accuracy: μ(x) is the members' mean and σ(x) their standard deviation (uncertainty for
//! active sampling, docs/method.md §5). ∇ₓμ is analytic (for the barrier search, docs/method.md §6).
//! By default every member's output passes through a logistic map onto `[0, 100]`
//! ([`Output::PERCENT`]), so μ stays in the range of accuracy in percent, and every
//! [`Prediction`] records whether it extrapolates beyond the labels or the training rows'
//! feature ranges ([`Extrapolation`]). Bit-width columns (`bits_<i>`, `wbits_<i>`,
//! `abits_<i>`, [`is_bit_width_name`]) also enter the members as their quantization-noise
//! power `2^(−2b)` ([`Config::noise_features`]); predictions and gradients take the raw columns.
//! Also here: CSV input, tie-aware Kendall's τ-b and Spearman's ρ, a ridge-regression baseline,
//! repeated-split cross-validation, and a versioned safetensors file format.
//!
//! ```
//! use seer_predictor::{Config, Samples, fit};
//! // Accuracy y = 80 + 2·x0 − x1 (percent) on a small grid, x0 in 0..8, x1 in 0..5.
//! let x: Vec<Vec<f64>> = (0..40).map(|i| vec![(i % 8) as f64, (i / 8) as f64]).collect();
//! let y: Vec<f64> = x.iter().map(|r| 80.0 + 2.0 * r[0] - r[1]).collect();
//! let s = Samples::new(vec!["x0".into(), "x1".into()], "y".into(), x, y)?;
//! let cfg = Config { members: 2, max_epochs: 50, ..Config::default() };
//! let p = fit(&s, &cfg)?;
//! let pred = p.predict(&[vec![7.0, 0.0], vec![0.0, 4.0], vec![60.0, 0.0]])?;
//! assert!(pred.mean[0] > pred.mean[1]);
//! assert!(!pred.extrapolates(0) && !pred.extrapolates(1));
//! // Far outside the training rows: still a percentage, and flagged.
//! assert!(pred.mean[2] <= 100.0 && pred.extrapolates(2));
//! let g = p.grad(&[vec![3.0, 2.0]])?; // ∂μ/∂x for that row
//! assert!(g[0][0] > 0.0 && g[0][1] < 0.0);
//! # Ok::<(), seer_predictor::Error>(())
//! ```
#![warn(missing_docs)]

mod cv;
mod data;
mod ensemble;
mod error;
mod features;
mod metrics;
mod mlp;
mod output;
mod persist;
mod ridge;
pub mod space;

pub use cv::{CvOptions, CvReport, SplitScores, Summary, cross_validate};
pub use data::{CsvTable, DEFAULT_TARGET, Samples};
pub use ensemble::{Config, MemberStats, Prediction, Predictor, fit};
pub use error::{Error, Result};
pub use features::{is_bit_width_name, noise_power};
pub use metrics::{average_ranks, kendall_tau_b, pearson, rmse, spearman};
pub use output::{Extrapolation, LABEL_MARGIN, Output, TrainingRange};
pub use persist::{FORMAT, VERSION};
pub use ridge::{Ridge, lambda_grid};
