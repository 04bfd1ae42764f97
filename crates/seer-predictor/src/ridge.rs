//! Ridge regression baseline for the cross-validation report: closed form on standardised
//! features, with λ chosen by k-fold cross-validation on the training samples only.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::Samples;
use crate::error::{Error, Result};

/// Candidate penalties λ (per sample: the objective is mean squared error + λ‖β‖² on
/// standardised features), log-spaced from 1e-4 to 1e3.
pub fn lambda_grid() -> Vec<f64> {
    (0..=21)
        .map(|k| 10f64.powf(-4.0 + k as f64 / 3.0))
        .collect()
}

/// A fitted ridge model `ŷ = ȳ + Σ_j β_j (x_j − m_j)/s_j`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ridge {
    x_mean: Vec<f64>,
    x_std: Vec<f64>,
    y_mean: f64,
    beta: Vec<f64>,
    lambda: f64,
}

/// Solves the symmetric positive definite system `a·x = b` (`a`: `[n, n]` row-major) by Cholesky.
fn cholesky_solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut t = a[i * n + j];
            for k in 0..j {
                t -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = t / l;
        }
    }
    for i in 0..n {
        let mut t = b[i];
        for k in 0..i {
            t -= a[i * n + k] * b[k];
        }
        b[i] = t / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut t = b[i];
        for k in i + 1..n {
            t -= a[k * n + i] * b[k];
        }
        b[i] = t / a[i * n + i];
    }
    Some(b)
}

impl Ridge {
    /// Fits with a fixed per-sample penalty `lambda` (> 0). Errors: [`Error::Config`] for a bad
    /// λ, [`Error::TooFewSamples`] for fewer than 2 samples.
    pub fn fit_lambda(samples: &Samples, lambda: f64) -> Result<Self> {
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(Error::Config(format!(
                "ridge lambda must be finite and > 0, got {lambda}"
            )));
        }
        let n = samples.len();
        if n < 2 {
            return Err(Error::TooFewSamples(format!(
                "ridge needs at least 2 samples, got {n}"
            )));
        }
        let d = samples.n_features();
        let nf = n as f64;
        let mut x_mean = vec![0.0; d];
        for r in samples.x() {
            x_mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / nf);
        }
        let mut x_std = vec![0.0; d];
        for r in samples.x() {
            x_std
                .iter_mut()
                .zip(r)
                .zip(&x_mean)
                .for_each(|((s, v), m)| *s += (v - m) * (v - m) / nf);
        }
        x_std
            .iter_mut()
            .for_each(|s| *s = if *s > 1e-24 { s.sqrt() } else { 1.0 });
        let y_mean = samples.y().iter().sum::<f64>() / nf;
        let mut a = vec![0.0; d * d];
        let mut b = vec![0.0; d];
        let mut z = vec![0.0; d];
        for (r, &t) in samples.x().iter().zip(samples.y()) {
            z.iter_mut()
                .zip(r)
                .zip(x_mean.iter().zip(&x_std))
                .for_each(|((z, v), (m, s))| *z = (v - m) / s);
            for i in 0..d {
                b[i] += z[i] * (t - y_mean);
                for j in 0..d {
                    a[i * d + j] += z[i] * z[j];
                }
            }
        }
        for i in 0..d {
            a[i * d + i] += lambda * nf;
        }
        let beta = cholesky_solve(a, b).ok_or_else(|| {
            Error::NonFinite("ridge normal equations are not positive definite".into())
        })?;
        Ok(Self {
            x_mean,
            x_std,
            y_mean,
            beta,
            lambda,
        })
    }

    /// Fits with λ chosen from [`lambda_grid`] by `min(5, n)`-fold cross-validation (mean
    /// squared error) on `samples` only; folds come from a ChaCha8 shuffle seeded by `seed`.
    pub fn fit_cv(samples: &Samples, seed: u64) -> Result<Self> {
        let n = samples.len();
        if n < 4 {
            return Err(Error::TooFewSamples(format!(
                "ridge with CV needs at least 4 samples, got {n}"
            )));
        }
        let k = n.min(5);
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let folds: Vec<(Samples, Samples)> = (0..k)
            .map(|f| {
                let test: Vec<usize> = perm.iter().skip(f).step_by(k).copied().collect();
                let train: Vec<usize> = perm
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % k != f)
                    .map(|(_, &j)| j)
                    .collect();
                (samples.subset(&train), samples.subset(&test))
            })
            .collect();
        let mut best = (f64::INFINITY, f64::NAN);
        for lambda in lambda_grid() {
            let mut sse = 0.0;
            for (train, test) in &folds {
                let m = Self::fit_lambda(train, lambda)?;
                let p = m.predict(test.x())?;
                sse += p
                    .iter()
                    .zip(test.y())
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>();
            }
            if sse < best.0 {
                best = (sse, lambda);
            }
        }
        Self::fit_lambda(samples, best.1)
    }

    /// The chosen per-sample penalty λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Predictions for raw feature rows. [`Error::Shape`] for a row of the wrong length.
    pub fn predict<R: AsRef<[f64]>>(&self, rows: &[R]) -> Result<Vec<f64>> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.as_ref();
                if r.len() != self.beta.len() {
                    return Err(Error::Shape(format!(
                        "row {i} has {} features, expected {}",
                        r.len(),
                        self.beta.len()
                    )));
                }
                Ok(self.y_mean
                    + r.iter()
                        .zip(&self.beta)
                        .zip(self.x_mean.iter().zip(&self.x_std))
                        .map(|((v, b), (m, s))| b * (v - m) / s)
                        .sum::<f64>())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_linear_function() {
        let x: Vec<Vec<f64>> = (0..40)
            .map(|i| vec![i as f64, ((i * 7) % 11) as f64])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| 3.0 + 2.0 * r[0] - 0.5 * r[1]).collect();
        let s = Samples::new(vec!["a".into(), "b".into()], "t".into(), x, y).unwrap();
        let m = Ridge::fit_cv(&s, 0).unwrap();
        assert!(
            m.lambda() <= 1e-3,
            "noise-free data should pick a tiny lambda, got {}",
            m.lambda()
        );
        let p = m.predict(&[vec![100.0, 3.0]]).unwrap()[0];
        assert!((p - (3.0 + 200.0 - 1.5)).abs() < 0.5, "{p}");
    }

    #[test]
    fn cholesky_solves() {
        let x = cholesky_solve(vec![4.0, 2.0, 2.0, 3.0], vec![2.0, 1.0]).unwrap();
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
    }
}
