//! The crate's one error type ([`Error`]) and its [`Result`] alias.

use std::path::PathBuf;

/// Everything that can go wrong in seer-nn. Messages name the file, dataset, layer or value
/// involved and, where the fix is known, say what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model cannot be exported to the integer engine's format (naming the layer), or its
    /// file cannot be serialised.
    #[error("{path}: {msg}")]
    Export {
        /// The file the export was to write.
        path: String,
        /// What the engine cannot represent.
        msg: String,
    },
    /// An I/O failure on a named file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file that is malformed, truncated or of an unexpected layout.
    #[error("{path}: {msg}")]
    BadData {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A prepared dataset is not where it should be.
    #[error("dataset {name:?} not found in {dir}: {hint}")]
    MissingDataset {
        /// Dataset name, e.g. `fashion-mnist`.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
        /// What to run to get it.
        hint: String,
    },
    /// A downloaded archive whose SHA-256 differs from the recorded one.
    #[error(
        "{path}: SHA-256 mismatch (expected {expected}, got {actual}); the download is corrupt or \
         was tampered with: delete the file and run `cargo xtask fetch-data {dataset}` again"
    )]
    Checksum {
        /// The archive.
        path: PathBuf,
        /// Dataset name.
        dataset: String,
        /// Recorded checksum (hex).
        expected: String,
        /// Checksum of the file on disk (hex).
        actual: String,
    },
    /// An external tool (e.g. `npm`) failed or is missing.
    #[error("{0}")]
    Tool(String),
    /// Invalid argument or configuration (unknown dataset/arch, bad shape, bad option).
    #[error("{0}")]
    Invalid(String),
    /// A model checkpoint that cannot be used (corrupt, wrong architecture, future version).
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor operation failed (shapes, devices).
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    /// A seer-kernels op rejected its input (bits, shapes, NaN/Inf).
    #[error("kernel: {0}")]
    Kernel(#[from] seer_kernels::Error),
    /// A seer-policy error (spec, search space, policy).
    #[error(transparent)]
    Policy(#[from] seer_policy::Error),
    /// An error of the label store or labelling protocol (the `seer-label` crate), kept as
    /// `source()`: a checkpoint, dataset or setting that differs from the protocol's.
    #[error("labelling protocol")]
    Label(#[from] seer_label::Error),
    /// JSON (de)serialisation failure on a named file.
    #[error("{path}: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// A malformed-data error on `path`.
    pub fn bad(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadData {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
