//! Ranking and error metrics for predictor quality (docs/method.md §4): tie-aware Kendall's τ-b,
//! Spearman's ρ (Pearson on average ranks), Pearson's r and RMSE.
//!
//! Every function takes two equal-length slices and returns [`Error::Shape`] on a length
//! mismatch and [`Error::TooFewSamples`] when the statistic is undefined (fewer than two
//! points, or one side constant), never NaN.

use crate::error::{Error, Result};

/// Err(Shape) "`what`: slices of length .. and .." unless `a` and `b` have the same length.
fn check_same_len(a: &[f64], b: &[f64], what: &str) -> Result<()> {
    if a.len() == b.len() {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "{what}: slices of length {} and {}",
        a.len(),
        b.len()
    )))
}

fn check(a: &[f64], b: &[f64], what: &str) -> Result<()> {
    check_same_len(a, b, what)?;
    if a.len() < 2 {
        return Err(Error::TooFewSamples(format!(
            "{what} needs at least 2 points, got {}",
            a.len()
        )));
    }
    if let Some(v) = a.iter().chain(b).find(|v| !v.is_finite()) {
        return Err(Error::NonFinite(format!("{what}: input value {v}")));
    }
    Ok(())
}

/// Kendall's τ-b between `a` and `b` (ties handled as in Kendall 1945 / scipy's default):
/// τ_b = (n_c − n_d) / √((n₀ − n₁)(n₀ − n₂)), n₀ = n(n−1)/2, n₁, n₂ the tied pairs in `a`, `b`.
///
/// O(n²) pair count; exact for any n (fine up to tens of thousands of points).
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Result<f64> {
    check(a, b, "Kendall's tau")?;
    let n = a.len();
    let (mut s, mut tie_a, mut tie_b) = (0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[j].partial_cmp(&a[i]).map_or(0, |o| o as i64);
            let db = b[j].partial_cmp(&b[i]).map_or(0, |o| o as i64);
            s += da * db;
            tie_a += i64::from(da == 0);
            tie_b += i64::from(db == 0);
        }
    }
    let n0 = (n * (n - 1) / 2) as i64;
    let den = ((n0 - tie_a) as f64) * ((n0 - tie_b) as f64);
    if den <= 0.0 {
        return Err(Error::TooFewSamples(
            "Kendall's tau is undefined: one side is constant".into(),
        ));
    }
    Ok(s as f64 / den.sqrt())
}

/// Average ranks (1-based; ties share the mean of their positions).
pub fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut k = 0;
    while k < idx.len() {
        let mut e = k + 1;
        while e < idx.len() && v[idx[e]] == v[idx[k]] {
            e += 1;
        }
        let avg = (k + e + 1) as f64 / 2.0; // mean of 1-based positions k+1..=e
        for &i in &idx[k..e] {
            r[i] = avg;
        }
        k = e;
    }
    r
}

/// Pearson's correlation coefficient r.
pub fn pearson(a: &[f64], b: &[f64]) -> Result<f64> {
    check(a, b, "Pearson's r")?;
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return Err(Error::TooFewSamples(
            "correlation is undefined: one side is constant".into(),
        ));
    }
    Ok((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Spearman's ρ: Pearson's r between average ranks (tie-aware).
pub fn spearman(a: &[f64], b: &[f64]) -> Result<f64> {
    check(a, b, "Spearman's rho")?;
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Root-mean-square error √(mean (a−b)²), in the units of the inputs (accuracy points).
pub fn rmse(pred: &[f64], truth: &[f64]) -> Result<f64> {
    check_same_len(pred, truth, "RMSE")?;
    if pred.is_empty() {
        return Err(Error::TooFewSamples("RMSE of no points".into()));
    }
    let s: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t) * (p - t)).sum();
    let r = (s / pred.len() as f64).sqrt();
    if r.is_finite() {
        Ok(r)
    } else {
        Err(Error::NonFinite(format!("RMSE is {r}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }

    #[test]
    fn kendall_hand_computed() {
        // 6 pairs: 4 concordant, 2 discordant, no ties -> (4-2)/6.
        close(
            kendall_tau_b(&[1., 2., 3., 4.], &[2., 1., 4., 3.]).unwrap(),
            1.0 / 3.0,
        );
        // Ties: pair (1,2) tied in a, pair (1,3) tied in b; 4 concordant, 0 discordant.
        // n0 = 6, n1 = n2 = 1 -> 4 / sqrt(5 * 5) = 0.8 (scipy.stats.kendalltau agrees).
        close(
            kendall_tau_b(&[1., 2., 2., 3.], &[1., 3., 2., 3.]).unwrap(),
            0.8,
        );
        close(kendall_tau_b(&[1., 2., 3.], &[3., 2., 1.]).unwrap(), -1.0);
        assert!(kendall_tau_b(&[1., 1., 1.], &[1., 2., 3.]).is_err());
        assert!(kendall_tau_b(&[1.], &[1.]).is_err());
        assert!(kendall_tau_b(&[1., 2.], &[1.]).is_err());
    }

    #[test]
    fn spearman_hand_computed() {
        // No ties: d = (1,-1,1,-1,0), 1 - 6*4/(5*24) = 0.8.
        close(
            spearman(&[1., 2., 3., 4., 5.], &[2., 1., 4., 3., 5.]).unwrap(),
            0.8,
        );
        // Ties: ranks (1, 2.5, 2.5, 4) and (1, 3.5, 2, 3.5) -> 3.75 / 4.5.
        assert_eq!(average_ranks(&[1., 2., 2., 3.]), vec![1.0, 2.5, 2.5, 4.0]);
        close(
            spearman(&[1., 2., 2., 3.], &[1., 3., 2., 3.]).unwrap(),
            3.75 / 4.5,
        );
        assert!(spearman(&[2., 2.], &[1., 2.]).is_err());
    }

    #[test]
    fn rmse_and_pearson() {
        close(rmse(&[1., 2., 3.], &[1., 2., 6.]).unwrap(), 3.0f64.sqrt());
        close(pearson(&[1., 2., 3.], &[2., 4., 6.]).unwrap(), 1.0);
        assert!(rmse(&[], &[]).is_err());
    }
}
