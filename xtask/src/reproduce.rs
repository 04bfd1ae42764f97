//! `cargo xtask reproduce`: the comparison matrix of issue 16 — every `--method` at every
//! default budget over three seeds, `--acquisition std` against `random`, and the predictor
//! against ridge on the committed labelled sets — run as resumable `seernet` invocations, then
//! aggregated into `docs/reproduce/<net>.md`, `<net>.json`, `<net>.svg` (byte-for-byte the same
//! for the same seeds) and `<net>.timings.json` (wall times, read by no comparison).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The seeds of every run (`--seed`).
pub const SEEDS: [u64; 3] = [0, 1, 2];

/// The methods compared, in table order (`seernet compress --method`).
pub const METHODS: [&str; 6] = ["seernet", "fit-ilp", "random", "evo", "hardstop", "uniform"];

/// The acquisitions compared on `--method seernet` (`--acquisition`); `std` is the default, so
/// its runs are the `seernet` method's.
pub const ACQUISITIONS: [&str; 2] = ["std", "random"];

/// The method whose labels are every seed's fixed held-out set for the predictor methods'
/// τ (`seernet compress --heldout-labels`): its policies are drawn uniformly within each
/// budget's band, where the choices are made, and no predictor chose them. It runs first in
/// each seed.
pub const HELDOUT_METHOD: &str = "random";

/// Whether `method` fits a predictor (its runs are scored on the held-out set).
fn uses_predictor(method: &str) -> bool {
    matches!(method, "seernet" | "evo" | "hardstop")
}

/// The file each run directory gets first: the exact `seernet` arguments of the run.
pub const ARGS_FILE: &str = "reproduce-args.json";

/// Wall seconds of a predictor job's last (completed) invocation.
const WALL_FILE: &str = "reproduce-wall.json";

/// What the matrix runs for one network: the `seernet compress` flags shared by every run and
/// the predictor cross-validation's split seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Network (`--arch`), also the name of the output files.
    pub net: &'static str,
    /// Whether this is the `--quick` preset.
    pub quick: bool,
    /// Flags of every `seernet compress` run (method, acquisition, seed and output added).
    pub compress_flags: Vec<String>,
    /// Split seeds of `seernet predictor cv` per labelled set (each: 10 random 80/20 splits).
    pub cv_seeds: u64,
}

impl Preset {
    /// The full matrix (ResNet-20, the default run's preset) or the quick one (LeNet-5 with
    /// the quick preset and the smaller counts below, so the whole matrix stays within 10
    /// minutes on 2 cores; docs/benchmarks.md, "Reproduction").
    pub fn new(quick: bool) -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        if quick {
            Self {
                net: "lenet5",
                quick: true,
                compress_flags: s(&[
                    "--quick",
                    "--arch",
                    "lenet5",
                    "--n0",
                    "6",
                    "--rounds",
                    "1",
                    "--k",
                    "3",
                    "--kappas",
                    "0",
                    "--label-steps",
                    "20",
                    "--label-val-images",
                    "1000",
                    "--final-steps",
                    "50",
                ]),
                cv_seeds: 1,
            }
        } else {
            Self {
                net: "resnet20",
                quick: false,
                // The default run's network, budgets and label protocol (50 steps scored on
                // 2,000 validation images) with a label budget of 41 per method (16 initial
                // + 5 uniform and 3 fit-ilp anchors + 2 rounds of 4 + 2 verification rounds
                // at κ = 0 + 1 fill round, per budget where it applies) and 150-step final
                // fine-tunes, so that the matrix fits in about 2 hours on 2 cores
                // (docs/benchmarks.md, "Reproduction").
                compress_flags: s(&[
                    "--arch",
                    "resnet20",
                    "--n0",
                    "16",
                    "--rounds",
                    "2",
                    "--k",
                    "4",
                    "--kappas",
                    "0",
                    "--fill-rounds",
                    "1",
                    "--final-steps",
                    "150",
                ]),
                cv_seeds: 3,
            }
        }
    }

    /// The name of the preset in the tables.
    pub fn name(&self) -> &'static str {
        if self.quick { "quick" } else { "full" }
    }
}

/// A labelled set the predictor is cross-validated on: its name in the tables and its CSV,
/// relative to the workspace root.
pub const PREDICTOR_SETS: [(&str, &str); 4] = [
    (
        "authors-resnet20-cifar10",
        "assets/peer-data/seernet-resnet20-cifar10/samples.csv",
    ),
    // The labels of the ResNet-20 default run of session 7 (docs/benchmarks.md, "Main job").
    ("resnet20-default", "docs/data/resnet20-default-labels.csv"),
    ("lenet5-default", "docs/data/lenet5-default-labels.csv"),
    ("lenet5-maxdrop", "docs/data/lenet5-maxdrop-labels.csv"),
];

/// What a job computes.
#[derive(Clone, Debug, PartialEq)]
pub enum JobKind {
    /// `seernet compress` with this method, acquisition and seed (result: `summary.json`).
    Compress {
        method: &'static str,
        acquisition: &'static str,
        seed: u64,
    },
    /// `seernet predictor cv` on a labelled set with this split seed (result: `cv.json`, its
    /// standard output).
    Cv { set: &'static str, seed: u64 },
}

/// One `seernet` invocation whose result lives in its own directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// Directory name (`<method>-s<seed>`, `seernet-acq-random-s<seed>`, `cv-<set>-s<seed>`).
    pub name: String,
    /// The run directory.
    pub dir: PathBuf,
    /// The `seernet` arguments.
    pub args: Vec<String>,
    /// What it computes.
    pub kind: JobKind,
}

impl Job {
    /// The file whose presence (with matching arguments) means the job is finished.
    pub fn result_file(&self) -> PathBuf {
        self.dir.join(match self.kind {
            JobKind::Compress { .. } => "summary.json",
            JobKind::Cv { .. } => "cv.json",
        })
    }
}

/// Every job of the matrix: per seed every method's compress run ([`HELDOUT_METHOD`] first:
/// the predictor methods' runs score their predictor on its labels, `--heldout-labels`), then
/// the random acquisition run; then the predictor's cross-validations. The compress runs of one seed share a label
/// store and a final fine-tune cache (`<runs>/cache-s<seed>/`, `seernet compress --label-cache
/// --final-cache`): a policy two methods both label, or both fine-tune, is computed once, with
/// the same result each would compute alone. `runs` is the network's run root
/// (`<out>/<net>`), `root` the workspace root (where the labelled sets are).
pub fn jobs(p: &Preset, runs: &Path, root: &Path) -> Vec<Job> {
    let mut v = Vec::new();
    let mut compress =
        |name: String, method: &'static str, acquisition: &'static str, seed: u64| {
            let dir = runs.join(&name);
            let cache = runs.join(format!("cache-s{seed}"));
            let mut args = vec!["compress".to_string()];
            args.extend(p.compress_flags.iter().cloned());
            for (f, val) in [
                ("--method", method.to_string()),
                ("--acquisition", acquisition.to_string()),
                ("--seed", seed.to_string()),
                ("--out", dir.display().to_string()),
                (
                    "--label-cache",
                    cache.join("labels.jsonl").display().to_string(),
                ),
                ("--final-cache", cache.join("final").display().to_string()),
            ] {
                args.push(f.into());
                args.push(val);
            }
            if uses_predictor(method) {
                let heldout = runs
                    .join(format!("{HELDOUT_METHOD}-s{seed}"))
                    .join("labels.jsonl");
                args.push("--heldout-labels".into());
                args.push(heldout.display().to_string());
            }
            args.push("--quiet".into());
            v.push(Job {
                name,
                dir,
                args,
                kind: JobKind::Compress {
                    method,
                    acquisition,
                    seed,
                },
            });
        };
    // The held-out set's method first in each seed, then the rest in table order.
    let order: Vec<&'static str> = std::iter::once(HELDOUT_METHOD)
        .chain(METHODS.into_iter().filter(|m| *m != HELDOUT_METHOD))
        .collect();
    for seed in SEEDS {
        for &method in &order {
            compress(format!("{method}-s{seed}"), method, "std", seed);
        }
        for acq in ACQUISITIONS.iter().filter(|a| **a != "std") {
            compress(format!("seernet-acq-{acq}-s{seed}"), "seernet", acq, seed);
        }
    }
    for (set, file) in PREDICTOR_SETS {
        for seed in 0..p.cv_seeds {
            let name = format!("cv-{set}-s{seed}");
            let args = [
                "predictor",
                "cv",
                "--samples",
                &root.join(file).display().to_string(),
                "--seed",
                &seed.to_string(),
                "--json",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            v.push(Job {
                dir: runs.join(&name),
                name,
                args,
                kind: JobKind::Cv { set, seed },
            });
        }
    }
    v
}

/// Where a job stands before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Finished with these arguments: nothing to do.
    Done,
    /// Started with these arguments and not finished: rerun (compress resumes from its label
    /// store).
    Resume,
    /// Nothing there yet.
    Fresh,
}

/// The state of `job` from its directory. Errors: the directory holds a run of other
/// arguments (another preset or code with other flags), or files that no reproduce run wrote.
pub fn job_state(job: &Job) -> Result<JobState> {
    let args_file = job.dir.join(ARGS_FILE);
    let want = args_json(&job.args);
    match std::fs::read_to_string(&args_file) {
        Ok(have) if have == want => Ok(if job.result_file().is_file() {
            JobState::Done
        } else {
            JobState::Resume
        }),
        Ok(have) => bail!(
            "{} holds a run with other settings:\n  it has {}\n  now     {}\nremove the \
             directory or choose another --out",
            job.dir.display(),
            have.trim(),
            want.trim()
        ),
        Err(_) => {
            let occupied = std::fs::read_dir(&job.dir).is_ok_and(|mut d| d.next().is_some());
            if occupied {
                bail!(
                    "{} exists without {ARGS_FILE}: not a reproduce run; remove it or choose \
                     another --out",
                    job.dir.display()
                );
            }
            Ok(JobState::Fresh)
        }
    }
}

/// The arguments as the one-line JSON array of [`ARGS_FILE`].
fn args_json(args: &[String]) -> String {
    serde_json::to_string(args).expect("strings serialize") + "\n"
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a killed run never
/// leaves a half-written result that would count as finished.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Runs `job` with the `seernet` binary unless it is done. Returns whether it ran.
fn run_job(seernet: &Path, job: &Job) -> Result<bool> {
    if job_state(job)? == JobState::Done {
        return Ok(false);
    }
    std::fs::create_dir_all(&job.dir).with_context(|| format!("creating {}", job.dir.display()))?;
    write_atomic(&job.dir.join(ARGS_FILE), args_json(&job.args).as_bytes())?;
    let t = Instant::now();
    let mut cmd = Command::new(seernet);
    cmd.args(&job.args);
    let what = || format!("`seernet {}`", job.args.join(" "));
    match job.kind {
        JobKind::Compress { .. } => {
            let status = cmd.status().with_context(what)?;
            if !status.success() {
                bail!("{} failed ({status})", what());
            }
        }
        JobKind::Cv { .. } => {
            let out = cmd
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(what)?;
            if !out.status.success() {
                bail!("{} failed ({})", what(), out.status);
            }
            write_atomic(&job.result_file(), &out.stdout)?;
        }
    }
    let wall = json!({ "seconds": t.elapsed().as_secs_f64() }).to_string() + "\n";
    write_atomic(&job.dir.join(WALL_FILE), wall.as_bytes())?;
    Ok(true)
}

/// One budget of one finished compress run.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetResult {
    /// Budget label (`frac-0.05`, `w2a2`, ...).
    pub label: String,
    /// Test top-1 (%) of the chosen policy after the final fine-tune.
    pub test_top1: f64,
    /// BOPs of the chosen policy.
    pub bops: f64,
    /// BOPs as a fraction of the w8a8 network's.
    pub bops_frac: f64,
}

/// What the tables take from one compress run's `summary.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    pub method: String,
    pub acquisition: String,
    pub seed: u64,
    /// Labels the run used.
    pub labels: u64,
    /// Kendall τ of the predictor on the seed's fixed held-out set (`predictor_heldout`;
    /// None: no predictor, e.g. `uniform`).
    pub heldout_tau: Option<f64>,
    /// Kendall τ of the predictor over random splits of the run's own labels
    /// (`predictor_tau`; None: not measured).
    pub cv_tau: Option<f64>,
    pub budgets: Vec<BudgetResult>,
    /// Wall seconds of every invocation of the run (timings only).
    pub run_seconds: f64,
}

/// Reads a `summary.json` (text) of a run of `method`/`acquisition`/`seed`. Errors: not JSON,
/// a missing key, or a budget without a test top-1.
pub fn parse_summary(text: &str, method: &str, acquisition: &str, seed: u64) -> Result<RunResult> {
    let v: Value = serde_json::from_str(text).context("summary.json is not JSON")?;
    let num = |v: &Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("summary.json: no number `{k}`"))
    };
    let budgets = v["budgets"]
        .as_array()
        .context("summary.json: no `budgets` array")?
        .iter()
        .map(|b| {
            let label = b["label"]
                .as_str()
                .context("summary.json: a budget without `label`")?
                .to_string();
            Ok(BudgetResult {
                test_top1: num(b, "test_top1").with_context(|| format!("budget {label}"))?,
                bops: num(b, "bops")?,
                bops_frac: num(b, "bops_frac_w8a8")?,
                label,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RunResult {
        method: method.into(),
        acquisition: acquisition.into(),
        seed,
        labels: v["labels"]
            .as_u64()
            .context("summary.json: no integer `labels`")?,
        heldout_tau: v["predictor_heldout"]["kendall_tau"].as_f64(),
        cv_tau: v["predictor_tau"].as_f64(),
        budgets,
        run_seconds: v["run_seconds"].as_f64().unwrap_or(0.0),
    })
}

/// One split seed's cross-validation of the predictor on a labelled set.
#[derive(Clone, Debug, PartialEq)]
pub struct CvResult {
    pub set: String,
    pub seed: u64,
    pub samples: u64,
    /// Mean Kendall τ-b of the ensemble over the splits.
    pub tau: f64,
    /// Mean Kendall τ-b of ridge on the same splits.
    pub ridge_tau: f64,
}

/// Reads `seernet predictor cv --json`'s output. Errors: not JSON or a missing key.
pub fn parse_cv(text: &str, set: &str, seed: u64) -> Result<CvResult> {
    let v: Value = serde_json::from_str(text).context("cv.json is not JSON")?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("cv.json: no `{k}`"));
    Ok(CvResult {
        set: set.into(),
        seed,
        samples: v["n_samples"].as_u64().context("cv.json: no `n_samples`")?,
        tau: num("kendall_tau")?,
        ridge_tau: num("ridge_kendall_tau")?,
    })
}

/// Mean and sample standard deviation (n − 1 in the denominator; 0 for one value) of `xs`.
/// NaN mean for no values.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = if xs.len() < 2 {
        0.0
    } else {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    (mean, std)
}

/// `x` rounded to `d` decimals (the JSON's fixed precision; -0 becomes 0).
pub fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    let r = (x * p).round() / p;
    if r == 0.0 { 0.0 } else { r }
}

/// One method at one budget, over the seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub mean_top1: f64,
    pub std_top1: f64,
    pub mean_bops: f64,
    pub mean_bops_frac: f64,
    pub top1: Vec<f64>,
}

/// One acquisition over the seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct AcqRow {
    pub name: String,
    /// Predictor τ on the seed's fixed held-out set, per seed (runs where it was measured).
    pub tau: Vec<f64>,
    /// Predictor τ over random splits of the run's own labels, per seed.
    pub cv_tau: Vec<f64>,
    /// Per seed: mean test top-1 of the chosen policies over the budgets.
    pub chosen_top1: Vec<f64>,
}

/// One labelled set: the predictor against ridge, means over the split seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct PredRow {
    pub set: String,
    pub samples: u64,
    pub tau: f64,
    pub ridge_tau: f64,
}

/// The aggregated matrix: everything the md, JSON and SVG show.
#[derive(Clone, Debug, PartialEq)]
pub struct Tables {
    pub net: String,
    pub preset: String,
    pub compress_flags: Vec<String>,
    pub seeds: Vec<u64>,
    pub cv_seeds: u64,
    /// Budget labels in the runs' order.
    pub budgets: Vec<String>,
    /// Per method (table order): per budget its cell, and the labels per seed.
    pub methods: Vec<(String, Vec<Cell>, Vec<u64>)>,
    pub acquisition: Vec<AcqRow>,
    pub predictor: Vec<PredRow>,
}

/// Aggregates finished runs and cross-validations. Errors: a method or acquisition with no
/// run, or runs whose budgets differ.
pub fn aggregate(p: &Preset, runs: &[RunResult], cvs: &[CvResult]) -> Result<Tables> {
    let first = runs.first().context("no finished run")?;
    let budgets: Vec<String> = first.budgets.iter().map(|b| b.label.clone()).collect();
    for r in runs {
        let have: Vec<&str> = r.budgets.iter().map(|b| b.label.as_str()).collect();
        if have != budgets.iter().map(String::as_str).collect::<Vec<_>>() {
            bail!(
                "run {} seed {} has budgets {have:?}, the first run {budgets:?}",
                r.method,
                r.seed
            );
        }
    }
    let mut methods = Vec::new();
    for m in METHODS {
        let rs: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.method == m && r.acquisition == "std")
            .collect();
        if rs.is_empty() {
            bail!("no finished run of method {m}");
        }
        let cells = (0..budgets.len())
            .map(|i| {
                let top1: Vec<f64> = rs.iter().map(|r| r.budgets[i].test_top1).collect();
                let (mean_top1, std_top1) = mean_std(&top1);
                let bops: Vec<f64> = rs.iter().map(|r| r.budgets[i].bops).collect();
                let frac: Vec<f64> = rs.iter().map(|r| r.budgets[i].bops_frac).collect();
                Cell {
                    mean_top1,
                    std_top1,
                    mean_bops: mean_std(&bops).0,
                    mean_bops_frac: mean_std(&frac).0,
                    top1,
                }
            })
            .collect();
        methods.push((m.to_string(), cells, rs.iter().map(|r| r.labels).collect()));
    }
    let mut acquisition = Vec::new();
    for a in ACQUISITIONS {
        let rs: Vec<&RunResult> = runs
            .iter()
            .filter(|r| r.method == "seernet" && r.acquisition == a)
            .collect();
        if rs.is_empty() {
            bail!("no finished seernet run with acquisition {a}");
        }
        acquisition.push(AcqRow {
            name: a.into(),
            tau: rs.iter().filter_map(|r| r.heldout_tau).collect(),
            cv_tau: rs.iter().filter_map(|r| r.cv_tau).collect(),
            chosen_top1: rs
                .iter()
                .map(|r| mean_std(&r.budgets.iter().map(|b| b.test_top1).collect::<Vec<_>>()).0)
                .collect(),
        });
    }
    let mut predictor = Vec::new();
    for (set, _) in PREDICTOR_SETS {
        let cs: Vec<&CvResult> = cvs.iter().filter(|c| c.set == set).collect();
        if cs.is_empty() {
            continue;
        }
        predictor.push(PredRow {
            set: set.into(),
            samples: cs[0].samples,
            tau: mean_std(&cs.iter().map(|c| c.tau).collect::<Vec<_>>()).0,
            ridge_tau: mean_std(&cs.iter().map(|c| c.ridge_tau).collect::<Vec<_>>()).0,
        });
    }
    Ok(Tables {
        net: p.net.into(),
        preset: p.name().into(),
        compress_flags: p.compress_flags.clone(),
        seeds: SEEDS.to_vec(),
        cv_seeds: p.cv_seeds,
        budgets,
        methods,
        acquisition,
        predictor,
    })
}

/// A mean that may have no values: None then (null in the JSON, `–` in the table).
fn opt_mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| mean_std(xs).0)
}

/// The JSON file (`docs/reproduce/<net>.json`, `--json`): `methods.<method>.<budget>.mean_top1`
/// and `.std_top1` (plus `mean_bops`, `mean_bops_frac`, `top1` per seed), `labels.<method>`
/// (per seed), `acquisition.<name>.tau_mean` (on the fixed held-out set) and
/// `.chosen_top1_mean` (plus per-seed values, and `cv_tau_mean` on the runs' own labels),
/// `predictor[]` rows `{set, samples, tau, ridge_tau}`. Top-1 in % to 4 decimals, τ to 4,
/// BOPs fractions to 6; keys sorted. No wall time.
pub fn to_json(t: &Tables) -> String {
    let r4 = |x: f64| round(x, 4);
    let mut methods = serde_json::Map::new();
    let mut labels = serde_json::Map::new();
    for (m, cells, l) in &t.methods {
        let mut per = serde_json::Map::new();
        for (b, c) in t.budgets.iter().zip(cells) {
            per.insert(
                b.clone(),
                json!({
                    "mean_top1": r4(c.mean_top1),
                    "std_top1": r4(c.std_top1),
                    "mean_bops": c.mean_bops.round(),
                    "mean_bops_frac": round(c.mean_bops_frac, 6),
                    "top1": c.top1.iter().map(|x| r4(*x)).collect::<Vec<_>>(),
                }),
            );
        }
        methods.insert(m.clone(), Value::Object(per));
        labels.insert(m.clone(), json!(l));
    }
    let mut acq = serde_json::Map::new();
    for a in &t.acquisition {
        acq.insert(
            a.name.clone(),
            json!({
                "tau_mean": opt_mean(&a.tau).map(r4),
                "chosen_top1_mean": opt_mean(&a.chosen_top1).map(r4),
                "tau": a.tau.iter().map(|x| r4(*x)).collect::<Vec<_>>(),
                "cv_tau_mean": opt_mean(&a.cv_tau).map(r4),
                "chosen_top1": a.chosen_top1.iter().map(|x| r4(*x)).collect::<Vec<_>>(),
            }),
        );
    }
    let predictor: Vec<Value> = t
        .predictor
        .iter()
        .map(|p| {
            json!({
                "set": p.set, "samples": p.samples,
                "tau": r4(p.tau), "ridge_tau": r4(p.ridge_tau),
            })
        })
        .collect();
    let v = json!({
        "net": t.net,
        "preset": t.preset,
        "compress_flags": t.compress_flags,
        "seeds": t.seeds,
        "cv_split_seeds": t.cv_seeds,
        "budgets": t.budgets,
        "methods": methods,
        "labels": labels,
        "acquisition": acq,
        "predictor": predictor,
    });
    serde_json::to_string_pretty(&v).expect("serializes") + "\n"
}

/// The Markdown tables (`docs/reproduce/<net>.md`): method × budget (mean ± std of test top-1
/// over the seeds, the best mean per budget in bold, mean chosen BOPs in % of w8a8), labels per
/// method, the acquisition comparison and the predictor against ridge. Fixed precision, no
/// wall time, nothing that changes between two runs of the same seeds.
pub fn to_markdown(t: &Tables) -> String {
    let mut s = String::new();
    let n = t.seeds.len();
    let seeds = t
        .seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let quick = if t.preset == "quick" { " --quick" } else { "" };
    let _ = writeln!(s, "# Reproduction: {} ({} preset)\n", t.net, t.preset);
    let _ = writeln!(
        s,
        "Written by `cargo xtask reproduce{quick}` (do not edit: it is regenerated and compared \
         byte for byte). Every run is `seernet compress {} --method M --acquisition A --seed S` \
         with seeds {seeds}; wall times are in `{}.timings.json`, the plot in `{}.svg`.\n",
        t.compress_flags.join(" "),
        t.net,
        t.net
    );
    let _ = writeln!(s, "## Methods at equal cost\n");
    let _ = writeln!(
        s,
        "Test top-1 (%) after the final fine-tune, mean ± sample std over {n} seeds, the best \
         mean per budget in bold; in brackets the chosen policies' mean BOPs in % of w8a8. \
         Labels: labels each run used, mean over the seeds.\n"
    );
    let _ = writeln!(s, "| method | labels | {} |", t.budgets.join(" | "));
    let _ = writeln!(s, "|---|---|{}", "---|".repeat(t.budgets.len()));
    let best: Vec<f64> = (0..t.budgets.len())
        .map(|i| {
            t.methods
                .iter()
                .map(|(_, c, _)| round(c[i].mean_top1, 2))
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    for (m, cells, labels) in &t.methods {
        let l = mean_std(&labels.iter().map(|x| *x as f64).collect::<Vec<_>>()).0;
        let _ = write!(s, "| `{m}` | {l:.1} |");
        for (c, b) in cells.iter().zip(&best) {
            let cell = format!("{:.2} ± {:.2}", c.mean_top1, c.std_top1);
            let cell = if round(c.mean_top1, 2) == *b {
                format!("**{cell}**")
            } else {
                cell
            };
            let _ = write!(s, " {cell} ({:.1}%) |", 100.0 * c.mean_bops_frac);
        }
        s.push('\n');
    }
    let _ = writeln!(s, "\n## Acquisition (`--method seernet`, same seeds)\n");
    let _ = writeln!(
        s,
        "Predictor τ: Kendall τ-b of the run's final predictor on one fixed held-out set per \
         seed, the labels of the `{HELDOUT_METHOD}` method's run (policies drawn uniformly within \
         each budget's band) that the run did not plan; own-labels τ: the same over random \
         80/20 splits of the run's own labels (not comparable across acquisitions, which label \
         different policies); chosen top-1: test top-1 of the chosen policies, mean over the \
         budgets; all averaged over the seeds.\n"
    );
    let _ = writeln!(
        s,
        "| acquisition | predictor τ (mean) | chosen test top-1 (mean) | τ per seed | chosen top-1 per seed | own-labels τ (mean) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let list = |v: &[f64], d: usize| {
        v.iter()
            .map(|x| format!("{x:.d$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for a in &t.acquisition {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} |",
            a.name,
            opt_mean(&a.tau).map_or("–".into(), |x| format!("{x:.4}")),
            opt_mean(&a.chosen_top1).map_or("–".into(), |x| format!("{x:.2}")),
            list(&a.tau, 4),
            list(&a.chosen_top1, 2),
            opt_mean(&a.cv_tau).map_or("–".into(), |x| format!("{x:.4}")),
        );
    }
    let _ = writeln!(s, "\n## Predictor against ridge\n");
    let _ = writeln!(
        s,
        "`seernet predictor cv --samples SET --seed S` for split seeds 0..{}: 10 random 80/20 \
         splits each, ridge on the same splits; mean Kendall τ-b.\n",
        t.cv_seeds
    );
    let _ = writeln!(s, "| set | samples | ours τ-b | ridge τ-b | ours − ridge |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for p in &t.predictor {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {:.4} | {:+.4} |",
            p.set,
            p.samples,
            p.tau,
            p.ridge_tau,
            round(p.tau, 4) - round(p.ridge_tau, 4)
        );
    }
    s
}

/// `<net>.timings.json`: wall seconds per run (every invocation of it), mean per method, per
/// cross-validation, the load average before and after, and this invocation's wall time. Read
/// by no comparison.
pub fn timings_json(runs: &[RunResult], cv_walls: &[(String, f64)], extra: Value) -> String {
    let mut per_run = BTreeMap::new();
    let mut per_method: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in runs {
        let key = if r.acquisition == "std" {
            r.method.clone()
        } else {
            format!("{}-acq-{}", r.method, r.acquisition)
        };
        per_run.insert(format!("{key}-s{}", r.seed), round(r.run_seconds, 1));
        per_method.entry(key).or_default().push(r.run_seconds);
    }
    let means: BTreeMap<String, f64> = per_method
        .iter()
        .map(|(k, v)| (k.clone(), round(mean_std(v).0, 1)))
        .collect();
    let cv: BTreeMap<String, f64> = cv_walls
        .iter()
        .map(|(k, v)| (k.clone(), round(*v, 1)))
        .collect();
    let total: f64 = runs.iter().map(|r| r.run_seconds).sum::<f64>()
        + cv_walls.iter().map(|(_, v)| v).sum::<f64>();
    let v = json!({
        "run_seconds": per_run,
        "method_mean_seconds": means,
        "cv_seconds": cv,
        "sum_seconds": round(total, 1),
        "this_invocation": extra,
    });
    serde_json::to_string_pretty(&v).expect("serializes") + "\n"
}

/// The plot colours, one per method in [`METHODS`] order.
const COLOURS: [(u8, u8, u8); 6] = [
    (214, 39, 40),
    (31, 119, 180),
    (127, 127, 127),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
];

/// The SVG: mean test top-1 against the chosen policies' mean BOPs in % of w8a8, one line per
/// method through its budgets, with ± std bars (methods that chose the same policies overlap). Errors: plotters fails to draw.
pub fn to_svg(t: &Tables) -> Result<String> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Debug| anyhow::anyhow!("plot: {e:?}");
    let pct = |c: &Cell| 100.0 * c.mean_bops_frac;
    let pts: Vec<(f64, f64, f64)> = t
        .methods
        .iter()
        .flat_map(|(_, c, _)| c.iter().map(|c| (pct(c), c.mean_top1, c.std_top1)))
        .collect();
    let xmin = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ymin = pts.iter().map(|p| p.1 - p.2).fold(f64::INFINITY, f64::min);
    let ymax = pts
        .iter()
        .map(|p| p.1 + p.2)
        .fold(f64::NEG_INFINITY, f64::max);
    if !(xmin.is_finite() && xmax.is_finite() && ymin.is_finite() && ymax.is_finite()) {
        bail!("nothing to plot");
    }
    let pad = ((ymax - ymin) * 0.1).max(0.5);
    let (ylo, yhi) = (ymin - pad, ymax + 3.0 * pad);
    let xpad = ((xmax - xmin) * 0.08).max(0.5);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (860, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| perr(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Test top-1 vs BOPs per method — {} ({} preset), mean ± std over {} seeds",
                    t.net,
                    t.preset,
                    t.seeds.len()
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((xmin - xpad)..(xmax + xpad), ylo..yhi)
            .map_err(|e| perr(&e))?;
        chart
            .configure_mesh()
            .x_desc("chosen policy's BOPs (% of the w8a8 network's), mean over the seeds")
            .y_desc("test top-1 (%)")
            .x_labels(8)
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| perr(&e))?;
        for ((m, cells, _), (r, g, b)) in t.methods.iter().zip(COLOURS) {
            let colour = RGBColor(r, g, b);
            let mut line: Vec<(f64, f64)> = cells.iter().map(|c| (pct(c), c.mean_top1)).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
                .map_err(|e| perr(&e))?
                .label(m.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|p| Circle::new(*p, 4, colour.filled())))
                .map_err(|e| perr(&e))?;
            chart
                .draw_series(cells.iter().map(|c| {
                    PathElement::new(
                        vec![
                            (pct(c), c.mean_top1 - c.std_top1),
                            (pct(c), c.mean_top1 + c.std_top1),
                        ],
                        colour.stroke_width(1),
                    )
                }))
                .map_err(|e| perr(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| perr(&e))?;
        root.present().map_err(|e| perr(&e))?;
    }
    Ok(svg)
}

/// The load averages (1, 5, 15 min) from `/proc/loadavg`, when readable.
fn loadavg() -> Option<Vec<f64>> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        s.split_whitespace()
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}

/// Options of `cargo xtask reproduce`.
pub struct Options {
    pub quick: bool,
    pub json: bool,
    /// Run root (`<out>/<net>/<job>`).
    pub out: PathBuf,
    /// Where the tables go.
    pub docs: PathBuf,
    /// The `seernet` binary.
    pub seernet: PathBuf,
    /// The workspace root.
    pub root: PathBuf,
}

/// Runs the matrix (skipping finished jobs), then writes the tables. Errors: a job fails, a
/// run directory holds other settings, or an output cannot be written.
pub fn reproduce(o: &Options) -> Result<()> {
    let preset = Preset::new(o.quick);
    let runs_dir = o.out.join(preset.net);
    let all = jobs(&preset, &runs_dir, &o.root);
    let load_before = loadavg();
    let t0 = Instant::now();
    // Check every directory before computing anything, so a settings clash fails at once.
    let states = all.iter().map(job_state).collect::<Result<Vec<_>>>()?;
    let todo = states.iter().filter(|s| **s != JobState::Done).count();
    eprintln!(
        "reproduce: {} ({} preset): {} jobs, {} finished, {} to run, in {}",
        preset.net,
        preset.name(),
        all.len(),
        all.len() - todo,
        todo,
        runs_dir.display()
    );
    for (i, (job, state)) in all.iter().zip(&states).enumerate() {
        let t = Instant::now();
        let what = match state {
            JobState::Done => "finished before, skipped",
            JobState::Resume => "resuming",
            JobState::Fresh => "running",
        };
        eprintln!("reproduce: [{}/{}] {}: {what}", i + 1, all.len(), job.name);
        if run_job(&o.seernet, job)? {
            eprintln!(
                "reproduce: [{}/{}] {}: done in {:.1} s",
                i + 1,
                all.len(),
                job.name,
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mut runs = Vec::new();
    let mut cvs = Vec::new();
    let mut cv_walls = Vec::new();
    for job in &all {
        let text = std::fs::read_to_string(job.result_file())
            .with_context(|| format!("reading {}", job.result_file().display()))?;
        match job.kind {
            JobKind::Compress {
                method,
                acquisition,
                seed,
            } => runs.push(
                parse_summary(&text, method, acquisition, seed)
                    .with_context(|| job.result_file().display().to_string())?,
            ),
            JobKind::Cv { set, seed } => {
                cvs.push(
                    parse_cv(&text, set, seed)
                        .with_context(|| job.result_file().display().to_string())?,
                );
                let wall = std::fs::read_to_string(job.dir.join(WALL_FILE))
                    .ok()
                    .and_then(|w| serde_json::from_str::<Value>(&w).ok())
                    .and_then(|w| w["seconds"].as_f64())
                    .unwrap_or(0.0);
                cv_walls.push((job.name.clone(), wall));
            }
        }
    }
    let tables = aggregate(&preset, &runs, &cvs)?;
    std::fs::create_dir_all(&o.docs).with_context(|| format!("creating {}", o.docs.display()))?;
    let json = to_json(&tables);
    let net = preset.net;
    write_atomic(&o.docs.join(format!("{net}.json")), json.as_bytes())?;
    write_atomic(
        &o.docs.join(format!("{net}.md")),
        to_markdown(&tables).as_bytes(),
    )?;
    write_atomic(
        &o.docs.join(format!("{net}.svg")),
        to_svg(&tables)?.as_bytes(),
    )?;
    let extra = json!({
        "wall_seconds": round(t0.elapsed().as_secs_f64(), 1),
        "jobs_run": todo,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    });
    write_atomic(
        &o.docs.join(format!("{net}.timings.json")),
        timings_json(&runs, &cv_walls, extra).as_bytes(),
    )?;
    eprintln!(
        "reproduce: wrote {}/{net}.{{md,json,svg,timings.json}} ({} jobs run now, {:.0} s)",
        o.docs.display(),
        todo,
        t0.elapsed().as_secs_f64()
    );
    if o.json {
        print!("{json}");
    } else {
        print!("{}", to_markdown(&tables));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary.json as `seernet compress` writes it (only the keys read here, plus others):
    /// `tau` is the held-out τ, the own-labels τ is `tau + 0.1`.
    fn summary(top1: &[f64], labels: u64, tau: Option<f64>) -> String {
        let budgets: Vec<Value> = top1
            .iter()
            .zip(["frac-0.05", "frac-0.12"])
            .zip([1000u64, 2400])
            .map(|((t, l), bops)| {
                json!({"label": l, "test_top1": t, "bops": bops,
                       "bops_frac_w8a8": bops as f64 / 20000.0, "margin_points": 0.0})
            })
            .collect();
        let heldout = tau.map(|t| {
            json!({"kendall_tau": t, "rmse": 1.0, "n_train": labels,
                                         "n_test": 40})
        });
        json!({"labels": labels, "predictor_tau": tau.map(|t| t + 0.1),
               "predictor_heldout": heldout, "budgets": budgets,
               "run_seconds": 12.5, "out_dir": "x"})
        .to_string()
    }

    /// Runs of every method and acquisition over the seeds: method i at seed s scores
    /// `70 + i + s` and `80 + i + 2s` at the two budgets.
    fn matrix() -> Vec<RunResult> {
        let mut v = Vec::new();
        for (i, m) in METHODS.iter().enumerate() {
            for s in SEEDS {
                let (a, b) = (70.0 + i as f64 + s as f64, 80.0 + i as f64 + 2.0 * s as f64);
                let text = summary(&[a, b], 20 + i as u64, (i == 0).then_some(0.5));
                v.push(parse_summary(&text, m, "std", s).unwrap());
            }
        }
        for s in SEEDS {
            let text = summary(&[60.0, 70.0 + s as f64], 20, Some(0.25 + 0.1 * s as f64));
            v.push(parse_summary(&text, "seernet", "random", s).unwrap());
        }
        v
    }

    fn cvs() -> Vec<CvResult> {
        let text = |t: f64, r: f64| {
            json!({"n_samples": 81, "kendall_tau": t, "ridge_kendall_tau": r, "rmse": 1.0})
                .to_string()
        };
        vec![
            parse_cv(&text(0.64, 0.55), "lenet5-default", 0).unwrap(),
            parse_cv(&text(0.66, 0.57), "lenet5-default", 1).unwrap(),
        ]
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert_eq!(s, 1.0);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
        assert!(mean_std(&[]).0.is_nan());
        assert_eq!(round(78.123456, 4), 78.1235);
        assert_eq!(round(-0.00001, 4).to_string(), "0");
    }

    #[test]
    fn the_json_has_the_issue_keys_and_the_aggregates() {
        let t = aggregate(&Preset::new(true), &matrix(), &cvs()).unwrap();
        let v: Value = serde_json::from_str(&to_json(&t)).unwrap();
        // seernet (i = 0) at frac-0.05: 70, 71, 72; fit-ilp (i = 1) at frac-0.12: 81, 83, 85.
        assert_eq!(
            v["methods"]["seernet"]["frac-0.05"]["mean_top1"],
            json!(71.0)
        );
        assert_eq!(v["methods"]["seernet"]["frac-0.05"]["std_top1"], json!(1.0));
        assert_eq!(
            v["methods"]["fit-ilp"]["frac-0.12"]["mean_top1"],
            json!(83.0)
        );
        assert_eq!(v["methods"]["fit-ilp"]["frac-0.12"]["std_top1"], json!(2.0));
        for m in METHODS {
            for b in ["frac-0.05", "frac-0.12"] {
                assert!(v["methods"][m][b]["mean_top1"].is_f64(), "{m} {b}");
                assert!(v["methods"][m][b]["std_top1"].is_f64(), "{m} {b}");
            }
        }
        // std acquisition = the seernet runs: τ 0.5 each, chosen (70+s + 80+2s)/2 → 75, 76.5, 78.
        assert_eq!(v["acquisition"]["std"]["tau_mean"], json!(0.5));
        assert_eq!(v["acquisition"]["std"]["chosen_top1_mean"], json!(76.5));
        assert_eq!(v["acquisition"]["random"]["tau_mean"], json!(0.35));
        assert_eq!(v["acquisition"]["random"]["cv_tau_mean"], json!(0.45));
        assert_eq!(v["acquisition"]["random"]["chosen_top1_mean"], json!(65.5));
        let p = &v["predictor"][0];
        assert_eq!(p["set"], json!("lenet5-default"));
        assert_eq!(p["tau"], json!(0.65));
        assert_eq!(p["ridge_tau"], json!(0.56));
        assert_eq!(v["predictor"].as_array().unwrap().len(), 1);
        assert_eq!(v["labels"]["uniform"], json!([25, 25, 25]));
        // No wall time anywhere in the compared file.
        assert!(!to_json(&t).contains("seconds"));
    }

    #[test]
    fn a_method_without_runs_or_mismatched_budgets_is_an_error() {
        let mut runs = matrix();
        runs.retain(|r| r.method != "evo");
        let e = aggregate(&Preset::new(true), &runs, &[]).unwrap_err();
        assert!(e.to_string().contains("evo"), "{e}");
        let mut runs = matrix();
        runs[4].budgets.pop();
        assert!(aggregate(&Preset::new(true), &runs, &[]).is_err());
        let e = parse_summary(
            &summary(&[70.0], 3, None).replace("test_top1", "x"),
            "m",
            "std",
            0,
        );
        assert!(e.is_err());
    }

    #[test]
    fn markdown_rows_are_fixed_precision_with_the_best_in_bold() {
        let t = aggregate(&Preset::new(true), &matrix(), &cvs()).unwrap();
        let md = to_markdown(&t);
        assert!(md.contains("| method | labels | frac-0.05 | frac-0.12 |\n|---|---|---|---|\n"));
        // seernet: 71 ± 1 at 5% (BOPs 1000/20000 = 5.0%); uniform (i = 5) is best at both.
        assert!(
            md.contains("| `seernet` | 20.0 | 71.00 ± 1.00 (5.0%) | 82.00 ± 2.00 (12.0%) |\n"),
            "{md}"
        );
        assert!(
            md.contains(
                "| `uniform` | 25.0 | **76.00 ± 1.00** (5.0%) | **87.00 ± 2.00** (12.0%) |\n"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| `std` | 0.5000 | 76.50 | 0.5000, 0.5000, 0.5000 | 75.00, 76.50, 78.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| lenet5-default | 81 | 0.6500 | 0.5600 | +0.0900 |"),
            "{md}"
        );
        assert!(!md.contains("seconds"));
        // Same input, same bytes; and the SVG too.
        assert_eq!(
            md,
            to_markdown(&aggregate(&Preset::new(true), &matrix(), &cvs()).unwrap())
        );
        let svg = to_svg(&t).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("hardstop"));
        assert_eq!(svg, to_svg(&t).unwrap());
    }

    #[test]
    fn timings_stay_out_of_the_tables() {
        let js = timings_json(&matrix(), &[("cv-x-s0".into(), 3.25)], json!({}));
        let v: Value = serde_json::from_str(&js).unwrap();
        assert_eq!(v["run_seconds"]["seernet-s0"], json!(12.5));
        assert_eq!(v["method_mean_seconds"]["seernet-acq-random"], json!(12.5));
        assert_eq!(v["sum_seconds"], json!(265.8));
    }

    #[test]
    fn jobs_cover_the_matrix_with_one_directory_each() {
        let p = Preset::new(false);
        let j = jobs(&p, Path::new("/r/resnet20"), Path::new("/ws"));
        assert_eq!(j.len(), 6 * 3 + 3 + PREDICTOR_SETS.len() * 3);
        let names: std::collections::BTreeSet<_> = j.iter().map(|j| j.dir.clone()).collect();
        assert_eq!(names.len(), j.len());
        // Seed-major: a seed's held-out method, its other methods, then its
        // random-acquisition run.
        assert_eq!(j[0].dir, Path::new("/r/resnet20/random-s0"));
        assert_eq!(j[1].dir, Path::new("/r/resnet20/seernet-s0"));
        assert_eq!(j[6].name, "seernet-acq-random-s0");
        for job in &j[..7] {
            let heldout = job
                .args
                .windows(2)
                .any(|w| w == ["--heldout-labels", "/r/resnet20/random-s0/labels.jsonl"]);
            let predictor = [
                "seernet-s0",
                "evo-s0",
                "hardstop-s0",
                "seernet-acq-random-s0",
            ];
            assert_eq!(
                heldout,
                predictor.contains(&job.name.as_str()),
                "{}",
                job.name
            );
        }
        let a = j[9].args.join(" ");
        assert_eq!(
            a,
            "compress --arch resnet20 --n0 16 --rounds 2 --k 4 --kappas 0 --fill-rounds 1 \
             --final-steps 150 --method fit-ilp --acquisition std --seed 1 \
             --out /r/resnet20/fit-ilp-s1 --label-cache /r/resnet20/cache-s1/labels.jsonl \
             --final-cache /r/resnet20/cache-s1/final --quiet"
        );
        assert!(j.iter().any(|j| j.name == "seernet-acq-random-s2"
            && j.args.windows(2).any(|w| w == ["--acquisition", "random"])));
        let cv = j.last().unwrap();
        assert_eq!(cv.name, "cv-lenet5-maxdrop-s2");
        assert!(
            cv.args
                .join(" ")
                .contains("--samples /ws/docs/data/lenet5-maxdrop-labels.csv --seed 2 --json")
        );
        assert!(
            Preset::new(true)
                .compress_flags
                .starts_with(&["--quick".to_string()])
        );
    }

    #[test]
    fn finished_runs_are_skipped_unfinished_resumed_other_settings_refused() {
        let td = tempfile::tempdir().unwrap();
        let p = Preset::new(true);
        let j = jobs(&p, td.path(), Path::new("/ws")).remove(0);
        assert_eq!(job_state(&j).unwrap(), JobState::Fresh);
        std::fs::create_dir_all(&j.dir).unwrap();
        assert_eq!(job_state(&j).unwrap(), JobState::Fresh);
        std::fs::write(j.dir.join(ARGS_FILE), args_json(&j.args)).unwrap();
        std::fs::write(j.dir.join("labels.jsonl"), "{}\n").unwrap();
        assert_eq!(job_state(&j).unwrap(), JobState::Resume);
        std::fs::write(j.result_file(), summary(&[1.0, 2.0], 3, None)).unwrap();
        assert_eq!(job_state(&j).unwrap(), JobState::Done);
        // A finished run never reruns: run_job returns before touching the binary.
        assert!(!run_job(Path::new("/nonexistent/seernet"), &j).unwrap());
        // Same directory, other settings: refused, not overwritten.
        let mut other = j.clone();
        other.args.push("--final-steps".into());
        other.args.push("7".into());
        let e = job_state(&other).unwrap_err().to_string();
        assert!(e.contains("other settings"), "{e}");
        // A directory with files but no args file is not ours.
        std::fs::remove_file(j.dir.join(ARGS_FILE)).unwrap();
        assert!(
            job_state(&j)
                .unwrap_err()
                .to_string()
                .contains("not a reproduce run")
        );
    }
}
