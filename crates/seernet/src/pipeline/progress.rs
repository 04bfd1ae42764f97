//! How a running pipeline reports progress: the [`Progress`] observer (bars and log lines for a
//! front end such as the `seernet` CLI, which draws them with indicatif), its no-op
//! [`NoProgress`], and the run log that writes `run.log`, emits `tracing` events and forwards
//! to the observer.
//!
//! ```
//! use seernet::pipeline::Progress;
//!
//! /// Counts finished units and keeps the log lines.
//! #[derive(Default)]
//! struct Count {
//!     done: u64,
//!     lines: Vec<String>,
//! }
//!
//! impl Progress for Count {
//!     fn inc(&mut self, n: u64) {
//!         self.done += n;
//!     }
//!     fn line(&mut self, line: &str) {
//!         self.lines.push(line.to_string());
//!     }
//! }
//!
//! let mut c = Count::default();
//! c.stage("labels", 3); // the other methods default to doing nothing
//! c.inc(2);
//! c.line("[    0.1s] label 0123abcd: ...");
//! assert_eq!((c.done, c.lines.len()), (2, 1));
//! // `seernet::pipeline::run_with(&cfg, &mut c)` would report a whole run to `c`.
//! ```

use std::io::Write;
use std::time::Instant;

/// Observer of a running pipeline ([`super::run_with`]). Work comes in stages with a known
/// number of units (`labels`: one per label; `fine-tune` and `baseline`: one per optimizer
/// step); log lines come at any time, also between stages. Every method defaults to doing
/// nothing. Calls come from the thread that runs the pipeline, in order; nothing is reported
/// when [`super::Config::progress`] is false.
pub trait Progress {
    /// A stage of `total` units starts (`name`: `labels`, `fine-tune` or `baseline`); it
    /// follows a [`Progress::finish`] of the previous stage, if any.
    fn stage(&mut self, name: &str, total: u64) {
        let _ = (name, total);
    }
    /// The current stage's total grows by `n` units (verification rounds add labels).
    fn add_total(&mut self, n: u64) {
        let _ = n;
    }
    /// `n` more units of the current stage are done (found in a cache ones included).
    fn inc(&mut self, n: u64) {
        let _ = n;
    }
    /// A short status of the current stage, replacing the previous one (e.g. `last 87.12%`,
    /// `loss 0.412`).
    fn message(&mut self, msg: &str) {
        let _ = msg;
    }
    /// One line of the run log, exactly as appended to `run.log`: `[{seconds:7.1}s] {text}`,
    /// seconds since the run started.
    fn line(&mut self, line: &str) {
        let _ = line;
    }
    /// The current stage is over.
    fn finish(&mut self) {}
}

/// The observer that ignores everything ([`super::run`] uses it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Appends timestamped lines to `run.log`, emits each as a `tracing` info event (target
/// `seernet::pipeline`) and, when `echo` (= [`super::Config::progress`]), forwards lines and
/// stage progress to the observer. Keeps the current stage's position so that absolute
/// positions ([`RunLog::set_position`]) reach the observer as increments.
pub(crate) struct RunLog<'p> {
    file: Option<std::fs::File>,
    start: Instant,
    echo: bool,
    pos: u64,
    progress: &'p mut dyn Progress,
}

impl<'p> RunLog<'p> {
    /// A log appending to `file` (none: lines go to tracing and the observer only).
    pub(crate) fn new(
        file: Option<std::fs::File>,
        echo: bool,
        progress: &'p mut dyn Progress,
    ) -> Self {
        Self {
            file,
            start: Instant::now(),
            echo,
            pos: 0,
            progress,
        }
    }

    /// Writes one timestamped line (write errors on `run.log` are ignored: the log is a record,
    /// not a result).
    pub(crate) fn line(&mut self, msg: &str) {
        let l = format!("[{:7.1}s] {msg}", self.start.elapsed().as_secs_f64());
        if let Some(f) = self.file.as_mut() {
            let _ = writeln!(f, "{l}");
        }
        tracing::info!(target: "seernet::pipeline", "{msg}");
        if self.echo {
            self.progress.line(&l);
        }
    }

    /// Starts a stage of `total` units (see [`Progress::stage`]).
    pub(crate) fn stage(&mut self, name: &str, total: u64) {
        self.pos = 0;
        tracing::debug!(target: "seernet::pipeline", stage = name, total, "stage starts");
        if self.echo {
            self.progress.stage(name, total);
        }
    }

    /// See [`Progress::add_total`].
    pub(crate) fn add_total(&mut self, n: u64) {
        if self.echo {
            self.progress.add_total(n);
        }
    }

    /// `n` more units done.
    pub(crate) fn inc(&mut self, n: u64) {
        self.pos += n;
        if self.echo {
            self.progress.inc(n);
        }
    }

    /// Units of the current stage done so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Moves the current stage to `pos` units done (never backwards).
    pub(crate) fn set_position(&mut self, pos: u64) {
        if pos > self.pos {
            self.inc(pos - self.pos);
        }
    }

    /// See [`Progress::message`].
    pub(crate) fn message(&mut self, msg: &str) {
        if self.echo {
            self.progress.message(msg);
        }
    }

    /// Ends the current stage.
    pub(crate) fn finish(&mut self) {
        if self.echo {
            self.progress.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record(Vec<String>);

    impl Progress for Record {
        fn stage(&mut self, name: &str, total: u64) {
            self.0.push(format!("stage {name} {total}"));
        }
        fn add_total(&mut self, n: u64) {
            self.0.push(format!("add {n}"));
        }
        fn inc(&mut self, n: u64) {
            self.0.push(format!("inc {n}"));
        }
        fn message(&mut self, msg: &str) {
            self.0.push(format!("msg {msg}"));
        }
        fn line(&mut self, line: &str) {
            self.0.push(format!("line {line}"));
        }
        fn finish(&mut self) {
            self.0.push("finish".into());
        }
    }

    #[test]
    fn forwards_stamped_lines_and_positions_as_increments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.log");
        let file = std::fs::File::create(&path).unwrap();
        let mut rec = Record::default();
        let mut log = RunLog::new(Some(file), true, &mut rec);
        log.line("hello");
        log.stage("fine-tune", 10);
        log.inc(2);
        let start = log.position();
        log.set_position(start + 3);
        log.set_position(start + 1); // never backwards
        log.add_total(4);
        log.message("loss 0.5");
        log.finish();
        drop(log);
        let line = rec.0[0].strip_prefix("line ").unwrap().to_string();
        assert!(
            line.starts_with('[') && line.ends_with("s] hello"),
            "{line}"
        );
        assert_eq!(
            &rec.0[1..],
            [
                "stage fine-tune 10",
                "inc 2",
                "inc 3",
                "add 4",
                "msg loss 0.5",
                "finish"
            ]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, line + "\n");
    }

    #[test]
    fn silent_when_not_echoing_but_still_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.log");
        let file = std::fs::File::create(&path).unwrap();
        let mut rec = Record::default();
        let mut log = RunLog::new(Some(file), false, &mut rec);
        log.stage("labels", 3);
        log.inc(1);
        log.line("quiet");
        assert_eq!(log.position(), 1);
        log.finish();
        drop(log);
        assert!(rec.0.is_empty());
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("s] quiet\n")
        );
    }
}
