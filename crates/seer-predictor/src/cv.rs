//! Repeated random train/test splits: our ensemble and the ridge baseline on the same splits,
//! scored by Kendall's τ-b, Spearman's ρ and RMSE on the held-out samples (docs/method.md §4).

use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::data::Samples;
use crate::ensemble::{Config, fit};
use crate::error::{Error, Result};
use crate::metrics::{kendall_tau_b, rmse, spearman};
use crate::ridge::Ridge;

/// Reads one score out of a split's scores.
type Score = fn(&SplitScores) -> f64;

/// Split protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct CvOptions {
    /// Number of random splits (≥ 1; default 10).
    pub splits: usize,
    /// Fraction of samples held out for testing in each split, in (0, 1) (default 0.2).
    pub test_frac: f64,
    /// Seed of the splits (split `s` uses ChaCha8 stream `s`); the predictor of split `s` is
    /// trained with seed `config.seed + s`.
    pub seed: u64,
}

impl Default for CvOptions {
    fn default() -> Self {
        Self {
            splits: 10,
            test_frac: 0.2,
            seed: 0,
        }
    }
}

/// Scores of one split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitScores {
    /// Kendall's τ-b of the ensemble mean vs the truth.
    pub kendall_tau: f64,
    /// Spearman's ρ of the ensemble mean vs the truth.
    pub spearman: f64,
    /// RMSE of the ensemble mean (target units).
    pub rmse: f64,
    /// Ridge baseline τ-b.
    pub ridge_kendall_tau: f64,
    /// Ridge baseline ρ.
    pub ridge_spearman: f64,
    /// Ridge baseline RMSE.
    pub ridge_rmse: f64,
    /// Spearman's ρ between the ensemble σ and the absolute error |μ − y| (is σ informative?).
    pub std_abs_err_spearman: f64,
    /// Ridge's CV-chosen λ.
    pub ridge_lambda: f64,
    /// Wall time of the ensemble fit, seconds.
    pub fit_seconds: f64,
}

/// Mean and (sample) standard deviation of a score over the splits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Mean over splits.
    pub mean: f64,
    /// Standard deviation over splits (divisor S−1; 0 for one split).
    pub std: f64,
}

impl Summary {
    fn of(v: impl Iterator<Item = f64>) -> Self {
        let v: Vec<f64> = v.collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = if n > 1.0 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self { mean, std }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4}", self.mean, self.std)
    }
}

/// The result of [`cross_validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CvReport {
    /// Number of samples in the file.
    pub n_samples: usize,
    /// Number of features.
    pub n_features: usize,
    /// Test samples per split.
    pub n_test: usize,
    /// The protocol used.
    pub options: CvOptions,
    /// Per-split scores, in split order.
    pub splits: Vec<SplitScores>,
}

impl CvReport {
    /// Summary of one per-split score.
    pub fn summary(&self, f: impl Fn(&SplitScores) -> f64) -> Summary {
        Summary::of(self.splits.iter().map(f))
    }

    /// One flat JSON object: `kendall_tau`, `spearman`, `rmse`, `ridge_kendall_tau`,
    /// `ridge_spearman`, `ridge_rmse`, `std_abs_err_spearman`, `fit_seconds` (means; each also
    /// with a `_std` twin), `n_samples`, `n_features`, `n_test`, `splits`, `test_frac`, `seed`,
    /// and `per_split` (the [`SplitScores`] array).
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        let fields: [(&str, Score); 8] = [
            ("kendall_tau", |s| s.kendall_tau),
            ("spearman", |s| s.spearman),
            ("rmse", |s| s.rmse),
            ("ridge_kendall_tau", |s| s.ridge_kendall_tau),
            ("ridge_spearman", |s| s.ridge_spearman),
            ("ridge_rmse", |s| s.ridge_rmse),
            ("std_abs_err_spearman", |s| s.std_abs_err_spearman),
            ("fit_seconds", |s| s.fit_seconds),
        ];
        for (k, f) in fields {
            let s = self.summary(f);
            o.insert(k.into(), s.mean.into());
            o.insert(format!("{k}_std"), s.std.into());
        }
        o.insert("n_samples".into(), self.n_samples.into());
        o.insert("n_features".into(), self.n_features.into());
        o.insert("n_test".into(), self.n_test.into());
        o.insert("splits".into(), self.options.splits.into());
        o.insert("test_frac".into(), self.options.test_frac.into());
        o.insert("seed".into(), self.options.seed.into());
        o.insert(
            "per_split".into(),
            serde_json::to_value(&self.splits).unwrap_or_default(),
        );
        serde_json::Value::Object(o)
    }
}

/// Runs `options.splits` random splits; in each, fits the ensemble (`config`, seed offset by
/// the split index) and the ridge baseline on the same training part and scores both on the
/// same test part.
///
/// Errors: [`Error::Config`] for bad options; [`Error::TooFewSamples`] when there are fewer
/// samples than splits, or a split would leave fewer than 2 test or 4 training samples.
pub fn cross_validate(samples: &Samples, config: &Config, options: &CvOptions) -> Result<CvReport> {
    config.validate()?;
    let n = samples.len();
    if options.splits == 0 {
        return Err(Error::Config("splits must be ≥ 1".into()));
    }
    if !(options.test_frac > 0.0 && options.test_frac < 1.0) {
        return Err(Error::Config(format!(
            "test_frac must be in (0, 1), got {}",
            options.test_frac
        )));
    }
    if n < options.splits {
        return Err(Error::TooFewSamples(format!(
            "{n} samples but {} splits were asked for",
            options.splits
        )));
    }
    let n_test = (options.test_frac * n as f64).round() as usize;
    if n_test < 2 || n - n_test < 4 {
        return Err(Error::TooFewSamples(format!(
            "{n} samples with test_frac {} leave {n_test} test and {} training samples (need ≥ 2 and ≥ 4)",
            options.test_frac,
            n - n_test
        )));
    }
    let mut splits = Vec::with_capacity(options.splits);
    for s in 0..options.splits {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        rng.set_stream(s as u64);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut rng);
        let (test_idx, train_idx) = perm.split_at(n_test);
        let (train, test) = (samples.subset(train_idx), samples.subset(test_idx));
        let cfg = Config {
            seed: config.seed.wrapping_add(s as u64),
            ..config.clone()
        };
        let t0 = Instant::now();
        let p = fit(&train, &cfg)?;
        let fit_seconds = t0.elapsed().as_secs_f64();
        let pred = p.predict(test.x())?;
        let ridge = Ridge::fit_cv(&train, cfg.seed)?;
        let rp = ridge.predict(test.x())?;
        let abs_err: Vec<f64> = pred
            .mean
            .iter()
            .zip(test.y())
            .map(|(a, b)| (a - b).abs())
            .collect();
        splits.push(SplitScores {
            kendall_tau: kendall_tau_b(&pred.mean, test.y())?,
            spearman: spearman(&pred.mean, test.y())?,
            rmse: rmse(&pred.mean, test.y())?,
            ridge_kendall_tau: kendall_tau_b(&rp, test.y())?,
            ridge_spearman: spearman(&rp, test.y())?,
            ridge_rmse: rmse(&rp, test.y())?,
            std_abs_err_spearman: spearman(&pred.std, &abs_err).unwrap_or(0.0),
            ridge_lambda: ridge.lambda(),
            fit_seconds,
        });
    }
    Ok(CvReport {
        n_samples: n,
        n_features: samples.n_features(),
        n_test,
        options: options.clone(),
        splits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::tests::{small, small_with_epochs, synthetic};

    #[test]
    fn reports_both_models_on_the_same_splits() {
        let s = synthetic(60, 21);
        let cfg = small_with_epochs(30);
        let opts = CvOptions {
            splits: 3,
            test_frac: 0.25,
            seed: 5,
        };
        let r = cross_validate(&s, &cfg, &opts).unwrap();
        assert_eq!(
            (r.n_samples, r.n_features, r.n_test, r.splits.len()),
            (60, 4, 15, 3)
        );
        let j = r.to_json();
        for k in [
            "kendall_tau",
            "spearman",
            "rmse",
            "ridge_kendall_tau",
            "n_samples",
            "n_features",
            "std_abs_err_spearman",
        ] {
            assert!(j[k].is_number(), "{k} missing in {j}");
        }
        assert!(r.summary(|x| x.ridge_kendall_tau).mean > 0.3);
        // Same options, same numbers (fit time aside).
        let again = cross_validate(&s, &cfg, &opts).unwrap();
        for (a, b) in r.splits.iter().zip(&again.splits) {
            assert_eq!(
                (a.kendall_tau, a.rmse, a.ridge_rmse),
                (b.kendall_tau, b.rmse, b.ridge_rmse)
            );
        }
    }

    #[test]
    fn too_few_rows_or_bad_options_are_errors() {
        let s = synthetic(8, 22);
        for (splits, test_frac, want, config) in [
            (10, 0.2, "8 samples but 10 splits", false),
            (2, 0.1, "leave 1 test", false),
            (2, 1.0, "test_frac must be in (0, 1)", true),
        ] {
            let opts = CvOptions {
                splits,
                test_frac,
                seed: 0,
            };
            let e = cross_validate(&s, &small(), &opts).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert_eq!(matches!(e, Error::Config(_)), config, "{e}");
        }
    }
}
