//! The crate's error type and `Result` alias.

/// Everything that can go wrong in seer-kernels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Tensor shapes (or ranks) that do not fit together; `msg` names the shapes.
    #[error("{op}: shape mismatch: {msg}")]
    Shape {
        /// The operation that rejected its input.
        op: &'static str,
        /// What was expected and what was given.
        msg: String,
    },
    /// A bit-width outside the supported range 2..=8 (docs/method.md §1).
    #[error("{op}: bit-width {bits} is outside 2..=8")]
    InvalidBits {
        /// The operation that rejected its input.
        op: &'static str,
        /// The rejected bit-width.
        bits: u32,
    },
    /// A parameter value that makes no sense (zero stride, non-positive clip range, ...).
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
        /// Which input tensor.
        what: &'static str,
        /// Flat (row-major) index of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A dtype or device the kernels do not support (they need contiguous f32 on the CPU).
    #[error("{op}: unsupported input: {msg}")]
    Unsupported {
        /// The operation that rejected its input.
        op: &'static str,
        /// What was given.
        msg: String,
    },
    /// An error raised by candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps this error for the candle custom-op interface (which only carries candle errors).
    pub(crate) fn into_candle(self) -> candle_core::Error {
        candle_core::Error::Msg(self.to_string())
    }
}
