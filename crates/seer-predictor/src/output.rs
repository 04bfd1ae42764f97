//! What a member's raw output means (docs/method.md §4, "Bounded output"): the output map that
//! keeps every prediction inside the range of accuracy, and the record of how far a prediction
//! lies outside what the predictor was fitted on ([`Extrapolation`]).
//!
//! Each member computes a raw output `o`; an affine map `u = b + a·o` (fitted on the labels,
//! so that `o ≈ N(0, 1)` over them) and the output map `g` give its prediction `f = g(u)` in
//! target units. [`Output::Logistic`] maps `u` through a sigmoid onto `[lo, hi]`, so μ (the
//! members' mean) lies in the same interval by construction and ∇μ follows by the chain rule
//! (`g′ > 0` everywhere: no region where the gradient is cut off, only one where it shrinks
//! as μ approaches a bound). The training loss stays the squared error in target units.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a member's output becomes a prediction in target units.
///
/// [`Config::default`](crate::Config::default) uses [`Output::PERCENT`]: a logistic map onto
/// `[0, 100]`, for accuracies in percent. [`Output::Linear`] is the unbounded map of format-1
/// predictor files (read back unchanged) and the choice for targets that are not bounded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// `f = u`: unbounded. Labels may take any finite value; so may predictions.
    Linear,
    /// `f = lo + (hi − lo)·sigmoid(u)`: every prediction, member or mean, lies in `[lo, hi]`.
    /// Every training label must lie in `[lo, hi]` ([`crate::fit`] refuses one outside).
    Logistic {
        /// Lower bound of the target (0 for accuracy in percent).
        lo: f64,
        /// Upper bound of the target (100 for accuracy in percent).
        hi: f64,
    },
}

impl Output {
    /// Accuracy in percent: the logistic map onto `[0, 100]` (the default).
    pub const PERCENT: Output = Output::Logistic { lo: 0.0, hi: 100.0 };

    /// [`Output::Linear`]; the serde default of a configuration written before outputs were
    /// bounded (those predictors were all trained unbounded).
    pub(crate) fn unbounded() -> Self {
        Output::Linear
    }

    /// `(lo, hi)` of a bounded output, `None` for [`Output::Linear`].
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match *self {
            Output::Linear => None,
            Output::Logistic { lo, hi } => Some((lo, hi)),
        }
    }

    /// Err([`Error::Config`]) unless the bounds are finite with `lo < hi`.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some((lo, hi)) = self.bounds()
            && !(lo.is_finite() && hi.is_finite() && lo < hi)
        {
            return Err(Error::Config(format!(
                "output bounds must be finite with lo < hi, got [{lo}, {hi}]"
            )));
        }
        Ok(())
    }

    /// Err([`Error::Config`]) naming the first label outside the bounds (0-based sample index).
    pub(crate) fn check_labels(&self, y: &[f64]) -> Result<()> {
        let Some((lo, hi)) = self.bounds() else {
            return Ok(());
        };
        match y.iter().position(|v| !(lo..=hi).contains(v)) {
            Some(i) => Err(Error::Config(format!(
                "label {} of sample {i} lies outside the output range [{lo}, {hi}]; a bounded \
                 output (Config::output) needs every label inside it (use Output::Linear for a \
                 target that is not bounded)",
                y[i]
            ))),
            None => Ok(()),
        }
    }

    /// The value the affine map is fitted on for label `y`: `y` itself, or for the logistic
    /// map `logit((y − lo)/(hi − lo))` with the fraction kept in `[1e-3, 1 − 1e-3]` (a label on
    /// a bound has no finite logit). Only the scale of `o` depends on it; the loss does not.
    pub(crate) fn link_target(&self, y: f64) -> f64 {
        match *self {
            Output::Linear => y,
            Output::Logistic { lo, hi } => {
                let p = ((y - lo) / (hi - lo)).clamp(1e-3, 1.0 - 1e-3);
                (p / (1.0 - p)).ln()
            }
        }
    }

    /// `(g(u), g′(u))`.
    #[inline]
    pub(crate) fn value_grad(&self, u: f64) -> (f64, f64) {
        match *self {
            Output::Linear => (u, 1.0),
            Output::Logistic { lo, hi } => {
                // Stable for large |u|: exp of a non-positive number only.
                let s = if u >= 0.0 {
                    1.0 / (1.0 + (-u).exp())
                } else {
                    let e = u.exp();
                    e / (1.0 + e)
                };
                // The clamp only guards the last bit of rounding of lo + (hi − lo)·s.
                (
                    (lo + (hi - lo) * s).clamp(lo, hi),
                    (hi - lo) * s * (1.0 - s),
                )
            }
        }
    }
}

/// Fraction of the training labels' range (max − min) by which μ may pass the highest or the
/// lowest label before [`Extrapolation`] flags it.
pub const LABEL_MARGIN: f64 = 0.05;

/// What a predictor was fitted on: the per-feature range of its training rows and the range of
/// its labels (target units). Recorded by [`crate::fit`]; `None` for format-1 files.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRange {
    /// Smallest training value of each feature (length `d`).
    pub x_min: Vec<f64>,
    /// Largest training value of each feature (length `d`).
    pub x_max: Vec<f64>,
    /// Lowest training label.
    pub y_min: f64,
    /// Highest training label.
    pub y_max: f64,
}

impl TrainingRange {
    pub(crate) fn of(x: &[Vec<f64>], y: &[f64]) -> Self {
        let d = x.first().map_or(0, Vec::len);
        let mut x_min = vec![f64::INFINITY; d];
        let mut x_max = vec![f64::NEG_INFINITY; d];
        for r in x {
            for ((lo, hi), &v) in x_min.iter_mut().zip(&mut x_max).zip(r) {
                *lo = lo.min(v);
                *hi = hi.max(v);
            }
        }
        let y_min = y.iter().copied().fold(f64::INFINITY, f64::min);
        let y_max = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self {
            x_min,
            x_max,
            y_min,
            y_max,
        }
    }

    /// Indices of the features of `row` outside `[x_min, x_max]` (beyond a relative rounding
    /// tolerance of 1e-9 of the feature's range, so a value read back from text still counts
    /// as inside).
    pub fn features_outside(&self, row: &[f64]) -> Vec<usize> {
        (0..self.x_min.len().min(row.len()))
            .filter(|&j| {
                let tol = 1e-9 * (1.0 + (self.x_max[j] - self.x_min[j]).abs());
                row[j] < self.x_min[j] - tol || row[j] > self.x_max[j] + tol
            })
            .collect()
    }

    /// The flags of a prediction `mean` at `row` (see [`Extrapolation`]).
    pub fn judge(&self, row: &[f64], mean: f64) -> Extrapolation {
        let margin = LABEL_MARGIN * (self.y_max - self.y_min);
        Extrapolation {
            above_labels: mean > self.y_max + margin,
            below_labels: mean < self.y_min - margin,
            features_outside: self.features_outside(row).len(),
        }
    }
}

/// Whether one prediction extrapolates beyond what its predictor was fitted on. A flagged
/// prediction is a guess outside the data, however small its σ: treat it as unverified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Extrapolation {
    /// μ exceeds the highest training label by more than [`LABEL_MARGIN`] of the labels' range.
    pub above_labels: bool,
    /// μ is below the lowest training label by more than [`LABEL_MARGIN`] of the labels' range.
    pub below_labels: bool,
    /// How many input features lie outside the per-feature range of the training rows.
    pub features_outside: usize,
}

impl Extrapolation {
    /// True when any of the three conditions holds.
    pub fn any(&self) -> bool {
        self.above_labels || self.below_labels || self.features_outside > 0
    }

    /// A short English description, e.g. `"above the highest training label; 3 features
    /// outside the training range"`, or `"within the training data"`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.above_labels {
            parts.push("above the highest training label".to_string());
        }
        if self.below_labels {
            parts.push("below the lowest training label".to_string());
        }
        match self.features_outside {
            0 => {}
            1 => parts.push("1 feature outside the training range".into()),
            n => parts.push(format!("{n} features outside the training range")),
        }
        if parts.is_empty() {
            "within the training data".into()
        } else {
            parts.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logistic_map_is_bounded_with_a_positive_derivative() {
        let g = Output::PERCENT;
        for u in [-1e6, -40.0, -3.0, 0.0, 2.0, 40.0, 1e6, f64::MAX] {
            let (f, d) = g.value_grad(u);
            assert!((0.0..=100.0).contains(&f), "g({u}) = {f}");
            assert!(d >= 0.0 && d.is_finite(), "g'({u}) = {d}");
        }
        assert_eq!(g.value_grad(0.0), (50.0, 25.0));
        // Derivative against central differences.
        for u in [-2.5, 0.3, 1.9, 4.0] {
            let h = 1e-6;
            let fd = (g.value_grad(u + h).0 - g.value_grad(u - h).0) / (2.0 * h);
            assert!((fd - g.value_grad(u).1).abs() < 1e-6 * (1.0 + fd.abs()));
        }
        // The link target inverts the map inside the bounds.
        for y in [0.5, 12.0, 88.75, 97.1] {
            assert!((g.value_grad(g.link_target(y)).0 - y).abs() < 1e-9);
        }
        assert!(g.link_target(100.0).is_finite() && g.link_target(0.0).is_finite());
        assert_eq!(Output::Linear.value_grad(642.0), (642.0, 1.0));
    }

    #[test]
    fn labels_and_bounds_are_checked() {
        assert!(Output::PERCENT.check_labels(&[0.0, 55.0, 100.0]).is_ok());
        let e = Output::PERCENT
            .check_labels(&[50.0, 100.5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 100.5 of sample 1"), "{e}");
        assert!(Output::Linear.check_labels(&[-5.0, 642.0]).is_ok());
        for (lo, hi) in [(1.0, 1.0), (0.0, f64::INFINITY), (f64::NAN, 1.0)] {
            assert!(Output::Logistic { lo, hi }.validate().is_err());
        }
    }

    #[test]
    fn judging_a_prediction() {
        let r = TrainingRange::of(&[vec![2.0, 0.0], vec![5.0, 0.5]], &[80.0, 97.1]);
        assert_eq!((r.y_min, r.y_max), (80.0, 97.1));
        // Margin 5% of 17.1 = 0.855 points.
        assert!(!r.judge(&[3.0, 0.25], 97.9).any());
        let e = r.judge(&[8.0, 0.0], 98.0);
        assert!(e.above_labels && !e.below_labels && e.features_outside == 1);
        assert_eq!(
            e.describe(),
            "above the highest training label; 1 feature outside the training range"
        );
        assert!(r.judge(&[2.0, 0.5], 79.0).below_labels);
        assert_eq!(r.features_outside(&[1.0, 0.6]), vec![0, 1]);
        assert_eq!(
            Extrapolation::default().describe(),
            "within the training data"
        );
    }
}
