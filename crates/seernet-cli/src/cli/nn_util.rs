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
