//! The crate's error type: one enum for the label store, the labelling protocol, manifests,
//! shard specs and per-policy result files. Every variant names the file, line or value at fault.

/// Errors of `seer-label`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// A label store line is invalid (1-based line number).
    #[error("label store {path}, line {line}: {msg}")]
    Store {
        /// The store file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A label store of another format version.
    #[error(
        "label store {path} has format version {found} (written by {writer}); this build reads version {supported}: use a matching seernet or start a new store"
    )]
    StoreVersion {
        /// The store file.
        path: String,
        /// Version in the file.
        found: u64,
        /// Writer recorded in the file.
        writer: String,
        /// Version this build reads.
        supported: u64,
    },
    /// Another process holds the store's lock.
    #[error("label store {path} is in use by another process (locked)")]
    Locked {
        /// The store file.
        path: String,
    },
    /// Labels or inputs made under another labelling protocol (never mixed silently).
    #[error("{what} was made under another labelling protocol: {diff}")]
    Protocol {
        /// What was compared.
        what: String,
        /// The differing fields.
        diff: String,
    },
    /// A label record is inconsistent.
    #[error("label record {hash}: {msg}")]
    Record {
        /// Its policy hash.
        hash: String,
        /// What is wrong.
        msg: String,
    },
    /// A manifest or shard result file is invalid (line 0 = the whole file).
    #[error("{path}{}: {msg}", if *line > 0 { format!(", line {line}") } else { String::new() })]
    Format {
        /// The file.
        path: String,
        /// 1-based line number, 0 for the whole file.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A `--shard I/N` value or its environment variable is invalid.
    #[error("invalid shard '{value}': {msg}")]
    Shard {
        /// The value as given.
        value: String,
        /// What is wrong.
        msg: String,
    },
    /// The labelling function failed for a policy ([`label_missing`](crate::store::label_missing),
    /// [`run_shard`](crate::manifest::run_shard)).
    #[error("labelling policy {hash} failed")]
    Labeller {
        /// The policy hash.
        hash: String,
        /// The labeller's error (kept as `source()`).
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A cluster scheduler refused or failed a labelling batch, or its tasks left policies
    /// without a result after the retries.
    #[error("cluster batch {batch}: {msg}")]
    Cluster {
        /// The batch (`initial`, `active-1`, ...) or job name.
        batch: String,
        /// What went wrong, with the scheduler's message.
        msg: String,
    },
    /// Another driver holds the run directory's lock.
    #[error(
        "run directory lock {path} is held by another driver ({holder}); stop that driver, or remove the file if it is no longer running"
    )]
    RunLocked {
        /// The lock file.
        path: String,
        /// Who holds it.
        holder: String,
    },
    /// An error of the policy layer (a policy outside the search space, ...), kept as
    /// `source()`.
    #[error("policy")]
    Policy(#[from] seer_policy::Error),
}

/// Result alias of `seer-label`.
pub type Result<T> = std::result::Result<T, Error>;
