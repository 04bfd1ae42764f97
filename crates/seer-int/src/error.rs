//! The error type of the packed-integer inference kernels (`seer_int`).

/// Everything that can go wrong in `seer_int`: bad bit-widths, shapes that do not
/// agree, non-finite inputs and malformed model files. Every variant names what was wrong
/// and where, so callers can report it without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bit-width outside the supported range 2..=8.
    #[error("{what}: bit-width {bits} is not supported (expected 2..=8)")]
    InvalidBits {
        /// Which tensor or layer carried the bit-width.
        what: String,
        /// The offending bit-width.
        bits: u32,
    },
    /// A buffer whose length does not match the shape it was given with.
    #[error("{what}: expected {expected} elements, got {got}")]
    ShapeMismatch {
        /// Which buffer.
        what: String,
        /// Length implied by the shape.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// An argument that is out of its valid range (zero sizes, strides, clip ranges, ...).
    #[error("{what}: {why}")]
    InvalidArgument {
        /// Which argument.
        what: String,
        /// What is wrong with it.
        why: String,
    },
    /// A NaN or infinity where finite numbers are required.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// Which buffer.
        what: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value itself.
        value: f32,
    },
    /// An activation code larger than its declared bit-width allows.
    #[error("{what}: activation code {value} at index {index} exceeds {bits}-bit range")]
    CodeOutOfRange {
        /// Which buffer.
        what: String,
        /// Flat index of the first bad code.
        index: usize,
        /// The code.
        value: u32,
        /// Declared bit-width.
        bits: u32,
    },
    /// A malformed or unsupported exported model file.
    #[error("model file {path}: {why}")]
    Format {
        /// The file (or `<memory>` for in-memory buffers).
        path: String,
        /// What was wrong.
        why: String,
    },
    /// An I/O failure while reading or writing a model file.
    #[error("model file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of `seer_int`.
pub type Result<T> = std::result::Result<T, Error>;

/// Checks that `bits` is a supported bit-width (2..=8); `what` names the tensor for the error.
pub(crate) fn check_bits(what: &str, bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidBits {
            what: what.to_string(),
            bits,
        })
    }
}

/// Checks that `got == expected` for the buffer named `what`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what: what.to_string(),
            expected,
            got,
        })
    }
}

/// Builds an [`Error::InvalidArgument`].
pub(crate) fn invalid(what: &str, why: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what: what.to_string(),
        why: why.into(),
    }
}
