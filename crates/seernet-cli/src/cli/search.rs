//! `seernet search` (the best policy for one budget) and `seernet pareto` (the predicted front
//! from the cheapest to the most expensive policy), on a trained predictor (docs/method.md §6).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_barrier::Budget as Limits;
use seer_policy::SearchSpace;
use seer_predictor::Predictor;
use seernet::budget::Budget;
use seernet::report::EXTRAPOLATION_MARK;
use seernet::search::{Found, Method, PredictorObjective, SearchOptions, find_policy};
use serde_json::json;

use super::net::{NetArgs, SpaceArgs};
use super::predict::{extrapolation_json, extrapolation_warning, load_predictor};

/// Options shared by `search` and `pareto`.
#[derive(Args, Debug)]
pub struct Common {
    /// Trained predictor file (`seernet predictor fit --out P`).
    #[arg(long)]
    predictor: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    space: SpaceArgs,
    /// barrier (default), pgd (the authors' hard-stop ascent), evo (the authors' evolutionary
    /// search on the predictor) or random.
    #[arg(long, default_value = "barrier")]
    method: Method,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wall-time limit of evo / random, seconds.
    #[arg(long, default_value_t = 60.0)]
    evo_seconds: f64,
    /// Predictor evaluations of random search.
    #[arg(long, default_value_t = 100_000)]
    random_evaluations: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Arguments of `seernet search`.
#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    common: Common,
    /// BOPs budget: 5M, 1.5G, 5e6.
    #[arg(long, value_name = "BOPS")]
    max_bops: Option<String>,
    /// Model-size budget in bytes: 40KB (= 40000 B) or 40KiB.
    #[arg(long, value_name = "BYTES")]
    max_size: Option<String>,
    /// BOPs budget as a fraction of the unpruned w8a8 network's BOPs: 0.1 or 10%.
    #[arg(long, value_name = "FRACTION", conflicts_with = "max_bops")]
    bops_frac: Option<String>,
    /// BOPs budget of the unpruned network at uniform bit-widths: w3a3 (3-bit weights and
    /// activations).
    #[arg(long, value_name = "wXaY", conflicts_with_all = ["max_bops", "bops_frac"])]
    bops_uniform: Option<String>,
    /// Also write the policy to this JSON file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Arguments of `seernet pareto`.
#[derive(Args, Debug)]
pub struct ParetoArgs {
    #[command(flatten)]
    common: Common,
    /// Number of BOPs budgets, evenly spaced from the cheapest to the most expensive policy.
    #[arg(long, default_value_t = 10)]
    budgets: usize,
}

/// The space, the predictor and the search options the flags describe.
fn setup(c: &Common) -> Result<(SearchSpace, Predictor, SearchOptions)> {
    let spec = c.net.spec()?;
    let space = c.space.space(spec)?;
    let predictor = load_predictor(&c.predictor)?;
    if !(c.evo_seconds.is_finite() && c.evo_seconds > 0.0) {
        bail!(
            "--evo-seconds {}: must be a positive number of seconds",
            c.evo_seconds
        );
    }
    let mut o = SearchOptions::new(c.method, c.seed);
    o.evo.time_limit = Some(Duration::from_secs_f64(c.evo_seconds));
    o.random_evaluations = c.random_evaluations;
    Ok((space, predictor, o))
}

fn policy_json(f: &Found) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&f.policy.to_json())?)
}

/// The warning line for `f`'s prediction when it extrapolates (see
/// [`super::predict::extrapolation_warning`]).
fn found_warning(space: &SearchSpace, predictor: &Predictor, f: &Found) -> Result<Option<String>> {
    let row =
        PredictorObjective::new(predictor, space)?.raw_row(&space.encode_indices(&f.indices)?);
    extrapolation_warning(predictor, &row, f.predicted_mean, f.extrapolation)
}

/// Runs `seernet search`.
pub fn run_search(args: SearchArgs) -> Result<()> {
    let (space, predictor, options) = setup(&args.common)?;
    let mut limits = Limits::default();
    if let Some(s) = &args.max_bops {
        limits.max_bops = Some(bops_of(&Budget::parse_max_bops(s)?, &space)? as f64);
    }
    if let Some(s) = &args.bops_frac {
        limits.max_bops = Some(bops_of(&Budget::parse_bops_frac(s)?, &space)? as f64);
    }
    if let Some(s) = &args.bops_uniform {
        limits.max_bops = Some(bops_of(&Budget::parse_bops_uniform(s)?, &space)? as f64);
    }
    if let Some(s) = &args.max_size {
        let r = Budget::parse_max_size(s)?.resolve(&space)?;
        limits.max_size_bits = r.max_size_bits.map(|b| b as f64);
    }
    if limits.max_bops.is_none() && limits.max_size_bits.is_none() {
        bail!("no budget given: use --max-bops, --max-size, --bops-frac or --bops-uniform");
    }
    let f = find_policy(&space, &predictor, &limits, &options)?;
    let warning = found_warning(&space, &predictor, &f)?;
    if let Some(out) = &args.out {
        f.policy
            .save(out)
            .with_context(|| format!("--out {}", out.display()))?;
    }
    if args.common.json {
        let v = json!({
            "method": f.method.to_string(),
            "policy": policy_json(&f)?,
            "bops": f.bops,
            "size_bits": f.size_bits,
            "predicted_top1": f.predicted_mean,
            "predicted_std": f.predicted_std,
            "extrapolation": extrapolation_json(f.extrapolation),
            "seconds": f.seconds,
            "max_bops": limits.max_bops,
            "max_size_bits": limits.max_size_bits,
        });
        if let Some(w) = &warning {
            eprintln!("{w}");
        }
        return super::emit(&format!("{v}\n"));
    }
    let mut o = String::new();
    writeln!(
        o,
        "{:<24} {:>6} {:>6} {:>6}",
        "unit", "prune", "wbits", "abits"
    )?;
    for (u, up) in space.units().iter().zip(&f.policy.units) {
        writeln!(
            o,
            "{:<24} {:>6} {:>6} {:>6}",
            u.name, up.prune, up.wbits, up.abits
        )?;
    }
    writeln!(
        o,
        "\nmethod {}: BOPs {} (budget {}), size {} bits (budget {}), predicted top-1 {:.3} ± {:.3}, {:.3} s",
        f.method,
        f.bops,
        limits.max_bops.map_or("-".into(), |b| format!("{b:.0}")),
        f.size_bits,
        limits
            .max_size_bits
            .map_or("-".into(), |b| format!("{b:.0}")),
        f.predicted_mean,
        f.predicted_std,
        f.seconds
    )?;
    super::emit(&o)?;
    if let Some(w) = &warning {
        eprintln!("{w}");
    }
    Ok(())
}

fn bops_of(b: &Budget, space: &SearchSpace) -> Result<u64> {
    let r = b.resolve(space)?;
    r.max_bops.context("budget without a BOPs limit")
}

/// Runs `seernet pareto`.
pub fn run_pareto(args: ParetoArgs) -> Result<()> {
    let (space, predictor, options) = setup(&args.common)?;
    if args.budgets < 2 {
        bail!(
            "--budgets {}: need at least 2 (cheapest and most expensive)",
            args.budgets
        );
    }
    let lo = space.totals_indices(&space.cheapest())?.bops as f64;
    let hi = space.totals_indices(&space.most_expensive())?.bops as f64;
    let mut found = Vec::with_capacity(args.budgets);
    for i in 0..args.budgets {
        let b = (lo + (hi - lo) * i as f64 / (args.budgets - 1) as f64)
            .round()
            .max(lo);
        let f = find_policy(&space, &predictor, &Limits::bops(b), &options)?;
        found.push((b, f));
    }
    // A point is on the front if no cheaper-or-equal point predicts at least as well.
    let on_front: Vec<bool> = found
        .iter()
        .map(|(_, f)| {
            !found.iter().any(|(_, g)| {
                g.bops <= f.bops
                    && g.predicted_mean >= f.predicted_mean
                    && (g.bops < f.bops || g.predicted_mean > f.predicted_mean)
            })
        })
        .collect();
    let flagged = found
        .iter()
        .filter(|(_, f)| f.extrapolation.is_some_and(|e| e.any()))
        .count();
    let warning = (flagged > 0).then(|| {
        format!(
            "warning: {flagged} of {} predictions extrapolate beyond the predictor's training data \
             (marked {EXTRAPOLATION_MARK}); treat them as guesses, not estimates",
            found.len()
        )
    });
    if args.common.json {
        let pts = found
            .iter()
            .zip(&on_front)
            .map(|((b, f), &front)| {
                Ok(json!({
                    "max_bops": b,
                    "bops": f.bops,
                    "size_bits": f.size_bits,
                    "predicted_top1": f.predicted_mean,
                    "predicted_std": f.predicted_std,
                    "extrapolation": extrapolation_json(f.extrapolation),
                    "seconds": f.seconds,
                    "on_front": front,
                    "policy": policy_json(f)?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let v = json!({ "method": options.method.to_string(), "points": pts });
        if let Some(w) = &warning {
            eprintln!("{w}");
        }
        return super::emit(&format!("{v}\n"));
    }
    let mut o = String::new();
    writeln!(
        o,
        "{:>16} {:>16} {:>14} {:>10} {:>8} {:>9} {:>6}",
        "budget BOPs", "BOPs", "size bits", "pred top1", "std", "ms", "front"
    )?;
    for ((b, f), &front) in found.iter().zip(&on_front) {
        let mark = if f.extrapolation.is_some_and(|e| e.any()) {
            EXTRAPOLATION_MARK
        } else {
            " "
        };
        writeln!(
            o,
            "{:>16.0} {:>16} {:>14} {:>9.3}{mark} {:>8.3} {:>9.1} {:>6}",
            b,
            f.bops,
            f.size_bits,
            f.predicted_mean,
            f.predicted_std,
            f.seconds * 1e3,
            if front { "yes" } else { "no" }
        )?;
    }
    super::emit(&o)?;
    if let Some(w) = &warning {
        eprintln!("{w}");
    }
    Ok(())
}
