//! Tests written once over [`Device`] (candle's `test_device!` pattern): every test body is a
//! function of the device, and [`test_device!`] expands it into one `#[test]` per device, named
//! after it: `<name>_cpu` always, `<name>_cuda` (on `Cuda(0)`) only when the crate is built with
//! the `cuda` feature. A CUDA test fails, naming the reason, when the GPU cannot be used: it
//! never skips, so a GPU run lists every CUDA test by name and a green run means each one ran.
//! Every kernel is compared with a slow reference written here from plain f32/f64 loops.

use super::*;

/// `test_device!(body, body_cpu, body_cuda)`: `#[test] fn body_cpu` runs `body(&Device::Cpu)`;
/// with the `cuda` feature, `#[test] fn body_cuda` checks that GPU 0 is usable (failing with
/// the [`Error::CudaUnavailable`] reason otherwise) and runs `body(&Device::Cuda(0))`.
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&Device::Cpu);
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            let dev = cuda_device();
            $body(&dev);
        }
    };
}

/// GPU 0, or a panic saying why it cannot run kernels: under the `cuda` feature a missing
/// GPU or driver fails the CUDA tests instead of skipping them.
#[cfg(feature = "cuda")]
fn cuda_device() -> Device {
    let dev = Device::Cuda(0);
    if let Err(e) = dev.check_available() {
        panic!("{dev}: the `cuda` feature is on but the GPU cannot run kernels: {e}");
    }
    dev
}

/// Deterministic values in [-1, 1) (SplitMix64).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
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

// --- slow references (docs/method.md §3) ---------------------------------------------------------

fn ref_weight(w: &[f32], c_out: usize, bits: u32) -> (Vec<f32>, Vec<f32>) {
    let len = w.len() / c_out;
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    let mut out = Vec::new();
    let mut scales = Vec::new();
    for c in 0..c_out {
        let row = &w[c * len..(c + 1) * len];
        let m = row.iter().map(|v| v.abs()).fold(0f32, f32::max);
        let s = if m > 0.0 { m / qmax } else { 1.0 };
        scales.push(s);
        out.extend(row.iter().map(|&v| (v / s).round().clamp(-qmax, qmax) * s));
    }
    (out, scales)
}

fn ref_act(x: &[f32], alpha: f32, bits: u32) -> Vec<f32> {
    let s = alpha / ((1u32 << bits) - 1) as f32;
    x.iter()
        .map(|&v| (v.clamp(0.0, alpha) / s).round() * s)
        .collect()
}

fn ref_act_grad(x: &[f32], alpha: f32, bits: u32, dy: &[f32]) -> (Vec<f32>, f64) {
    let n = ((1u32 << bits) - 1) as f32;
    let s = alpha / n;
    let mut da = 0f64;
    let dx = x
        .iter()
        .zip(dy)
        .map(|(&v, &g)| {
            if v > alpha {
                da += g as f64;
                0.0
            } else if v >= 0.0 {
                let t = v / s;
                da += (g * ((t.round() - t) / n)) as f64;
                g
            } else {
                0.0
            }
        })
        .collect();
    (dx, da)
}

fn ref_mask(x: &[f32], c: usize, inner: usize, mask: &[f32]) -> Vec<f32> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let m = mask[(i / inner) % c];
            if m == 0.0 { 0.0 } else { v * m }
        })
        .collect()
}

fn ref_mask_grad(x: &[f32], c: usize, inner: usize, dy: &[f32]) -> Vec<f64> {
    let mut d = vec![0f64; c];
    for (i, (&v, &g)) in x.iter().zip(dy).enumerate() {
        d[(i / inner) % c] += (g * v) as f64;
    }
    d
}

/// `y[r, c] = scale_c · Σ_j x[r, j] · q[c, j]` in f64, plus the magnitude `Σ |x·q·s|` per entry.
fn ref_gemm(x: &[f32], m: usize, w: &PackedWeights) -> (Vec<f64>, Vec<f64>) {
    let (n, k) = (w.rows(), w.cols());
    let q = w.unpack();
    let mut y = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for r in 0..m {
        for c in 0..n {
            let s = w.scales()[c] as f64;
            for j in 0..k {
                let p = x[r * k + j] as f64 * q[c * k + j] as f64 * s;
                y[r * n + c] += p;
                mag[r * n + c] += p.abs();
            }
        }
    }
    (y, mag)
}

/// Weights with edge cases: an all-zero channel, a constant channel, exact grid midpoints.
fn edge_weights(seed: u64, c_out: usize, len: usize, bits: u32) -> Vec<f32> {
    let mut w = values(seed, c_out * len);
    let qmax = ((1u32 << (bits - 1)) - 1) as f32;
    for c in 0..c_out {
        let row = &mut w[c * len..(c + 1) * len];
        match c % 4 {
            1 => row.fill(0.0),
            2 => row.fill(-0.37),
            3 => {
                // scale 1/qmax: (j + 0.5)/qmax are ties
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if j == 0 {
                        1.0
                    } else {
                        ((j % (qmax as usize)) as f32 + 0.5) / qmax
                    };
                }
            }
            _ => {}
        }
    }
    w
}

// --- tests ------------------------------------------------------------------------------------

fn weight_fake_quant_matches_reference(dev: &Device) {
    for bits in 2..=8 {
        for (i, &(c_out, len)) in [(1, 1), (4, 7), (5, 300), (2, 1000)].iter().enumerate() {
            let w = edge_weights(bits as u64 * 10 + i as u64, c_out, len, bits);
            let got = fake_quant_weight(dev, &w, c_out, bits).unwrap();
            let (want, scales) = ref_weight(&w, c_out, bits);
            assert_eq!(got.scales, scales, "{dev} bits {bits} [{c_out}, {len}]");
            assert_eq!(got.values, want, "{dev} bits {bits} [{c_out}, {len}]");
            let dy = values(99 + i as u64, w.len());
            // STE: every weight is inside its channel's range, so dw = dy exactly.
            let dw = fake_quant_weight_backward(dev, &w, c_out, bits, &dy).unwrap();
            assert_eq!(dw, dy, "{dev} bits {bits}");
        }
    }
}
test_device!(
    weight_fake_quant_matches_reference,
    weight_fake_quant_matches_reference_cpu,
    weight_fake_quant_matches_reference_cuda
);

fn act_fake_quant_matches_reference(dev: &Device) {
    for bits in 2..=8 {
        for (i, &(n, alpha)) in [(1usize, 1.0f32), (17, 0.05), (5000, 2.7)]
            .iter()
            .enumerate()
        {
            let s = alpha / ((1u32 << bits) - 1) as f32;
            let mut x: Vec<f32> = values(bits as u64 * 7 + i as u64, n)
                .into_iter()
                .map(|v| v * 1.5 * alpha + 0.25 * alpha)
                .collect();
            for (j, v) in x.iter_mut().enumerate() {
                match j % 9 {
                    0 => *v = 0.0,
                    1 => *v = alpha,
                    2 => *v = ((j % 5) as f32 + 0.5) * s, // tie
                    3 => *v = -0.0,
                    _ => {}
                }
            }
            let y = fake_quant_act(dev, &x, alpha, bits).unwrap();
            assert_eq!(y, ref_act(&x, alpha, bits), "{dev} bits {bits} n {n}");
            let dy = values(500 + i as u64, n);
            let g = fake_quant_act_backward(dev, &x, alpha, bits, &dy).unwrap();
            let (dx, da) = ref_act_grad(&x, alpha, bits, &dy);
            assert_eq!(g.dx, dx, "{dev} bits {bits} n {n}");
            let scale: f64 = dy.iter().map(|v| v.abs() as f64).sum::<f64>().max(1e-3);
            assert!(
                (g.dalpha as f64 - da).abs() <= 1e-6 * scale,
                "{dev} bits {bits} n {n}: dalpha {} vs {da}",
                g.dalpha
            );
        }
    }
}
test_device!(
    act_fake_quant_matches_reference,
    act_fake_quant_matches_reference_cpu,
    act_fake_quant_matches_reference_cuda
);

fn channel_mask_matches_reference(dev: &Device) {
    let cases: [(&[usize], usize); 4] = [
        (&[2, 3, 4, 5], 1), // NCHW activations
        (&[6, 10], 0),      // a weight's output channels
        (&[4, 7], 1),       // inner = 1
        (&[1, 300, 2], 1),
    ];
    for (i, &(dims, dim)) in cases.iter().enumerate() {
        let n: usize = dims.iter().product();
        let (c, inner) = (dims[dim], dims[dim + 1..].iter().product::<usize>());
        let x = values(i as u64, n);
        let mask: Vec<f32> = (0..c).map(|j| [1.0, 0.0, 0.5, 1.0][j % 4]).collect();
        let y = channel_mask(dev, &x, dims, dim, &mask).unwrap();
        assert_eq!(y, ref_mask(&x, c, inner, &mask), "{dev} {dims:?} dim {dim}");
        let dy = values(40 + i as u64, n);
        let g = channel_mask_backward(dev, &x, dims, dim, &mask, &dy, true).unwrap();
        assert_eq!(g.dx, ref_mask(&dy, c, inner, &mask), "{dev} {dims:?}");
        let dm = g.dmask.unwrap();
        for (a, b) in dm.iter().zip(ref_mask_grad(&x, c, inner, &dy)) {
            assert!(
                (*a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{dev}: {a} vs {b}"
            );
        }
        let g = channel_mask_backward(dev, &x, dims, dim, &mask, &dy, false).unwrap();
        assert!(g.dmask.is_none());
    }
}
test_device!(
    channel_mask_matches_reference,
    channel_mask_matches_reference_cpu,
    channel_mask_matches_reference_cuda
);

fn dequant_gemm_matches_reference(dev: &Device) {
    for bits in 2..=8 {
        for (i, &(m, n, k)) in [(1, 1, 1), (3, 5, 7), (65, 70, 33), (2, 3, 129)]
            .iter()
            .enumerate()
        {
            let mut wf = values(bits as u64 * 31 + i as u64, n * k);
            if n > 2 {
                wf[k..2 * k].fill(0.0); // an all-zero channel (scale 1, codes 0)
            }
            let w = PackedWeights::quantize(&wf, n, k, bits).unwrap();
            let x = values(77 + i as u64, m * k);
            let y = dequant_gemm(dev, &x, m, &w).unwrap();
            let (want, mag) = ref_gemm(&x, m, &w);
            assert_eq!(y.len(), m * n);
            for (j, ((&a, &b), &g)) in y.iter().zip(&want).zip(&mag).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-5 * (g + 1e-6),
                    "{dev} bits {bits} ({m},{n},{k}) at {j}: {a} vs {b}"
                );
            }
        }
    }
}
test_device!(
    dequant_gemm_matches_reference,
    dequant_gemm_matches_reference_cpu,
    dequant_gemm_matches_reference_cuda
);

fn dequant_gemm_reads_the_packed_bytes_as_documented(dev: &Device) {
    // Extreme codes ±qmax and odd K (a row's last byte half used at 4 bits).
    for bits in [4u32, 8, 3] {
        let q = ((1i32 << (bits - 1)) - 1) as i8;
        let codes: Vec<i8> = vec![q, -q, 1, 0, -1, q, -q, 2, -2];
        let w = PackedWeights::from_codes(&codes, 3, 3, bits, vec![1.0, 0.5, 2.0]).unwrap();
        let y = dequant_gemm(dev, &[1.0, 2.0, 3.0], 1, &w).unwrap();
        let (q, qf) = (q as f32, q as f32); // row 0 uses `q`, rows 1–2 `qf`
        let want = vec![
            q - 2.0 * qf + 3.0,
            0.5 * (-2.0 + 3.0 * qf),
            2.0 * (-q + 2.0 * 2.0 - 3.0 * 2.0),
        ];
        assert_eq!(y, want, "{dev} bits {bits}");
    }
}
test_device!(
    dequant_gemm_reads_the_packed_bytes_as_documented,
    dequant_gemm_reads_the_packed_bytes_as_documented_cpu,
    dequant_gemm_reads_the_packed_bytes_as_documented_cuda
);

fn bad_inputs_are_clear_errors_on_every_device(dev: &Device) {
    let w = [1.0f32, 2.0, 3.0, 4.0];
    assert!(matches!(
        fake_quant_weight(dev, &w, 2, 9),
        Err(Error::InvalidBits { bits: 9, .. })
    ));
    assert!(matches!(
        fake_quant_weight(dev, &w, 3, 4),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        fake_quant_weight(dev, &[1.0, f32::NAN], 1, 4),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        fake_quant_weight_backward(dev, &w, 2, 4, &[1.0]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        fake_quant_act(dev, &w, 0.0, 4),
        Err(Error::InvalidParam { .. })
    ));
    assert!(matches!(
        fake_quant_act(dev, &w, f32::NAN, 4),
        Err(Error::InvalidParam { .. })
    ));
    assert!(matches!(
        fake_quant_act(dev, &[0.5, f32::INFINITY], 1.0, 4),
        Err(Error::NonFinite {
            what: "x",
            index: 1,
            ..
        })
    ));
    assert!(matches!(
        fake_quant_act(dev, &w, 1.0, 1),
        Err(Error::InvalidBits { bits: 1, .. })
    ));
    assert!(matches!(
        channel_mask(dev, &w, &[2, 2], 2, &[1.0, 1.0]),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        channel_mask(dev, &w, &[2, 2], 1, &[1.0]),
        Err(Error::Shape { .. })
    ));
    let p = PackedWeights::quantize(&w, 2, 2, 4).unwrap();
    assert!(matches!(
        dequant_gemm(dev, &w[..3], 2, &p),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        dequant_gemm(dev, &[1.0, f32::NAN], 1, &p),
        Err(Error::NonFinite { index: 1, .. })
    ));
}
test_device!(
    bad_inputs_are_clear_errors_on_every_device,
    bad_inputs_are_clear_errors_on_every_device_cpu,
    bad_inputs_are_clear_errors_on_every_device_cuda
);

fn empty_activations_are_fine(dev: &Device) {
    assert!(fake_quant_act(dev, &[], 1.0, 4).unwrap().is_empty());
    let g = fake_quant_act_backward(dev, &[], 1.0, 4, &[]).unwrap();
    assert!(g.dx.is_empty() && g.dalpha == 0.0);
}
test_device!(
    empty_activations_are_fine,
    empty_activations_are_fine_cpu,
    empty_activations_are_fine_cuda
);

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_is_an_error_not_a_panic() {
    let dev = Device::Cuda(0);
    assert!(!dev.is_available());
    assert_eq!(Device::best_available(), Device::Cpu);
    let e = fake_quant_act(&dev, &[1.0], 1.0, 4).unwrap_err();
    assert!(
        matches!(e, Error::CudaUnavailable { ordinal: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("`cuda` feature"), "{e}");
}

#[cfg(feature = "cuda")]
#[test]
fn probing_a_gpu_that_is_not_there_is_an_error_not_a_panic() {
    // No machine has GPU 4096; without a driver every ordinal reports the same error.
    assert!(matches!(
        Device::Cuda(4096).check_available(),
        Err(Error::CudaUnavailable { ordinal: 4096, .. })
    ));
}

#[cfg(feature = "cuda")]
#[test]
fn large_inputs_agree_bit_for_bit_with_the_cpu_cuda() {
    let (cpu, gpu) = (Device::Cpu, cuda_device());
    let w = values(1, 64 * 3 * 3 * 32);
    assert_eq!(
        fake_quant_weight(&cpu, &w, 64, 4).unwrap(),
        fake_quant_weight(&gpu, &w, 64, 4).unwrap()
    );
    let x: Vec<f32> = values(2, 1 << 18).iter().map(|v| v * 3.0).collect();
    let dy = values(3, 1 << 18);
    assert_eq!(
        fake_quant_act(&cpu, &x, 2.0, 3).unwrap(),
        fake_quant_act(&gpu, &x, 2.0, 3).unwrap()
    );
    let (a, b) = (
        fake_quant_act_backward(&cpu, &x, 2.0, 3, &dy).unwrap(),
        fake_quant_act_backward(&gpu, &x, 2.0, 3, &dy).unwrap(),
    );
    assert_eq!(a.dx, b.dx);
    assert!((a.dalpha - b.dalpha).abs() <= 1e-5 * a.dalpha.abs().max(1.0));
}

#[cfg(feature = "cuda")]
#[test]
fn nan_deep_inside_a_device_buffer_is_found_cuda() {
    cuda_device();
    let k = cuda::CudaKernels::shared(0).unwrap();
    let mut x: Vec<f32> = values(2, 1 << 18).iter().map(|v| v * 3.0).collect();
    x[12_345] = f32::NAN;
    let xd = k.upload(&x).unwrap();
    assert!(matches!(
        k.fake_quant_act(&xd, 1.0, 4),
        Err(Error::NonFinite { index: 12_345, .. })
    ));
}
