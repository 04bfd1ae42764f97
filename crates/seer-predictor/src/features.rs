//! Derived inputs of the ensemble: the quantization-noise power `2^(−2b)` of every bit-width
//! column (docs/method.md §4, "Noise features").
//!
//! A uniform quantizer of `b` bits over a fixed range has a step `Δ ∝ 2^(−b)` and an error
//! power `Δ²/12 ∝ 2^(−2b)` (the "6 dB per bit" rule), and a network's accuracy drop is close
//! to additive in the per-layer noise powers (the premise of HAWQ's and FIT's sensitivity
//! scores). In the raw bit-width the drop is strongly convex: 2 → 3 bits costs far more than
//! 5 → 6. With a few dozen to a few hundred labels an MLP on the raw bit-width does not learn
//! that curve well; given the noise power as an extra input it does not have to. The raw
//! columns stay inputs, so nothing the ensemble could learn before is lost, and the gradient
//! ∇ₓμ is taken with respect to the raw columns through the chain rule.

use seer_policy::GeneKind;

/// Lowest and highest bit-width a column may hold in the training rows to get a noise input.
const BITS_RANGE: (f64, f64) = (1.0, 32.0);

/// Whether a feature name names a bit-width: `bits_<i>`, `wbits_<i>`, `abits_<i>` (the CSV and
/// pipeline columns, [`seer_policy::SearchSpace::feature_names`]) or `<unit>.bits`,
/// `<unit>.wbits`, `<unit>.abits` ([`crate::space::gene_feature_names`]).
pub fn is_bit_width_name(name: &str) -> bool {
    let kind = GeneKind::parse_feature(name)
        .map(|(k, _)| k)
        .or_else(|| GeneKind::from_name(name.rsplit_once('.')?.1));
    matches!(
        kind,
        Some(GeneKind::Bits | GeneKind::WBits | GeneKind::ABits)
    )
}

/// The columns that get a noise input: named as a bit-width ([`is_bit_width_name`]) and, in
/// every training row, a value in `[1, 32]` (a column of other values is not a bit-width,
/// whatever its name). Ascending.
pub(crate) fn noise_columns(names: &[String], rows: &[Vec<f64>]) -> Vec<usize> {
    names
        .iter()
        .enumerate()
        .filter(|(j, n)| {
            is_bit_width_name(n)
                && rows
                    .iter()
                    .all(|r| (BITS_RANGE.0..=BITS_RANGE.1).contains(&r[*j]))
        })
        .map(|(j, _)| j)
        .collect()
}

/// Noise power `2^(−2b)` of a `b`-bit uniform quantizer relative to its range (unitless; the
/// 6 dB-per-bit rule, docs/method.md §4 "Noise features"). Any finite `b`; overflows to ∞
/// below `b ≈ −512`.
///
/// ```
/// assert_eq!(seer_predictor::noise_power(4.0), 1.0 / 256.0);
/// assert!(seer_predictor::noise_power(2.0) > 16.0 * seer_predictor::noise_power(4.0) - 1e-12);
/// ```
#[inline]
pub fn noise_power(b: f64) -> f64 {
    (-2.0 * b).exp2()
}

/// `d noise / d b = −2·ln 2 · 2^(−2b)`.
#[inline]
pub(crate) fn noise_grad(b: f64) -> f64 {
    -2.0 * std::f64::consts::LN_2 * noise_power(b)
}

/// The ensemble's input row for raw row `row`: the raw values, then `noise_power(row[j])` for every
/// `j` in `cols`.
pub(crate) fn expand(row: &[f64], cols: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(row.len() + cols.len());
    out.extend_from_slice(row);
    out.extend(cols.iter().map(|&j| noise_power(row[j])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_width_names() {
        for n in [
            "bits_0",
            "wbits_12",
            "abits_3",
            "layer1.0.conv1.wbits",
            "fc.abits",
            "c.bits",
        ] {
            assert!(is_bit_width_name(n), "{n}");
        }
        for n in [
            "prune_0", "c.prune", "bits", "wbits_x", "x0", "top1", "mybits_1", "c.bitsy",
        ] {
            assert!(!is_bit_width_name(n), "{n}");
        }
    }

    #[test]
    fn columns_need_the_name_and_bit_width_values() {
        let names: Vec<String> = ["prune_0", "bits_0", "wbits_1", "abits_1"]
            .map(String::from)
            .into();
        let rows = vec![vec![0.5, 2.0, 8.0, 0.5], vec![0.0, 4.0, 3.0, 6.0]];
        // abits_1 holds 0.5 in one row: not a bit-width column.
        assert_eq!(noise_columns(&names, &rows), vec![1, 2]);
        assert_eq!(
            expand(&rows[0], &[1, 2]),
            vec![0.5, 2.0, 8.0, 0.5, 1.0 / 16.0, 1.0 / 65536.0]
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for b in [1.0, 2.0, 3.5, 8.0] {
            let h = 1e-6;
            let fd = (noise_power(b + h) - noise_power(b - h)) / (2.0 * h);
            assert!(
                (fd - noise_grad(b)).abs() <= 1e-6 * noise_grad(b).abs(),
                "{b}"
            );
        }
    }
}
