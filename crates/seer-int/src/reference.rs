//! Slow scalar references for the integer kernels, written from the definitions with plain
//! loops and no blocking, packing or SIMD. Tests compare every fast path against these.

use crate::layers::{ConvGeom, PoolGeom};

/// `C[m, n] = Σ_k A[m, k]·W[n, k]` with i64 accumulation (then narrowed to i32).
/// `a`: `[m, k]` u8; `w`: `[n, k]` i8 row-major.
pub fn gemm_u8i8(a: &[u8], m: usize, w: &[i8], n: usize, k: usize) -> Vec<i32> {
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: i64 = (0..k)
                .map(|t| a[i * k + t] as i64 * w[j * k + t] as i64)
                .sum();
            c[i * n + j] = i32::try_from(s).expect("reference gemm overflow");
        }
    }
    c
}

/// Direct convolution of NHWC u8 codes with OIHW i8 codes (`w`: `[c_out, c_in, kh, kw]`),
/// zero padding; returns NHWC i32 `[batch, out_h, out_w, c_out]`.
pub fn conv2d(x: &[u8], g: &ConvGeom, w: &[i8]) -> Vec<i32> {
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let bias = vec![0.0; g.c_out];
    conv2d_generic(&xf, g, &wf, &bias)
        .into_iter()
        .map(|v| v as i32)
        .collect()
}

/// Direct f64 convolution of real NHWC inputs with real OIHW weights plus a per-channel
/// bias (the fake-quantized float layer, for checking requantisation).
pub fn conv2d_f64(x: &[f64], g: &ConvGeom, w: &[f32], bias: &[f32]) -> Vec<f64> {
    let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let bf: Vec<f64> = bias.iter().map(|&v| v as f64).collect();
    conv2d_generic(x, g, &wf, &bf)
}

fn conv2d_generic(x: &[f64], g: &ConvGeom, w: &[f64], bias: &[f64]) -> Vec<f64> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0f64; g.rows() * g.c_out];
    for b in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..g.c_out {
                    let mut s = bias[co];
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((b * g.h + iy as usize) * g.w + ix as usize) * g.c_in + ci];
                                s += xv * w[((co * g.c_in + ci) * g.kh + ky) * g.kw + kx];
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * g.c_out + co] = s;
                }
            }
        }
    }
    out
}

/// Codes times their real step, in f64.
pub fn dequantize(q: &[u8], step: f32) -> Vec<f64> {
    q.iter().map(|&v| v as f64 * step as f64).collect()
}

/// Max pooling over the valid cells of each window (NHWC u8).
pub fn max_pool2d(x: &[u8], g: &PoolGeom) -> Vec<u8> {
    pool(x, g, |cells| cells.iter().copied().max().unwrap_or(0))
}

/// Average pooling, padded cells counted as code 0 in the divisor `k²`
/// (`count_include_pad = 1`), result rounded half up to the nearest code.
pub fn avg_pool2d(x: &[u8], g: &PoolGeom) -> Vec<u8> {
    let area = (g.k * g.k) as f64;
    pool(x, g, |cells| {
        let s: u32 = cells.iter().map(|&v| v as u32).sum();
        ((s as f64 / area) + 0.5).floor() as u8
    })
}

/// Global average pooling of `[batch, hw, c]`, rounded half up.
pub fn global_avg_pool(x: &[u8], batch: usize, hw: usize, c: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch * c);
    for b in 0..batch {
        for ch in 0..c {
            let s: u32 = (0..hw).map(|p| x[(b * hw + p) * c + ch] as u32).sum();
            out.push(((s as f64 / hw as f64) + 0.5).floor() as u8);
        }
    }
    out
}

fn pool(x: &[u8], g: &PoolGeom, f: impl Fn(&[u8]) -> u8) -> Vec<u8> {
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0u8; g.batch * oh * ow * g.c];
    for b in 0..g.batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in 0..g.c {
                    let mut cells = Vec::new();
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                                cells.push(
                                    x[((b * g.h + iy as usize) * g.w + ix as usize) * g.c + ch],
                                );
                            }
                        }
                    }
                    out[((b * oh + oy) * ow + ox) * g.c + ch] = f(&cells);
                }
            }
        }
    }
    out
}
