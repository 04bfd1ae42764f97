//! A predictor fitted on few labels over the main job's LeNet-5 space: the "small space" of
//! issue 13, case 8, shared by the search bench (`cargo xtask bench search`, part 3) and its
//! regression test (`tests/it/search.rs`).
//!
//! The labels are synthetic (no LeNet-5 labels are committed): a smooth accuracy model plus
//! uniform noise of ±0.5 points on uniformly drawn policies. Thirty of them, as in the main
//! job's first round, give an ensemble whose μ is not monotone in cost, which is what the
//! search must cope with.

use seer_policy::{SearchSpace, SpaceConfig, builtin};
use seer_predictor::{Config, Predictor, Samples, fit};

/// LeNet-5 at 28×28×1 with the main job's space: the first layer searchable, prune
/// {0, 0.25, 0.5, 0.75}, weight and activation bits {2, 3, 4, 5, 6, 8}; 12 genes, BOPs from
/// 264,760 to 26,657,280.
pub fn lenet5_space() -> SearchSpace {
    let spec = builtin("lenet5", None, None).expect("built-in network");
    let cfg = SpaceConfig {
        fix_first: false,
        ..SpaceConfig::default()
    };
    SearchSpace::new(spec, cfg).expect("valid space")
}

/// SplitMix64: uniform in [0, 1) from a counter state.
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

/// The default ensemble (`Config { seed, ..Config::default() }`) fitted on `labels` uniformly
/// drawn policies of `space` (a LeNet-5 space: four units) labelled with
/// 89.5 − Σ_u s_u·(8·e^{−(w_u−2)} + 8·e^{−(a_u−2)} + 6·p_u²) ± 0.5 (s = 1, 0.6, 0.5, 0.3;
/// w, a bits, p pruning ratio); features are the docs/method.md §1 encoding.
pub fn few_label_predictor(space: &SearchSpace, seed: u64, labels: usize) -> Predictor {
    let names = seer_predictor::space::gene_feature_names(space);
    let cards: Vec<usize> = space.genes().iter().map(|g| g.candidates.len()).collect();
    let mut state = seed;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..labels {
        let idx: Vec<usize> = cards
            .iter()
            .map(|&c| ((uniform(&mut state) * c as f64) as usize).min(c - 1))
            .collect();
        let policy = space.from_indices(&idx).expect("valid indices");
        let mut acc = 89.5;
        for (u, unit) in policy.units.iter().enumerate() {
            let s = [1.0, 0.6, 0.5, 0.3][u.min(3)];
            let (w, a) = (f64::from(unit.wbits), f64::from(unit.abits));
            acc -= s * (8.0 * (2.0 - w).exp() + 8.0 * (2.0 - a).exp() + 6.0 * unit.prune.powi(2));
        }
        acc += uniform(&mut state) - 0.5;
        x.push(space.encode_indices(&idx).expect("valid indices"));
        y.push(acc);
    }
    let samples = Samples::new(names, "top1".into(), x, y).expect("finite labels");
    fit(
        &samples,
        &Config {
            seed,
            ..Config::default()
        },
    )
    .expect("fit")
}
