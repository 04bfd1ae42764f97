//! `cargo xtask bench search [--json]`: the constrained search against an exact optimum and
//! against the baselines on the real predictor (issue 6, item 4).
//!
//! 1. **Exact optimum**: ResNet-20 (32×32×3, masked, shared bits, no pruning, bits
//!    {2,3,4,5,6,8}) has BOPs separable per unit; with a synthetic separable concave objective
//!    the best policy under a BOPs budget is a multiple-choice knapsack solved exactly by
//!    dynamic programming. Barrier's objective as a fraction of that optimum, 10 budgets.
//! 2. **Real predictor**: the ensemble trained on the authors' ResNet-20 CIFAR-10 samples
//!    (`assets/peer-data/seernet-resnet20-cifar10/samples.csv`; masked, shared bits, prune
//!    {0.25,0.5,0.75}, bits {2,3,4,5}); for 10 BOPs budgets: barrier vs evo (the authors'
//!    population settings, bounded to `--evo-seconds`, default 60) vs pgd vs random search (as
//!    many predictor calls as evo): predicted top-1, share of the budget used, wall time.
//!    Speed: barrier with the defaults and with the previous discretisation (4 starts, single-gene
//!    fill only) on the same 10 budgets, 5 times each, interleaved: median wall time and CPU
//!    time (all threads) per search, with the load average.
//! 3. **Small space** (issue 13, case 8): LeNet-5 with the main job's space (12 genes) and
//!    ensembles fitted on 30 synthetic labels each (`common/few_labels.rs`; μ not monotone in
//!    cost), label seeds 0..`--small-seeds` (default 8), BOPs budgets 4M, 7M, 10M: barrier with
//!    the previous discretisation (4 starts, single-gene fill only), barrier, and evo (the
//!    authors' population, 200 generations, no time bound: deterministic); predicted top-1,
//!    share of the budget used, and whether a single-gene change within budget would still
//!    raise μ (never, by construction of the fill).
//!
//! Flags: `--json` (one JSON object), `--evo-seconds S`, `--budgets N`, `--small-seeds N`.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use seer_barrier::synthetic::SeparableObjective;
use seer_barrier::{Budget, Objective, PolicySpace, SearchConfig, mckp_optimum, search};
use seer_policy::{InputShape, ResidualPruning, SearchSpace, SpaceConfig, builtin};
use seer_predictor::{Config, Samples, fit};
use seernet::search::{Method, PredictorObjective, SearchOptions, find_policy};
use serde_json::json;

mod common;
#[path = "common/few_labels.rs"]
mod few_labels;
use common::{arg, root};

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        0.5 * (s[s.len() / 2 - 1] + s[s.len() / 2])
    }
}

fn resnet20(prune: Vec<f64>, bits: Vec<u32>) -> SearchSpace {
    let spec = builtin(
        "resnet20",
        Some("32x32x3".parse::<InputShape>().unwrap()),
        None,
    )
    .unwrap();
    let cfg = SpaceConfig {
        prune_ratios: prune,
        wbits: bits.clone(),
        abits: bits,
        residual_pruning: ResidualPruning::Masked,
        shared_bits: true,
        ..SpaceConfig::default()
    };
    SearchSpace::new(spec, cfg).unwrap()
}

/// Part 1: barrier vs the exact DP optimum. Returns (ratios, seconds).
fn exact_part(budgets: usize, json: bool) -> (Vec<f64>, Vec<f64>) {
    let space = resnet20(vec![0.0], vec![2, 3, 4, 5, 6, 8]);
    let d = space.dim();
    let zero = vec![0usize; d];
    let bops = |idx: &[usize]| space.totals_indices(idx).unwrap().bops as f64;
    let base = bops(&zero);
    let cards: Vec<usize> = space.genes().iter().map(|g| g.candidates.len()).collect();
    // Per-gene BOPs tables relative to the all-lowest policy.
    let table: Vec<Vec<f64>> = (0..d)
        .map(|g| {
            (0..cards[g])
                .map(|k| {
                    let mut idx = zero.clone();
                    idx[g] = k;
                    bops(&idx) - base
                })
                .collect()
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    for _ in 0..20 {
        let idx: Vec<usize> = cards.iter().map(|&c| rng.random_range(0..c)).collect();
        let sep = base
            + idx
                .iter()
                .enumerate()
                .map(|(g, &k)| table[g][k])
                .sum::<f64>();
        assert_eq!(sep, bops(&idx), "BOPs are not separable on this space");
    }
    // Concave increasing values per unit (diminishing returns of extra bits).
    let values: Vec<Vec<f64>> = cards
        .iter()
        .map(|&c| {
            let mut inc: Vec<f64> = (1..c).map(|_| rng.random_range(0.05..1.5)).collect();
            inc.sort_by(|a, b| b.total_cmp(a));
            let mut v = vec![0.0];
            for i in inc {
                v.push(v.last().unwrap() + i);
            }
            v
        })
        .collect();
    let coords: Vec<Vec<f64>> = (0..d).map(|g| space.gene_coords(g)).collect();
    let objective = SeparableObjective {
        coords,
        values: values.clone(),
    };
    let ps = PolicySpace::new(&space);
    let lo = bops(&space.cheapest());
    let hi = bops(&space.most_expensive());
    let groups: Vec<Vec<(f64, f64)>> = table
        .iter()
        .zip(&values)
        .map(|(t, v)| t.iter().copied().zip(v.iter().copied()).collect())
        .collect();
    let (mut ratios, mut secs) = (Vec::new(), Vec::new());
    if !json {
        println!(
            "== exact optimum (ResNet-20 32x32x3, no pruning, bits 2..8, separable concave objective)"
        );
        println!(
            "{:>14} {:>10} {:>10} {:>8} {:>9}",
            "budget BOPs", "DP opt", "barrier", "ratio", "ms"
        );
    }
    for i in 1..=budgets {
        let b = lo + (hi - lo) * i as f64 / (budgets + 1) as f64;
        let (_, opt) = mckp_optimum(&groups, b - base).expect("feasible");
        let t = Instant::now();
        let r = search(&ps, &objective, &Budget::bops(b), &SearchConfig::default()).unwrap();
        let s = t.elapsed().as_secs_f64();
        assert!(r.cost.bops <= b);
        let ratio = objective.value(&r.indices) / opt;
        if !json {
            println!(
                "{b:>14.4e} {opt:>10.4} {:>10.4} {ratio:>8.4} {:>9.2}",
                objective.value(&r.indices),
                s * 1e3
            );
        }
        ratios.push(ratio);
        secs.push(s);
    }
    (ratios, secs)
}

/// Whether some single-gene change of `idx` within `budget` raises μ above `mean`.
fn upgrade_fits(space: &SearchSpace, obj: &dyn Objective, idx: &[usize], budget: f64) -> bool {
    let mut cur = idx.to_vec();
    let mut xs = Vec::new();
    for g in 0..cur.len() {
        let orig = cur[g];
        for k in 0..space.genes()[g].candidates.len() {
            cur[g] = k;
            if k != orig && space.totals_indices(&cur).unwrap().bops as f64 <= budget {
                xs.extend(space.encode_indices(&cur).unwrap());
            }
        }
        cur[g] = orig;
    }
    let mut base = [0.0];
    obj.mean(&space.encode_indices(idx).unwrap(), &mut base)
        .unwrap();
    let mut out = vec![0.0; xs.len() / cur.len()];
    if !out.is_empty() {
        obj.mean(&xs, &mut out).unwrap();
    }
    out.iter()
        .any(|&m| m > base[0] + 1e-12 * base[0].abs().max(1.0))
}

/// Part 3: the small space of issue 13, case 8. Returns the rows and a JSON summary.
fn small_part(seeds: u64, json: bool) -> serde_json::Value {
    let space = few_labels::lenet5_space();
    let ps = PolicySpace::new(&space);
    if !json {
        println!(
            "\n== small space (LeNet-5 28x28x1, main-job space, {} genes; 30 synthetic labels per predictor)",
            space.dim()
        );
        println!(
            "{:>4} {:>10} | {:>8} {:>6} | {:>8} {:>6} {:>7} {:>7} | {:>8} {:>6} {:>6}",
            "seed",
            "budget",
            "previous",
            "used",
            "barrier",
            "used",
            "ms",
            "upgrade",
            "evo",
            "used",
            "s"
        );
    }
    let (mut rows, mut gaps, mut gaps_prev) = (Vec::new(), Vec::new(), Vec::new());
    let (mut min_used_below_evo, mut any_upgrade, mut bar_s) = (f64::INFINITY, false, Vec::new());
    for seed in 0..seeds {
        let predictor = few_labels::few_label_predictor(&space, seed, 30);
        let obj = PredictorObjective::new(&predictor, &space).unwrap();
        for b in [4_000_000.0, 7_000_000.0, 10_000_000.0] {
            let budget = Budget::bops(b);
            let previous = SearchConfig {
                starts: 4,
                pairs: 0,
                ..SearchConfig::default()
            };
            let prev = search(&ps, &obj, &budget, &previous).unwrap();
            let t = Instant::now();
            let bar = search(&ps, &obj, &budget, &SearchConfig::default()).unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut eo = SearchOptions::new(Method::Evo, 0);
            eo.evo.time_limit = None;
            eo.evo.generations = 200;
            let evo = find_policy(&space, &predictor, &budget, &eo).unwrap();
            let upgrade = upgrade_fits(&space, &obj, &bar.indices, b);
            any_upgrade |= upgrade;
            let gap = evo.predicted_mean - bar.predicted_mean;
            if gap > 1e-9 {
                min_used_below_evo = min_used_below_evo.min(bar.cost.bops / b);
            }
            gaps.push(gap);
            gaps_prev.push(evo.predicted_mean - prev.predicted_mean);
            bar_s.push(ms / 1e3);
            if !json {
                println!(
                    "{seed:>4} {b:>10.3e} | {:>8.3} {:>6.3} | {:>8.3} {:>6.3} {ms:>7.1} {upgrade:>7} | {:>8.3} {:>6.3} {:>6.1}",
                    prev.predicted_mean,
                    prev.cost.bops / b,
                    bar.predicted_mean,
                    bar.cost.bops / b,
                    evo.predicted_mean,
                    evo.bops as f64 / b,
                    evo.seconds
                );
            }
            rows.push(json!({
                "seed": seed,
                "budget_bops": b,
                "previous": { "pred": prev.predicted_mean, "bops": prev.cost.bops },
                "barrier": { "pred": bar.predicted_mean, "bops": bar.cost.bops, "seconds": ms / 1e3, "upgrade_fits": upgrade },
                "evo": { "pred": evo.predicted_mean, "bops": evo.bops, "seconds": evo.seconds },
            }));
        }
    }
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let summary = json!({
        "small_evo_minus_barrier_max": max(&gaps),
        "small_evo_minus_previous_max": max(&gaps_prev),
        "small_min_used_where_below_evo": if min_used_below_evo.is_finite() { json!(min_used_below_evo) } else { json!(null) },
        "small_upgrade_fits_anywhere": any_upgrade,
        "small_barrier_seconds_median": median(&bar_s),
        "small": rows,
    });
    if !json {
        println!(
            "small space: evo - barrier max {:+.3} points (previous discretisation {:+.3}); barrier median {:.1} ms; \
             a mu-raising upgrade fits: {any_upgrade}",
            max(&gaps),
            max(&gaps_prev),
            median(&bar_s) * 1e3
        );
    }
    summary
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let evo_seconds: f64 = arg(&args, "--evo-seconds", 60.0);
    let budgets: usize = arg(&args, "--budgets", 10);
    let small_seeds: u64 = arg(&args, "--small-seeds", 8);

    let (ratios, dp_secs) = exact_part(budgets, json);
    let dp_min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let dp_99 = ratios.iter().filter(|&&r| r >= 0.99).count();

    let csv = root().join("assets/peer-data/seernet-resnet20-cifar10/samples.csv");
    if !csv.is_file() {
        eprintln!(
            "search bench: peer data {} is missing (it is committed with the repository: \
             see assets/peer-data/README.md)",
            csv.display()
        );
        std::process::exit(1);
    }
    let samples = Samples::from_csv(&csv, "top1").unwrap();
    let t = Instant::now();
    let predictor = fit(&samples, &Config::default()).unwrap();
    let fit_s = t.elapsed().as_secs_f64();
    let space = resnet20(vec![0.25, 0.5, 0.75], vec![2, 3, 4, 5]);
    let lo = space.totals_indices(&space.cheapest()).unwrap().bops as f64;
    let hi = space.totals_indices(&space.most_expensive()).unwrap().bops as f64;
    // Warm-up (thread pool, caches).
    let _ = find_policy(
        &space,
        &predictor,
        &Budget::bops(0.5 * (lo + hi)),
        &SearchOptions::new(Method::Barrier, 0),
    );

    if !json {
        println!(
            "\n== real predictor ({} samples, fit {fit_s:.1} s; ResNet-20 masked, shared bits, {} genes)",
            samples.len(),
            space.dim()
        );
        println!(
            "{:>12} | {:>8} {:>6} {:>8} | {:>8} {:>8} | {:>8} {:>6} {:>8} {:>9} | {:>8} {:>8} | ok",
            "budget BOPs",
            "barrier",
            "used",
            "ms",
            "pgd",
            "ms",
            "evo",
            "used",
            "s",
            "evals",
            "random",
            "s"
        );
    }
    let mut rows = Vec::new();
    let (mut bar_s, mut evo_s, mut gaps, mut gaps_pgd, mut gaps_rand) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut all_ok = true;
    for i in 1..=budgets {
        let b = lo + (hi - lo) * i as f64 / (budgets + 1) as f64;
        let budget = Budget::bops(b);
        let run = |o: &SearchOptions| find_policy(&space, &predictor, &budget, o).unwrap();
        let bar = run(&SearchOptions::new(Method::Barrier, 0));
        let pgd = run(&SearchOptions::new(Method::Pgd, 0));
        let mut eo = SearchOptions::new(Method::Evo, 0);
        eo.evo.time_limit = Some(Duration::from_secs_f64(evo_seconds));
        let evo = run(&eo);
        let mut ro = SearchOptions::new(Method::Random, 0);
        ro.random_evaluations = evo.evaluations;
        ro.evo.time_limit = Some(Duration::from_secs_f64(evo_seconds));
        let rnd = run(&ro);
        let ok = [&bar, &pgd, &evo, &rnd].iter().all(|f| f.bops as f64 <= b);
        all_ok &= ok;
        bar_s.push(bar.seconds);
        evo_s.push(evo.seconds);
        gaps.push(bar.predicted_mean - evo.predicted_mean);
        gaps_pgd.push(bar.predicted_mean - pgd.predicted_mean);
        gaps_rand.push(bar.predicted_mean - rnd.predicted_mean);
        if !json {
            println!(
                "{b:>12.4e} | {:>8.3} {:>6.3} {:>8.1} | {:>8.3} {:>8.1} | {:>8.3} {:>6.3} {:>8.1} {:>9} | {:>8.3} {:>8.1} | {ok}",
                bar.predicted_mean,
                bar.bops as f64 / b,
                bar.seconds * 1e3,
                pgd.predicted_mean,
                pgd.seconds * 1e3,
                evo.predicted_mean,
                evo.bops as f64 / b,
                evo.seconds,
                evo.evaluations,
                rnd.predicted_mean,
                rnd.seconds,
            );
        }
        rows.push(json!({
            "budget_bops": b,
            "barrier": { "pred": bar.predicted_mean, "std": bar.predicted_std, "seconds": bar.seconds, "bops": bar.bops },
            "pgd": { "pred": pgd.predicted_mean, "seconds": pgd.seconds, "bops": pgd.bops },
            "evo": { "pred": evo.predicted_mean, "seconds": evo.seconds, "bops": evo.bops, "evaluations": evo.evaluations },
            "random": { "pred": rnd.predicted_mean, "seconds": rnd.seconds, "bops": rnd.bops, "evaluations": rnd.evaluations },
            "within_budget": ok,
        }));
    }
    // Speed: defaults vs the previous discretisation, interleaved, 5 rounds over the budgets.
    let previous = SearchConfig {
        starts: 4,
        pairs: 0,
        ..SearchConfig::default()
    };
    let objective = PredictorObjective::new(&predictor, &space).unwrap();
    let ps = PolicySpace::new(&space);
    let load = seer_bench::load_average();
    let (mut wall, mut cpu) = ([Vec::new(), Vec::new()], [0.0, 0.0]);
    for _ in 0..5 {
        for i in 1..=budgets {
            let budget = Budget::bops(lo + (hi - lo) * i as f64 / (budgets + 1) as f64);
            for (k, cfg) in [SearchConfig::default(), previous.clone()]
                .iter()
                .enumerate()
            {
                let (t, c) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
                search(&ps, &objective, &budget, cfg).unwrap();
                wall[k].push(t.elapsed().as_secs_f64());
                cpu[k] += seer_bench::cpu_seconds_or_zero() - c;
            }
        }
    }
    let per = |k: usize| cpu[k] / wall[k].len() as f64;
    if !json {
        println!(
            "speed (5 x {budgets} budgets, load {load:?}): barrier median {:.1} ms wall, {:.1} ms CPU per search; \
             previous discretisation {:.1} ms wall, {:.1} ms CPU",
            median(&wall[0]) * 1e3,
            per(0) * 1e3,
            median(&wall[1]) * 1e3,
            per(1) * 1e3
        );
    }
    let speed = json!({
        "load_average": load,
        "barrier_wall_seconds_median": median(&wall[0]),
        "barrier_cpu_seconds_per_search": per(0),
        "previous_wall_seconds_median": median(&wall[1]),
        "previous_cpu_seconds_per_search": per(1),
    });
    let small = small_part(small_seeds, json);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (bm, em) = (median(&bar_s), median(&evo_s));
    if json {
        println!(
            "{}",
            json!({
                "dp_optimality_min": dp_min,
                "dp_optimality": ratios,
                "dp_at_least_99": dp_99,
                "dp_barrier_seconds_median": median(&dp_secs),
                "barrier_vs_evo_pred_gap_mean": mean(&gaps),
                "barrier_vs_pgd_pred_gap_mean": mean(&gaps_pgd),
                "barrier_vs_random_pred_gap_mean": mean(&gaps_rand),
                "barrier_seconds_median": bm,
                "evo_seconds_median": em,
                "evo_over_barrier_time": em / bm,
                "all_within_budget": all_ok,
                "predictor_fit_seconds": fit_s,
                "evo_seconds_limit": evo_seconds,
                "budgets": rows,
                "speed": speed,
                "small_space": small,
            })
        );
    } else {
        println!(
            "\nDP: min ratio {dp_min:.4}, {dp_99}/{} budgets >= 0.99 (barrier median {:.1} ms)",
            ratios.len(),
            median(&dp_secs) * 1e3
        );
        println!(
            "barrier - evo: {:+.3} points (mean); - pgd {:+.3}; - random {:+.3}",
            mean(&gaps),
            mean(&gaps_pgd),
            mean(&gaps_rand)
        );
        println!(
            "barrier median {:.1} ms, evo median {em:.1} s: {:.0}x faster; all within budget: {all_ok}",
            bm * 1e3,
            em / bm
        );
    }
}
