//! seer-kernels: quantizers, structured channel pruning and fast CPU kernels for SeerNet-rs.
//!
//! Candle custom ops **with backward** for compression-aware training (convolution, fake
//! quantization with the straight-through estimator, channel masks). The packed low-bit
//! integer kernels that run exported models live in their own crate, `seer-int` (no candle).
#![warn(missing_docs)]
//!
//! Training ops (all f32, CPU, NCHW; every one has backward and a slow twin in
//! [`reference`](mod@reference) built from plain candle ops that the tests compare against):
//! [`conv2d`], [`linear`] (batch-invariant forward), [`fake_quant_weight`], [`fake_quant_act`], [`channel_mask`],
//! [`batch_norm_train`] / [`batch_norm_relu_train`], [`relu`], [`add_relu`], [`shortcut_a`],
//! [`gather_channels`],
//! and [`conv2d_fq_input`] (an input's [`fake_quant_act`] and the [`conv2d`] that reads it in
//! one op, tested against the two); plus [`filter_l2_scores`] for choosing channels, and
//! [`conv2d_backward`], the convolution's gradients for a given output gradient outside the
//! autograd (for training loops that drive their own gradients, and for timing the kernels).
//! Convolutions run direct (stride-1 "same" kernels: on the padded image's grid, or gathered
//! with output positions as rows and output channels as vectors, whichever fills the tiles
//! better — the same bits either way) or as im2col + GEMM on register-tiled kernels
//! (AVX-512 chosen at run time where the CPU has it, AVX2+FMA otherwise, a portable loop
//! elsewhere), parallel over images. For inference one image at a time, [`PackedConv2d`]
//! prepares a weight once and [`PackedLinear`] a fully connected layer's.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use seer_kernels::{Conv2dParams, conv2d, fake_quant_act, fake_quant_weight};
//!
//! let dev = Device::Cpu;
//! let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev)?;
//! let w = Var::randn(0f32, 0.1, (4, 3, 3, 3), &dev)?;
//! let alpha = Var::new(&[2f32], &dev)?;
//! let wq = fake_quant_weight(w.as_tensor(), 4)?; // per-channel symmetric, 4 bits
//! let y = conv2d(&x, &wq, &Conv2dParams::new(1, 1))?; // [2, 4, 8, 8]
//! let a = fake_quant_act(&y, alpha.as_tensor(), 4)?; // unsigned, clip range [0, α]
//! let grads = a.sum_all()?.backward()?;
//! assert_eq!(grads.get(w.as_tensor()).unwrap().dims(), &[4, 3, 3, 3]);
//! assert_eq!(grads.get(alpha.as_tensor()).unwrap().dims(), &[1]);
//! # Ok::<(), seer_kernels::Error>(())
//! ```

mod conv;
mod error;
mod linear;
mod mask;
mod matmul;
mod norm;
mod pool;
mod quant;
pub mod reference;
mod residual;
mod simd;
mod view;

pub use conv::{
    __profile, Conv2dParams, PackedConv2d, conv2d, conv2d_backward, conv2d_fq_input, conv2d_image,
    conv2d_output_hw,
};
pub use error::{Error, Result};
pub use linear::{PackedLinear, linear};
pub use mask::{channel_mask, filter_l2_scores, group_scores, top_k_mask};
pub use norm::{BatchNormOutput, batch_norm_eval, batch_norm_relu_train, batch_norm_train, relu};
pub use pool::{avg_pool2d, max_pool2d};
pub use quant::{
    LSQ_MIN_STEP, act_levels, fake_quant_act, fake_quant_weight, fake_quant_weight_lsq,
    round_half_away, weight_mse_steps, weight_qmax, weight_scales,
};
pub use residual::{add_relu, gather_channels, shortcut_a};
pub use simd::{map_into, map2_into};
#[cfg(test)]
mod testutil;
