//! seer-kernels-cuda: CUDA kernels for compression-aware training and packed-integer inference,
//! each with a CPU counterpart, behind one [`Device`] switch.
//!
//! Kernels (CUDA C in `kernels/*.cu`, compiled to PTX for `sm_90` by `cargo xtask cuda-check`
//! with NVIDIA's CUDA 13.0 compiler and committed under `ptx/`, so building never needs nvcc):
//! - fake quantization with the straight-through estimator (docs/method.md §3): per-channel
//!   symmetric weights ([`fake_quant_weight`], [`fake_quant_weight_backward`]) and unsigned
//!   activations with a learnable clip range α ([`fake_quant_act`],
//!   [`fake_quant_act_backward`]), bit-identical to seer-kernels' CPU training ops;
//! - structured channel masks ([`channel_mask`], [`channel_mask_backward`]);
//! - dequantising GEMM of f32 activations with packed signed weights ([`dequant_gemm`]): fast
//!   paths for int8 and int4, any bit-width 2..=8, on the very bytes of seer-int's
//!   [`PackedWeights`] (`seer_int::pack`).
//!
//! [`Device::Cpu`] always works and calls seer-kernels' CPU implementations.
//! [`Device::Cuda`] needs the `cuda` feature (off by default; nothing else in the workspace
//! depends on this crate, so the default build never sees CUDA), a GPU and its driver: cudarc
//! loads libcuda at run time, and a missing driver or GPU is the error
//! [`Error::CudaUnavailable`], never a panic. With the feature, `cuda::CudaKernels` also
//! works on device buffers without host round trips.
//!
//! ```
//! use seer_kernels_cuda::{Device, fake_quant_act, fake_quant_weight};
//!
//! // The GPU when there is one (and the `cuda` feature is on), the CPU otherwise.
//! let dev = Device::best_available();
//! // Two output channels of three weights, 4 bits: s_c = max|w_c| / 7.
//! let w = [1.75f32, -0.875, 0.25, 0.0, 0.0, 0.0];
//! let q = fake_quant_weight(&dev, &w, 2, 4)?;
//! assert_eq!(q.scales, vec![0.25, 1.0]); // an all-zero channel gets scale 1
//! assert_eq!(q.values, vec![1.75, -1.0, 0.25, 0.0, 0.0, 0.0]); // -3.5 rounds away from zero
//! // Activations, 2 bits over [0, 3]: levels {0, 1, 2, 3}.
//! assert_eq!(fake_quant_act(&dev, &[-1.0, 1.5, 9.0], 3.0, 2)?, vec![0.0, 2.0, 3.0]);
//! # Ok::<(), seer_kernels_cuda::Error>(())
//! ```
#![warn(missing_docs)]

mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod error;
#[cfg(test)]
mod tests;

use std::fmt;

pub use error::{Error, Result};
pub use seer_int::pack::PackedWeights;

/// Where a kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// seer-kernels' CPU implementation (always available).
    Cpu,
    /// The CUDA GPU with this ordinal (needs the `cuda` feature, a driver and the GPU).
    Cuda(usize),
}

impl Device {
    /// `Ok` if kernels can run here; otherwise [`Error::CudaUnavailable`] saying why (built
    /// without the `cuda` feature, no libcuda, no such GPU, driver or module-load failure).
    /// For CUDA this initialises the device and loads the kernels once (cached).
    pub fn check_available(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => cuda::CudaKernels::shared(*o).map(|_| ()),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(o) => Err(Error::not_built(*o)),
        }
    }

    /// Whether [`Device::check_available`] succeeds.
    pub fn is_available(&self) -> bool {
        self.check_available().is_ok()
    }

    /// `Cuda(0)` when it is available, else `Cpu`.
    pub fn best_available() -> Device {
        if Device::Cuda(0).is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(o) => write!(f, "cuda:{o}"),
        }
    }
}

impl Error {
    #[cfg(not(feature = "cuda"))]
    fn not_built(ordinal: usize) -> Error {
        Error::CudaUnavailable {
            ordinal,
            reason: "seer-kernels-cuda was built without the `cuda` feature".into(),
        }
    }
}

/// Result of [`fake_quant_weight`].
#[derive(Clone, Debug, PartialEq)]
pub struct WeightFakeQuant {
    /// Fake-quantized weights, same shape as the input (`[C_out, len]` row-major f32).
    pub values: Vec<f32>,
    /// Per-output-channel scales `s_c` (`[C_out]` f32).
    pub scales: Vec<f32>,
}

/// Gradients of [`fake_quant_act_backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct ActGrad {
    /// Gradient w.r.t. the input, same length as `x`.
    pub dx: Vec<f32>,
    /// Gradient w.r.t. the clip range α, summed over all elements.
    pub dalpha: f32,
}

/// Gradients of [`channel_mask_backward`].
#[derive(Clone, Debug, PartialEq)]
pub struct MaskGrad {
    /// Gradient w.r.t. the input, same shape as `x`.
    pub dx: Vec<f32>,
    /// Gradient w.r.t. the mask (`[C]`), when requested.
    pub dmask: Option<Vec<f32>>,
}

// ----------------------------------------------------------------------------------------------
// Input checks shared by the CPU path, the host-slice CUDA path and the device-buffer API.
// ----------------------------------------------------------------------------------------------

pub(crate) const WOP: &str = "fake_quant_weight";
pub(crate) const AOP: &str = "fake_quant_act";
pub(crate) const MOP: &str = "channel_mask";
pub(crate) const GOP: &str = "dequant_gemm";

pub(crate) fn check_bits(op: &'static str, bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidBits { op, bits })
    }
}

/// Checks a `[c_out, len]` weight of `n` elements; returns `len`.
pub(crate) fn check_weight(n: usize, c_out: usize, bits: u32) -> Result<usize> {
    check_bits(WOP, bits)?;
    if c_out == 0 || n == 0 || !n.is_multiple_of(c_out) {
        return Err(Error::Shape {
            op: WOP,
            msg: format!(
                "{n} weights cannot be split into {c_out} non-empty output channels of equal length"
            ),
        });
    }
    Ok(n / c_out)
}

pub(crate) fn check_alpha(alpha: f32) -> Result<()> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParam {
            op: AOP,
            msg: format!("clip range alpha must be finite and > 0, got {alpha}"),
        })
    }
}

pub(crate) fn check_same_len(
    op: &'static str,
    what: &str,
    expected: usize,
    got: usize,
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Shape {
            op,
            msg: format!("`{what}` must hold {expected} elements, got {got}"),
        })
    }
}

fn check_finite(op: &'static str, what: &'static str, xs: &[f32]) -> Result<()> {
    match xs.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            op,
            what,
            index,
            value: xs[index],
        }),
    }
}

/// `(outer, C, inner)` of `dims` around `dim`, checked against `x.len()` and `mask.len()`.
fn split_dims(
    dims: &[usize],
    dim: usize,
    n: usize,
    mask_len: usize,
) -> Result<(usize, usize, usize)> {
    if dim >= dims.len() {
        return Err(Error::Shape {
            op: MOP,
            msg: format!("dim {dim} out of range for shape {dims:?}"),
        });
    }
    check_same_len(MOP, "x", dims.iter().product(), n)?;
    check_same_len(MOP, "mask", dims[dim], mask_len)?;
    Ok((
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    ))
}

/// Evaluates `$cpu` on the CPU; on a CUDA device, `$gpu` with that device's shared
/// [`cuda::CudaKernels`] bound to `$k`, or Err(CudaUnavailable) when the crate was built
/// without the `cuda` feature.
macro_rules! on_device {
    ($dev:expr, $cpu:expr, |$k:ident| $gpu:expr) => {
        match $dev {
            Device::Cpu => $cpu,
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => {
                let $k = cuda::CudaKernels::shared(*o)?;
                $gpu
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(o) => Err(Error::not_built(*o)),
        }
    };
}

// ----------------------------------------------------------------------------------------------
// The operations, on host slices, for any device.
// ----------------------------------------------------------------------------------------------

/// Fake-quantizes weights per output channel, symmetric, signed (docs/method.md §3):
/// `s_c = max|w_c| / (2^(b−1) − 1)` (1 for an all-zero channel, which stays zero),
/// `q = clamp(round(w / s_c), −qmax, qmax) · s_c`, rounding half away from zero. CUDA and CPU
/// results are bit-identical.
///
/// `w`: `[c_out, len]` row-major f32 (a conv weight `[C_out, C_in/g, K_h, K_w]` flattened per
/// output channel). Returns the fake-quantized weights (same shape) and the scales `[c_out]`.
/// Errors: [`Error::InvalidBits`] if `bits ∉ 2..=8`; [`Error::Shape`] if `w` is empty or
/// `w.len()` is not a multiple of `c_out`; [`Error::NonFinite`] for NaN/Inf in `w`;
/// [`Error::CudaUnavailable`] / [`Error::Driver`] on a CUDA device that cannot run.
pub fn fake_quant_weight(
    dev: &Device,
    w: &[f32],
    c_out: usize,
    bits: u32,
) -> Result<WeightFakeQuant> {
    check_weight(w.len(), c_out, bits)?;
    check_finite(WOP, "w", w)?;
    on_device!(dev, cpu::fake_quant_weight(w, c_out, bits), |k| k
        .host_fake_quant_weight(w, c_out, bits))
}

/// Backward of [`fake_quant_weight`] (straight-through estimator, docs/method.md §3): `dw = dy`
/// wherever the clamp is inactive. With max-abs scales every weight lies inside its channel's
/// range, so `dw = dy` exactly, as seer-kernels' CPU op returns.
///
/// `w`, `dy`: `[c_out, len]` row-major f32. Returns `dw`, same shape. Errors as
/// [`fake_quant_weight`], plus [`Error::Shape`] if `dy.len() != w.len()`.
pub fn fake_quant_weight_backward(
    dev: &Device,
    w: &[f32],
    c_out: usize,
    bits: u32,
    dy: &[f32],
) -> Result<Vec<f32>> {
    check_weight(w.len(), c_out, bits)?;
    check_same_len(WOP, "dy", w.len(), dy.len())?;
    check_finite(WOP, "w", w)?;
    on_device!(
        dev,
        cpu::fake_quant_weight_backward(w, c_out, bits, dy),
        |k| k.host_fake_quant_weight_backward(w, c_out, bits, dy)
    )
}

/// Fake-quantizes activations, unsigned, to `bits` bits over the clip range `[0, α]`
/// (docs/method.md §3): `y = s · round(clamp(x, 0, α) / s)`, `s = α / (2^b − 1)`, rounding half away
/// from zero. CUDA and CPU results are bit-identical.
///
/// `x`: any shape, flattened, f32; `alpha`: the clip range (same units as `x`), finite and > 0.
/// Returns `y`, same length. Errors: [`Error::InvalidBits`], [`Error::InvalidParam`] for a bad
/// α, [`Error::NonFinite`] for NaN/Inf in `x`, [`Error::CudaUnavailable`] / [`Error::Driver`].
pub fn fake_quant_act(dev: &Device, x: &[f32], alpha: f32, bits: u32) -> Result<Vec<f32>> {
    check_bits(AOP, bits)?;
    check_alpha(alpha)?;
    check_finite(AOP, "x", x)?;
    on_device!(dev, cpu::fake_quant_act(x, alpha, bits), |k| k
        .host_fake_quant_act(x, alpha, bits))
}

/// Backward of [`fake_quant_act`] (PACT/LSQ style, docs/method.md §3): `dx = dy` for `0 ≤ x ≤ α`,
/// `0` outside; `dα = Σ dy · ∂y/∂α` with `∂y/∂α = (round(x/s) − x/s) / (2^b − 1)` inside, `1`
/// for `x > α` and `0` for `x < 0`, summed in f64. `dx` is bit-identical on CUDA and CPU; `dα`
/// differs only by the order of the f64 sum (≲ 1 ulp of f32).
///
/// `x`, `dy`: same length, f32. Errors as [`fake_quant_act`], plus [`Error::Shape`] if
/// `dy.len() != x.len()`.
pub fn fake_quant_act_backward(
    dev: &Device,
    x: &[f32],
    alpha: f32,
    bits: u32,
    dy: &[f32],
) -> Result<ActGrad> {
    check_bits(AOP, bits)?;
    check_alpha(alpha)?;
    check_same_len(AOP, "dy", x.len(), dy.len())?;
    check_finite(AOP, "x", x)?;
    on_device!(dev, cpu::fake_quant_act_backward(x, alpha, bits, dy), |k| k
        .host_fake_quant_act_backward(x, alpha, bits, dy))
}

/// Structured channel mask (docs/method.md §3): `y[.., c, ..] = x[.., c, ..] · mask[c]` along
/// dimension `dim` of `dims` (1 for NCHW activations, 0 for a weight's output channels); a mask
/// value of 0 writes 0 and 1 copies, exactly as seer-kernels' CPU op.
///
/// `x`: f32 of shape `dims` (row-major); `mask`: `[dims[dim]]` f32, usually 0/1. Returns `y`,
/// same shape. Errors: [`Error::Shape`] if `dim` is out of range or a length does not match
/// the shape; [`Error::CudaUnavailable`] / [`Error::Driver`].
pub fn channel_mask(
    dev: &Device,
    x: &[f32],
    dims: &[usize],
    dim: usize,
    mask: &[f32],
) -> Result<Vec<f32>> {
    let (outer, c, inner) = split_dims(dims, dim, x.len(), mask.len())?;
    #[cfg(not(feature = "cuda"))]
    let _ = (outer, c, inner);
    on_device!(dev, cpu::channel_mask(x, (dims, dim), mask), |k| k
        .host_channel_mask(x, mask, outer, c, inner))
}

/// Backward of [`channel_mask`]: `dx = dy · mask[c]` (exact) and, if `want_dmask`,
/// `dmask[c] = Σ dy · x` over every element of channel `c` (f32 products summed in f64).
///
/// `x`, `dy`: f32 of shape `dims`; `mask`: `[dims[dim]]`. Errors as [`channel_mask`], plus
/// [`Error::Shape`] if `dy.len() != x.len()`.
pub fn channel_mask_backward(
    dev: &Device,
    x: &[f32],
    dims: &[usize],
    dim: usize,
    mask: &[f32],
    dy: &[f32],
    want_dmask: bool,
) -> Result<MaskGrad> {
    let (outer, c, inner) = split_dims(dims, dim, x.len(), mask.len())?;
    #[cfg(not(feature = "cuda"))]
    let _ = (outer, c, inner);
    check_same_len(MOP, "dy", x.len(), dy.len())?;
    on_device!(
        dev,
        cpu::channel_mask_backward(x, (dims, dim), mask, dy, want_dmask),
        |k| k.host_channel_mask_backward(x, mask, dy, outer, c, inner, want_dmask)
    )
}

/// Dequantising GEMM: `y = x · Wᵀ` with `y[r, c] = scale_c · Σ_j x[r, j] · q[c, j]` for f32
/// activations and packed signed weights (docs/method.md §3, §7). The GPU reads the packed bytes of
/// `w` as they are (int8 and int4 fast paths, any bit-width 2..=8); the CPU dequantizes them and
/// runs candle's f32 matmul. Results agree to f32 rounding (different summation order).
///
/// `x`: `[m, K]` row-major f32 with `K = w.cols()`; `w`: `[N, K]` packed codes with `N =
/// w.rows()` per-output-channel scales. Returns `y`: `[m, N]` row-major f32. Errors:
/// [`Error::Shape`] if `x.len() != m·K` (or a dimension exceeds the kernel's i32 range);
/// [`Error::NonFinite`] for NaN/Inf in `x`; [`Error::CudaUnavailable`] / [`Error::Driver`].
pub fn dequant_gemm(dev: &Device, x: &[f32], m: usize, w: &PackedWeights) -> Result<Vec<f32>> {
    check_same_len(GOP, "x", m * w.cols(), x.len())?;
    check_finite(GOP, "x", x)?;
    on_device!(dev, cpu::dequant_gemm(x, m, w), |k| k
        .host_dequant_gemm(x, m, w))
}
