//! `seernet train`: trains a full-precision network from scratch on a prepared dataset and
//! writes a safetensors checkpoint (validation top-1 in its metadata).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_nn::data::Augment;
use seer_nn::{checkpoint, model::Model, train};

use super::net::NetArgs;
use super::nn_util::{device, progress_bar};

/// Arguments of `seernet train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Dataset (fashion-mnist, mnist, cifar10, prepared by `cargo xtask fetch-data`), or an
    /// image folder (one sub-folder of PNG/JPEG images per class, resized to `--input`).
    #[arg(long)]
    dataset: String,
    /// Image-folder datasets: leave undecodable images out (counted) instead of failing.
    #[arg(long)]
    skip_corrupt: bool,
    /// Epochs over the training split.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Output checkpoint (.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (SGD, cosine decay).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Disable augmentation (random crop; horizontal flip where the dataset allows it).
    #[arg(long)]
    no_augment: bool,
    /// Print one JSON object when done.
    #[arg(long)]
    json: bool,
    /// Continue an interrupted run: `--out` holds the checkpoint written after the last
    /// finished epoch (`complete: false`); training resumes at the next epoch with the same
    /// learning-rate schedule and shuffling (SGD momentum restarts). Same arguments required.
    #[arg(long)]
    resume: bool,
    /// Stop after this epoch of the `--epochs` schedule (the checkpoint stays partial; finish
    /// later with `--resume`): a long run in pieces.
    #[arg(long, value_name = "EPOCH")]
    stop_epoch: Option<usize>,
}

/// Runs `seernet train`.
pub fn run(a: TrainArgs) -> Result<()> {
    let name = super::nn_util::data_source(&a.dataset, a.net.input.as_deref(), a.skip_corrupt)?;
    let [c, h, w] = name.shape();
    let mut net = a.net.clone();
    let want = format!("{h}x{w}x{c}");
    match &net.input {
        None => net.input = Some(want.clone()),
        Some(s)
            if s.parse::<seer_policy::InputShape>()
                .map(|i| i.to_string())
                .ok()
                .as_deref()
                != Some(want.as_str()) =>
        {
            bail!("--input {s} does not match {name} images ({want})")
        }
        _ => {}
    }
    if net.classes.is_none() {
        net.classes = Some(name.num_classes());
    }
    let spec = net.spec()?;
    let splits = name.load()?;
    let norm = splits.normalize();
    let dev = device();
    let (model, start_epoch, prior_seconds) = if a.resume && a.out.is_file() {
        let (m, info) = checkpoint::load(&a.out, Some(&spec.name), &dev)
            .with_context(|| format!("resuming from {}", a.out.display()))?;
        if m.spec() != &spec {
            bail!(
                "{} holds a different network than --arch/--input/--classes describe; \
                 remove it or train into another --out",
                a.out.display()
            );
        }
        let i = &info.info;
        if i["complete"].as_bool() == Some(true) {
            bail!(
                "{} is a finished run (complete: true); nothing to resume",
                a.out.display()
            );
        }
        let done = i["epochs_done"].as_u64().with_context(|| {
            format!(
                "{} records no epochs_done: not a partial checkpoint of `seernet train`",
                a.out.display()
            )
        })? as usize;
        if i["epochs"].as_u64() != Some(a.epochs as u64) {
            bail!(
                "{} was started with {} epochs, not {}: resume with the same --epochs",
                a.out.display(),
                i["epochs"],
                a.epochs
            );
        }
        tracing::info!(epochs_done = done, "resuming");
        (m, done, i["seconds"].as_f64().unwrap_or(0.0))
    } else {
        (Model::new(spec, a.seed, &dev)?, 0, 0.0)
    };
    tracing::info!(arch = %model.spec().name, params = model.num_params(), train = splits.train.len(), "training");
    let cfg = train::TrainConfig {
        epochs: a.epochs,
        steps: None,
        batch_size: a.batch_size,
        lr: a.lr,
        weight_decay: a.weight_decay,
        seed: a.seed,
        start_epoch,
        stop_epoch: a.stop_epoch,
        augment: (!a.no_augment).then_some(Augment {
            pad: name.crop_padding(),
            hflip: name.allows_hflip(),
        }),
        ..train::TrainConfig::default()
    };
    let per_epoch = splits.train.len() / a.batch_size.max(1);
    let t0 = std::time::Instant::now();
    let pb = progress_bar((a.epochs * per_epoch) as u64, "train");
    pb.set_position((start_epoch * per_epoch) as u64);
    let mut ema: Option<(f32, f32)> = None;
    let rep = train::train(&model, &splits.train, &norm, &cfg, &mut |s| {
        let e = ema.map_or((s.loss, s.acc), |(l, ac)| {
            (0.98 * l + 0.02 * s.loss, 0.98 * ac + 0.02 * s.acc)
        });
        ema = Some(e);
        pb.set_position(s.step as u64 + 1);
        if s.step % 10 == 0 {
            pb.set_message(format!(
                "epoch {} loss {:.3} acc {:.1}% lr {:.4}",
                s.epoch + 1,
                e.0,
                100.0 * e.1,
                s.lr
            ));
        }
        if (s.step + 1) % per_epoch.max(1) == 0 {
            tracing::info!(epoch = s.epoch + 1, loss = e.0, acc = e.1, "epoch done");
            // Partial checkpoint after every epoch, so a long run that is stopped still
            // leaves a usable model (marked incomplete).
            let partial = serde_json::json!({"epochs_done": s.epoch + 1, "epochs": a.epochs, "complete": false,
                "seconds": prior_seconds + t0.elapsed().as_secs_f64(), "train_loss_ema": e.0, "train_acc_ema": e.1});
            if let Err(err) = checkpoint::save(&model, &a.out, Some(&name.id()), &partial) {
                tracing::warn!(%err, "could not write the partial checkpoint");
            }
        }
    })?;
    pb.finish_and_clear();
    if let Some(stop) = a.stop_epoch.filter(|&e| e < a.epochs) {
        super::emit(&format!(
            "stopped after epoch {stop} of {}: partial checkpoint {} (continue with --resume)\n",
            a.epochs,
            a.out.display()
        ))?;
        return Ok(());
    }
    let val = train::evaluate(&model, &splits.val, &norm, 256)?;
    let info = serde_json::json!({
        "epochs": a.epochs, "steps": rep.steps, "batch_size": a.batch_size, "lr": a.lr,
        "weight_decay": a.weight_decay, "seed": a.seed, "augment": !a.no_augment,
        "train_seconds": prior_seconds + rep.seconds, "resumed_at_epoch": start_epoch, "final_loss": rep.final_loss, "val_top1": val.top1,
        "split_sha256": splits.manifest.index_sha256, "complete": true,
    });
    checkpoint::save(&model, &a.out, Some(&name.id()), &info)
        .with_context(|| format!("writing {}", a.out.display()))?;
    super::emit_result(a.json, &info, || {
        format!(
            "{} on {name}: {} epochs, {:.0} s, val top-1 {:.2}% -> {}\n",
            model.spec().name,
            a.epochs,
            rep.seconds,
            val.top1,
            a.out.display()
        )
    })
}
