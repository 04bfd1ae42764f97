//! `seernet manifest`: write a manifest of policies to label under one protocol (the baseline
//! checkpoint, its dataset split, the search space and the fine-tune settings), for
//! `seernet label --shard I/N` on many machines and `seernet merge` afterwards.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_policy::{Policy, SearchSpace};

use seernet::labeler::{LabelSettings, Labeler};
use seernet::manifest::Manifest;

use super::net::{SpaceArgs, WeightQuantArg};

/// Arguments of `seernet manifest`.
#[derive(Args, Debug)]
pub struct ManifestArgs {
    /// The trained baseline checkpoint the policies are applied to.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Dataset (defaults to the checkpoint's).
    #[arg(long)]
    dataset: Option<String>,
    /// Policy files (`seernet-policy` JSON) to label.
    #[arg(long = "policy", value_name = "FILE")]
    policies: Vec<PathBuf>,
    /// Uniform policies to label, e.g. `w4a4` or `w4a4p0.25` (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', value_name = "wXaY[pR]")]
    uniform: Vec<String>,
    #[command(flatten)]
    space: SpaceArgs,
    /// Fine-tune steps per label.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Fine-tune mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Fine-tune peak learning rate (cosine decay).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Base seed of the labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Score labels on this many validation images (a fixed seeded sample of the split;
    /// docs/method.md §3) [default: the whole validation split].
    #[arg(long, value_name = "N")]
    val_images: Option<usize>,
    #[command(flatten)]
    weight_quant: WeightQuantArg,
    /// Output manifest (JSON lines).
    #[arg(long, value_name = "M.jsonl")]
    out: PathBuf,
}

/// Parses `w4a4` or `w4a4p0.25` into (wbits, abits, prune).
fn parse_uniform(s: &str) -> Result<(u32, u32, f64)> {
    let bad =
        || anyhow::anyhow!("--uniform '{s}': expected wXaY or wXaYpR, e.g. w4a4 or w4a4p0.25");
    let t = s.trim().to_ascii_lowercase();
    let rest = t.strip_prefix('w').ok_or_else(bad)?;
    let (w, rest) = rest.split_once('a').ok_or_else(bad)?;
    let (a, p) = match rest.split_once('p') {
        Some((a, p)) => (a, p.parse::<f64>().map_err(|_| bad())?),
        None => (rest, 0.0),
    };
    Ok((
        w.parse().map_err(|_| bad())?,
        a.parse().map_err(|_| bad())?,
        p,
    ))
}

/// Runs `seernet manifest`.
pub fn run(a: ManifestArgs) -> Result<()> {
    if a.policies.is_empty() && a.uniform.is_empty() {
        bail!("no policies given: use --policy FILE and/or --uniform wXaY");
    }
    let settings = LabelSettings {
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        val_images: a.val_images,
        weight_quant: a.weight_quant.weight_quant,
    };
    let protocol = Labeler::protocol(&a.model, a.dataset.as_deref(), a.space.config()?, settings)?;
    let (model, _) = seer_nn::checkpoint::load(&a.model, None, &candle_core::Device::Cpu)?;
    let space = SearchSpace::new(model.spec().clone(), protocol.space.clone())?;
    let mut policies: Vec<Policy> = Vec::new();
    for p in &a.policies {
        let pol = Policy::load(p)?;
        space.validate_named(&pol, &p.display().to_string())?;
        policies.push(pol);
    }
    for u in &a.uniform {
        let (w, ab, p) = parse_uniform(u)?;
        policies.push(
            space
                .uniform(w, ab, p)
                .with_context(|| format!("--uniform {u}"))?,
        );
    }
    let m = Manifest::new(protocol, policies)?;
    m.validate(&space)?;
    m.save(&a.out)?;
    println!(
        "{}: {} policies, protocol {}",
        a.out.display(),
        m.entries.len(),
        m.protocol.hash()
    );
    Ok(())
}
