//! `seernet predictor cv|fit|eval`: train, cross-validate and evaluate the accuracy predictor
//! (docs/method.md §4) on a CSV of (policy or features, accuracy) samples.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use seer_predictor::{
    Config, CsvTable, CvOptions, Output, Predictor, Samples, cross_validate, fit, kendall_tau_b,
    rmse, spearman,
};

use super::net::{NetArgs, SpaceArgs};

/// Arguments of `seernet predictor`.
#[derive(Args, Debug)]
pub struct PredictorArgs {
    #[command(subcommand)]
    cmd: PredictorCmd,
}

#[derive(Subcommand, Debug)]
enum PredictorCmd {
    /// Repeated random train/test splits: our ensemble vs ridge regression on the same splits.
    Cv(CvArgs),
    /// Fit the ensemble on every sample of a CSV and save it.
    Fit(FitArgs),
    /// Score a saved predictor on a CSV (Kendall's τ-b, Spearman's ρ, RMSE).
    Eval(EvalArgs),
}

/// Where the samples come from and how columns become features.
#[derive(Args, Debug)]
struct SampleArgs {
    /// CSV with a header: feature columns and the target column.
    #[arg(long)]
    samples: PathBuf,
    /// Target column (accuracy in points).
    #[arg(long, default_value = seer_predictor::DEFAULT_TARGET)]
    target: String,
    /// Map `prune_<i>`, `bits_<i>`, `wbits_<i>`, `abits_<i>` columns onto this network's
    /// search space (features = docs/method.md §1 encoding); without it every column is a raw feature.
    #[arg(long)]
    arch: Option<String>,
    /// Input shape HxWxC for --arch.
    #[arg(long, requires = "arch")]
    input: Option<String>,
    /// Number of classes for --arch.
    #[arg(long, requires = "arch")]
    classes: Option<usize>,
    #[command(flatten)]
    space: SpaceArgs,
}

impl SampleArgs {
    fn load(&self) -> Result<Samples> {
        let table = CsvTable::read(&self.samples)?;
        let Some(arch) = &self.arch else {
            return Ok(table.into_samples(&self.target)?);
        };
        let net = NetArgs {
            arch: arch.clone(),
            input: self.input.clone(),
            classes: self.classes,
        };
        let space = self.space.space(net.spec()?)?;
        let (samples, _) = seer_predictor::space::samples_from_table(&table, &self.target, &space)?;
        Ok(samples)
    }
}

/// Ensemble settings (defaults: `seer_predictor::Config::default()`).
#[derive(Args, Debug)]
struct TrainArgs {
    /// Ensemble members.
    #[arg(long)]
    members: Option<usize>,
    /// Hidden layer widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Maximum epochs per member.
    #[arg(long)]
    max_epochs: Option<usize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Unbounded (linear) output instead of the default logistic map onto [0, 100], for a
    /// target that is not an accuracy in percent (docs/method.md §4).
    #[arg(long)]
    unbounded: bool,
    /// Feed bit-width columns to the members as raw values only, without their
    /// quantization-noise power 2^(-2b) (docs/method.md §4, "Noise features"; for comparison).
    #[arg(long)]
    no_noise_features: bool,
}

impl TrainArgs {
    fn config(&self) -> Config {
        let d = Config::default();
        Config {
            members: self.members.unwrap_or(d.members),
            hidden: self.hidden.clone().unwrap_or(d.hidden),
            max_epochs: self.max_epochs.unwrap_or(d.max_epochs),
            seed: self.seed,
            output: if self.unbounded {
                Output::Linear
            } else {
                d.output
            },
            noise_features: !self.no_noise_features,
            ..d
        }
    }

    /// Err naming the first target value outside the output's bounds, and the way out.
    fn check_target(&self, samples: &Samples, data: &SampleArgs) -> Result<()> {
        let Some((lo, hi)) = self.config().output.bounds() else {
            return Ok(());
        };
        if let Some((i, v)) = samples
            .y()
            .iter()
            .enumerate()
            .find(|(_, v)| !(lo..=hi).contains(*v))
        {
            bail!(
                "{}: target {:?} of sample {} is {v}, outside [{lo}, {hi}] (accuracy in percent); \
                 pass --unbounded for a target that is not an accuracy in percent",
                data.samples.display(),
                data.target,
                i + 1
            );
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
struct CvArgs {
    #[command(flatten)]
    data: SampleArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// Number of random splits.
    #[arg(long, default_value_t = 10)]
    splits: usize,
    /// Fraction of samples held out for testing in each split.
    #[arg(long, default_value_t = 0.2)]
    test_frac: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FitArgs {
    #[command(flatten)]
    data: SampleArgs,
    #[command(flatten)]
    train: TrainArgs,
    /// Output file (safetensors with a versioned JSON header).
    #[arg(long)]
    out: PathBuf,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A predictor saved by `seernet predictor fit`.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    data: SampleArgs,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Runs `seernet predictor ...`.
pub fn run(args: PredictorArgs) -> Result<()> {
    match args.cmd {
        PredictorCmd::Cv(a) => run_cv(a),
        PredictorCmd::Fit(a) => run_fit(a),
        PredictorCmd::Eval(a) => run_eval(a),
    }
}

fn run_cv(a: CvArgs) -> Result<()> {
    let samples = a.data.load()?;
    a.train.check_target(&samples, &a.data)?;
    let config = a.train.config();
    let opts = CvOptions {
        splits: a.splits,
        test_frac: a.test_frac,
        seed: a.train.seed,
    };
    let report = cross_validate(&samples, &config, &opts)
        .with_context(|| format!("cross-validating on {}", a.data.samples.display()))?;
    if a.json {
        let mut v = report.to_json();
        v["samples"] = a.data.samples.display().to_string().into();
        v["target"] = a.data.target.clone().into();
        v["members"] = config.members.into();
        println!("{v}");
        return Ok(());
    }
    println!(
        "predictor cv: {} ({} samples, {} features, target {:?}); {} random splits of {}/{} (seed {})",
        a.data.samples.display(),
        report.n_samples,
        report.n_features,
        a.data.target,
        a.splits,
        report.n_samples - report.n_test,
        report.n_test,
        opts.seed
    );
    println!(
        "{:<22} {:>17} {:>17} {:>17}",
        "", "Kendall tau-b", "Spearman rho", "RMSE (points)"
    );
    let s = |f: fn(&seer_predictor::SplitScores) -> f64| report.summary(f).to_string();
    println!(
        "{:<22} {:>17} {:>17} {:>17}",
        format!("ensemble (M = {})", config.members),
        s(|x| x.kendall_tau),
        s(|x| x.spearman),
        s(|x| x.rmse)
    );
    println!(
        "{:<22} {:>17} {:>17} {:>17}",
        "ridge (CV lambda)",
        s(|x| x.ridge_kendall_tau),
        s(|x| x.ridge_spearman),
        s(|x| x.ridge_rmse)
    );
    println!(
        "Spearman(sigma, |error|) on held-out points: {}",
        s(|x| x.std_abs_err_spearman)
    );
    println!("ensemble fit time: {} s per split", s(|x| x.fit_seconds));
    Ok(())
}

fn run_fit(a: FitArgs) -> Result<()> {
    let samples = a.data.load()?;
    a.train.check_target(&samples, &a.data)?;
    let config = a.train.config();
    let t = std::time::Instant::now();
    let p = fit(&samples, &config)
        .with_context(|| format!("fitting on {}", a.data.samples.display()))?;
    let secs = t.elapsed().as_secs_f64();
    p.save(&a.out)?;
    let epochs: Vec<usize> = p.member_stats().iter().map(|s| s.epochs).collect();
    let noise: Vec<&str> = p
        .noise_columns()
        .iter()
        .map(|&j| p.feature_names()[j].as_str())
        .collect();
    if a.json {
        let v = serde_json::json!({
            "out": a.out.display().to_string(),
            "n_samples": samples.len(),
            "n_features": samples.n_features(),
            "members": config.members,
            "epochs": epochs,
            "seconds": secs,
            "noise_features": noise,
        });
        println!("{v}");
    } else {
        println!(
            "fitted {} members on {} samples × {} features in {secs:.2} s (epochs per member: {epochs:?}); saved {}",
            config.members,
            samples.len(),
            samples.n_features(),
            a.out.display()
        );
        if !noise.is_empty() {
            println!(
                "bit-width columns also read as quantization-noise power 2^(-2b): {}",
                noise.join(", ")
            );
        }
    }
    Ok(())
}

/// Reorders `samples`' feature columns to the model's order; errors name missing/extra columns.
fn align(samples: &Samples, p: &Predictor, model: &Path) -> Result<Samples> {
    let names = samples.feature_names();
    let mut idx = Vec::with_capacity(p.n_features());
    for f in p.feature_names() {
        match names.iter().position(|n| n == f) {
            Some(j) => idx.push(j),
            None => bail!(
                "{} expects feature {f:?}, which the samples lack (give the same --arch/space options as at fit time)",
                model.display()
            ),
        }
    }
    if let Some(extra) = names.iter().find(|n| !p.feature_names().contains(n)) {
        bail!(
            "feature {extra:?} of the samples is not an input of {}",
            model.display()
        );
    }
    let x = samples
        .x()
        .iter()
        .map(|r| idx.iter().map(|&j| r[j]).collect())
        .collect();
    Ok(Samples::new(
        p.feature_names().to_vec(),
        samples.target_name().to_string(),
        x,
        samples.y().to_vec(),
    )?)
}

fn run_eval(a: EvalArgs) -> Result<()> {
    let p = Predictor::load(&a.model)?;
    let samples = align(&a.data.load()?, &p, &a.model)?;
    let pred = p.predict(samples.x())?;
    let y = samples.y();
    let abs_err: Vec<f64> = pred
        .mean
        .iter()
        .zip(y)
        .map(|(m, t)| (m - t).abs())
        .collect();
    let tau = kendall_tau_b(&pred.mean, y)?;
    let rho = spearman(&pred.mean, y)?;
    let err = rmse(&pred.mean, y)?;
    let mean_std = pred.std.iter().sum::<f64>() / pred.std.len() as f64;
    let std_err = spearman(&pred.std, &abs_err).ok();
    // Rows whose prediction extrapolates (None: a format-1 predictor cannot tell).
    let extrapolating = pred
        .extrapolation
        .as_ref()
        .map(|e| e.iter().filter(|e| e.any()).count());
    if a.json {
        let v = serde_json::json!({
            "model": a.model.display().to_string(),
            "samples": a.data.samples.display().to_string(),
            "n_samples": samples.len(),
            "n_features": samples.n_features(),
            "kendall_tau": tau,
            "spearman": rho,
            "rmse": err,
            "mean_std": mean_std,
            "std_abs_err_spearman": std_err,
            "n_extrapolating": extrapolating,
        });
        println!("{v}");
    } else {
        println!(
            "{} on {} ({} samples): Kendall tau-b {tau:.4}, Spearman rho {rho:.4}, RMSE {err:.4} points; \
             mean sigma {mean_std:.4}, Spearman(sigma, |error|) {}",
            a.model.display(),
            a.data.samples.display(),
            samples.len(),
            std_err.map_or("undefined".into(), |v| format!("{v:.4}"))
        );
    }
    match extrapolating {
        Some(0) => {}
        Some(k) => eprintln!(
            "warning: {k} of {} predictions extrapolate beyond the predictor's training data \
             (labels or features outside what it was fitted on)",
            samples.len()
        ),
        None => eprintln!(
            "warning: {} is a format-1 predictor: no recorded training range, so its predictions \
             are unbounded and extrapolation cannot be detected; refit it to get both",
            a.model.display()
        ),
    }
    Ok(())
}
