//! Exact optimum of a separable problem: the multiple-choice knapsack, by dynamic programming
//! over Pareto fronts. The reference the barrier search is measured against (issue 6, item 4).

/// Best choice of one option per group under `budget`.
///
/// `groups[g]` lists the options of group `g` as `(cost, value)`; the result maximises the
/// summed value subject to the summed cost ≤ `budget`, returning the chosen option per group and
/// that value, or `None` when even the cheapest choice exceeds the budget.
///
/// Dynamic programming over (cost, value) fronts: after each group only non-dominated partial
/// sums are kept (a partial sum with no lower cost and no higher value than another can never
/// complete to a better solution), so the result is exact. Exact in floating point as long as
/// the costs are integers below 2^53 (BOPs and size bits are). Time and memory grow with the
/// number of distinct non-dominated partial costs.
pub fn mckp_optimum(groups: &[Vec<(f64, f64)>], budget: f64) -> Option<(Vec<usize>, f64)> {
    /// A partial solution: cost, value, (index into the previous front, option).
    #[derive(Clone, Copy)]
    struct State {
        cost: f64,
        value: f64,
        back: (usize, usize),
    }
    let mut fronts: Vec<Vec<State>> = vec![vec![State {
        cost: 0.0,
        value: 0.0,
        back: (0, 0),
    }]];
    for options in groups {
        let prev = fronts.last().expect("non-empty");
        let mut next: Vec<State> = Vec::with_capacity(prev.len() * options.len());
        for (si, s) in prev.iter().enumerate() {
            for (oi, &(c, v)) in options.iter().enumerate() {
                let cost = s.cost + c;
                if cost <= budget {
                    next.push(State {
                        cost,
                        value: s.value + v,
                        back: (si, oi),
                    });
                }
            }
        }
        if next.is_empty() {
            return None;
        }
        next.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(b.value.total_cmp(&a.value)));
        let mut kept: Vec<State> = Vec::with_capacity(next.len());
        for s in next {
            if kept.last().is_none_or(|k| s.value > k.value) {
                kept.push(s);
            }
        }
        fronts.push(kept);
    }
    let last = fronts.last().expect("non-empty");
    let (mut si, best) = last
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.value.total_cmp(&b.1.value))
        .map(|(i, s)| (i, s.value))?;
    let mut choice = vec![0; groups.len()];
    for g in (0..groups.len()).rev() {
        let s = fronts[g + 1][si];
        choice[g] = s.back.1;
        si = s.back.0;
    }
    Some((choice, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(groups: &[Vec<(f64, f64)>], budget: f64) -> Option<f64> {
        let n: usize = groups.iter().map(Vec::len).product();
        let mut best: Option<f64> = None;
        for mut code in 0..n {
            let (mut c, mut v) = (0.0, 0.0);
            for g in groups {
                let o = g[code % g.len()];
                code /= g.len();
                c += o.0;
                v += o.1;
            }
            if c <= budget {
                best = Some(best.map_or(v, |b: f64| b.max(v)));
            }
        }
        best
    }

    #[test]
    fn matches_brute_force() {
        let mut state = 12345u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..50 {
            let groups: Vec<Vec<(f64, f64)>> = (0..5)
                .map(|_| (0..3).map(|_| ((next() * 10.0).floor(), next())).collect())
                .collect();
            let budget = (next() * 30.0).floor();
            let dp = mckp_optimum(&groups, budget);
            let bf = brute(&groups, budget);
            assert_eq!(dp.is_some(), bf.is_some());
            if let (Some((choice, v)), Some(b)) = (dp, bf) {
                assert!((v - b).abs() < 1e-12);
                let c: f64 = choice.iter().zip(&groups).map(|(&o, g)| g[o].0).sum();
                let val: f64 = choice.iter().zip(&groups).map(|(&o, g)| g[o].1).sum();
                assert!(c <= budget);
                assert!((val - v).abs() < 1e-12);
            }
        }
    }
}
