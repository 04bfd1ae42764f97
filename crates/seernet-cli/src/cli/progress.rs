//! The pipeline's progress on stderr: one indicatif bar per stage, log lines printed above it
//! (the [`seernet::pipeline::Progress`] observer of `seernet compress`).

use indicatif::{ProgressBar, ProgressStyle};
use seernet::pipeline::Progress;

/// Draws each pipeline stage as a progress bar on stderr
/// (`    labels [00:01:02] ████░░ 12/41 (eta 3m) last 87.12%`) and prints the run log's lines
/// above the bar, or plainly when no bar is shown.
#[derive(Debug, Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn stage(&mut self, name: &str, total: u64) {
        self.finish();
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_prefix(name.to_string());
        self.bar = Some(pb);
    }

    fn add_total(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    fn inc(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn message(&mut self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
        }
    }

    fn line(&mut self, line: &str) {
        match &self.bar {
            Some(b) if !b.is_finished() => b.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
