//! The facade library's error type: one enum for budgets, settings, the pipeline's own
//! conditions and the search, wrapping the sibling crates' errors whole as `source()` (label
//! store and manifests, policy layer, models/training, predictor, barrier and evolutionary
//! search, report), and [`chain`] to print one with its sources. Binaries wrap it in `anyhow`
//! and print the chain with `{:#}`.

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
    /// A setting of the run is invalid, or names something that does not exist.
    #[error("invalid setting {what}: {msg}")]
    Config {
        /// The setting, e.g. `n0` or `baseline`.
        what: String,
        /// What is wrong.
        msg: String,
    },
    /// A file is invalid (line 0 = the whole file).
    #[error("{path}{}: {msg}", if *line > 0 { format!(", line {line}") } else { String::new() })]
    Format {
        /// The file.
        path: String,
        /// 1-based line number, 0 for the whole file.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A policy the run planned has no label in the store (the store changed under the run).
    #[error("planned policy {hash} is not in the label store")]
    MissingLabel {
        /// The policy hash.
        hash: String,
    },
    /// No policy of the search space has its BOPs in the sampling band.
    #[error("no policy found with BOPs in [{lo:.0}, {hi:.0}]")]
    EmptyBand {
        /// Lower end of the band (BOPs).
        lo: f64,
        /// Upper end of the band (BOPs).
        hi: f64,
    },
    /// A predictor's features do not match the search space (a feature without a gene, or a
    /// gene without a feature), or an objective has another dimension than the space.
    #[error("predictor does not fit the search space: {0}")]
    PredictorMismatch(String),
    /// The policy search for one budget failed; the reason is `source()`.
    #[error("search for budget {budget}")]
    Search {
        /// The budget's label.
        budget: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
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
    /// An error of the integer engine's model file (reading an export back), kept as
    /// `source()`.
    #[error("integer model")]
    Int(#[from] seer_int::Error),
    /// An error of the ONNX import or QDQ export (the `seer-onnx` crate), kept as `source()`
    /// (boxed: it is the largest of the siblings' errors).
    #[error("ONNX")]
    Onnx(#[source] Box<seer_onnx::Error>),
    /// An error of the predictor (fit, prediction, samples), kept as `source()`.
    #[error("predictor")]
    Predictor(#[from] seer_predictor::Error),
    /// An error of the barrier / pgd search (budget below the cheapest policy, a failing
    /// objective, ...), kept as `source()`.
    #[error("barrier search")]
    Barrier(#[from] seer_barrier::Error),
    /// An error of the evolutionary or random search (the active sampler included), kept as
    /// `source()`.
    #[error("evolutionary search")]
    Evo(#[from] seer_evo::Error),
}

impl From<seer_onnx::Error> for Error {
    fn from(e: seer_onnx::Error) -> Self {
        Error::Onnx(Box::new(e))
    }
}

/// `e` and its chain of `source()`s joined by `": "`, as `anyhow`'s `{:#}` prints them: what
/// the pipeline writes into `run.log` when it logs an error and goes on.
///
/// ```
/// let e = seernet::Error::Search {
///     budget: "bops-5M".into(),
///     source: Box::new(seernet::Error::PredictorMismatch("no feature for gene 3".into())),
/// };
/// assert_eq!(
///     seernet::error::chain(&e),
///     "search for budget bops-5M: predictor does not fit the search space: no feature for gene 3"
/// );
/// ```
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
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

    #[test]
    fn search_errors_keep_budget_context_and_the_engines_error() {
        let inner = seer_barrier::Error::InvalidBudget("no limit".into());
        let e = Error::Search {
            budget: "frac-0.1".into(),
            source: Box::new(Error::from(inner)),
        };
        assert_eq!(e.to_string(), "search for budget frac-0.1");
        assert_eq!(
            chain(&e),
            "search for budget frac-0.1: barrier search: invalid budget: no limit"
        );
        let Error::Search { source, .. } = &e else {
            unreachable!()
        };
        assert!(matches!(
            **source,
            Error::Barrier(seer_barrier::Error::InvalidBudget(_))
        ));
        let p = Error::from(seer_predictor::Error::Shape(
            "3 features, 4 expected".into(),
        ));
        assert_eq!(
            chain(&p),
            "predictor: shape mismatch: 3 features, 4 expected"
        );
        let v = Error::from(seer_evo::Error::InvalidProblem("no genes".into()));
        assert_eq!(chain(&v), "evolutionary search: invalid problem: no genes");
    }
}
