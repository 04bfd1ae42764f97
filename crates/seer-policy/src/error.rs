//! The crate's one error type and `Result` alias.

/// Everything that can go wrong in seer-policy. Messages name the file, unit, layer and value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An architecture name that is not built in.
    #[error("unknown architecture '{name}' (built in: {known})")]
    UnknownArch {
        /// The name given.
        name: String,
        /// Comma-separated list of built-in names.
        known: String,
    },
    /// An input shape string that is not `HxWxC` with positive integers.
    #[error("invalid input shape '{value}': expected HxWxC with positive integers, e.g. 32x32x3")]
    InvalidInputShape {
        /// The text given.
        value: String,
    },
    /// A network description that is inconsistent (bad channel counts, shapes, producers).
    #[error("{source_name}: layer '{layer}': {msg}")]
    InvalidSpec {
        /// Where the spec came from (file path or builtin name).
        source_name: String,
        /// The offending layer's name.
        layer: String,
        /// What is wrong.
        msg: String,
    },
    /// A search-space configuration that cannot be used.
    #[error("invalid search space: {0}")]
    InvalidConfig(String),
    /// A policy that does not fit its search space (wrong network, length, bits, pruning).
    #[error("{source_name}: {msg}")]
    InvalidPolicy {
        /// Where the policy came from (file path, or `policy` when built in memory).
        source_name: String,
        /// What is wrong, naming unit and value.
        msg: String,
    },
    /// An encoding or index vector that does not fit the search space.
    #[error("invalid encoding: {0}")]
    InvalidEncoding(String),
    /// A JSON document that cannot be parsed or has the wrong format tag.
    #[error("{source_name}: {msg}")]
    Json {
        /// File path or source name.
        source_name: String,
        /// Parser message or format problem.
        msg: String,
    },
    /// A persisted document written by a newer (or unknown) format version.
    #[error(
        "{source_name}: {format} version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// File path or source name.
        source_name: String,
        /// The format tag.
        format: String,
        /// The version found in the file.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
    /// A budget that no policy of the search space meets.
    #[error("budget {label} cannot be met: {msg}")]
    Infeasible {
        /// The budget's label (e.g. `bops-1K`).
        label: String,
        /// Why, with the minimum the space allows.
        msg: String,
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
    /// A file that cannot be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        err: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
