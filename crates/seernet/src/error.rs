//! The facade library's error type: one enum for budgets, the pipeline's run directory and
//! reports, wrapping the sibling crates' errors whole (label store and manifests, policy
//! layer, models/training). Binaries wrap it in `anyhow`.

/// Errors of the `seernet` library. Every variant names the file, line, flag or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// A budget flag's value is invalid.
    #[error("invalid budget {flag} '{value}': {msg}")]
    Budget {
        /// The flag, e.g. `--max-size`.
        flag: String,
        /// The value as given.
        value: String,
        /// What is wrong.
        msg: String,
    },
    /// No budget was given.
    #[error("no budget given: use --max-bops, --max-size or --bops-frac")]
    NoBudget,
    /// A file the pipeline reads or writes is invalid, or a pipeline step failed (line 0 = the
    /// whole file or no file).
    #[error("{path}{}: {msg}", if *line > 0 { format!(", line {line}") } else { String::new() })]
    Format {
        /// The file.
        path: String,
        /// 1-based line number, 0 for the whole file.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Rendering or writing the report failed (the `seer-report` crate's error, kept as
    /// `source()`).
    #[error("report")]
    Report(#[from] seer_report::Error),
    /// An error of the label store, labelling protocol, manifests or shards (the `seer-label`
    /// crate), including a labelling function's failure
    /// ([`seer_label::Error::Labeller`]); kept as `source()`.
    #[error("label store")]
    Label(#[from] seer_label::Error),
    /// An error of the policy layer (invalid policy for the space, ...), kept as `source()`.
    #[error("policy")]
    Policy(#[from] seer_policy::Error),
    /// An error of the models/data/training layer (checkpoint, dataset, fine-tune), kept as
    /// `source()`.
    #[error("model, data or training")]
    Nn(#[from] seer_nn::Error),
}

/// Result alias of the `seernet` library.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_errors_stay_whole_and_keep_their_message() {
        let inner = seer_label::Error::Locked {
            path: "run/labels.jsonl".into(),
        };
        let text = inner.to_string();
        let e = Error::from(inner);
        // The sibling's error is the source, so `{:#}` (anyhow) prints "label store: <it>".
        let source = std::error::Error::source(&e).expect("kept as source");
        assert_eq!(source.to_string(), text);
        assert_eq!(e.to_string(), "label store");
        assert!(matches!(
            e,
            Error::Label(seer_label::Error::Locked { ref path }) if path == "run/labels.jsonl"
        ));
    }
}
