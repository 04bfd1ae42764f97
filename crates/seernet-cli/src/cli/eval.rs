//! `seernet eval`: top-1 accuracy of a checkpoint on a dataset split.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use seer_nn::data::{DataSource, Split};
use seer_nn::{checkpoint, train};

use super::nn_util::device;

/// Arguments of `seernet eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint (.safetensors) written by `seernet train` or `seernet finetune`.
    #[arg(long)]
    model: PathBuf,
    /// Dataset (defaults to the one recorded in the checkpoint).
    #[arg(long)]
    dataset: Option<String>,
    /// Image-folder datasets: leave undecodable images out (counted) instead of failing.
    #[arg(long)]
    skip_corrupt: bool,
    /// Split: test (final reports only) or val.
    #[arg(long, default_value = "test")]
    split: String,
    /// Mini-batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print one JSON object (`top1`, `n`, `images_per_s`).
    #[arg(long)]
    json: bool,
}

/// `--dataset d` for `model`: an image folder is read at the model's input shape, leaving
/// undecodable images out when `skip_corrupt`.
pub fn given(d: &str, model: &seer_nn::model::Model, skip_corrupt: bool) -> Result<DataSource> {
    let i = model.spec().input;
    let src = DataSource::parse(d)?;
    Ok(match src {
        DataSource::Folder { .. } => {
            let hwc = format!("{}x{}x{}", i.h, i.w, i.c);
            super::nn_util::data_source(d, Some(&hwc), skip_corrupt)?
        }
        b => b,
    })
}

/// Runs `seernet eval`.
pub fn run(a: EvalArgs) -> Result<()> {
    let split = Split::parse(&a.split)?;
    let (model, info) = checkpoint::load(&a.model, None, &device())?;
    let name = match (&a.dataset, &info.dataset) {
        (Some(d), Some(rec)) => {
            let n = given(d, &model, a.skip_corrupt)?;
            // Other images of the same shape and classes are a user's right (new data, a
            // moved folder); the shape and class checks below still apply.
            if DataSource::parse(rec).is_ok_and(|r| r != n) {
                eprintln!(
                    "note: {} was trained on {rec}; evaluating it on {}",
                    a.model.display(),
                    n.id()
                );
            }
            n
        }
        (Some(d), None) => given(d, &model, a.skip_corrupt)?,
        (None, Some(rec)) => DataSource::parse(rec)?,
        (None, None) => bail!("{} records no dataset: pass --dataset", a.model.display()),
    };
    let [c, h, w] = name.shape();
    let inp = model.spec().input;
    if (inp.c, inp.h, inp.w) != (c, h, w) {
        bail!(
            "{} takes {inp} inputs but {name} images are {h}x{w}x{c}",
            a.model.display()
        );
    }
    if model.spec().num_classes != name.num_classes() {
        bail!(
            "{} has {} classes but {name} has {}",
            a.model.display(),
            model.spec().num_classes,
            name.num_classes()
        );
    }
    let mut splits = name.load()?;
    if let Some((m, s)) = checkpoint::input_norm(&info) {
        splits.use_norm(&m, &s)?;
    }
    let rep = train::evaluate(&model, splits.get(split), &splits.normalize(), a.batch_size)?;
    let v = serde_json::json!({"top1": rep.top1, "n": rep.n, "images_per_s": rep.images_per_s, "split": a.split, "dataset": name.id()});
    super::emit_result(a.json, &v, || {
        let (arch, split) = (&model.spec().name, &a.split);
        format!(
            "{arch} on {name} {split}: top-1 {:.2}% ({} images, {:.0} images/s)\n",
            rep.top1, rep.n, rep.images_per_s
        )
    })
}
