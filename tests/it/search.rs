//! Cross-crate tests of the policy search: every method stays within budget on real search
//! spaces, the barrier reaches the exact optimum of a separable instance, seeds reproduce.

use proptest::prelude::*;
use seer_barrier::synthetic::SeparableObjective;
use seer_barrier::{BoxError, Budget, Objective, PolicySpace, SearchConfig, mckp_optimum, search};
use seer_policy::{InputShape, ResidualPruning, SearchSpace, SpaceConfig, builtin};
use seernet::search::{Method, SearchOptions, find_policy, find_policy_with};

/// A smooth, non-separable accuracy-like objective over the encoding: concave per gene plus
/// pairwise couplings of neighbouring genes (so no method can exploit separability).
struct Smooth {
    a: Vec<f64>,
    c: Vec<f64>,
}

impl Smooth {
    fn new(dim: usize, seed: u64) -> Self {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        Self {
            a: (0..dim).map(|_| 0.2 + next()).collect(),
            c: (0..dim).map(|_| 0.3 * (next() - 0.5)).collect(),
        }
    }

    fn value_grad(&self, x: &[f64], g: Option<&mut [f64]>) -> f64 {
        let d = x.len();
        let mut v = 0.0;
        for j in 0..d {
            v += self.a[j] * (1.0 + x[j]).ln();
            if j + 1 < d {
                v += self.c[j] * x[j] * x[j + 1];
            }
        }
        if let Some(g) = g {
            for j in 0..d {
                g[j] = self.a[j] / (1.0 + x[j]);
                if j + 1 < d {
                    g[j] += self.c[j] * x[j + 1];
                }
                if j > 0 {
                    g[j] += self.c[j - 1] * x[j - 1];
                }
            }
        }
        v
    }
}

impl Objective for Smooth {
    fn dim(&self) -> usize {
        self.a.len()
    }
    fn mean(&self, xs: &[f64], mean: &mut [f64]) -> Result<(), BoxError> {
        for (r, m) in xs.chunks(self.dim()).zip(mean) {
            *m = self.value_grad(r, None);
        }
        Ok(())
    }
    fn mean_grad(&self, xs: &[f64], mean: &mut [f64], grad: &mut [f64]) -> Result<(), BoxError> {
        let d = self.dim();
        for ((r, m), g) in xs.chunks(d).zip(mean).zip(grad.chunks_mut(d)) {
            *m = self.value_grad(r, Some(g));
        }
        Ok(())
    }
}

fn space(arch: &str, input: &str, cfg: SpaceConfig) -> SearchSpace {
    let spec = builtin(arch, Some(input.parse::<InputShape>().unwrap()), None).unwrap();
    SearchSpace::new(spec, cfg).unwrap()
}

/// Quick settings for every method (tests run unoptimised).
fn options(method: Method, seed: u64) -> SearchOptions {
    let mut o = SearchOptions::new(method, seed);
    o.barrier.starts = 2;
    o.barrier.starts_per_task = 1;
    o.barrier.stages = 3;
    o.barrier.steps_per_stage = 15;
    o.barrier.pgd_steps = 60;
    o.barrier.pgd_step = 0.02;
    o.evo.population = 40;
    o.evo.parents = 10;
    o.evo.crossover = 20;
    o.evo.mutation = 10;
    o.evo.generations = 4;
    o.random_evaluations = 60;
    o
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn every_method_returns_a_policy_within_budget(
        seed in 0u64..1000,
        arch in 0usize..2,
        masked in any::<bool>(),
        shared in any::<bool>(),
        prune_mask in 1usize..16,
        bits_mask in 1usize..64,
        frac in 0.0f64..1.0,
        size_too in any::<bool>(),
    ) {
        let prune: Vec<f64> = [0.0, 0.25, 0.5, 0.75].iter().enumerate()
            .filter(|(i, _)| prune_mask >> i & 1 == 1).map(|(_, &p)| p).collect();
        let bits: Vec<u32> = [2, 3, 4, 5, 6, 8].iter().enumerate()
            .filter(|(i, _)| bits_mask >> i & 1 == 1).map(|(_, &b)| b).collect();
        let cfg = SpaceConfig {
            prune_ratios: prune,
            wbits: bits.clone(),
            abits: bits,
            residual_pruning: if masked { ResidualPruning::Masked } else { ResidualPruning::Tied },
            shared_bits: shared,
            ..SpaceConfig::default()
        };
        let s = if arch == 0 { space("lenet5", "28x28x1", cfg) } else { space("resnet20", "16x16x3", cfg) };
        let lo = s.totals_indices(&s.cheapest()).unwrap();
        let hi = s.totals_indices(&s.most_expensive()).unwrap();
        let budget = Budget {
            max_bops: Some((lo.bops as f64 + frac * (hi.bops - lo.bops) as f64).floor()),
            max_size_bits: size_too.then(|| (lo.size_bits as f64 + (1.0 - frac) * (hi.size_bits - lo.size_bits) as f64).floor()),
        };
        let obj = Smooth::new(s.dim(), seed);
        for method in [Method::Barrier, Method::Pgd, Method::Evo, Method::Random] {
            let f = find_policy_with(&s, &obj, &budget, &options(method, seed)).unwrap();
            let t = s.totals_indices(&f.indices).unwrap();
            prop_assert!(budget.admits(&seer_barrier::Cost { bops: t.bops as f64, size_bits: t.size_bits as f64 }),
                "{method}: {t:?} over {budget:?}");
            prop_assert_eq!(t.bops, f.bops);
        }
    }
}

#[test]
fn barrier_reaches_99_percent_of_the_exact_optimum() {
    // ResNet-20 without pruning, shared bits: BOPs are separable per unit, so the best policy
    // of a separable objective is a multiple-choice knapsack solved exactly.
    let s = space(
        "resnet20",
        "32x32x3",
        SpaceConfig {
            prune_ratios: vec![0.0],
            residual_pruning: ResidualPruning::Masked,
            shared_bits: true,
            ..SpaceConfig::default()
        },
    );
    let d = s.dim();
    let zero = vec![0; d];
    let bops = |idx: &[usize]| s.totals_indices(idx).unwrap().bops as f64;
    let base = bops(&zero);
    let cards: Vec<usize> = s.genes().iter().map(|g| g.candidates.len()).collect();
    let table: Vec<Vec<f64>> = (0..d)
        .map(|g| {
            (0..cards[g])
                .map(|k| {
                    let mut i = zero.clone();
                    i[g] = k;
                    bops(&i) - base
                })
                .collect()
        })
        .collect();
    // Concave values: diminishing returns, unit-dependent.
    let values: Vec<Vec<f64>> = (0..d)
        .map(|g| {
            (0..cards[g])
                .map(|k| (1.0 + g as f64 % 5.0) * (1.0 - 0.6f64.powi(k as i32)))
                .collect()
        })
        .collect();
    let obj = SeparableObjective {
        coords: (0..d).map(|g| s.gene_coords(g)).collect(),
        values: values.clone(),
    };
    let groups: Vec<Vec<(f64, f64)>> = table
        .iter()
        .zip(&values)
        .map(|(t, v)| t.iter().copied().zip(v.iter().copied()).collect())
        .collect();
    let (lo, hi) = (bops(&s.cheapest()), bops(&s.most_expensive()));
    let ps = PolicySpace::new(&s);
    for frac in [0.15, 0.5, 0.85] {
        let b = lo + frac * (hi - lo);
        let (_, opt) = mckp_optimum(&groups, b - base).unwrap();
        let r = search(&ps, &obj, &Budget::bops(b), &SearchConfig::default()).unwrap();
        assert!(r.cost.bops <= b);
        let got = obj.value(&r.indices);
        assert!(got >= 0.99 * opt, "budget {b}: {got} < 99% of {opt}");
    }
}

#[test]
fn same_seed_same_policy() {
    let s = space(
        "resnet20",
        "16x16x3",
        SpaceConfig {
            residual_pruning: ResidualPruning::Masked,
            ..SpaceConfig::default()
        },
    );
    let obj = Smooth::new(s.dim(), 5);
    let lo = s.totals_indices(&s.cheapest()).unwrap().bops as f64;
    let hi = s.totals_indices(&s.most_expensive()).unwrap().bops as f64;
    let budget = Budget::bops(lo + 0.3 * (hi - lo));
    for method in [Method::Barrier, Method::Pgd, Method::Evo, Method::Random] {
        let a = find_policy_with(&s, &obj, &budget, &options(method, 9)).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| find_policy_with(&s, &obj, &budget, &options(method, 9)).unwrap());
        assert_eq!(a.indices, b.indices, "{method}");
        assert_eq!(a.policy, b.policy, "{method}");
    }
}

#[test]
fn budget_below_the_cheapest_policy_is_an_error_naming_the_minimum() {
    let s = space("lenet5", "28x28x1", SpaceConfig::default());
    let obj = Smooth::new(s.dim(), 1);
    let lo = s.totals_indices(&s.cheapest()).unwrap();
    for method in [Method::Barrier, Method::Evo] {
        let e = find_policy_with(
            &s,
            &obj,
            &Budget::bops(lo.bops as f64 - 1.0),
            &options(method, 0),
        )
        .unwrap_err();
        // The engine's error is kept whole: matchable, and its message is in the chain.
        assert!(
            matches!(
                e,
                seernet::Error::Barrier(seer_barrier::Error::BudgetBelowMinimum { .. })
            ),
            "{e:?}"
        );
        let e = seernet::error::chain(&e);
        assert!(
            e.contains(&format!("cheapest policy's BOPs of {}", lo.bops)),
            "{e}"
        );
        let e =
            find_policy_with(&s, &obj, &Budget::size_bits(10.0), &options(method, 0)).unwrap_err();
        let e = seernet::error::chain(&e);
        assert!(e.contains(&format!("{}", lo.size_bits)), "{e}");
    }
}

#[path = "../../crates/seernet/benches/common/few_labels.rs"]
mod few_labels;

/// Issue 13, case 8 ("budget left on the table"): at 7,000,000 BOPs on a small space the
/// barrier stopped at 4,798,720 BOPs (μ 85.68) while evo found 6,872,320 BOPs (μ 86.58). The
/// reporter's predictor is not available; this is the closest deterministic rebuild: the main
/// job's LeNet-5 space (where both of the issue's costs are attainable) and an ensemble fitted
/// on 30 synthetic labels (seed 6 of the search bench's part 3). The previous discretisation
/// (4 starts, single-gene fill only) stops at 5,255,680 BOPs (75% of the budget), 0.45 points
/// of μ below evo; the barrier now uses at least 95% of it and is within 0.5 points of evo.
#[test]
fn barrier_uses_the_budget_like_evo_on_a_small_space_issue_13_case_8() {
    let space = few_labels::lenet5_space();
    let predictor = few_labels::few_label_predictor(&space, 6, 30);
    let budget = Budget::bops(7_000_000.0);
    let mut evo = SearchOptions::new(Method::Evo, 0);
    evo.evo.time_limit = None;
    evo.evo.generations = 200;
    let evo = find_policy(&space, &predictor, &budget, &evo).unwrap();
    let run = |barrier: SearchConfig| {
        let mut o = SearchOptions::new(Method::Barrier, 0);
        o.barrier = barrier;
        find_policy(&space, &predictor, &budget, &o).unwrap()
    };
    let previous = run(SearchConfig {
        starts: 4,
        pairs: 0,
        ..SearchConfig::default()
    });
    assert!(
        previous.bops < 6_650_000 && previous.predicted_mean < evo.predicted_mean - 0.3,
        "the rebuild no longer reproduces the issue: previous {} BOPs, μ {} vs evo {}",
        previous.bops,
        previous.predicted_mean,
        evo.predicted_mean
    );
    let bar = run(SearchConfig::default());
    assert!(bar.bops <= 7_000_000);
    assert!(
        bar.bops >= 6_650_000,
        "barrier uses {} of 7,000,000 BOPs",
        bar.bops
    );
    assert!(
        bar.predicted_mean >= evo.predicted_mean - 0.5,
        "barrier μ {} vs evo μ {}",
        bar.predicted_mean,
        evo.predicted_mean
    );
}
