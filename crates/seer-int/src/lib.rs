//! seer-int: the integer inference engine of SeerNet-rs. It runs exported (physically
//! pruned, mixed-precision quantized) models entirely on integer kernels.
//!
//! Everything here works on integer codes, following the quantization conventions of the
//! fake-quantization training ops (docs/method.md §3): weights per-output-channel symmetric
//! signed with zero point 0, activations unsigned with a clip range and zero point 0.
//!
//! - [`pack`]: the packed formats (bit-packed weight rows with f32 scales, unsigned
//!   activation codes) and the quantizers that produce them.
//! - [`gemm`]: the `u8 × i8 → i32` matrix multiply at the heart of every layer, with an
//!   AVX-512 VNNI path, AVX2 paths and a portable path chosen at run time ([`Isa`]).
//! - [`layers`]: convolution (im2col + GEMM), linear, requantisation with fused ReLU/clip,
//!   max/avg/global-average pooling — the unfused layer functions.
//! - [`fused`]: the layers the interpreter runs: GEMM with A rows built per row block
//!   (implicit GEMM on zero-padded input rows for the VNNI and AVX2 kernels, im2col only of
//!   borders for the others, 1×1 convolutions and
//!   linear layers read in place) and requantisation (scale, bias, residual, ReLU/clip, next
//!   layer's bits) applied on the tile write-back; bit-identical to [`layers`].
//! - [`format`](mod@format): the exported-model file (`model-*.safetensors`, `seernet-int-model`): its
//!   graph of nodes, reading, writing and validation ([`IntModel`]).
//! - [`interp`]: the interpreter that runs an [`IntModel`] node by node
//!   ([`IntModel::forward`]; a batch of more than 16 images as micro-batches of 16, each through
//!   the whole graph as one rayon task), with per-node `tracing` spans (debug level).
//! - [`reference`](mod@reference): slow scalar references every fast kernel is tested against.
//!
//! Errors: one enum, [`Error`]. Diagnostics go through `tracing`; this crate never installs
//! a subscriber and never prints.
//!
//! **Invariant: no candle, no gemm.** An inference-only user compiles neither: the engine
//! has its own integer GEMM and its few f32 steps are plain loops (`cargo tree -e normal -p
//! seer-int` lists neither). Only the `int` benchmark, which measures the engine against the
//! f32 paths of the training crates, uses them (as dev-dependencies).
//!
//! The AVX-512 VNNI path is compiled and dispatched on CPUs that report `avx512vnni`; its
//! tests run automatically on any CPU that has it (they did on the development machine of
//! 2026-12-02, an AMD EPYC with AVX-512 VNNI; see docs/benchmarks.md). Every test also runs
//! the AVX2 and portable paths on such a CPU.
//!
//! A tiny model built in memory (conv → global average pooling → linear), written to bytes,
//! read back and run:
//!
//! ```
//! use std::collections::BTreeMap;
//! use seer_int::format::{FORMAT, InputSpec, LayerWeights, ModelMeta, Node, NodeOp, QuantOut, VERSION};
//! use seer_int::{IntModel, Isa, pack::PackedWeights};
//!
//! let node = |name: &str, input: &str, op, out| Node { name: name.into(), input: input.into(), op, out };
//! let q = |alpha, bits| Some(QuantOut { alpha, bits });
//! let nodes = vec![
//!     // 1 → 2 channels, 3×3, 4-bit weights; output requantised to 4-bit codes over [0, 2].
//!     node("conv", "input", NodeOp::Conv { c_in: 1, c_out: 2, kernel: 3, stride: 1, pad: 1, pad_end: None,
//!         w_bits: 4, groups: 1, residual: None, relu: false, relu6: false }, q(2.0, 4)),
//!     node("gap", "conv", NodeOp::GlobalAvgPool, q(1.0, 8)),
//!     // The final node yields f32 logits (out = null).
//!     node("fc", "gap", NodeOp::Linear { in_features: 2, out_features: 3, w_bits: 8 }, None),
//! ];
//! let layer = |w: &[f32], rows, cols, bits| -> seer_int::Result<LayerWeights> {
//!     Ok(LayerWeights { packed: PackedWeights::quantize(w, rows, cols, bits)?, mul: None, bias: None })
//! };
//! let mut weights = BTreeMap::new();
//! let conv_w: Vec<f32> = (0..18).map(|i| (i as f32 - 8.0) / 10.0).collect();
//! weights.insert("conv".to_string(), layer(&conv_w, 2, 9, 4)?);
//! weights.insert("fc".to_string(), layer(&[1.0, 0.0, 0.0, 1.0, 0.5, -0.5], 3, 2, 8)?);
//! let meta = ModelMeta {
//!     format: FORMAT.into(), version: VERSION, arch: "tiny".into(),
//!     input: InputSpec { channels: 1, height: 4, width: 4, mean: vec![0.5], std: 0.25,
//!         std_per_channel: vec![] },
//!     num_classes: 3, policy: serde_json::Value::Null, provenance: serde_json::Value::Null,
//!     nodes,
//! };
//! let model = IntModel::new(meta, weights)?; // validated
//! let model = IntModel::from_bytes(&model.to_bytes()?, "<memory>")?;
//! let pixels: Vec<u8> = (0..2 * 16).map(|i| (i * 8) as u8).collect(); // 2 images, NHWC
//! let logits = model.forward(&pixels, 2, Isa::detect())?;
//! assert_eq!(logits.len(), 2 * 3);
//! // Every instruction-set path gives the same integers, hence the same logits.
//! for isa in Isa::available() {
//!     assert_eq!(model.forward(&pixels, 2, isa)?, logits);
//! }
//! # Ok::<(), seer_int::Error>(())
//! ```
//!
//! The GEMM on its own:
//!
//! ```
//! use seer_int::{gemm::{WeightPanel, gemm_u8i8}, pack::PackedWeights};
//! // 2 output channels × K = 3, quantized to 4 bits; 1 activation row.
//! let w = PackedWeights::quantize(&[0.7, -0.7, 0.0, 0.1, 0.2, 0.3], 2, 3, 4)?;
//! let panel = WeightPanel::from_packed(&w);
//! let mut c = vec![0i32; 2];
//! gemm_u8i8(&[1, 2, 3], 1, &panel, &mut c)?;
//! assert_eq!(c, vec![7 - 14, 2 + 2 * 5 + 3 * 7]);
//! # Ok::<(), seer_int::Error>(())
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod format;
pub mod fused;
pub mod gemm;
pub mod interp;
pub mod layers;
pub mod pack;
pub mod reference;
#[cfg(test)]
mod testutil;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use error::{Error, Result};
pub use format::IntModel;

use std::sync::OnceLock;

/// An instruction-set path of the integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 with VNNI (`vpdpbusd`: 64 u8×i8 products into 16 i32 per instruction).
    Avx512Vnni,
    /// AVX2 (`vpmaddubsw`/`vpmaddwd`), with exactness guaranteed by range analysis.
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Isa {
    /// Every path, best first.
    pub const ALL: [Isa; 3] = [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable];

    /// The best path this CPU can run (detected once, then cached).
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .find(|i| i.is_available())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Whether this CPU can run the path (run-time CPU feature detection).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The paths this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// Short name (`avx512vnni`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}
