//! Unit tests of the search against exact optima of separable instances.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::synthetic::{SeparableObjective, TableSpace};
use crate::*;

/// `genes` genes with `card` candidates: concave increasing values, convex increasing BOPs
/// (bits²-like), linear size.
fn instance(seed: u64, genes: usize, card: usize) -> (TableSpace, SeparableObjective) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let coords: Vec<Vec<f64>> = (0..genes)
        .map(|_| {
            (0..card)
                .map(|k| {
                    if card == 1 {
                        0.0
                    } else {
                        k as f64 / (card - 1) as f64
                    }
                })
                .collect()
        })
        .collect();
    let mut values = Vec::new();
    let mut bops = Vec::new();
    let mut size = Vec::new();
    for _ in 0..genes {
        let mut inc: Vec<f64> = (1..card).map(|_| rng.random_range(0.05..2.0)).collect();
        inc.sort_by(|a, b| b.total_cmp(a));
        let mut v = vec![0.0];
        for i in inc {
            v.push(v.last().unwrap() + i);
        }
        values.push(v);
        let w = rng.random_range(1.0..20.0_f64).round();
        bops.push((0..card).map(|k| w * ((k + 2) * (k + 2)) as f64).collect());
        size.push((0..card).map(|k| w * (k + 2) as f64).collect());
    }
    let space = TableSpace {
        coords: coords.clone(),
        bops,
        size_bits: size,
        fixed: Cost {
            bops: 100.0,
            size_bits: 10.0,
        },
    };
    (space, SeparableObjective { coords, values })
}

fn bops_range(s: &TableSpace) -> (f64, f64) {
    (
        s.cost(&s.cheapest()).unwrap().bops,
        s.cost(&s.most_expensive()).unwrap().bops,
    )
}

fn dp(space: &TableSpace, obj: &SeparableObjective, budget: f64) -> f64 {
    let groups: Vec<Vec<(f64, f64)>> = space
        .bops
        .iter()
        .zip(&obj.values)
        .map(|(c, v)| c.iter().zip(v).map(|(&c, &v)| (c, v)).collect())
        .collect();
    mckp_optimum(&groups, budget - space.fixed.bops).unwrap().1
}

#[test]
fn barrier_reaches_99_percent_of_the_dp_optimum() {
    let (space, obj) = instance(42, 18, 4);
    let (lo, hi) = bops_range(&space);
    let mut ok = 0;
    for i in 1..=10 {
        let b = lo + (hi - lo) * i as f64 / 11.0;
        let out = search(&space, &obj, &Budget::bops(b), &SearchConfig::default()).unwrap();
        assert!(out.cost.bops <= b);
        assert!((obj.value(&out.indices) - out.predicted_mean).abs() < 1e-9);
        let opt = dp(&space, &obj, b);
        if out.predicted_mean >= 0.99 * opt {
            ok += 1;
        }
    }
    assert!(ok >= 9, "only {ok}/10 budgets reached 99% of the optimum");
}

#[test]
fn same_seed_same_policy_any_thread_count() {
    let (space, obj) = instance(7, 12, 4);
    let (lo, hi) = bops_range(&space);
    let budget = Budget::bops(0.5 * (lo + hi));
    let cfg = SearchConfig {
        seed: 3,
        ..SearchConfig::default()
    };
    let a = search(&space, &obj, &budget, &cfg).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = pool.install(|| search(&space, &obj, &budget, &cfg).unwrap());
    assert_eq!(a.indices, b.indices);
    assert_eq!(a.continuous, b.continuous);
    assert_eq!(a.trace.starts, b.trace.starts);
    let c = search(&space, &obj, &budget, &SearchConfig { seed: 4, ..cfg }).unwrap();
    assert_ne!(a.continuous, c.continuous);
}

#[test]
fn budget_below_the_cheapest_policy_states_the_minimum() {
    let (space, obj) = instance(1, 5, 3);
    let (lo, _) = bops_range(&space);
    let err = search(
        &space,
        &obj,
        &Budget::bops(lo - 1.0),
        &SearchConfig::default(),
    )
    .unwrap_err();
    match err {
        Error::BudgetBelowMinimum {
            kind: CostKind::Bops,
            minimum,
            ..
        } => assert_eq!(minimum, lo),
        e => panic!("unexpected {e}"),
    }
    // Exactly the minimum is feasible and returns the cheapest policy.
    let out = search(&space, &obj, &Budget::bops(lo), &SearchConfig::default()).unwrap();
    assert_eq!(out.indices, space.cheapest());
    assert!(matches!(
        search(&space, &obj, &Budget::default(), &SearchConfig::default()),
        Err(Error::InvalidBudget(_))
    ));
    assert!(matches!(
        search(
            &space,
            &obj,
            &Budget::bops(f64::NAN),
            &SearchConfig::default()
        ),
        Err(Error::InvalidBudget(_))
    ));
}

#[test]
fn both_budgets_are_respected() {
    let (space, obj) = instance(9, 10, 4);
    let full = space.cost(&space.most_expensive()).unwrap();
    let budget = Budget {
        max_bops: Some(0.6 * full.bops),
        max_size_bits: Some(0.5 * full.size_bits),
    };
    for cfg in [SearchConfig::default(), SearchConfig::pgd()] {
        let out = search(&space, &obj, &budget, &cfg).unwrap();
        assert!(budget.admits(&out.cost), "{:?}", out.cost);
    }
}

#[test]
fn pgd_is_within_budget_and_not_better_than_barrier_on_average() {
    let (space, obj) = instance(11, 18, 4);
    let (lo, hi) = bops_range(&space);
    let (mut sb, mut sp) = (0.0, 0.0);
    for i in 1..=5 {
        let budget = Budget::bops(lo + (hi - lo) * i as f64 / 6.0);
        let b = search(&space, &obj, &budget, &SearchConfig::default()).unwrap();
        let p = search(
            &space,
            &obj,
            &budget,
            &SearchConfig {
                fill: false,
                ..SearchConfig::pgd()
            },
        )
        .unwrap();
        assert!(budget.admits(&p.cost));
        sb += b.predicted_mean;
        sp += p.predicted_mean;
    }
    assert!(sb >= sp, "barrier {sb} < pgd {sp}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn every_method_returns_a_policy_within_budget(
        seed in 0u64..10_000, genes in 1usize..8, card in 1usize..5, frac in 0.0f64..1.2, size_too in any::<bool>(),
    ) {
        let (space, obj) = instance(seed, genes, card);
        let (lo, hi) = bops_range(&space);
        let smin = space.cost(&space.cheapest()).unwrap().size_bits;
        let smax = space.cost(&space.most_expensive()).unwrap().size_bits;
        let budget = Budget {
            max_bops: Some(lo + frac * (hi - lo)),
            max_size_bits: size_too.then_some(smin + 0.7 * frac * (smax - smin)),
        };
        for cfg in [SearchConfig { starts: 3, ..SearchConfig::default() }, SearchConfig { starts: 3, ..SearchConfig::pgd() }] {
            let out = search(&space, &obj, &budget, &cfg).unwrap();
            prop_assert!(budget.admits(&out.cost));
            prop_assert_eq!(space.cost(&out.indices).unwrap(), out.cost);
        }
    }
}
