//! `cargo xtask bench active [--json]`: active (ensemble-std, σ over random pools, σ over random
//! pools of the budgets' bands) vs random acquisition at equal
//! label counts on the real labelling loop of the main job (issue 7), plus the speed of
//! labelling two policies at once on this machine.
//!
//! Setting: the default run's network, data and space (committed LeNet-5 baseline,
//! Fashion-MNIST, first layer searchable, prune {0, .25, .5, .75}, bits {2,3,4,5,6,8}),
//! sampling band 0.5×5% … 1.5×12% of the w8a8 BOPs, labelling protocol of docs/method.md §3 (100
//! fine-tune steps of batch 64, validation top-1). A held-out **test set** of `--test`
//! stratified policies is labelled once; both acquisitions start from the same `--n0`
//! stratified labels and add `--rounds` × `--k` labels each, the predictor refitted before
//! every round exactly as the pipeline does. After every round the predictor is scored on the
//! test set (Kendall's τ-b, RMSE), and the best labelled validation top-1 within the 5/8/12%
//! budgets is reported (what the main job's final choice draws from).
//!
//! Labels live in one store (`--store DIR`, default `target/bench-active`), keyed by policy
//! hash: a rerun reuses every label and only refits (seconds).
//!
//! Parallel labelling: `--parallel N` (default 4) labels N extra policies once one at a time
//! and once two at a time (a 2-thread rayon pool, each label's own kernels sharing the cores)
//! and reports the throughput ratio; these labels are not stored.
//!
//! Flags: `--json`, `--n0 20`, `--rounds 3`, `--k 10`, `--test 40`, `--seed 0`,
//! `--store DIR`, `--parallel 4`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use seer_policy::SearchSpace;
use seer_predictor::{kendall_tau_b, rmse};
use seernet::budget::Budget;
use seernet::labeler::{LabelSettings, Labeler};
use seernet::pipeline::Config;
use seernet::pipeline::Stream;
use seernet::pipeline::sampling::{self, Acquisition};
use seernet::store::{LabelRecord, LabelStore, label_missing, policy_hash};
use serde_json::json;

mod common;
use common::{arg, root};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Labels the rows missing from `store`, then returns their records in row order.
fn label_rows(
    store: &mut LabelStore,
    space: &SearchSpace,
    labeler: &Labeler,
    rows: &[Vec<usize>],
) -> Res<Vec<LabelRecord>> {
    let pols = sampling::policies(space, rows)?;
    let todo = pols
        .iter()
        .filter(|p| !store.contains(&policy_hash(p)))
        .count();
    if todo > 0 {
        eprintln!("  labelling {todo} policies ...");
    }
    label_missing(store, space, &pols, |p, seed| {
        labeler.label(p, seed, &mut |_, _| {})
    })?;
    Ok(pols
        .iter()
        .map(|p| store.get(&policy_hash(p)).cloned().expect("labelled above"))
        .collect())
}

/// τ-b and RMSE of a predictor fitted on `train` over `test`.
fn score(
    space: &SearchSpace,
    train: &[LabelRecord],
    test: &[LabelRecord],
    seed: u64,
) -> Res<(f64, f64)> {
    let p = sampling::fit(space, train, seed)?;
    let rows: Vec<Vec<f64>> = test
        .iter()
        .map(|r| sampling::features(space, &r.indices))
        .collect();
    let pred = p.predict(&rows)?.mean;
    let truth: Vec<f64> = test.iter().map(|r| r.top1).collect();
    Ok((kendall_tau_b(&pred, &truth)?, rmse(&pred, &truth)?))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let json_out = args.iter().any(|a| a == "--json");
    let n0: usize = arg(&args, "--n0", 20);
    let rounds: usize = arg(&args, "--rounds", 3);
    let k: usize = arg(&args, "--k", 10);
    let n_test: usize = arg(&args, "--test", 40);
    let seed: u64 = arg(&args, "--seed", 0);
    let n_par: usize = arg(&args, "--parallel", 4);
    let store_dir: PathBuf = arg(
        &args,
        "--store",
        root().join("target/bench-active").display().to_string(),
    )
    .into();

    let cfg = Config::lenet5(store_dir.clone());
    let checkpoint = root().join("assets/baselines/lenet5-fashion-mnist.safetensors");
    let settings = LabelSettings {
        steps: cfg.label_steps,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed,
        val_images: cfg.label_val_images,
        weight_quant: Default::default(),
    };
    let protocol = Labeler::protocol(
        &checkpoint,
        Some("fashion-mnist"),
        cfg.space.clone(),
        settings,
    )?;
    let labeler = Labeler::new(&protocol, &checkpoint)?;
    let space = labeler.space().clone();
    std::fs::create_dir_all(&store_dir)?;
    let (mut store, _) = LabelStore::open(store_dir.join("labels.jsonl"), &protocol)?;

    // Band of the default run: 0.5 × the smallest budget … 1.5 × the largest.
    let budgets: Vec<(String, u64)> = ["0.05", "0.08", "0.12"]
        .iter()
        .map(|f| {
            let b = Budget::parse_bops_frac(f)
                .expect("valid")
                .resolve(&space)
                .expect("resolves");
            (b.label.clone(), b.max_bops.expect("BOPs budget"))
        })
        .collect();
    let cheapest = space.totals_indices(&space.cheapest())?.bops as f64;
    let dearest = space.totals_indices(&space.most_expensive())?.bops as f64;
    let band = (
        (0.5 * budgets[0].1 as f64).max(cheapest),
        (1.5 * budgets[2].1 as f64).min(dearest),
    );

    let t0 = Instant::now();
    let test_rows = sampling::stratified(&space, band, n_test, seed ^ 0x7e57, &HashSet::new())?;
    eprintln!("test set: {} policies", test_rows.len());
    let test = label_rows(&mut store, &space, &labeler, &test_rows)?;
    let exclude: HashSet<Vec<usize>> = test_rows.iter().cloned().collect();
    let initial = sampling::stratified(&space, band, n0, seed, &exclude)?;
    eprintln!("initial set: {} policies", initial.len());
    label_rows(&mut store, &space, &labeler, &initial)?;

    let mut results = Vec::new();
    // The budgets' own bands [limit/2, limit] (`--acquisition bands`).
    let budget_bands: Vec<(f64, f64)> = budgets
        .iter()
        .map(|(_, m)| ((0.5 * *m as f64).max(cheapest), *m as f64))
        .collect();
    for acq in [
        Acquisition::Std,
        Acquisition::Pool,
        Acquisition::Bands,
        Acquisition::Random,
    ] {
        eprintln!("acquisition {acq}:");
        let mut planned = initial.clone();
        let mut curve = Vec::new();
        for r in 0..=rounds {
            let recs = label_rows(&mut store, &space, &labeler, &planned)?;
            let fit_seed = Stream::ActiveFit(r).seed(seed);
            let (tau, err) = score(&space, &recs, &test, fit_seed)?;
            let best: Vec<f64> = budgets
                .iter()
                .map(|(_, m)| {
                    recs.iter()
                        .filter(|x| x.bops <= *m)
                        .map(|x| x.top1)
                        .fold(f64::NAN, f64::max)
                })
                .collect();
            eprintln!(
                "  {} labels: test tau {tau:.3}, RMSE {err:.2}; best labelled val top-1 within budgets {best:.2?}",
                recs.len()
            );
            curve.push(json!({"labels": recs.len(), "kendall_tau": tau, "rmse": err,
                "best_val_top1_within": budgets.iter().map(|b| b.0.clone()).zip(best).collect::<std::collections::BTreeMap<_,_>>()}));
            if r == rounds {
                break;
            }
            let predictor = sampling::fit(&space, &recs, fit_seed)?;
            let mut seen: HashSet<Vec<usize>> = planned.iter().cloned().collect();
            seen.extend(exclude.iter().cloned());
            let rows = sampling::acquire(
                &space,
                &predictor,
                &seen,
                &sampling::Request {
                    acquisition: acq,
                    band,
                    bands: budget_bands.clone(),
                    round: r,
                    k,
                    generations: cfg.sampler_generations,
                    seed: Stream::ActiveSampler(r).seed(seed),
                },
            )?;
            planned.extend(rows);
        }
        results.push((acq, curve));
    }

    // Parallel labelling: n_par fresh policies, one at a time vs two at a time.
    let mut par = serde_json::Value::Null;
    if n_par >= 2 {
        let mut excl = exclude.clone();
        excl.extend(initial.iter().cloned());
        let rows = sampling::stratified(&space, band, n_par, seed ^ 0x9a4a, &excl)?;
        let pols = sampling::policies(&space, &rows)?;
        let t = Instant::now();
        let seq: Vec<f64> = pols
            .iter()
            .map(|p| labeler.label(p, 1, &mut |_, _| {}).map(|m| m.top1))
            .collect::<Result<_, _>>()?;
        let t_seq = t.elapsed().as_secs_f64();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
        let t = Instant::now();
        let parv: Vec<f64> = pool.install(|| {
            use rayon::prelude::*;
            pols.par_iter()
                .map(|p| labeler.label(p, 1, &mut |_, _| {}).map(|m| m.top1))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let t_par = t.elapsed().as_secs_f64();
        let same = seq
            .iter()
            .zip(&parv)
            .filter(|(a, b)| (*a - *b).abs() < 1e-9)
            .count();
        eprintln!(
            "parallel labelling: {n_par} labels one at a time {t_seq:.1} s, two at a time {t_par:.1} s (speedup {:.2}×); {same}/{n_par} identical top-1",
            t_seq / t_par
        );
        par = json!({"labels": n_par, "sequential_s": t_seq, "two_at_a_time_s": t_par,
            "speedup": t_seq / t_par, "identical_results": same});
    }

    let last = |i: usize| results[i].1.last().cloned().unwrap_or_default();
    let (s, p, r) = (last(0), last(1), last(2));
    let f = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let out = json!({
        "labels_each": f(&s, "labels"),
        "n_test": test.len(),
        "std": {"curve": results[0].1},
        "pool": {"curve": results[1].1},
        "random": {"curve": results[2].1},
        "tau_std": f(&s, "kendall_tau"),
        "tau_pool": f(&p, "kendall_tau"),
        "tau_random": f(&r, "kendall_tau"),
        "tau_gain": f(&s, "kendall_tau") - f(&r, "kendall_tau"),
        "tau_gain_pool": f(&p, "kendall_tau") - f(&r, "kendall_tau"),
        "rmse_std": f(&s, "rmse"),
        "rmse_pool": f(&p, "rmse"),
        "rmse_random": f(&r, "rmse"),
        "rmse_ratio_std_over_random": f(&s, "rmse") / f(&r, "rmse"),
        "parallel_labelling": par,
        "store_labels": store.len(),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    if json_out {
        println!("{out}");
    } else {
        println!(
            "at {} labels each (test set {}): tau std {:.3}, pool {:.3}, random {:.3}; RMSE std {:.2}, pool {:.2}, random {:.2}",
            out["labels_each"],
            out["n_test"],
            f(&out, "tau_std"),
            f(&out, "tau_pool"),
            f(&out, "tau_random"),
            f(&out, "rmse_std"),
            f(&out, "rmse_pool"),
            f(&out, "rmse_random"),
        );
    }
    Ok(())
}
