//! Separable synthetic problems: per-gene tables of value and cost, interpolated piecewise
//! linearly between candidates. Their exact optimum is known ([`crate::mckp_optimum`]), so
//! tests and the `search` benchmark measure the optimizer against it.

use crate::error::BoxError;
use crate::model::{Cost, Objective, Space};

/// Piecewise-linear interpolation of `ys` over the ascending knots `xs` at `x` (clamped), and
/// its slope (the right-hand segment at a knot, the last segment at the upper end).
fn interp(xs: &[f64], ys: &[f64], x: f64) -> (f64, f64) {
    if xs.len() == 1 {
        return (ys[0], 0.0);
    }
    let x = x.clamp(xs[0], xs[xs.len() - 1]);
    let mut s = 0;
    while s + 2 < xs.len() && x >= xs[s + 1] {
        s += 1;
    }
    let slope = (ys[s + 1] - ys[s]) / (xs[s + 1] - xs[s]);
    (ys[s] + slope * (x - xs[s]), slope)
}

/// μ(x) = Σ_g v_g(x_g), with v_g the piecewise-linear interpolation of `values[g]` over
/// `coords[g]` (concave tables give a concave objective). On candidates it equals the table sum.
#[derive(Debug, Clone)]
pub struct SeparableObjective {
    /// Candidate coordinates per gene (ascending).
    pub coords: Vec<Vec<f64>>,
    /// Value of each candidate per gene.
    pub values: Vec<Vec<f64>>,
}

impl SeparableObjective {
    /// Exact value of a discrete policy.
    pub fn value(&self, idx: &[usize]) -> f64 {
        idx.iter().zip(&self.values).map(|(&k, v)| v[k]).sum()
    }
}

impl Objective for SeparableObjective {
    fn dim(&self) -> usize {
        self.coords.len()
    }

    fn mean(&self, xs: &[f64], mean: &mut [f64]) -> Result<(), BoxError> {
        let d = self.dim();
        for (row, out) in xs.chunks(d).zip(mean.iter_mut()) {
            *out = row
                .iter()
                .enumerate()
                .map(|(g, &x)| interp(&self.coords[g], &self.values[g], x).0)
                .sum();
        }
        Ok(())
    }

    fn mean_grad(&self, xs: &[f64], mean: &mut [f64], grad: &mut [f64]) -> Result<(), BoxError> {
        let d = self.dim();
        for ((row, out), gr) in xs.chunks(d).zip(mean.iter_mut()).zip(grad.chunks_mut(d)) {
            *out = 0.0;
            for (g, &x) in row.iter().enumerate() {
                let (v, s) = interp(&self.coords[g], &self.values[g], x);
                *out += v;
                gr[g] = s;
            }
        }
        Ok(())
    }
}

/// A space whose costs are sums of per-gene tables (interpolated piecewise linearly in the
/// relaxation): the multiple-choice-knapsack structure of a network without pruning.
#[derive(Debug, Clone)]
pub struct TableSpace {
    /// Candidate coordinates per gene (ascending).
    pub coords: Vec<Vec<f64>>,
    /// BOPs contributed by each candidate of each gene.
    pub bops: Vec<Vec<f64>>,
    /// Size bits contributed by each candidate of each gene.
    pub size_bits: Vec<Vec<f64>>,
    /// Cost present whatever the policy (fixed layers).
    pub fixed: Cost,
}

impl Space for TableSpace {
    fn dim(&self) -> usize {
        self.coords.len()
    }

    fn coords(&self, gene: usize) -> &[f64] {
        &self.coords[gene]
    }

    fn cost(&self, idx: &[usize]) -> Result<Cost, BoxError> {
        let mut c = self.fixed;
        for (g, &k) in idx.iter().enumerate() {
            c.bops += self.bops[g][k];
            c.size_bits += self.size_bits[g][k];
        }
        Ok(c)
    }

    fn relaxed_cost(&self, x: &[f64], gb: &mut [f64], gs: &mut [f64]) -> Result<Cost, BoxError> {
        let mut c = self.fixed;
        for (g, &v) in x.iter().enumerate() {
            let (b, sb) = interp(&self.coords[g], &self.bops[g], v);
            let (s, ss) = interp(&self.coords[g], &self.size_bits[g], v);
            c.bops += b;
            c.size_bits += s;
            gb[g] = sb;
            gs[g] = ss;
        }
        Ok(c)
    }

    fn cheapest(&self) -> Vec<usize> {
        self.bops.iter().map(|t| argm(t, |a, b| a < b)).collect()
    }

    fn most_expensive(&self) -> Vec<usize> {
        self.bops.iter().map(|t| argm(t, |a, b| a > b)).collect()
    }
}

fn argm(t: &[f64], better: impl Fn(f64, f64) -> bool) -> usize {
    let mut best = 0;
    for (i, &v) in t.iter().enumerate() {
        if better(v, t[best]) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_hits_knots_and_slopes() {
        let xs = [0.0, 0.5, 1.0];
        let ys = [1.0, 3.0, 4.0];
        assert_eq!(interp(&xs, &ys, 0.5).0, 3.0);
        assert_eq!(interp(&xs, &ys, 0.25), (2.0, 4.0));
        assert_eq!(interp(&xs, &ys, 1.0), (4.0, 2.0));
        assert_eq!(interp(&xs, &ys, 2.0).0, 4.0);
    }
}
