//! Helpers shared by the training subcommands (`train`, `eval`, `finetune`).

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

/// The compute device (CPU).
pub fn device() -> Device {
    Device::Cpu
}

/// A progress bar on stderr with elapsed time, ETA and a message.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(what.to_string());
    pb
}

/// The data source of `--dataset` (a built-in name or an image folder), with `--input HxWxC`
/// (image folders are resized to it) and `--skip-corrupt` (undecodable images left out).
pub fn data_source(
    dataset: &str,
    input: Option<&str>,
    skip_corrupt: bool,
) -> anyhow::Result<seer_nn::data::DataSource> {
    use anyhow::Context;
    let shape = input
        .map(seer_nn::data::source::parse_hwc)
        .transpose()
        .with_context(|| format!("--input {}", input.unwrap_or_default()))?;
    seer_nn::data::DataSource::from_arg(dataset, shape, skip_corrupt)
        .with_context(|| format!("--dataset {dataset}"))
}
