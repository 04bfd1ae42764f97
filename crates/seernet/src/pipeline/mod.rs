//! The main job (issue 7): baseline → N₀ stratified labels → R active rounds of K labels →
//! predictor refit → barrier search per budget → final fine-tune → test-split evaluation →
//! physically pruned, packed export → report (docs/method.md §3–§8). This module only wires the
//! crates together; every stage is resumable from the run directory.
//!
//! # Stages
//! [`run_with`] threads one run-state value through its stages, in order (the names in
//! parentheses are the report's timings):
//! 1. open the run: settings check, `run.log`, data (`data`), baseline (`baseline`), budgets
//!    and sampling band, labelling protocol and label store, uniform baselines;
//! 2. the initial set: N₀ policies stratified over log-BOPs, then the uniform anchors
//!    (`initial labels`);
//! 3. the active rounds (`active rounds`);
//! 4. the verification rounds (`verification rounds`);
//! 5. the final predictor and its held-out quality (`predictor`);
//! 6. the choice per budget and the predicted front (`search`);
//! 7. the final fine-tunes, the final pick among each choice and its rivals (predictor methods)
//!    and the export (`final fine-tune + export`);
//! 8. the report and `summary.json` (`report`).
//!
//! # Run directory
//! - `driver.lock` — held while a driver runs (PID and host): a second driver on the same
//!   directory is refused; a lock whose process is gone is taken over.
//! - `cluster/<batch>/` — with the Slurm executor: each batch's manifest, task script, result
//!   files and task logs ([`crate::label::cluster`]).
//! - `labels.jsonl` — the durable label store ([`crate::store`]), in plan order; a killed run
//!   (`kill -9` included) started again with the same arguments resumes without recomputing a
//!   label.
//! - `labels.arrived.jsonl` — labels that finished while an earlier label of their batch was
//!   still running (workers start the largest networks first), stored at once so that a kill
//!   loses none; a resumed run takes them from there (not computing them again) and stores
//!   them in `labels.jsonl` in their turn, so that it keeps plan order. Removed after a
//!   batch once `labels.jsonl` holds every label it does.
//! - `baseline.safetensors` — only when no baseline checkpoint was given (trained here).
//! - `final/<policy hash>.json` — finished final fine-tunes (test top-1);
//!   `final/<policy hash>.float.safetensors` — the slim fine-tuned float model of each export,
//!   the fake-quant reference of `seernet infer`.
//! - Outside the directory, when given: the shared label store of [`Config::label_cache`]
//!   and the shared final fine-tunes of [`Config::final_cache`]
//!   (`<DIR>/<labelling protocol hash>/<policy hash>.json` and `.float.safetensors`), which
//!   runs of one protocol and seed read and extend (`cargo xtask reproduce` gives every method
//!   of a seed the same two).
//! - `policy-<budget>.json`, `model-<budget>.safetensors` ([`export`]: the integer engine's
//!   format, run with `seernet infer`), `report.md`,
//!   `report.html`, `report.json`, SVG plots, `summary.json`, `run.log`.
//!
//! # Determinism
//! Every random choice flows from [`Config::seed`] through one table, [`Stream`]. Round `r`'s
//! predictor is fitted on exactly the labels planned before it (initial set + rounds `< r`,
//! looked up by policy hash), not on whatever the store holds, so a resumed run plans the same
//! policies as an uninterrupted one, and a run with a label cache the same as one without.
//! The validation split is the only one labels see; the test split is read by the final
//! evaluation only (docs/method.md §3).

mod choice;
/// Export of a fine-tuned fake-quantized model to the integer engine (`seer_nn::export`, kept at
/// its old path).
pub use seer_nn::export;
mod finals;
mod methods;
pub mod progress;
pub mod sampling;
mod setup;
mod stages;
pub mod streams;
mod summary;
pub mod target;
mod timings;
mod workers;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use seer_nn::data::{self, DataSource};
use seer_policy::{Policy, SearchSpace, SpaceConfig, Totals};
use serde::{Deserialize, Serialize};

use crate::budget::{Budget, ResolvedBudget};
use crate::error::Result;
use crate::label::cluster::{RunLock, SlurmSettings};
use crate::labeler::Labeler;
use crate::report;
use crate::store::{LabelStore, Protocol};

pub use methods::{CompressMethod, FIT_BINS};
pub use progress::{NoProgress, Progress};
pub use sampling::Acquisition;
pub use streams::Stream;

use progress::RunLog;

/// Settings of one compression run. [`Config::default_run`] (ResNet-20) and [`Config::quick`]
/// (LeNet-5, small counts) are the two presets of `cargo xtask compress`; [`Config::lenet5`]
/// is `--arch lenet5`'s.
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
    /// Budgets (at least one, unless [`Self::max_drop`] is set).
    pub budgets: Vec<Budget>,
    /// Accuracy-first target (`--max-drop P`): also choose the cheapest policy whose top-1
    /// stays within P points of the full-precision baseline (`pipeline::target`).
    pub max_drop: Option<f64>,
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
    /// Label the fit-ilp optimum of every budget (Fisher × quantization-noise sensitivities,
    /// exact allocation; `--method fit-ilp`'s policies) as anchors after the uniform ones, so
    /// that the predictor sees them and the validated choice can never fall behind that
    /// zero-label baseline on validation (docs/method.md §5); `--no-fit-anchors` turns it off.
    #[serde(default)]
    pub fit_anchors: bool,
    /// Fill rounds after the verification rounds: per budget, the best labelled policy within
    /// it is upgraded within the budget while the predictor's μ gains, and the upgrade is
    /// labelled (docs/method.md §6, "fill"); 0: none.
    #[serde(default)]
    pub fill_rounds: usize,
    /// The final pick (docs/method.md §7): besides the uniform anchors within each budget,
    /// this many next-best labelled policies within it (by label) are fine-tuned like the
    /// choice, and the budget returns whichever validates highest after the final fine-tune
    /// on the whole validation split (predictor methods only; `--final-rivals`).
    #[serde(default)]
    pub final_rivals: usize,
    /// Final fine-tunes (chosen policies, rivals and uniform baselines alike) distil from the
    /// full-precision baseline's logits instead of learning from the labels
    /// (`seer_nn::train::Distill`, T = 1; docs/method.md §7). On in every preset;
    /// `--no-final-distill` turns it off. Labels are unaffected.
    #[serde(default)]
    pub final_distill: bool,
    /// How labels and final fine-tunes quantize weights (`seer_nn::train::WeightQuant`;
    /// docs/method.md §3, "Learned weight steps"): `max` (the default) or `lsq`
    /// (`--weight-quant lsq`). Part of the labelling protocol.
    #[serde(default, skip_serializing_if = "is_max")]
    pub weight_quant: seer_nn::train::WeightQuant,
    /// Fine-tune steps per label (docs/method.md §3).
    pub label_steps: u64,
    /// Validation images each label is scored on: a fixed seeded sample of the validation
    /// split (`seer_nn::labeler::LabelSettings::val_images`); `None` the whole split.
    #[serde(default)]
    pub label_val_images: Option<usize>,
    /// Fine-tune steps of each chosen policy and each uniform baseline (docs/method.md §7).
    pub final_steps: usize,
    /// Mini-batch size of all fine-tunes.
    pub batch_size: usize,
    /// Labels and final fine-tunes computed side by side (`--workers`): this many at a time,
    /// each on its share of the cores (`0`: one per core; `1`: one after another on every
    /// core, as before). On a small network several one-thread fine-tunes get through more
    /// work than one fine-tune on every thread (docs/benchmarks.md, "Label workers"). The
    /// results do not depend on it (the kernels give the same bits on any thread count).
    #[serde(default)]
    pub workers: usize,
    /// A label store shared between runs of the same labelling protocol (`--label-cache
    /// FILE`; e.g. the methods of one seed in `cargo xtask reproduce`, or a run with other
    /// budgets): a label this run needs is copied from it into the run's own store instead of
    /// computed, and every label the run computes is added to it. The run's results do not
    /// depend on it (a label depends only on the protocol and the policy's seed, and a run
    /// reads only the labels it planned). Created when missing; a store of another protocol
    /// is an error. One run at a time may hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_cache: Option<PathBuf>,
    /// A directory of final fine-tunes shared the same way (`--final-cache DIR`): each result
    /// and its fine-tuned float model, under `DIR/<labelling protocol hash>/<policy hash>`
    /// (the final seed, steps and distillation are checked as for the run's own cache). A
    /// fine-tune found there is not redone, and a chosen policy found there is exported from
    /// its stored model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_cache: Option<PathBuf>,
    /// A label store of the same labelling protocol (`--heldout-labels FILE`, e.g. another
    /// run's `labels.jsonl`): the final predictor is also scored on its labels of policies
    /// this run did not plan (Kendall τ-b, RMSE; `predictor_heldout` in `summary.json`), so
    /// runs that planned different labels are compared on one fixed set. Read once at setup
    /// (its protocol checked there); it does not change the run's choices. Predictor methods
    /// only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_labels: Option<PathBuf>,
    /// Peak learning rate of all fine-tunes (cosine decay).
    pub lr: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Report progress (stages and the run log's lines) to the [`Progress`] observer of
    /// [`run_with`]; `run.log` and the `tracing` events are written either way.
    pub progress: bool,
    /// The command line, for the report.
    pub command: Option<String>,
    /// Where the labels are computed: in this process, or as Slurm job arrays.
    pub executor: Executor,
    /// How each budget's policy is chosen (`--method`; docs/method.md §9): the default
    /// `seernet`, or a baseline at the same label budget.
    pub method: CompressMethod,
}

/// Where a run computes its labels. Both give the same labels in the same store order (the
/// label of a policy depends only on the protocol and the policy's seed, and a cluster batch is
/// merged in plan order); only the wall times in the records differ.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// In this process (the default): [`Config::workers`] labels at a time, stored in plan
    /// order.
    #[default]
    Local,
    /// Every labelling batch (the initial set, the anchors, each active and each verification
    /// round) as one Slurm job array of `seernet label --shard` tasks
    /// ([`crate::label::cluster`]); the run directory, the baseline and the data root must be
    /// on a filesystem every node sees at the same path (docs/cluster.md).
    Slurm(SlurmSettings),
}

impl Config {
    /// The default run (`cargo xtask compress`): [`Self::resnet20`].
    pub fn default_run(out_dir: PathBuf) -> Self {
        Self::resnet20(out_dir)
    }

    /// The LeNet-5 preset (`seernet compress --arch lenet5`; the default run before issue 15,
    /// and the base of [`Self::quick`]): LeNet-5 on Fashion-MNIST, first layer searchable,
    /// budgets 5%, 8% and 12% of the w8a8 BOPs; 30 initial labels + 3 rounds of 10, 100
    /// fine-tune steps per label scored on the whole validation split, 600 per final
    /// fine-tune (batch 64). The first layer is searchable because LeNet-5's conv1 at w8a8
    /// alone is 28% of the w8a8 BOPs: with it fixed no budget between 4% and 15% is feasible.
    pub fn lenet5(out_dir: PathBuf) -> Self {
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
            fill_rounds: 2,
            fit_anchors: true,
            final_rivals: 1,
            final_distill: true,
            weight_quant: seer_nn::train::WeightQuant::Max,
            label_steps: 100,
            label_val_images: None,
            final_steps: 600,
            batch_size: 64,
            workers: 0,
            label_cache: None,
            heldout_labels: None,
            final_cache: None,
            lr: 0.01,
            seed: 0,
            max_drop: None,
            progress: true,
            command: None,
            executor: Executor::Local,
            method: CompressMethod::Seernet,
        }
    }

    /// The ResNet-20 preset, the default run (issue 15): the committed ResNet-20 baseline on
    /// Fashion-MNIST (28×28×1, 93.86% test top-1), the default search space (prune {0, .25,
    /// .5, .75}, bits {2, 3, 4, 5, 6, 8}, residual pruning tied, first and last layers fixed at
    /// 8 bits), budgets at the BOPs of uniform w2a2, w3a3 and w4a4 of the unpruned network
    /// (`--bops-uniform`, 6.25%, 14.1% and 25% of w8a8 up to the fixed layers), 50 initial
    /// labels + 3 rounds of 10, 2 verification and 2 fill rounds; labels of 50 fine-tune
    /// steps scored on a fixed sample of 2,000 validation images, the protocol
    /// `cargo xtask bench label-fidelity` chose (docs/benchmarks.md, "Label fidelity"); 300
    /// steps per final fine-tune (batch 64).
    pub fn resnet20(out_dir: PathBuf) -> Self {
        Self {
            arch: "resnet20".into(),
            space: SpaceConfig::default(),
            budgets: ["w2a2", "w3a3", "w4a4"]
                .iter()
                .map(|f| Budget::parse_bops_uniform(f).expect("valid"))
                .collect(),
            n0: 50,
            label_steps: 50,
            label_val_images: Some(2000),
            final_steps: 300,
            ..Self::lenet5(out_dir)
        }
    }

    /// The preset of `arch`: [`Self::resnet20`] for `resnet20`, else [`Self::lenet5`]'s
    /// settings with that network; with `quick`, [`Self::quick`]'s small counts on top.
    pub fn preset(arch: &str, quick: bool, out_dir: PathBuf) -> Self {
        let base = if arch == "resnet20" {
            Self::resnet20(out_dir)
        } else {
            Self {
                arch: arch.into(),
                ..Self::lenet5(out_dir)
            }
        };
        if quick {
            let q = Self::quick(PathBuf::new());
            Self {
                baseline_steps: q.baseline_steps,
                n0: q.n0,
                rounds: q.rounds,
                k: q.k,
                sampler_generations: q.sampler_generations,
                verify_rounds: q.verify_rounds,
                fill_rounds: q.fill_rounds,
                label_steps: q.label_steps.min(base.label_steps),
                final_steps: q.final_steps,
                ..base
            }
        } else {
            base
        }
    }

    /// The quick run (`cargo xtask compress --quick`, CI): [`Self::lenet5`] with small counts,
    /// the same loop.
    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            baseline_steps: 400,
            n0: 8,
            rounds: 2,
            k: 3,
            sampler_generations: 15,
            verify_rounds: 1,
            fill_rounds: 1,
            label_steps: 30,
            final_steps: 100,
            ..Self::lenet5(out_dir)
        }
    }
}

/// What a finished run returns (also written as `summary.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Run directory.
    pub out_dir: String,
    /// The method that chose the policies (`--method`).
    #[serde(default)]
    pub method: CompressMethod,
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
    /// Kendall τ of the predictor on held-out labels (`predictor.kendall_tau`), when measured.
    #[serde(default)]
    pub predictor_tau: Option<f64>,
    /// The final predictor on the fixed held-out labels of [`Config::heldout_labels`], when
    /// given (`n_train`: the run's labels; `n_test`: the held-out ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor_heldout: Option<report::PredictorQuality>,
    /// Kendall τ between labels and the validation top-1 after the final fine-tune over this
    /// run's fine-tuned policies ([`report::LabelFidelity`]), when at least 4 have both.
    #[serde(default)]
    pub label_fidelity_tau: Option<f64>,
    /// Seconds per stage of this invocation.
    pub timings: Vec<report::StageTiming>,
    /// Total wall seconds of this invocation.
    pub seconds: f64,
    /// Invocations of this run directory so far (1 for a run that was never resumed).
    #[serde(default)]
    pub invocations: usize,
    /// Total wall seconds of every invocation of this run directory.
    #[serde(default)]
    pub seconds_all: f64,
    /// The run's wall time: every invocation together (= `seconds_all`), build excluded.
    #[serde(default)]
    pub run_seconds: f64,
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
/// What the run computes and writes does not depend on the observer. Errors: as [`run`]; the
/// sibling crates' errors are kept whole as `source()` (see [`crate::Error`]).
pub fn run_with(cfg: &Config, progress: &mut dyn Progress) -> Result<Summary> {
    let mut run = Run::open(cfg, progress)?;
    match cfg.method {
        CompressMethod::Seernet | CompressMethod::Evo | CompressMethod::Hardstop => {
            run.initial_set()?;
            run.active_rounds()?;
            run.verification_rounds()?;
            run.fill_rounds()?;
        }
        CompressMethod::Random => run.random_set()?,
        CompressMethod::Uniform => run.uniform_set()?,
        CompressMethod::FitIlp => run.fit_ilp()?,
    }
    let fitted = run.final_predictor()?;
    let choice = run.choose(&fitted)?;
    let finals = run.final_finetunes(&choice.chosen)?;
    run.finish(fitted, choice, finals)
}

/// The state of one run, threaded through its stages (one method each, see the module docs):
/// what the opening stages load, and the plan the label stages grow.
struct Run<'a> {
    cfg: &'a Config,
    /// The run directory (`cfg.out_dir`).
    out: PathBuf,
    /// `run.log`, `tracing` and the progress observer.
    log: RunLog<'a>,
    /// Seconds per finished stage, this invocation's and the earlier ones'.
    timings: timings::Timings,
    dname: DataSource,
    splits: data::Splits,
    norm: data::Normalize,
    base: Baseline,
    space: SearchSpace,
    budgets: Budgets,
    protocol: Protocol,
    labeler: Labeler,
    store: LabelStore,
    /// `labels.arrived.jsonl`: labels that finished before an earlier label of their batch
    /// (so not yet in `store`, which keeps plan order), opened when the first one arrives or
    /// when a killed run left the file.
    arrived: Option<LabelStore>,
    /// The shared label store of [`Config::label_cache`], when given.
    label_cache: Option<LabelStore>,
    /// [`Config::heldout_labels`] and its records (read and protocol-checked at setup).
    heldout: Option<(PathBuf, Vec<crate::store::LabelRecord>)>,
    /// The store's torn tail dropped on open, described.
    dropped_tail: Option<String>,
    /// The uniform baselines (labelled as anchors, fine-tuned for the report).
    uniform: Vec<Uniform>,
    /// Candidate indices of every policy the run planned to label, in plan order.
    planned: Vec<Vec<usize>>,
    /// Where each planned policy came from, for the report.
    origin: HashMap<Vec<usize>, String>,
    /// Labels computed by this invocation (the rest were found in the store).
    computed: usize,
    /// Fine-tuned models of the final stage, by policy hash: those its workers made
    /// (`finals::prefetch_finals`) until read or exported, and those of `keep_models` until
    /// exported; cleared when the stage ends.
    prefetched: HashMap<String, seer_nn::model::Model>,
    /// Policy hashes of the chosen policies, the final pick's rivals and the accuracy targets'
    /// safer candidates (set by the final stage): their fine-tuned models stay in `prefetched`
    /// after their results are read, so that the one a budget returns is exported from the
    /// model already fine-tuned instead of being fine-tuned again.
    keep_models: HashSet<String>,
    /// The run directory's driver lock, held until the run ends.
    _lock: RunLock,
}

/// The baseline checkpoint and its figures.
struct Baseline {
    path: PathBuf,
    /// Where it came from, for the report.
    source: String,
    val_top1: f64,
    test_top1: f64,
    /// Parameters × 32 bits.
    size_bits_fp32: u64,
}

/// The budgets resolved against the space, and the BOPs band the labels are sampled in.
struct Budgets {
    /// BOPs of the unpruned network at w8a8 (the `--bops-frac` reference).
    w8a8: u64,
    resolved: Vec<ResolvedBudget>,
    /// Totals of the cheapest and the most expensive policy of the space.
    cheapest: Totals,
    dearest: Totals,
    /// Sampling band (BOPs) of the initial set and the active rounds.
    band: (f64, f64),
}

/// A uniform policy: the same bits for weights and activations and the same pruning ratio on
/// every searchable unit (docs/method.md §8).
#[derive(Clone, Debug)]
struct Uniform {
    wbits: u32,
    abits: u32,
    prune: f64,
    policy: Policy,
}

impl Uniform {
    /// `w4a4`, or `w4a4 prune 0.5`.
    fn name(&self) -> String {
        if self.prune > 0.0 {
            format!("w{}a{} prune {}", self.wbits, self.abits, self.prune)
        } else {
            format!("w{}a{}", self.wbits, self.abits)
        }
    }
}

/// A budget's limits as the search engines take them (seer-barrier's budget, limits in f64).
fn limits(b: &ResolvedBudget) -> seer_barrier::Budget {
    seer_barrier::Budget {
        max_bops: b.max_bops.map(|v| v as f64),
        max_size_bits: b.max_size_bits.map(|v| v as f64),
    }
}

/// Whether a weight quantizer is the default (`max`): such settings are left out of the run's
/// JSON files, which then read as before the setting existed.
fn is_max(q: &seer_nn::train::WeightQuant) -> bool {
    *q == seer_nn::train::WeightQuant::Max
}
