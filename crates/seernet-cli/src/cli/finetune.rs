//! `seernet finetune`: applies a compression policy to a trained checkpoint (filter-L2
//! channel pruning, fake quantization), re-estimates BatchNorm, calibrates activation
//! ranges and fine-tunes with QAT (docs/method.md §3, §7); reports validation top-1.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_nn::train::FinetuneNetwork;
use seer_nn::{checkpoint, train};
use seer_policy::{Policy, SearchSpace};

use super::net::{SpaceArgs, WeightQuantArg};
use super::nn_util::{device, progress_bar};

/// Arguments of `seernet finetune`.
#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// Trained full-precision checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// Policy JSON (`seernet-policy`).
    #[arg(long)]
    policy: PathBuf,
    /// Fine-tuning steps (mini-batches).
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Output checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Dataset (defaults to the checkpoint's).
    #[arg(long)]
    dataset: Option<String>,
    #[command(flatten)]
    space: SpaceArgs,
    /// Peak learning rate (cosine decay).
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Seed of shuffling, augmentation and calibration batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Remove the pruned channels before calibration and fine-tune the physically pruned
    /// (slimmed) network, as labels do (same result up to float rounding, faster), and write
    /// it; without the flag the masked full-width network is fine-tuned and written.
    #[arg(long)]
    slim: bool,
    #[command(flatten)]
    weight_quant: WeightQuantArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `seernet finetune`.
pub fn run(a: FinetuneArgs) -> Result<()> {
    let (mut model, info) = checkpoint::load(&a.model, None, &device())?;
    if model.is_slim() {
        bail!(
            "{} is already physically pruned; fine-tune the full model",
            a.model.display()
        );
    }
    let dname = a
        .dataset
        .clone()
        .or(info.dataset.clone())
        .with_context(|| format!("{} records no dataset: pass --dataset", a.model.display()))?;
    let name = super::eval::given(&dname, &model, false)?;
    let space = SearchSpace::new(model.spec().clone(), a.space.config()?)?;
    let policy = Policy::load(&a.policy)?;
    space.validate_named(&policy, &a.policy.display().to_string())?;
    let mut splits = name.load()?;
    if let Some((m, s)) = checkpoint::input_norm(&info) {
        splits.use_norm(&m, &s)?;
    }
    let norm = splits.normalize();
    let cfg = train::TrainConfig {
        steps: Some(a.steps),
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        augment: seer_nn::labeler::finetune_augment(&info.info, &name),
        network: if a.slim {
            FinetuneNetwork::Slim
        } else {
            FinetuneNetwork::Masked
        },
        weight_quant: a.weight_quant.weight_quant,
        ..train::TrainConfig::default()
    };
    let pb = progress_bar(a.steps as u64, "finetune");
    let rep = train::finetune_policy(
        &mut model,
        &space,
        &policy,
        &splits.train,
        &norm,
        &cfg,
        &mut |s| {
            pb.set_position(s.step as u64 + 1);
            if s.step % 10 == 0 {
                pb.set_message(format!("loss {:.3} acc {:.1}%", s.loss, 100.0 * s.acc));
            }
        },
    )?;
    pb.finish_and_clear();
    let val = train::evaluate(&model, &splits.val, &norm, 256)?;
    let cost = space.cost(&policy)?;
    let out_model = model;
    let meta = serde_json::json!({
        "base": a.model.display().to_string(), "steps": a.steps, "lr": a.lr, "seed": a.seed,
        "seconds": rep.seconds, "val_top1": val.top1, "bops": cost.total_bops,
        "size_bits": cost.total_size_bits, "slim": a.slim,
    });
    checkpoint::save(&out_model, &a.out, Some(&name.id()), &meta)
        .with_context(|| format!("writing {}", a.out.display()))?;
    super::emit_result(a.json, &meta, || {
        format!(
            "fine-tuned {} steps in {:.0} s: val top-1 {:.2}%, {} BOPs, {} bits -> {}\n",
            a.steps,
            rep.seconds,
            val.top1,
            cost.total_bops,
            cost.total_size_bits,
            a.out.display()
        )
    })
}
