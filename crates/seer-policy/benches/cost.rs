//! Benchmark of the complexity hot paths the optimizers call thousands of times per search:
//! relaxed cost + gradient, exact totals and the per-layer breakdown, against a baseline that
//! rebuilds the search space (graph walk, unit and coefficient set-up) on every call.
//!
//! `cargo xtask bench policy [--json]` (= `cargo bench -p seer-policy --bench cost -- [--json]`).

use std::hint::black_box;
use std::time::Instant;

use seer_policy::{RelaxedCost, ResidualPruning, SearchSpace, SpaceConfig, builtin};

/// Mean seconds per call of `f`, repeated for at least `min_s` seconds.
fn time<F: FnMut()>(min_s: f64, mut f: F) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let dt = t.elapsed().as_secs_f64();
        if dt >= min_s {
            return dt / n as f64;
        }
        n *= 4;
    }
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let min_s = 0.2;
    let mut fields = Vec::new();
    if !json {
        println!(
            "{:<36} {:>14} {:>14} {:>14} {:>14} {:>16} {:>9}",
            "space",
            "relaxed_into",
            "relaxed",
            "totals",
            "cost (table)",
            "rebuild+relaxed",
            "speedup"
        );
    }
    for (arch, input, masked, shared) in [
        ("resnet20", Some("32x32x3"), true, true),
        ("resnet50", None, false, false),
        ("mobilenetv2", None, false, false),
    ] {
        let spec = builtin(arch, input.map(|s| s.parse().unwrap()), None).unwrap();
        let mode = if masked {
            ResidualPruning::Masked
        } else {
            ResidualPruning::Tied
        };
        let cfg = SpaceConfig {
            residual_pruning: mode,
            shared_bits: shared,
            ..Default::default()
        };
        let space = SearchSpace::new(spec.clone(), cfg.clone()).unwrap();
        let x: Vec<f64> = (0..space.dim())
            .map(|i| (i as f64 * 0.37).fract())
            .collect();
        let idx = space.round_indices(&x).unwrap();
        let policy = space.from_indices(&idx).unwrap();
        let mut out = RelaxedCost::default();
        let t_into = time(min_s, || {
            space.relaxed_cost_into(black_box(&x), &mut out).unwrap()
        });
        let t_relaxed = time(min_s, || {
            black_box(space.relaxed_cost(black_box(&x)).unwrap());
        });
        let t_totals = time(min_s, || {
            black_box(space.totals_indices(black_box(&idx)).unwrap());
        });
        let t_cost = time(min_s, || {
            black_box(space.cost(black_box(&policy)).unwrap());
        });
        let t_rebuild = time(min_s, || {
            let s = SearchSpace::new(spec.clone(), cfg.clone()).unwrap();
            black_box(s.relaxed_cost(black_box(&x)).unwrap());
        });
        let label = format!(
            "{arch} {mode}{} ({} genes)",
            if shared { " shared" } else { "" },
            space.dim()
        );
        let speedup = t_rebuild / t_into;
        let [into, relaxed, totals, cost, rebuild] =
            [t_into, t_relaxed, t_totals, t_cost, t_rebuild].map(|t| t * 1e6);
        if json {
            fields.push(format!(
                "\"{arch}\":{{\"dim\":{},\"relaxed_into_us\":{into:.3},\"relaxed_us\":{relaxed:.3},\"totals_us\":{totals:.3},\"cost_us\":{cost:.3},\"rebuild_relaxed_us\":{rebuild:.3},\"speedup_vs_rebuild\":{speedup:.1}}}",
                space.dim()
            ));
        } else {
            println!(
                "{label:<36} {into:>11.2} µs {relaxed:>11.2} µs {totals:>11.2} µs {cost:>11.2} µs {rebuild:>13.2} µs {speedup:>8.0}×"
            );
        }
    }
    if json {
        println!("{{{}}}", fields.join(","));
    }
}
