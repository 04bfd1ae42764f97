//! `seernet predict`: the predicted top-1 (μ ± σ, docs/method.md §4) of one policy on a trained
//! predictor, with a warning line when the prediction extrapolates beyond the predictor's
//! training data; also the warnings `seernet search` and `seernet pareto` print.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use seer_predictor::{Extrapolation, Predictor};
use seernet::search::PredictorObjective;
use serde_json::json;

use super::complexity::PolicyArgs;
use super::net::{NetArgs, SpaceArgs};

/// Arguments of `seernet predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Trained predictor file (`seernet predictor fit --out P`).
    #[arg(long)]
    predictor: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Loads the predictor at `path`; warns on stderr when it is a format-1 file (no recorded
/// training range: unbounded predictions, extrapolation undetected).
pub fn load_predictor(path: &Path) -> Result<Predictor> {
    let p = Predictor::load(path).with_context(|| format!("--predictor {}", path.display()))?;
    if p.training_range().is_none() {
        eprintln!(
            "warning: {} is a format-1 predictor: it has no recorded training range, so its \
             predictions are unbounded and extrapolation cannot be detected; refit it with \
             `seernet predictor fit` to get bounded, flagged predictions",
            path.display()
        );
    }
    Ok(p)
}

/// `e` as JSON (null when it cannot be told).
pub fn extrapolation_json(e: Option<Extrapolation>) -> serde_json::Value {
    e.map_or(serde_json::Value::Null, |e| {
        json!({
            "any": e.any(),
            "above_labels": e.above_labels,
            "below_labels": e.below_labels,
            "features_outside": e.features_outside,
        })
    })
}

/// The warning line for a prediction `mean` at the predictor's feature row `row` with flags
/// `e`: the reasons, the training labels' range and (up to five of) the features outside
/// their training range. None when it does not extrapolate or cannot be told.
pub fn extrapolation_warning(
    predictor: &Predictor,
    row: &[f64],
    mean: f64,
    e: Option<Extrapolation>,
) -> Result<Option<String>> {
    let (Some(e), Some(range)) = (e, predictor.training_range()) else {
        return Ok(None);
    };
    if !e.any() {
        return Ok(None);
    }
    let mut outside = predictor.features_outside(row)?;
    let n = outside.len();
    if n > 6 {
        outside.truncate(5);
        outside.push(format!("… ({n} in all)"));
    }
    Ok(Some(format!(
        "warning: predicted top-1 {mean:.3} extrapolates beyond the predictor's training data: {} \
         (training labels {:.2} to {:.2}{}); treat it as a guess, not an estimate",
        e.describe(),
        range.y_min,
        range.y_max,
        if outside.is_empty() {
            String::new()
        } else {
            format!("; outside the training range: {}", outside.join(", "))
        }
    )))
}

/// Runs `seernet predict`.
pub fn run(args: PredictArgs) -> Result<()> {
    let space = args.space.space(args.net.spec()?)?;
    let predictor = load_predictor(&args.predictor)?;
    let (policy, label) = args.policy.policy(&space)?;
    let row = PredictorObjective::new(&predictor, &space)?.raw_row(&space.encode(&policy)?);
    let p = predictor.predict(&[&row])?;
    let e = p.extrapolation.as_ref().map(|e| e[0]);
    let warning = extrapolation_warning(&predictor, &row, p.mean[0], e)?;
    let totals = space.cost(&policy)?;
    let v = json!({
        "policy": label,
        "bops": totals.total_bops,
        "size_bits": totals.total_size_bits,
        "predicted_top1": p.mean[0],
        "predicted_std": p.std[0],
        "extrapolation": extrapolation_json(e),
    });
    super::emit_result(args.json, &v, || {
        format!(
            "{label}: {} BOPs, {} bits, predicted top-1 {:.3} ± {:.3}\n",
            totals.total_bops, totals.total_size_bits, p.mean[0], p.std[0]
        )
    })?;
    if let Some(w) = warning {
        eprintln!("{w}");
    }
    Ok(())
}
