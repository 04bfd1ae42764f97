//! Packed low-bit integer inference kernels for exported (pruned + quantized) models.
//!
//! Everything here works on integer codes, following the quantization conventions of the
//! fake-quantization training ops (method.md §3): weights per-output-channel symmetric
//! signed with zero point 0, activations unsigned with a clip range and zero point 0.
//!
//! - [`pack`]: the packed formats (bit-packed weight rows with f32 scales, unsigned
//!   activation codes) and the quantizers that produce them.
//! - [`gemm`]: the `u8 × i8 → i32` matrix multiply at the heart of every layer, with an
//!   AVX-512 VNNI path, AVX2 paths and a portable path chosen at run time ([`Isa`]).
//! - [`layers`]: convolution (im2col + GEMM), linear, requantisation with fused ReLU/clip,
//!   max/avg/global-average pooling.
//! - [`reference`]: slow scalar references every fast kernel is tested against.
//!
//! The AVX-512 VNNI path is compiled and dispatched on CPUs that report `avx512vnni`, but
//! the project's development machine (AMD Zen 3) has no AVX-512, so it has not been
//! executed there; its tests run automatically on any CPU that has it.
//!
//! ```
//! use seer_int::{gemm::{WeightPanel, gemm_u8i8}, pack::PackedWeights};
//! // 2 output channels × K = 3, quantized to 4 bits; 1 activation row.
//! let w = PackedWeights::quantize(&[0.7, -0.7, 0.0, 0.1, 0.2, 0.3], 2, 3, 4).unwrap();
//! let panel = WeightPanel::from_packed(&w);
//! let mut c = vec![0i32; 2];
//! gemm_u8i8(&[1, 2, 3], 1, &panel, &mut c).unwrap();
//! assert_eq!(c, vec![7 - 14, 2 + 2 * 5 + 3 * 7]);
//! ```

pub mod error;
pub mod format;
pub mod gemm;
pub mod layers;
pub mod pack;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use error::{Error, Result};

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
