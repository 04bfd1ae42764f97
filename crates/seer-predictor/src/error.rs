//! The crate's one error type and `Result` alias.

use std::path::PathBuf;

/// Everything that can go wrong in seer-predictor. Messages name the file, row, column or
/// value at fault so that a user can fix their input without reading code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying I/O error (shown in the message, so not chained as a source).
        error: std::io::Error,
    },
    /// A CSV file is malformed (row numbers are 1-based file lines; the header is line 1).
    #[error("{source_name}: {message}")]
    Csv {
        /// The file (or other source) name.
        source_name: String,
        /// What is wrong and where (row, column, value).
        message: String,
    },
    /// Inputs of the wrong shape (e.g. a feature vector of the wrong length).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A non-finite value (NaN or ±inf) where a finite number is required.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An invalid configuration value.
    #[error("invalid config: {0}")]
    Config(String),
    /// Too few samples for what was asked (fit, cross-validation split, ...).
    #[error("not enough samples: {0}")]
    TooFewSamples(String),
    /// A saved predictor file is malformed, of another format, or from a future version.
    #[error("{path}: {message}")]
    Format {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Mapping CSV columns onto a seer-policy search space failed.
    #[error("search space: {0}")]
    Space(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
