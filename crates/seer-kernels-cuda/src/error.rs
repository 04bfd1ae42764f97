//! The crate's error type and `Result` alias.

/// Everything that can go wrong in seer-kernels-cuda.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bit-width outside the supported range 2..=8 (docs/method.md §1).
    #[error("{op}: bit-width {bits} is outside 2..=8")]
    InvalidBits {
        /// The operation that rejected its input.
        op: &'static str,
        /// The rejected bit-width.
        bits: u32,
    },
    /// Buffer lengths or dimensions that do not fit together; `msg` names them.
    #[error("{op}: shape mismatch: {msg}")]
    Shape {
        /// The operation that rejected its input.
        op: &'static str,
        /// What was expected and what was given.
        msg: String,
    },
    /// A parameter value that makes no sense (non-positive clip range, zero channels, ...).
    #[error("{op}: invalid parameter: {msg}")]
    InvalidParam {
        /// The operation that rejected its input.
        op: &'static str,
        /// Which parameter and value.
        msg: String,
    },
    /// A NaN or infinite value in an input that must be finite.
    #[error("{op}: non-finite value {value} in `{what}` at flat index {index}")]
    NonFinite {
        /// The operation that rejected its input.
        op: &'static str,
        /// Which input buffer.
        what: &'static str,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// The CUDA device cannot be used: the crate was built without the `cuda` feature, no
    /// NVIDIA driver (libcuda) is installed, or there is no GPU with that ordinal.
    #[error("CUDA device {ordinal} unavailable: {reason}")]
    CudaUnavailable {
        /// The requested device ordinal.
        ordinal: usize,
        /// Why it cannot be used.
        reason: String,
    },
    /// A CUDA driver call failed (allocation, copy, module load, launch).
    #[error("CUDA driver error during {during}: {msg}")]
    Driver {
        /// What was being done.
        during: &'static str,
        /// The driver's message.
        msg: String,
    },
    /// An internal invariant failed (e.g. candle's autograd returned no gradient for an input
    /// the CPU counterpart tracks); a bug, reported instead of a panic.
    #[error("{op}: internal error: {msg}")]
    Internal {
        /// The operation that failed.
        op: &'static str,
        /// What went wrong.
        msg: String,
    },
    /// An error from seer-kernels' CPU training ops (the CPU counterparts).
    #[error(transparent)]
    Kernels(#[from] seer_kernels::Error),
    /// An error from seer-int's packed-integer formats.
    #[error(transparent)]
    Int(#[from] seer_int::Error),
    /// An error raised by candle while the CPU counterparts build or read tensors.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
