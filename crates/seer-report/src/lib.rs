//! seer-report: the run report of SeerNet-rs (issue 7 §5): `report.md`, a self-contained
//! `report.html` (inline SVG, no external assets), the SVG plots and `report.json`, rendered
//! from a plain [`RunReport`] (numbers, strings and [`seer_policy::Policy`] values; no tensors).
//! The facade's pipeline builds the value; this crate only renders it.
//!
//! The report renders exactly what it is given: a missing measurement shows as "not measured",
//! never as a made-up number. The only figures it derives are arithmetic on given ones
//! (compression ratio, share of the w8a8 BOPs, best uniform baseline at ≤ the same BOPs and the
//! margin to it), each labelled as such.
//!
//! [`render_report`] returns every file's name and text; [`write_report`] writes them into a
//! directory, each atomically.
//!
//! ```
//! use seer_report::{render_markdown, render_report, Baseline, RunReport, StageTiming};
//!
//! let r = RunReport {
//!     title: "demo".into(),
//!     arch: "lenet5".into(),
//!     input: "28x28x1".into(),
//!     dataset: "fashion-mnist".into(),
//!     baseline: Baseline {
//!         top1_test: 90.1,
//!         top1_val: None,
//!         macs: 1_000,
//!         bops_w8a8: 64_000,
//!         size_bits_fp32: 3_200,
//!         source: "baseline.safetensors".into(),
//!     },
//!     timings: vec![StageTiming { stage: "labelling".into(), seconds: 75.0 }],
//!     ..Default::default()
//! };
//! let md = render_markdown(&r);
//! assert!(md.starts_with("# demo\n"));
//! assert!(md.lines().any(|l| l == "| 90.10 | — | 1.00K | 64.0K | 400 B | baseline.safetensors |"));
//! assert!(md.lines().any(|l| l == "| labelling | 1m 15s |"));
//!
//! // No budgets and no points: no plots, just the three documents.
//! let names: Vec<String> = render_report(&r)?.into_iter().map(|f| f.name).collect();
//! assert_eq!(names, ["report.md", "report.html", "report.json"]);
//! # Ok::<(), seer_report::Error>(())
//! ```
#![warn(missing_docs)]

mod doc;
mod error;
mod html;
mod markdown;
#[cfg(feature = "plots")]
mod plots;

use std::io::Write;
use std::path::{Path, PathBuf};

use seer_policy::Policy;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};

pub use html::render_html;
pub use markdown::render_markdown;
#[cfg(feature = "plots")]
pub use plots::{plot_policy_layers, plot_top1_vs_bops};

/// Whether this build draws the SVG plots (the `plots` feature); without it the report has
/// the same tables and text and no figures.
pub const PLOTS: bool = cfg!(feature = "plots");

/// Format tag of `report.json`.
pub const REPORT_FORMAT: &str = "seernet-report";
/// `report.json` version written by this build.
pub const REPORT_VERSION: u64 = 1;

/// Everything a run reports. Top-1 values are percentages (0–100); BOPs, MACs and sizes follow
/// docs/method.md §2 (size in bits).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Heading of the report.
    pub title: String,
    /// Network name.
    pub arch: String,
    /// Input shape `HxWxC`.
    pub input: String,
    /// Dataset name.
    pub dataset: String,
    /// Seed of the run.
    pub seed: u64,
    /// The command line that produced the run, if known.
    pub command: Option<String>,
    /// The full-precision network.
    pub baseline: Baseline,
    /// Settings of the run (labels, rounds, acquisition, fine-tune steps, ...), shown as a table.
    pub settings: Vec<Setting>,
    /// Names of the searchable units, in policy order (for per-unit tables and plots).
    pub unit_names: Vec<String>,
    /// One entry per budget.
    pub budgets: Vec<BudgetOutcome>,
    /// Measured uniform-bit-width baselines (same final fine-tune protocol).
    pub uniform: Vec<UniformBaseline>,
    /// The predictor's front: predicted top-1 of the best policy found at each BOPs level.
    pub front: Vec<FrontPoint>,
    /// Labelled samples (validation top-1 after the short fine-tune), for the scatter plot.
    pub labels: Vec<LabelPoint>,
    /// Predictor quality on held-out labels.
    pub predictor: Option<PredictorQuality>,
    /// How well the labels rank policies the way the final fine-tune does, measured on this
    /// run's own final fine-tunes (None with fewer than 4 labelled finals, and in reports
    /// written before it was recorded).
    #[serde(default)]
    pub label_fidelity: Option<LabelFidelity>,
    /// Wall time per stage of the invocation that wrote the report (no total row: see
    /// `wall_seconds`).
    pub timings: Vec<StageTiming>,
    /// Wall time of the invocation that wrote the report, start to end.
    #[serde(default)]
    pub wall_seconds: Option<f64>,
    /// Invocations of the run so far (a killed and resumed run has several; 0 when unknown).
    #[serde(default)]
    pub invocations: usize,
    /// Wall time per stage summed over every invocation (shown when there were several).
    #[serde(default)]
    pub timings_all: Vec<StageTiming>,
    /// Wall time of every invocation together.
    #[serde(default)]
    pub wall_seconds_all: Option<f64>,
    /// Free-text notes (warnings, deviations), rendered as a list.
    pub notes: Vec<String>,
}

/// The trained full-precision network.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Test top-1 of the full-precision network.
    pub top1_test: f64,
    /// Validation top-1, if measured.
    pub top1_val: Option<f64>,
    /// MACs of the unpruned network.
    pub macs: u64,
    /// BOPs of the unpruned network at w8a8 (the reference of `--bops-frac`).
    pub bops_w8a8: u64,
    /// Size of the full-precision (32-bit) weights in bits (the reference of compression ratios).
    pub size_bits_fp32: u64,
    /// Where the baseline came from (checkpoint path, or "trained in this run").
    pub source: String,
}

/// A named setting of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Name.
    pub name: String,
    /// Value as text.
    pub value: String,
}

/// The outcome at one budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetOutcome {
    /// Budget label (`bops-5M`, `frac-0.1`, ...).
    pub label: String,
    /// BOPs limit, if any.
    pub max_bops: Option<u64>,
    /// Size limit in bits, if any.
    pub max_size_bits: Option<u64>,
    /// The chosen policy.
    pub policy: Policy,
    /// Its MACs.
    pub macs: u64,
    /// Its BOPs.
    pub bops: u64,
    /// Its size in bits.
    pub size_bits: u64,
    /// Predicted top-1 (validation protocol, short fine-tune).
    pub predicted_top1: f64,
    /// Ensemble std of the prediction.
    pub predicted_std: Option<f64>,
    /// Measured test top-1 after the final fine-tune; None when not measured.
    pub measured_top1: Option<f64>,
    /// Written policy file, relative to the run directory.
    pub policy_file: Option<String>,
    /// Written model file, relative to the run directory.
    pub model_file: Option<String>,
    /// Bytes of the written model file (weights, scales and the header with the network and
    /// provenance); `size_bits` counts what the integer engine stores of the weights only.
    #[serde(default)]
    pub file_bytes: Option<u64>,
    /// The ONNX QDQ form of the model (`model-<budget>.onnx`, docs/export.md), relative to the
    /// run directory; None when it was not written (or in reports from before it existed).
    #[serde(default)]
    pub onnx_file: Option<String>,
    /// Bytes of the ONNX QDQ file on disk (int8 weights, float biases and scales, the graph).
    #[serde(default)]
    pub onnx_bytes: Option<u64>,
    /// Validation top-1 of this policy measured under the labelling protocol (the evidence
    /// the final choice was made on); None for reports written before it was recorded.
    #[serde(default)]
    pub label_val_top1: Option<f64>,
    /// Where the chosen policy came from (e.g. `barrier search, κ = 1, verification round 2`,
    /// `uniform anchor`, `active round 3`).
    #[serde(default)]
    pub selected_from: Option<String>,
    /// Why the predicted top-1 extrapolates beyond the predictor's training data, when it does
    /// (e.g. `above the highest training label; 2 features outside the training range`);
    /// None when it lies within it, could not be judged, or in reports written before this
    /// was recorded. Rendered as a marker on the predicted value (docs/method.md §4).
    #[serde(default)]
    pub extrapolation: Option<String>,
    /// The accuracy target this outcome answers (`--max-drop`), when it is one.
    #[serde(default)]
    pub accuracy_target: Option<AccuracyTarget>,
    /// The share of the budget the chosen policy uses: its BOPs / the BOPs limit, or its size
    /// / the size limit, the larger of the two (None for an accuracy target).
    #[serde(default)]
    pub budget_used: Option<f64>,
    /// Why the chosen policy leaves more than 10% of its budget unused, when it does (e.g. no
    /// labelled policy between it and the limit validated higher).
    #[serde(default)]
    pub budget_note: Option<String>,
    /// Validation top-1 (%) after the final fine-tune, on which the final pick compared the
    /// search's choice with the uniform anchors within the budget (None in reports written
    /// before it was recorded).
    #[serde(default)]
    pub final_val_top1: Option<f64>,
}

/// An accuracy-first request (`--max-drop P`): the cheapest policy whose test top-1 stays
/// within `max_drop` points of the full-precision baseline. The chosen policy is the cheapest
/// labelled one whose validation top-1 under the labelling protocol reached
/// `label_threshold`; whether the drop held on the test split is derived from the
/// outcome's measured top-1 ([`AccuracyTarget::held`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccuracyTarget {
    /// Largest allowed drop P, in top-1 points.
    pub max_drop: f64,
    /// Full-precision test top-1 the drop is measured from (%).
    pub reference_test_top1: f64,
    /// Full-precision validation top-1: a fine-tuned candidate is accepted when its
    /// validation top-1 is at most P below it (%).
    #[serde(default)]
    pub reference_val_top1: f64,
    /// Validation top-1 a label had to reach to become a candidate: the labelling protocol's
    /// own reference (the unpruned w8a8 label, at most the baseline's validation top-1) − P (%).
    pub label_threshold: f64,
    /// The candidates given the final fine-tune, cheapest first, until one was accepted.
    #[serde(default)]
    pub tried: Vec<Tried>,
    /// Whether some labelled policy reached the threshold (if none did, the chosen policy is
    /// the most accurate labelled one).
    pub reached_on_labels: bool,
    /// The most accurate labelled policy cheaper than the chosen one (it missed the threshold).
    pub next_cheaper: Option<Alternative>,
    /// The cheapest labelled policy dearer and more accurate than the chosen one.
    pub next_safer: Option<Alternative>,
}

impl AccuracyTarget {
    /// Test-split drop of `measured` below the reference, and whether it is within P.
    pub fn held(&self, measured: f64) -> (f64, bool) {
        let drop = self.reference_test_top1 - measured;
        (drop, drop <= self.max_drop)
    }
}

/// A candidate of an accuracy target after its final fine-tune.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tried {
    /// Its BOPs.
    pub bops: u64,
    /// Its label: validation top-1 after the short fine-tune (%).
    pub label_val_top1: f64,
    /// Validation top-1 after the final fine-tune (%): what accepted or rejected it.
    pub final_val_top1: f64,
    /// Test top-1 after the final fine-tune (%): reported, never used to choose.
    pub test_top1: f64,
    /// Whether its validation drop was within P.
    pub accepted: bool,
}

/// A labelled policy offered as an alternative to the chosen one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    /// Its BOPs.
    pub bops: u64,
    /// Its size in bits.
    pub size_bits: u64,
    /// Its label: validation top-1 after the short fine-tune (%).
    pub label_val_top1: f64,
}

/// A measured uniform-bit-width (optionally uniformly pruned) baseline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UniformBaseline {
    /// Display name, e.g. `w4a4`.
    pub name: String,
    /// Weight bits of every searchable unit.
    pub wbits: u32,
    /// Activation bits of every searchable unit.
    pub abits: u32,
    /// Pruning ratio of every searchable unit.
    pub prune: f64,
    /// Its BOPs.
    pub bops: u64,
    /// Its size in bits.
    pub size_bits: u64,
    /// Measured test top-1 after the same final fine-tune.
    pub measured_top1: f64,
    /// Validation top-1 (%) after that fine-tune (None in reports written before it was
    /// recorded).
    #[serde(default)]
    pub final_val_top1: Option<f64>,
}

/// One point of the predicted front.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FrontPoint {
    /// BOPs of the policy.
    pub bops: u64,
    /// Its predicted top-1.
    pub predicted_top1: f64,
    /// The prediction extrapolates beyond the predictor's training data (false also when it
    /// could not be judged, and in reports written before this was recorded).
    #[serde(default)]
    pub extrapolates: bool,
}

/// One labelled sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelPoint {
    /// BOPs of the policy.
    pub bops: u64,
    /// Validation top-1 after the labelling fine-tune.
    pub top1: f64,
}

/// Label fidelity (docs/method.md §3): Kendall's τ-b between the label of a policy (validation
/// top-1 after the labelling protocol's short fine-tune) and its validation top-1 after the
/// final fine-tune, over the policies of the run that had both (chosen policies and uniform
/// baselines). A predictor can only be as good as this ranking.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelFidelity {
    /// Kendall's τ-b between label and final validation top-1.
    pub kendall_tau: f64,
    /// Policies it was measured on.
    pub n: usize,
}

/// Predictor quality on held-out labels (docs/method.md §4).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictorQuality {
    /// Kendall's τ-b between predicted and measured top-1.
    pub kendall_tau: f64,
    /// Spearman's ρ, if computed.
    pub spearman: Option<f64>,
    /// RMSE in top-1 points.
    pub rmse: f64,
    /// Labels the predictor was fitted on.
    pub n_train: usize,
    /// Held-out labels it was evaluated on.
    pub n_test: usize,
}

/// Wall time of one stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// Stage name.
    pub stage: String,
    /// Seconds.
    pub seconds: f64,
}

/// Best measured uniform baseline with BOPs ≤ `bops` (ties: the cheaper one).
pub fn best_uniform_at(uniform: &[UniformBaseline], bops: u64) -> Option<&UniformBaseline> {
    best_uniform_within(uniform, bops, u64::MAX)
}

/// Best measured uniform baseline with BOPs ≤ `bops` and size ≤ `size_bits` (ties: the
/// cheaper one).
fn best_uniform_within(
    uniform: &[UniformBaseline],
    bops: u64,
    size_bits: u64,
) -> Option<&UniformBaseline> {
    uniform
        .iter()
        .filter(|u| u.bops <= bops && u.size_bits <= size_bits && u.measured_top1.is_finite())
        .max_by(|a, b| {
            a.measured_top1
                .total_cmp(&b.measured_top1)
                .then(b.bops.cmp(&a.bops))
        })
}

impl RunReport {
    /// fp32 size / policy size, when both are known and non-zero.
    pub fn compression_ratio(&self, size_bits: u64) -> Option<f64> {
        (self.baseline.size_bits_fp32 > 0 && size_bits > 0)
            .then(|| self.baseline.size_bits_fp32 as f64 / size_bits as f64)
    }

    /// BOPs as a fraction of the unpruned w8a8 BOPs, when known.
    pub fn bops_share(&self, bops: u64) -> Option<f64> {
        (self.baseline.bops_w8a8 > 0).then(|| bops as f64 / self.baseline.bops_w8a8 as f64)
    }

    /// The uniform baseline a budget's chosen policy is compared with: the best measured
    /// one that fits the budget (BOPs ≤ its `max_bops` and size ≤ its `max_size_bits`, each
    /// where given), so a chosen policy a little under its budget still meets the uniform
    /// policy that spends it all (docs/method.md §8). A budget without either limit (an
    /// accuracy target) compares at ≤ the chosen policy's BOPs. Ties: the cheaper one.
    pub fn uniform_for(&self, b: &BudgetOutcome) -> Option<&UniformBaseline> {
        match (b.max_bops, b.max_size_bits) {
            (None, None) => best_uniform_at(&self.uniform, b.bops),
            (bops, size) => best_uniform_within(
                &self.uniform,
                bops.unwrap_or(u64::MAX),
                size.unwrap_or(u64::MAX),
            ),
        }
    }

    /// Measured top-1 minus that of [`Self::uniform_for`] the budget, when both exist.
    pub fn margin(&self, b: &BudgetOutcome) -> Option<(f64, &UniformBaseline)> {
        let u = self.uniform_for(b)?;
        Some((b.measured_top1? - u.measured_top1, u))
    }

    /// `report.json`: the report with format tag and version.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            format: &'static str,
            version: u64,
            #[serde(flatten)]
            report: &'a RunReport,
        }
        serde_json::to_string_pretty(&Out {
            format: REPORT_FORMAT,
            version: REPORT_VERSION,
            report: self,
        })
        .expect("serializes")
    }

    /// Parses `report.json`. Err(Json) for bad JSON or a body that is not a report,
    /// Err(NotAnObject), Err(Version) for another format tag or version.
    pub fn from_json(s: &str) -> Result<Self> {
        let mut v: serde_json::Value = serde_json::from_str(s)?;
        let obj = v.as_object_mut().ok_or(Error::NotAnObject)?;
        match (obj.remove("format"), obj.remove("version")) {
            (Some(f), Some(ver)) if f == REPORT_FORMAT && ver == REPORT_VERSION => {}
            (f, ver) => {
                return Err(Error::Version {
                    format: f.map_or("(absent)".into(), |f| f.to_string()),
                    version: ver.map_or("(absent)".into(), |v| v.to_string()),
                });
            }
        }
        Ok(serde_json::from_value(v)?)
    }
}

/// File name of the per-layer plot of a budget.
pub fn layers_plot_name(label: &str) -> String {
    format!("layers-{label}.svg")
}

/// File name of the top-1 vs BOPs plot.
pub const TOP1_PLOT: &str = "top1-vs-bops.svg";

/// The marker after a predicted top-1 that extrapolates beyond the predictor's training data.
pub const EXTRAPOLATION_MARK: &str = "†";

/// One rendered report file: its name in the run directory and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFile {
    /// File name, e.g. `report.md` or `layers-frac-0.05.svg`.
    pub name: String,
    /// Its full text (UTF-8).
    pub contents: String,
}

/// Renders every report file, in the order [`write_report`] writes them: `top1-vs-bops.svg`
/// (when there is anything to plot), one `layers-<label>.svg` per budget, `report.md`,
/// `report.html` and `report.json` (with a final newline). Err(Plot) when a plot cannot be
/// drawn.
pub fn render_report(r: &RunReport) -> Result<Vec<ReportFile>> {
    let mut files = Vec::new();
    let mut put = |name: String, contents: String| files.push(ReportFile { name, contents });
    #[cfg(feature = "plots")]
    {
        if let Some(svg) = plot_top1_vs_bops(r)? {
            put(TOP1_PLOT.into(), svg);
        }
        for b in &r.budgets {
            put(layers_plot_name(&b.label), plot_policy_layers(r, b)?);
        }
    }
    put("report.md".into(), render_markdown(r));
    put("report.html".into(), render_html(r)?);
    put("report.json".into(), r.to_json() + "\n");
    Ok(files)
}

/// Writes the files of [`render_report`] into `dir` (created if missing), each atomically;
/// returns the paths written, in that order. Err(Io) naming the file or directory, Err(Plot)
/// when a plot cannot be drawn (then nothing is written).
pub fn write_report(dir: &Path, r: &RunReport) -> Result<Vec<PathBuf>> {
    let files = render_report(r)?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut written = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        write_atomic(&path, f.contents.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replaces `path` by `bytes` in one step: writes and syncs `.<name>.tmp<pid>` beside it, renames
/// it over `path`, then syncs the directory (on Unix), so a reader sees the old file or the new
/// one, never a torn one. The temporary file is removed on failure.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(path, e)
        })?;
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Text helpers shared by the renderers.
pub(crate) mod fmt {
    /// `1234567` -> `1.23M` (SI, 3 significant digits).
    pub fn si(v: u64) -> String {
        let f = v as f64;
        for (u, s) in [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")] {
            if f >= u {
                return format!("{}{s}", sig3(f / u));
            }
        }
        v.to_string()
    }
    fn sig3(x: f64) -> String {
        if x >= 100.0 {
            format!("{x:.0}")
        } else if x >= 10.0 {
            format!("{x:.1}")
        } else {
            format!("{x:.2}")
        }
    }
    /// Size in bits as bytes with SI units and 2 decimals: `327680` -> `40.96 KB`.
    pub fn size(bits: u64) -> String {
        let bytes = bits as f64 / 8.0;
        for (u, s) in [(1e9, "GB"), (1e6, "MB"), (1e3, "KB")] {
            if bytes >= u {
                return format!("{:.2} {s}", bytes / u);
            }
        }
        format!("{bytes} B")
    }
    /// Top-1 with two decimals, or "not measured".
    pub fn top1(v: Option<f64>) -> String {
        v.map_or_else(|| "not measured".to_string(), |v| format!("{v:.2}"))
    }
    /// Seconds as `1h 02m`, `3m 05s` or `12.3 s`.
    pub fn secs(s: f64) -> String {
        if !s.is_finite() {
            return format!("{s}");
        }
        let t = s.round() as u64;
        if s >= 3600.0 {
            format!("{}h {:02}m", t / 3600, (t % 3600) / 60)
        } else if s >= 60.0 {
            format!("{}m {:02}s", t / 60, t % 60)
        } else {
            format!("{s:.1} s")
        }
    }
    /// Compact per-unit summary: `w 8 4 4 … | a 8 4 … | keep 1 .75 …`.
    pub fn policy_summary(p: &seer_policy::Policy) -> String {
        let n = p.units.len().max(1) as f64;
        let mw = p.units.iter().map(|u| u.wbits as f64).sum::<f64>() / n;
        let ma = p.units.iter().map(|u| u.abits as f64).sum::<f64>() / n;
        let mk = p.units.iter().map(|u| 1.0 - u.prune).sum::<f64>() / n;
        format!(
            "{} units; mean w {mw:.2} b, a {ma:.2} b, keep {mk:.2}",
            p.units.len()
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seer_policy::{InputShape, UnitPolicy};

    /// A synthetic report (no real run): every number is a made-up test input.
    pub(crate) fn synthetic() -> RunReport {
        let units = 5;
        let pol = |w: u32, a: u32, p: f64| Policy {
            arch: "toy<net>".into(),
            input: InputShape::new(28, 28, 1),
            units: (0..units)
                .map(|i| UnitPolicy {
                    prune: if i == 0 { 0.0 } else { p },
                    wbits: w + (i as u32 % 2),
                    abits: a,
                })
                .collect(),
        };
        RunReport {
            title: "Synthetic <test> & \"report\"".into(),
            arch: "toy<net>".into(),
            input: "28x28x1".into(),
            dataset: "fashion-mnist".into(),
            seed: 7,
            command: Some("cargo xtask compress --out 'a<b>'".into()),
            baseline: Baseline {
                top1_test: 92.31,
                top1_val: Some(92.9),
                macs: 40_000_000,
                bops_w8a8: 2_560_000_000,
                size_bits_fp32: 270_000 * 32,
                source: "baseline.safetensors".into(),
            },
            settings: vec![Setting {
                name: "labels".into(),
                value: "64 + 3×16".into(),
            }],
            unit_names: (0..units).map(|i| format!("conv{i}<x>")).collect(),
            budgets: vec![
                BudgetOutcome {
                    label: "frac-0.05".into(),
                    max_bops: Some(128_000_000),
                    max_size_bits: None,
                    policy: pol(2, 3, 0.5),
                    macs: 20_000_000,
                    bops: 127_000_000,
                    size_bits: 600_000,
                    predicted_top1: 89.5,
                    predicted_std: Some(0.3),
                    measured_top1: Some(90.2),
                    policy_file: Some("policy-frac-0.05.json".into()),
                    model_file: Some("model-frac-0.05.safetensors".into()),
                    file_bytes: Some(81_234),
                    onnx_file: Some("model-frac-0.05.onnx".into()),
                    onnx_bytes: Some(152_346),
                    label_val_top1: Some(88.1),
                    selected_from: Some("barrier search, κ = 1".into()),
                    extrapolation: None,
                    accuracy_target: None,
                    budget_used: Some(127.0 / 128.0),
                    budget_note: None,
                    final_val_top1: Some(89.9),
                },
                BudgetOutcome {
                    label: "frac-0.15".into(),
                    max_bops: Some(384_000_000),
                    max_size_bits: None,
                    policy: pol(4, 4, 0.25),
                    macs: 30_000_000,
                    bops: 380_000_000,
                    size_bits: 1_100_000,
                    predicted_top1: 91.4,
                    predicted_std: None,
                    measured_top1: None,
                    policy_file: None,
                    model_file: None,
                    file_bytes: None,
                    onnx_file: None,
                    onnx_bytes: None,
                    label_val_top1: None,
                    selected_from: None,
                    extrapolation: Some("above the highest training label".into()),
                    accuracy_target: None,
                    budget_used: Some(380.0 / 384.0),
                    budget_note: Some("test note <b>".into()),
                    final_val_top1: None,
                },
            ],
            uniform: vec![
                UniformBaseline {
                    name: "w2a2".into(),
                    wbits: 2,
                    abits: 2,
                    prune: 0.0,
                    bops: 100_000_000,
                    size_bits: 560_000,
                    measured_top1: 85.0,
                    final_val_top1: Some(85.0),
                },
                UniformBaseline {
                    name: "w3a3".into(),
                    wbits: 3,
                    abits: 3,
                    prune: 0.0,
                    bops: 225_000_000,
                    size_bits: 820_000,
                    measured_top1: 88.4,
                    final_val_top1: Some(88.4),
                },
                UniformBaseline {
                    name: "w4a4".into(),
                    wbits: 4,
                    abits: 4,
                    prune: 0.0,
                    bops: 400_000_000,
                    size_bits: 1_090_000,
                    measured_top1: 90.9,
                    final_val_top1: Some(90.9),
                },
            ],
            front: vec![
                FrontPoint {
                    bops: 90_000_000,
                    predicted_top1: 86.0,
                    extrapolates: false,
                },
                FrontPoint {
                    bops: 200_000_000,
                    predicted_top1: 90.0,
                    extrapolates: false,
                },
                FrontPoint {
                    bops: 400_000_000,
                    predicted_top1: 91.5,
                    extrapolates: true,
                },
            ],
            labels: vec![
                LabelPoint {
                    bops: 150_000_000,
                    top1: 87.0,
                },
                LabelPoint {
                    bops: 300_000_000,
                    top1: 89.9,
                },
            ],
            predictor: Some(PredictorQuality {
                kendall_tau: 0.71,
                spearman: Some(0.88),
                rmse: 0.42,
                n_train: 96,
                n_test: 16,
            }),
            label_fidelity: Some(LabelFidelity {
                kendall_tau: 0.833,
                n: 9,
            }),
            timings: vec![
                StageTiming {
                    stage: "labelling".into(),
                    seconds: 812.4,
                },
                StageTiming {
                    stage: "search".into(),
                    seconds: 0.2,
                },
            ],
            wall_seconds: Some(815.0),
            invocations: 2,
            timings_all: vec![
                StageTiming {
                    stage: "labelling".into(),
                    seconds: 1200.0,
                },
                StageTiming {
                    stage: "search".into(),
                    seconds: 0.2,
                },
            ],
            wall_seconds_all: Some(1230.5),
            notes: vec!["note with <script>alert(1)</script>".into()],
        }
    }

    #[test]
    fn derived_figures() {
        let r = synthetic();
        assert_eq!(
            best_uniform_at(&r.uniform, 127_000_000).unwrap().name,
            "w2a2"
        );
        assert_eq!(best_uniform_at(&r.uniform, 99_999_999), None);
        let (m, u) = r.margin(&r.budgets[0]).unwrap();
        assert_eq!(u.name, "w2a2");
        assert!((m - 5.2).abs() < 1e-9);
        assert_eq!(r.margin(&r.budgets[1]), None, "no measurement, no margin");
        // A uniform baseline above the chosen policy's BOPs but within the budget is the one
        // compared with; one over the budget, or over a size limit, is not.
        let mut r = synthetic();
        let b = &mut r.budgets[0];
        (b.max_bops, b.bops) = (Some(128_000_000), 120_000_000);
        r.uniform[0].bops = 128_000_000;
        assert_eq!(r.uniform_for(&r.budgets[0]).unwrap().name, "w2a2");
        r.uniform[0].bops = 128_000_001;
        assert_ne!(
            r.uniform_for(&r.budgets[0]).map(|u| u.name.as_str()),
            Some("w2a2")
        );
        r.uniform[0].bops = 128_000_000;
        r.budgets[0].max_size_bits = Some(500_000);
        assert_ne!(
            r.uniform_for(&r.budgets[0]).map(|u| u.name.as_str()),
            Some("w2a2")
        );
        // No limit (an accuracy target): at ≤ the chosen policy's BOPs.
        (r.budgets[0].max_bops, r.budgets[0].max_size_bits) = (None, None);
        r.budgets[0].bops = 127_999_999;
        assert_ne!(
            r.uniform_for(&r.budgets[0]).map(|u| u.name.as_str()),
            Some("w2a2")
        );
        r.budgets[0].bops = 128_000_000;
        assert_eq!(r.uniform_for(&r.budgets[0]).unwrap().name, "w2a2");
        assert!((r.compression_ratio(600_000).unwrap() - 14.4).abs() < 1e-9);
        assert_eq!(fmt::si(127_000_000), "127M");
        assert_eq!(fmt::size(327_680), "40.96 KB");
        assert_eq!(fmt::secs(812.4), "13m 32s");
    }

    #[test]
    fn reports_without_extrapolation_fields_still_read() {
        // report.json written before the fields existed: both default to "not flagged".
        let j = synthetic()
            .to_json()
            .replace(",\n      \"extrapolation\": null", "")
            .replace(
                ",\n      \"extrapolation\": \"above the highest training label\"",
                "",
            )
            .replace(",\n      \"extrapolates\": false", "")
            .replace(",\n      \"extrapolates\": true", "");
        assert!(!j.contains("extrapolat"), "{j}");
        let r = RunReport::from_json(&j).unwrap();
        assert!(r.budgets.iter().all(|b| b.extrapolation.is_none()));
        assert!(r.front.iter().all(|f| !f.extrapolates));
    }

    #[test]
    fn json_roundtrip_and_version() {
        let r = synthetic();
        let j = r.to_json();
        assert_eq!(RunReport::from_json(&j).unwrap(), r);
        let e = RunReport::from_json(&j.replacen("\"version\": 1", "\"version\": 2", 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        assert!(matches!(
            RunReport::from_json("[1]"),
            Err(Error::NotAnObject)
        ));
        let e = RunReport::from_json("{").unwrap_err();
        assert!(matches!(e, Error::Json(_)) && std::error::Error::source(&e).is_some());
        let e = RunReport::from_json(&j.replacen("\"title\"", "\"title_\"", 1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("report.json: missing field `title`"),
            "{e}"
        );
    }

    #[test]
    fn render_matches_write() {
        let r = synthetic();
        let dir = tempfile::tempdir().unwrap();
        let paths = write_report(dir.path(), &r).unwrap();
        let files = render_report(&r).unwrap();
        assert_eq!(paths.len(), files.len());
        for (p, f) in paths.iter().zip(&files) {
            assert_eq!(p, &dir.path().join(&f.name));
            assert_eq!(std::fs::read_to_string(p).unwrap(), f.contents);
        }
        assert!(files.last().unwrap().contents.ends_with("}\n"));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files.len());
    }

    #[test]
    fn write_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "x").unwrap();
        let e = write_report(&blocker.join("sub"), &RunReport::default()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("not-a-dir"), "{e}");
    }

    #[cfg(feature = "plots")]
    #[test]
    fn writes_all_files() {
        let r = synthetic();
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(dir.path(), &r).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "top1-vs-bops.svg",
                "layers-frac-0.05.svg",
                "layers-frac-0.15.svg",
                "report.md",
                "report.html",
                "report.json"
            ]
        );
    }
}
