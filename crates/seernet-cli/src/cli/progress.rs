//! The pipeline's progress on stderr (the [`seernet::pipeline::Progress`] observer of
//! `seernet compress`): one indicatif bar per stage on a terminal, plain lines elsewhere (a log
//! file, CI), and the run log's lines either way.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use seernet::pipeline::Progress;

/// Reports a running pipeline on stderr. On a terminal each stage is a bar
/// (`    labels [00:01:02] ████░░ 12/41 (eta 3m) last 87.12%`) with the run log's lines printed
/// above it. Off a terminal (indicatif draws nothing there) every log line is printed as is,
/// and each stage prints a line when it starts, at most every [`Lines::EVERY`] of progress or
/// [`Lines::PERIOD`] of time (`labels 12/41 (29%), 1m 02s elapsed, eta 2m 31s, last 87.12%`),
/// and when it ends.
#[derive(Debug)]
pub enum Bars {
    /// Drawing bars on a terminal.
    Terminal(Option<ProgressBar>),
    /// Writing lines (stderr is not a terminal).
    Lines(Lines<std::io::Stderr>),
}

impl Default for Bars {
    /// Bars when stderr is a terminal, lines otherwise.
    fn default() -> Self {
        if std::io::stderr().is_terminal() {
            Bars::Terminal(None)
        } else {
            Bars::Lines(Lines::new(std::io::stderr()))
        }
    }
}

impl Progress for Bars {
    fn stage(&mut self, name: &str, total: u64) {
        match self {
            Bars::Terminal(bar) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let pb = ProgressBar::new(total);
                pb.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb.set_prefix(name.to_string());
                *bar = Some(pb);
            }
            Bars::Lines(l) => l.stage(name, total),
        }
    }

    fn add_total(&mut self, n: u64) {
        match self {
            Bars::Terminal(Some(b)) => b.inc_length(n),
            Bars::Terminal(None) => {}
            Bars::Lines(l) => l.add_total(n),
        }
    }

    fn inc(&mut self, n: u64) {
        match self {
            Bars::Terminal(Some(b)) => b.inc(n),
            Bars::Terminal(None) => {}
            Bars::Lines(l) => l.inc(n),
        }
    }

    fn message(&mut self, msg: &str) {
        match self {
            Bars::Terminal(Some(b)) => b.set_message(msg.to_string()),
            Bars::Terminal(None) => {}
            Bars::Lines(l) => l.message(msg),
        }
    }

    fn line(&mut self, line: &str) {
        match self {
            Bars::Terminal(Some(b)) if !b.is_finished() => b.println(line),
            Bars::Terminal(_) => eprintln!("{line}"),
            Bars::Lines(l) => l.line(line),
        }
    }

    fn finish(&mut self) {
        match self {
            Bars::Terminal(bar) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
            Bars::Lines(l) => l.finish(),
        }
    }
}

/// Line-oriented progress into `W` (stderr off a terminal; a buffer in tests).
#[derive(Debug)]
pub struct Lines<W: Write> {
    out: W,
    stage: Option<LineStage>,
}

/// The stage being reported by [`Lines`].
#[derive(Debug)]
struct LineStage {
    name: String,
    total: u64,
    pos: u64,
    msg: String,
    started: Instant,
    /// Position and time of the last progress line.
    shown: (u64, Instant),
}

impl<W: Write> Lines<W> {
    /// A progress line is printed at least every this share of a stage's units ...
    pub const EVERY: f64 = 0.1;
    /// ... or when this much time passed since the last one, whichever comes first (stages of
    /// few slow units, such as labels, print a line per unit).
    pub const PERIOD: Duration = Duration::from_secs(10);

    /// Lines written into `out`; write errors are ignored (progress is not a result).
    pub fn new(out: W) -> Self {
        Self { out, stage: None }
    }

    fn stage(&mut self, name: &str, total: u64) {
        self.finish();
        let now = Instant::now();
        let _ = writeln!(self.out, "{name}: {total} to do");
        self.stage = Some(LineStage {
            name: name.to_string(),
            total,
            pos: 0,
            msg: String::new(),
            started: now,
            shown: (0, now),
        });
    }

    fn add_total(&mut self, n: u64) {
        if let Some(s) = self.stage.as_mut() {
            s.total += n;
        }
    }

    fn inc(&mut self, n: u64) {
        let Some(s) = self.stage.as_mut() else {
            return;
        };
        s.pos += n;
        let step = ((s.total as f64 * Self::EVERY).ceil() as u64).max(1);
        let now = Instant::now();
        let due = s.pos >= s.shown.0 + step
            || now.duration_since(s.shown.1) >= Self::PERIOD
            || s.pos >= s.total;
        if due {
            s.shown = (s.pos, now);
            let line = s.progress_line(now);
            let _ = writeln!(self.out, "{line}");
        }
    }

    fn message(&mut self, msg: &str) {
        if let Some(s) = self.stage.as_mut() {
            s.msg = msg.to_string();
        }
    }

    fn line(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
    }

    fn finish(&mut self) {
        if let Some(s) = self.stage.take() {
            let _ = writeln!(
                self.out,
                "{} done: {}/{} in {}",
                s.name,
                s.pos,
                s.total,
                clock(s.started.elapsed())
            );
        }
    }
}

impl LineStage {
    /// `labels 12/41 (29%), 1m 02s elapsed, eta 2m 31s, last 87.12%`.
    fn progress_line(&self, now: Instant) -> String {
        let elapsed = now.duration_since(self.started);
        let pct = if self.total > 0 {
            100.0 * self.pos as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if self.pos > 0 && self.pos < self.total {
            let per = elapsed.as_secs_f64() / self.pos as f64;
            format!(
                ", eta {}",
                clock(Duration::from_secs_f64(
                    per * (self.total - self.pos) as f64
                ))
            )
        } else {
            String::new()
        };
        let msg = if self.msg.is_empty() {
            String::new()
        } else {
            format!(", {}", self.msg)
        };
        format!(
            "{} {}/{} ({pct:.0}%), {} elapsed{eta}{msg}",
            self.name,
            self.pos,
            self.total,
            clock(elapsed)
        )
    }
}

/// `42s`, `3m 07s`, `1h 02m`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(l: &Lines<Vec<u8>>) -> String {
        String::from_utf8(l.out.clone()).unwrap()
    }

    #[test]
    fn off_a_terminal_every_label_and_stage_gets_a_line() {
        let mut l = Lines::new(Vec::new());
        l.line("[    0.1s] baseline: assets/baselines/lenet5-fashion-mnist.safetensors");
        l.stage("labels", 3);
        l.message("last 81.20%");
        l.inc(1);
        l.line("[    5.0s] label 0123abcd: 81.20%");
        l.add_total(1);
        l.inc(3);
        l.finish();
        let t = text(&l);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "[    0.1s] baseline: assets/baselines/lenet5-fashion-mnist.safetensors"
        );
        assert_eq!(lines[1], "labels: 3 to do");
        // 3 units: a line per unit; the eta is shown while units remain.
        assert!(
            lines[2].starts_with("labels 1/3 (33%), 0s elapsed, eta ")
                && lines[2].ends_with(", last 81.20%"),
            "{}",
            lines[2]
        );
        assert_eq!(lines[3], "[    5.0s] label 0123abcd: 81.20%");
        assert!(
            lines[4].starts_with("labels 4/4 (100%), 0s elapsed, last"),
            "{}",
            lines[4]
        );
        assert!(lines[5].starts_with("labels done: 4/4 in "), "{}", lines[5]);
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn long_stages_print_about_every_tenth() {
        let mut l = Lines::new(Vec::new());
        l.stage("fine-tune", 1000);
        for _ in 0..1000 {
            l.inc(1);
        }
        l.finish();
        let t = text(&l);
        let progress = t
            .lines()
            .filter(|x| x.starts_with("fine-tune ") && !x.starts_with("fine-tune done"))
            .count();
        // One line per 100 steps (the test runs in well under the 10 s period).
        assert_eq!(progress, 10, "{t}");
        assert!(t.contains("fine-tune 500/1000 (50%)"), "{t}");
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(187)), "3m 07s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h 02m");
    }
}
