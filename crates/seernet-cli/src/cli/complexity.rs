//! `seernet complexity`: exact MACs, BOPs and model size of a network under a policy.

use std::path::PathBuf;

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_policy::{Policy, SearchSpace};

use super::net::{NetArgs, SpaceArgs};

/// Arguments of `seernet complexity`.
#[derive(Args, Debug)]
pub struct ComplexityArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    space: SpaceArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Which policy a command looks at: a policy file, or uniform bit-widths and pruning.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Policy JSON file (`seernet-policy`, version 1).
    #[arg(long, conflicts_with_all = ["uniform", "prune"])]
    policy: Option<PathBuf>,
    /// Uniform bit-widths for every searchable unit, `wXaY` (e.g. w4a8) or `X`; default w8a8.
    #[arg(long)]
    uniform: Option<String>,
    /// Uniform pruning ratio in [0, 1) for every prunable unit (with --uniform); default 0.
    #[arg(long)]
    prune: Option<f64>,
}

impl PolicyArgs {
    /// The policy the flags name in `space` and a label for it (the file, or `uniform wXaY
    /// prune P`). Errors name the flag or file at fault.
    pub fn policy(&self, space: &SearchSpace) -> Result<(Policy, String)> {
        if let Some(path) = &self.policy {
            let p = Policy::load(path)?;
            space.validate_named(&p, &path.display().to_string())?;
            return Ok((p, path.display().to_string()));
        }
        let (w, a) = parse_uniform(self.uniform.as_deref().unwrap_or("w8a8"))?;
        let prune = self.prune.unwrap_or(0.0);
        if !prune.is_finite() || !(0.0..1.0).contains(&prune) {
            bail!("--prune {prune}: the pruning ratio must be in [0, 1)");
        }
        let fixed = space.config().fixed_bits;
        if space.units().is_empty() && (self.uniform.is_some() || self.prune.is_some()) {
            bail!(
                "{} has no searchable unit (every weighted layer is fixed at w{fixed}a{fixed}): \
                 --uniform and --prune would change nothing",
                space.spec().name
            );
        }
        if prune > 0.0 && !space.units().iter().any(|u| u.prunable) {
            bail!(
                "--prune {prune}: {} has no prunable unit, so no channel would be removed",
                space.spec().name
            );
        }
        let p = space
            .uniform(w, a, prune)
            .with_context(|| format!("--uniform w{w}a{a} --prune {prune}"))?;
        Ok((p, format!("uniform w{w}a{a} prune {prune}")))
    }
}

/// Parses `wXaY` or `X` into (weight bits, activation bits).
pub fn parse_uniform(s: &str) -> Result<(u32, u32)> {
    let bad = || anyhow::anyhow!("--uniform {s}: expected wXaY (e.g. w4a8) or a single bit-width");
    let t = s.trim().to_ascii_lowercase();
    if let Ok(b) = t.parse::<u32>() {
        return Ok((b, b));
    }
    let rest = t.strip_prefix('w').ok_or_else(bad)?;
    let (w, a) = rest.split_once('a').ok_or_else(bad)?;
    Ok((w.parse().map_err(|_| bad())?, a.parse().map_err(|_| bad())?))
}

/// Runs `seernet complexity`.
pub fn run(args: ComplexityArgs) -> Result<()> {
    let mut o = String::new();
    let spec = args.net.spec()?;
    let space = args.space.space(spec)?;
    let (policy, label) = args.policy.policy(&space)?;
    let costs = space.cost(&policy)?;
    let spec = space.spec();
    if args.json {
        let v = serde_json::json!({
            "arch": spec.name,
            "input": spec.input.to_string(),
            "residual_pruning": space.config().residual_pruning.to_string(),
            "policy": label,
            "total_macs": costs.total_macs,
            "total_bops": costs.total_bops,
            "total_size_bits": costs.total_size_bits,
            "layers": costs.layers,
        });
        writeln!(o, "{v}")?;
    } else {
        writeln!(
            o,
            "{} ({}), residual pruning {}, policy: {}",
            spec.name,
            spec.input,
            space.config().residual_pruning,
            label
        )?;
        write!(o, "{}", costs.table())?;
        writeln!(
            o,
            "total: {} MACs, {} BOPs, {} bits ({:.1} KiB)",
            costs.total_macs,
            costs.total_bops,
            costs.total_size_bits,
            costs.total_size_bits as f64 / 8.0 / 1024.0
        )?;
    }
    super::emit(&o)
}
