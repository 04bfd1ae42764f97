//! The crate's one error type and `Result` alias.

use crate::{REPORT_FORMAT, REPORT_VERSION};

/// Everything that can go wrong while rendering, writing or reading a report. Messages name the
/// file or the plot at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plot could not be drawn (the plotting backend's error, as text: plotters' drawing
    /// errors borrow the backend and cannot be kept).
    #[error("plot: {0}")]
    Plot(String),
    /// A report file or its directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `report.json` is not valid JSON, or does not hold a report.
    #[error("report.json: {0}")]
    Json(#[from] serde_json::Error),
    /// `report.json` is valid JSON but not an object.
    #[error("report.json: not an object")]
    NotAnObject,
    /// `report.json` of another format or version.
    #[error(
        "report.json: format {format} version {version}, this build reads {REPORT_FORMAT} version {REPORT_VERSION}"
    )]
    Version {
        /// The format tag found, as JSON text (`(absent)` when missing).
        format: String,
        /// The version found, as JSON text (`(absent)` when missing).
        version: String,
    },
}

/// Result alias of seer-report.
pub type Result<T> = std::result::Result<T, Error>;
