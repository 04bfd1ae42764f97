//! Test helpers: seeded tensors and error measures (compiled only for tests).

use candle_core::{Device, Tensor, Var};

/// Deterministic pseudo-random f32 values in `[-1, 1)` from `seed` (SplitMix64).
pub(crate) fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub(crate) fn tensor(seed: u64, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(seed, n), shape, &Device::Cpu).unwrap()
}

pub(crate) fn var(seed: u64, shape: &[usize]) -> Var {
    Var::from_tensor(&tensor(seed, shape)).unwrap()
}

pub(crate) fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `max |a − b| / max(max |b|, floor)`; infinite where one side is NaN or infinite and the
/// other is not the same value (`f32::max` would skip a NaN difference, so a kernel that left
/// NaN, or an unwritten poisoned element, in its output would pass).
pub(crate) fn rel_err(a: &Tensor, b: &Tensor, floor: f32) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (vec(a), vec(b));
    let scale = b.iter().fold(floor, |m, v| m.max(v.abs()));
    let diff = |x: f32, y: f32| {
        if x.is_finite() && y.is_finite() {
            (x - y).abs()
        } else if x == y || (x.is_nan() && y.is_nan()) {
            0.0
        } else {
            f32::INFINITY
        }
    };
    a.iter().zip(&b).fold(0f32, |m, (&x, &y)| m.max(diff(x, y))) / scale
}
