//! Integer layers on NHWC `u8` activation codes: convolution (im2col + GEMM), linear,
//! requantisation with fused ReLU/clip (and residual add), max/avg/global-average pooling.
//!
//! Real values follow docs/method.md §3: an activation code `q` of a tensor with clip range `α`
//! at `b` bits means `q·α/(2^b−1)`; a weight code of output channel `c` means `q·s_c`. A
//! layer's i32 accumulator `acc[c]` therefore means `acc·s_in·s_c` (`s_in` the input's step),
//! to which the folded BatchNorm scale and bias apply: [`Requant`] carries the per-channel
//! real value of one accumulator unit (`acc_scale[c] = s_in·s_c·γ_c/σ_c`) and bias.

use rayon::prelude::*;

use crate::Isa;
use crate::error::{Result, check_len, invalid};
use crate::gemm::{WeightPanel, gemm_u8i8_with};
use crate::pack::{PackedWeights, check_alpha, qmax_unsigned};

/// Window positions along one axis of length `len` zero-padded by `pad` before and
/// `pad_end` after it: `⌊(len + pad + pad_end − k)/stride⌋ + 1`.
fn window_count2(len: usize, k: usize, stride: usize, pad: usize, pad_end: usize) -> usize {
    (len + pad + pad_end - k) / stride + 1
}

/// Shape of a (dense, ungrouped) 2-D convolution on an NHWC input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch size `N`.
    pub batch: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding before the input (top and left; code 0 is the real value 0).
    pub pad: usize,
    /// Zero padding after the input (bottom and right): `pad` for symmetric padding.
    pub pad_end: usize,
}

impl ConvGeom {
    /// Output height `⌊(h + pad + pad_end − kh)/stride⌋ + 1`.
    pub fn out_h(&self) -> usize {
        window_count2(self.h, self.kh, self.stride, self.pad, self.pad_end)
    }
    /// Output width `⌊(w + pad + pad_end − kw)/stride⌋ + 1`.
    pub fn out_w(&self) -> usize {
        window_count2(self.w, self.kw, self.stride, self.pad, self.pad_end)
    }
    /// GEMM rows: `batch · out_h · out_w` output pixels.
    pub fn rows(&self) -> usize {
        self.batch * self.out_h() * self.out_w()
    }
    /// GEMM reduction length `kh · kw · c_in`.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.c_in
    }
    /// Input elements `batch · h · w · c_in`.
    pub fn input_len(&self) -> usize {
        self.batch * self.h * self.w * self.c_in
    }
    /// Errors with `InvalidArgument` for zero sizes/stride or a kernel larger than the
    /// padded input.
    pub fn validate(&self) -> Result<()> {
        let g = self;
        if [g.batch, g.h, g.w, g.c_in, g.c_out, g.kh, g.kw, g.stride].contains(&0) {
            return Err(invalid("conv geometry", format!("zero size in {g:?}")));
        }
        if g.kh > g.h + g.pad + g.pad_end || g.kw > g.w + g.pad + g.pad_end {
            return Err(invalid(
                "conv geometry",
                format!("kernel larger than padded input in {g:?}"),
            ));
        }
        Ok(())
    }

    /// A 1×1, stride-1, unpadded convolution: a plain GEMM on the input, no im2col.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0 && self.pad_end == 0
    }

    /// For each im2col column `(ky·kw + kx)·c_in + ci`, the OIHW weight column
    /// `(ci·kh + ky)·kw + kx` it takes.
    pub fn im2col_perm(&self) -> Vec<usize> {
        let mut p = Vec::with_capacity(self.k());
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                for ci in 0..self.c_in {
                    p.push((ci * self.kh + ky) * self.kw + kx);
                }
            }
        }
        p
    }
}

/// Grouped 2-D convolution (depthwise, channel multiplier, or `1 < groups < c_in`) of NHWC
/// codes `x` (`g.c_in` channels; code 0 is the real value 0, so padding is code 0) with OIHW
/// weight codes `w` `[c_out, (c_in/groups)·kh·kw]`: output channel `co` of group
/// `co / (c_out/groups)` reads that group's `c_in/groups` input channels. Returns the exact
/// i32 sums `[batch·oh·ow, c_out]`, as [`conv2d`] does for `groups = 1` (direct loops, images
/// in parallel; the kernels of a depthwise layer are small, so no GEMM). Errors:
/// `InvalidArgument` for a bad geometry or `groups` not dividing both channel counts,
/// `ShapeMismatch` for wrong lengths.
pub fn conv2d_grouped(x: &[u8], g: &ConvGeom, groups: usize, w: &[i8]) -> Result<Vec<i32>> {
    g.validate()?;
    if groups == 0 || !g.c_in.is_multiple_of(groups) || !g.c_out.is_multiple_of(groups) {
        return Err(invalid(
            "grouped conv",
            format!(
                "groups {groups} must divide c_in {} and c_out {}",
                g.c_in, g.c_out
            ),
        ));
    }
    check_len("conv input", g.input_len(), x.len())?;
    let (cin_g, cout_g) = (g.c_in / groups, g.c_out / groups);
    check_len("conv weights", g.c_out * cin_g * g.kh * g.kw, w.len())?;
    // Weights as [ky][kx][ci][co] so the innermost loop runs over output channels.
    let taps = g.kh * g.kw;
    let mut wt = vec![0i32; taps * cin_g * g.c_out];
    for co in 0..g.c_out {
        for ci in 0..cin_g {
            for t in 0..taps {
                wt[(t * cin_g + ci) * g.c_out + co] = w[(co * cin_g + ci) * taps + t] as i32;
            }
        }
    }
    // First input channel of each output channel's group.
    let base: Vec<usize> = (0..g.c_out).map(|co| co / cout_g * cin_g).collect();
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0i32; g.rows() * g.c_out];
    out.par_chunks_mut(oh * ow * g.c_out)
        .zip(x.par_chunks(g.h * g.w * g.c_in))
        .for_each(|(o, img)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let acc = &mut o[(oy * ow + ox) * g.c_out..(oy * ow + ox + 1) * g.c_out];
                    for ky in 0..g.kh {
                        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kx in 0..g.kw {
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            let px = &img[(iy as usize * g.w + ix as usize) * g.c_in..][..g.c_in];
                            let t = ky * g.kw + kx;
                            for ci in 0..cin_g {
                                let wr = &wt[(t * cin_g + ci) * g.c_out..][..g.c_out];
                                for ((a, &wv), &b) in acc.iter_mut().zip(wr).zip(&base) {
                                    *a += px[b + ci] as i32 * wv;
                                }
                            }
                        }
                    }
                }
            }
        });
    Ok(out)
}

/// Builds the GEMM panel of conv weights `w` (`[c_out, c_in·kh·kw]`, OIHW columns),
/// reordered to the im2col order; except for 1×1 stride-1 unpadded convolutions (which skip
/// im2col), the reduction is zero-padded to a multiple of 4 ([`WeightPanel::with_padded_k`])
/// to match [`conv2d`]'s padded im2col rows. Errors: `ShapeMismatch` if `w` does not fit `g`.
pub fn conv_panel(w: &PackedWeights, g: &ConvGeom) -> Result<WeightPanel> {
    g.validate()?;
    check_len("conv weight rows (c_out)", g.c_out, w.rows())?;
    check_len("conv weight columns (c_in·kh·kw)", g.k(), w.cols())?;
    let p = WeightPanel::from_packed_permuted(w, Some(&g.im2col_perm()));
    Ok(if g.is_pointwise() {
        p
    } else {
        p.with_padded_k()
    })
}

/// im2col of an NHWC `u8` input: `[rows, kh·kw·c_in]`, padding with code 0.
pub fn im2col(x: &[u8], g: &ConvGeom) -> Result<Vec<u8>> {
    im2col_rows(x, g, g.k())
}

/// [`im2col`] with rows of `row_len ≥ kh·kw·c_in` codes (the tail is zero).
fn im2col_rows(x: &[u8], g: &ConvGeom, row_len: usize) -> Result<Vec<u8>> {
    g.validate()?;
    check_len("conv input", g.input_len(), x.len())?;
    let (oh, ow, k, c) = (g.out_h(), g.out_w(), row_len, g.c_in);
    let mut out = vec![0u8; g.rows() * k];
    out.par_chunks_mut(ow * k)
        .enumerate()
        .for_each(|(row_block, out)| {
            let (b, oy) = (row_block / oh, row_block % oh);
            for ox in 0..ow {
                let o = &mut out[ox * k..(ox + 1) * k];
                for ky in 0..g.kh {
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    // The valid taps of one kernel row are contiguous in NHWC: one copy.
                    let ix0 = (ox * g.stride) as isize - g.pad as isize;
                    let kx0 = (-ix0).max(0) as usize;
                    let kx1 = (g.w as isize - ix0).clamp(0, g.kw as isize) as usize;
                    if kx0 < kx1 {
                        let src =
                            ((b * g.h + iy as usize) * g.w + (ix0 + kx0 as isize) as usize) * c;
                        let dst = (ky * g.kw + kx0) * c;
                        let len = (kx1 - kx0) * c;
                        o[dst..dst + len].copy_from_slice(&x[src..src + len]);
                    }
                }
            }
        });
    Ok(out)
}

/// Integer convolution: NHWC `u8` codes `x` (`[batch, h, w, c_in]`) with the panel from
/// [`conv_panel`]; returns the i32 accumulators `[batch, out_h, out_w, c_out]`.
///
/// Errors: `ShapeMismatch` for a wrong input length or a panel of another shape, plus the
/// GEMM's errors. A 1×1, stride-1, unpadded convolution skips im2col.
pub fn conv2d(x: &[u8], g: &ConvGeom, w: &WeightPanel, isa: Isa) -> Result<Vec<i32>> {
    g.validate()?;
    check_len("conv panel output channels", g.c_out, w.n())?;
    if w.k() != g.k() && (g.is_pointwise() || w.k() != g.k().next_multiple_of(4)) {
        check_len("conv panel reduction length", g.k(), w.k())?;
    }
    check_len("conv input", g.input_len(), x.len())?;
    let mut out = vec![0i32; g.rows() * g.c_out];
    if g.is_pointwise() {
        gemm_u8i8_with(isa, x, g.rows(), w, &mut out)?;
    } else if g.c_in == 1 && g.stride == 1 && g.kh * g.kw <= 65_000 {
        conv2d_c1(x, g, w, isa, &mut out);
    } else {
        // Rows as long as the panel's reduction (zero-padded to a multiple of 4 by
        // `conv_panel`, so the GEMM reads them in place).
        let cols = im2col_rows(x, g, w.k())?;
        gemm_u8i8_with(isa, &cols, g.rows(), w, &mut out)?;
    }
    Ok(out)
}

/// Direct convolution of a one-channel input at stride 1 (the first layer of a grayscale
/// network): im2col would copy `kh·kw` bytes per output pixel for a GEMM with a tiny
/// reduction and few output channels, which costs more than the arithmetic. Here every
/// output row is accumulated from shifted rows of the zero-padded image, vectorised along
/// the row (on AVX2: per output pixel along the channels, [`conv2d_c1_image_avx2`]); exact
/// i32 sums like the GEMM. Parallel over images.
fn conv2d_c1(x: &[u8], g: &ConvGeom, w: &WeightPanel, isa: Isa, out: &mut [i32]) {
    let (oh, ow, co) = (g.out_h(), g.out_w(), g.c_out);
    let wt = c1_weights(g, w);
    out.par_chunks_mut(oh * ow * co)
        .enumerate()
        .for_each(|(b, out)| {
            let x = &x[b * g.h * g.w..(b + 1) * g.h * g.w];
            conv2d_c1_one(x, g, &wt, isa, out);
        });
}

/// The `[c_out, kh·kw]` weights of a one-channel conv panel as i32, for [`conv2d_c1_one`].
pub(crate) fn c1_weights(g: &ConvGeom, w: &WeightPanel) -> Vec<i32> {
    (0..g.c_out)
        .flat_map(|o| (0..g.kh * g.kw).map(move |t| w.code(o, t) as i32))
        .collect()
}

/// One image of [`conv2d_c1`]: `x` `[h, w]` codes, `wt` from [`c1_weights`], `out`
/// `[out_h, out_w, c_out]` sums; on AVX2 unless `isa` is portable.
pub(crate) fn conv2d_c1_one(x: &[u8], g: &ConvGeom, wt: &[i32], isa: Isa, out: &mut [i32]) {
    if isa != Isa::Portable && Isa::Avx2.is_available() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 is available (checked above).
        unsafe {
            return conv2d_c1_image_avx2(x, g, wt, out);
        }
    }
    conv2d_c1_image(x, g, wt, out);
}

/// [`conv2d_c1_image`] on AVX2, vectorised along the output channels instead of the row:
/// per output pixel, 8 channels per vector (up to 32 per pass over the taps), two taps per
/// `vpmaddwd` (the two pixels broadcast as an i16 pair against each channel's two
/// weights), stored straight into the pixel's `c_out` sums: about 2.4× faster than the
/// row-wise loop on ResNet-20's 28×28, 16-channel first layer (batch 128, 2 threads). The
/// same exact i32 sums: a code (≤ 255) times a weight (an i8) is exact in i16 × i16 → i32,
/// and the sum of two of them cannot overflow i32.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn conv2d_c1_image_avx2(x: &[u8], g: &ConvGeom, wt: &[i32], out: &mut [i32]) {
    use std::arch::x86_64::{
        __m256i, _mm256_add_epi32, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_set1_epi32,
        _mm256_setzero_si256, _mm256_storeu_si256,
    };
    let (oh, ow, co, kh, kw) = (g.out_h(), g.out_w(), g.c_out, g.kh, g.kw);
    let (hp, wp) = (g.h + g.pad + g.pad_end, g.w + g.pad + g.pad_end);
    let mut img = vec![0u16; hp * wp];
    for y in 0..g.h {
        let src = &x[y * g.w..(y + 1) * g.w];
        let dst = &mut img[(y + g.pad) * wp + g.pad..(y + g.pad) * wp + g.pad + g.w];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as u16;
        }
    }
    let taps = kh * kw;
    let pairs = taps.div_ceil(2);
    let chunks = co.div_ceil(8);
    // Offset of a tap from the window's top-left in the padded image.
    let off = |t: usize| (t / kw) * wp + t % kw;
    // Per tap pair: the offsets of its two pixels (an odd count's last pair reads its
    // first pixel twice, against a zero weight).
    let offs: Vec<(usize, usize)> = (0..pairs)
        .map(|p| (off(2 * p), off((2 * p + 1).min(taps - 1))))
        .collect();
    // `[pairs][chunks·8]`: each channel's two weights as an i16 pair (zero past `c_out`).
    let wpair: Vec<i32> = (0..pairs)
        .flat_map(|p| {
            (0..chunks * 8).map(move |o| {
                let w = |t: usize| {
                    if o < co && t < taps {
                        wt[o * taps + t] as i16 as u16 as u32
                    } else {
                        0
                    }
                };
                (w(2 * p) | (w(2 * p + 1) << 16)) as i32
            })
        })
        .collect();
    let mut tail = [0i32; 8];
    for oy in 0..oh {
        for ox in 0..ow {
            let base = oy * wp + ox;
            let o = &mut out[(oy * ow + ox) * co..(oy * ow + ox + 1) * co];
            // Up to 4 chunks (32 channels) per pass over the taps, each pair broadcast once.
            for j0 in (0..chunks).step_by(4) {
                let n = (chunks - j0).min(4);
                let mut acc = [_mm256_setzero_si256(); 4];
                for (p, &(o0, o1)) in offs.iter().enumerate() {
                    let pix = img[base + o0] as i32 | ((img[base + o1] as i32) << 16);
                    let pv = _mm256_set1_epi32(pix);
                    let w = &wpair[p * chunks * 8 + j0 * 8..][..n * 8];
                    for (a, w) in acc.iter_mut().zip(w.chunks_exact(8)) {
                        // SAFETY: `w` holds 8 i32 (unaligned load).
                        let wv = unsafe { _mm256_loadu_si256(w.as_ptr().cast::<__m256i>()) };
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pv, wv));
                    }
                }
                for (j, a) in (j0..j0 + n).zip(acc) {
                    if (j + 1) * 8 <= co {
                        let d = &mut o[j * 8..(j + 1) * 8];
                        // SAFETY: `d` holds 8 i32 (unaligned store).
                        unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast::<__m256i>(), a) };
                    } else {
                        // SAFETY: `tail` holds 8 i32.
                        unsafe { _mm256_storeu_si256(tail.as_mut_ptr().cast::<__m256i>(), a) };
                        o[j * 8..].copy_from_slice(&tail[..co - j * 8]);
                    }
                }
            }
        }
    }
}

/// One image of [`conv2d_c1`]: `x` `[h, w]` codes, `wt` `[c_out, kh·kw]` weights, `out`
/// `[out_h, out_w, c_out]` sums.
#[inline(always)]
fn conv2d_c1_image(x: &[u8], g: &ConvGeom, wt: &[i32], out: &mut [i32]) {
    let (oh, ow, co, kh, kw) = (g.out_h(), g.out_w(), g.c_out, g.kh, g.kw);
    let (hp, wp) = (g.h + g.pad + g.pad_end, g.w + g.pad + g.pad_end);
    let mut img = vec![0i32; hp * wp];
    for y in 0..g.h {
        let src = &x[y * g.w..(y + 1) * g.w];
        let dst = &mut img[(y + g.pad) * wp + g.pad..(y + g.pad) * wp + g.pad + g.w];
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s as i32;
        }
    }
    let mut row = vec![0i32; ow];
    for oy in 0..oh {
        for o in 0..co {
            row.fill(0);
            for ky in 0..kh {
                let src = &img[(oy + ky) * wp..(oy + ky + 1) * wp];
                for kx in 0..kw {
                    let wv = wt[(o * kh + ky) * kw + kx];
                    if wv != 0 {
                        for (r, &v) in row.iter_mut().zip(&src[kx..kx + ow]) {
                            *r += wv * v;
                        }
                    }
                }
            }
            for (ox, &r) in row.iter().enumerate() {
                out[(oy * ow + ox) * co + o] = r;
            }
        }
    }
}

/// Linear layer: `x` `[batch, in]` codes times `w` (`n = out`, `k = in`): i32 `[batch, out]`.
pub fn linear(x: &[u8], batch: usize, w: &WeightPanel, isa: Isa) -> Result<Vec<i32>> {
    let mut out = vec![0i32; batch * w.n()];
    gemm_u8i8_with(isa, x, batch, w, &mut out)?;
    Ok(out)
}

/// Requantisation of i32 accumulators to the next layer's unsigned codes, with the ReLU and
/// clip of the activation quantizer fused: `y = acc·acc_scale[c] + bias[c]` (+ residual),
/// `q = round(clamp(y, 0, α) / s)`, `s = α/(2^b − 1)` — the same formula as
/// [`quantize_activations`](crate::pack::quantize_activations) (docs/method.md §3).
#[derive(Clone, Debug, PartialEq)]
pub struct Requant {
    /// Real value of one accumulator unit per output channel.
    pub acc_scale: Vec<f32>,
    /// Real bias per output channel (folded BatchNorm shift and/or layer bias).
    pub bias: Vec<f32>,
    /// Output clip range `α` (> 0).
    pub alpha: f32,
    /// Output bit-width (2..=8).
    pub bits: u32,
}

impl Requant {
    /// Checks lengths, bits and clip range. Errors: `ShapeMismatch`, `InvalidBits`,
    /// `InvalidArgument`, `NonFinite`.
    pub fn new(acc_scale: Vec<f32>, bias: Vec<f32>, alpha: f32, bits: u32) -> Result<Self> {
        crate::error::check_bits("requantisation output", bits)?;
        check_len("requantisation bias", acc_scale.len(), bias.len())?;
        check_alpha("requantisation output", alpha)?;
        for (what, v) in [
            ("requantisation scale", &acc_scale),
            ("requantisation bias", &bias),
        ] {
            if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                return Err(crate::Error::NonFinite {
                    what: what.into(),
                    index,
                    value,
                });
            }
        }
        Ok(Self {
            acc_scale,
            bias,
            alpha,
            bits,
        })
    }

    /// Real step of one output code, `α / (2^b − 1)`.
    pub fn step(&self) -> f32 {
        self.alpha / qmax_unsigned(self.bits) as f32
    }

    /// Output channels.
    pub fn channels(&self) -> usize {
        self.acc_scale.len()
    }

    #[inline]
    fn quantize(&self, y: f32, step: f32) -> u8 {
        round_code(y.clamp(0.0, self.alpha) / step)
    }

    /// The channel count, after checking that `acc` is whole rows of it. Errors: `ShapeMismatch`.
    fn row_len(&self, acc: &[i32]) -> Result<usize> {
        let c = self.channels();
        if c == 0 || !acc.len().is_multiple_of(c) {
            return Err(invalid(
                "requantisation input",
                format!("{} values are not rows of {c} channels", acc.len()),
            ));
        }
        Ok(c)
    }

    /// Requantizes `acc` (`[rows, channels]`) into codes. Errors: `ShapeMismatch`.
    pub fn apply(&self, acc: &[i32]) -> Result<Vec<u8>> {
        let c = self.row_len(acc)?;
        let mut out = vec![0u8; acc.len()];
        let step = self.step();
        out.par_chunks_mut(c * 256)
            .zip(acc.par_chunks(c * 256))
            .for_each(|(o, a)| {
                for (o, a) in o.chunks_exact_mut(c).zip(a.chunks_exact(c)) {
                    for (((o, &a), &s), &b) in
                        o.iter_mut().zip(a).zip(&self.acc_scale).zip(&self.bias)
                    {
                        *o = self.quantize(a as f32 * s + b, step);
                    }
                }
            });
        Ok(out)
    }

    /// Like [`apply`](Self::apply) with a residual (shortcut) input added before the ReLU/clip:
    /// `y = acc·acc_scale[c] + bias[c] + r·r_step`, `r` codes of the shortcut tensor (same
    /// shape as `acc`) whose real step is `r_step`. Errors: `ShapeMismatch`.
    pub fn apply_residual(&self, acc: &[i32], residual: &[u8], r_step: f32) -> Result<Vec<u8>> {
        check_len("residual input", acc.len(), residual.len())?;
        let c = self.row_len(acc)?;
        let mut out = vec![0u8; acc.len()];
        let step = self.step();
        out.par_chunks_mut(c * 256)
            .zip(acc.par_chunks(c * 256))
            .zip(residual.par_chunks(c * 256))
            .for_each(|((o, a), r)| {
                for i in 0..o.len() {
                    let j = i % c;
                    o[i] = self.quantize(
                        a[i] as f32 * self.acc_scale[j] + self.bias[j] + r[i] as f32 * r_step,
                        step,
                    );
                }
            });
        Ok(out)
    }

    /// Real outputs without quantisation (for logits): `acc·acc_scale[c] + bias[c]`.
    pub fn dequantize(&self, acc: &[i32]) -> Vec<f32> {
        let c = self.channels();
        acc.iter()
            .enumerate()
            .map(|(i, &a)| a as f32 * self.acc_scale[i % c] + self.bias[i % c])
            .collect()
    }
}

/// `round(v)` (half away from zero) for `0 ≤ v < 256`, without a libm call: truncation is
/// exact for such values, and so is the fraction `v − trunc(v)`.
#[inline]
pub(crate) fn round_code(v: f32) -> u8 {
    let t = v as i32;
    (t + (v - t as f32 >= 0.5) as i32) as u8
}

/// Shape of a pooling window on an NHWC tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    /// Batch size.
    pub batch: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window size (square).
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding before the input, top and left (max pooling ignores padded cells; average
    /// pooling counts them as zeros).
    pub pad: usize,
    /// Padding after the input, bottom and right (`pad` when symmetric).
    pub pad_end: usize,
}

impl PoolGeom {
    fn validate<T>(&self, x: &[T]) -> Result<()> {
        let g = self;
        if [g.batch, g.h, g.w, g.c, g.k, g.stride].contains(&0)
            || g.k > g.h + g.pad + g.pad_end
            || g.k > g.w + g.pad + g.pad_end
            || g.pad >= g.k
            || g.pad_end >= g.k
        {
            return Err(invalid("pool geometry", format!("{g:?}")));
        }
        check_len("pool input", g.batch * g.h * g.w * g.c, x.len())
    }
    /// Output height `⌊(h + pad + pad_end − k)/stride⌋ + 1`.
    pub fn out_h(&self) -> usize {
        window_count2(self.h, self.k, self.stride, self.pad, self.pad_end)
    }
    /// Output width `⌊(w + pad + pad_end − k)/stride⌋ + 1`.
    pub fn out_w(&self) -> usize {
        window_count2(self.w, self.k, self.stride, self.pad, self.pad_end)
    }

    /// Visits every output cell with the valid input cells of its window.
    fn for_each_window(&self, mut f: impl FnMut(usize, &mut dyn Iterator<Item = usize>)) {
        let (oh, ow) = (self.out_h(), self.out_w());
        for b in 0..self.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    let y0 = (oy * self.stride) as isize - self.pad as isize;
                    let x0 = (ox * self.stride) as isize - self.pad as isize;
                    let (h, w) = (self.h as isize, self.w as isize);
                    let mut cells =
                        (y0.max(0)..(y0 + self.k as isize).min(h)).flat_map(move |iy| {
                            (x0.max(0)..(x0 + self.k as isize).min(w))
                                .map(move |ix| ((b as isize * h + iy) * w + ix) as usize)
                        });
                    f((b * oh + oy) * ow + ox, &mut cells);
                }
            }
        }
    }
}

/// Max pooling of NHWC codes (exact; padded cells are ignored). Errors: bad geometry/length.
pub fn max_pool2d(x: &[u8], g: &PoolGeom) -> Result<Vec<u8>> {
    g.validate(x)?;
    let c = g.c;
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0u8; g.batch * oh * ow * c];
    if g.pad == 0 && g.pad_end == 0 {
        // Every window is whole: plain loops, parallel over images.
        out.par_chunks_mut(oh * ow * c)
            .zip(x.par_chunks(g.h * g.w * c))
            .for_each(|(out, img)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let p = ((oy * g.stride + ky) * g.w + ox * g.stride + kx) * c;
                                for (o, &v) in o.iter_mut().zip(&img[p..p + c]) {
                                    *o = (*o).max(v);
                                }
                            }
                        }
                    }
                }
            });
        return Ok(out);
    }
    g.for_each_window(|o, cells| {
        let o = &mut out[o * c..(o + 1) * c];
        for cell in cells {
            for (o, &v) in o.iter_mut().zip(&x[cell * c..(cell + 1) * c]) {
                *o = (*o).max(v);
            }
        }
    });
    Ok(out)
}

/// Max pooling of real-valued NHWC activations (a stream the fake-quantized model keeps in
/// float) with the float model's zero padding: a window that reaches past the border also
/// takes the maximum with 0 (seer-nn pads with zeros, then pools), one inside it takes the
/// maximum of its cells alone (negative values stay). Errors: bad geometry/length.
pub fn max_pool2d_real(x: &[f32], g: &PoolGeom) -> Result<Vec<f32>> {
    g.validate(x)?;
    let c = g.c;
    let (oh, ow) = (g.out_h(), g.out_w());
    let mut out = vec![0f32; g.batch * oh * ow * c];
    let (h, w) = (g.h as isize, g.w as isize);
    out.par_chunks_mut(oh * ow * c)
        .zip(x.par_chunks(g.h * g.w * c))
        .for_each(|(out, img)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let y0 = (oy * g.stride) as isize - g.pad as isize;
                    let x0 = (ox * g.stride) as isize - g.pad as isize;
                    let (y1, x1) = (y0 + g.k as isize, x0 + g.k as isize);
                    let padded = y0 < 0 || x0 < 0 || y1 > h || x1 > w;
                    let o = &mut out[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
                    o.fill(if padded { 0.0 } else { f32::NEG_INFINITY });
                    for iy in y0.max(0)..y1.min(h) {
                        for ix in x0.max(0)..x1.min(w) {
                            let p = (iy * w + ix) as usize * c;
                            for (o, &v) in o.iter_mut().zip(&img[p..p + c]) {
                                *o = o.max(v);
                            }
                        }
                    }
                }
            }
        });
    Ok(out)
}

/// Average pooling of NHWC codes with requantisation: the window mean of the codes times
/// `in_step` (the input's real step) is quantized to `out_bits` with clip range `out_alpha`.
/// Padded cells count as code 0 (real 0: activation codes have no zero point) and in the
/// divisor `k²` (`count_include_pad = 1`). With `in_step = out_alpha/(2^out_bits−1)` this is
/// the rounded mean code. Errors: bad geometry/length, bad bits or clip range.
pub fn avg_pool2d(
    x: &[u8],
    g: &PoolGeom,
    in_step: f32,
    out_alpha: f32,
    out_bits: u32,
) -> Result<Vec<u8>> {
    g.validate(x)?;
    let rq = Requant::new(
        vec![in_step / (g.k * g.k) as f32; g.c],
        vec![0.0; g.c],
        out_alpha,
        out_bits,
    )?;
    let c = g.c;
    let mut sums = vec![0i32; g.batch * g.out_h() * g.out_w() * c];
    g.for_each_window(|o, cells| {
        let o = &mut sums[o * c..(o + 1) * c];
        for cell in cells {
            for (o, &v) in o.iter_mut().zip(&x[cell * c..(cell + 1) * c]) {
                *o += v as i32;
            }
        }
    });
    rq.apply(&sums)
}

/// Average pooling of a real-valued NHWC stream `[batch, h, w, c]` → `[batch, out_h, out_w,
/// c]`, zero padding counted in the divisor (`count_include_pad = 1`), in the float model's
/// arithmetic (candle's `avg_pool2d` after `pad_with_zeros`): per window the in-bounds values
/// summed in row-major window order from `0.0` (a padded `+0.0` leaves an f32 sum unchanged),
/// times the f32 of `1/k²`. Errors: bad geometry or length.
pub fn avg_pool2d_real(x: &[f32], g: &PoolGeom) -> Result<Vec<f32>> {
    g.validate(x)?;
    let c = g.c;
    let scale = (1.0 / (g.k * g.k) as f64) as f32;
    let mut out = vec![0f32; g.batch * g.out_h() * g.out_w() * c];
    g.for_each_window(|o, cells| {
        let o = &mut out[o * c..(o + 1) * c];
        for cell in cells {
            for (o, &v) in o.iter_mut().zip(&x[cell * c..(cell + 1) * c]) {
                *o += v;
            }
        }
        o.iter_mut().for_each(|v| *v *= scale);
    });
    Ok(out)
}

/// Global average pooling of NHWC codes `[batch, hw, c]` with requantisation (as
/// [`avg_pool2d`]): returns `[batch, c]` codes. Errors: bad length/bits/clip range.
pub fn global_avg_pool(
    x: &[u8],
    batch: usize,
    hw: usize,
    c: usize,
    in_step: f32,
    out_alpha: f32,
    out_bits: u32,
) -> Result<Vec<u8>> {
    check_len("global pool input", batch * hw * c, x.len())?;
    if hw == 0 || c == 0 {
        return Err(invalid("global pool", "empty spatial size or channels"));
    }
    let rq = Requant::new(
        vec![in_step / hw as f32; c],
        vec![0.0; c],
        out_alpha,
        out_bits,
    )?;
    let mut sums = vec![0i32; batch * c];
    for (s, img) in sums.chunks_exact_mut(c).zip(x.chunks_exact(hw * c)) {
        for px in img.chunks_exact(c) {
            s.iter_mut().zip(px).for_each(|(s, &v)| *s += v as i32);
        }
    }
    rq.apply(&sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{activation_scale, quantize_activations};
    use crate::reference;
    use proptest::prelude::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed ^ 0x5DEE_CE66;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    fn geom() -> impl Strategy<Value = ConvGeom> {
        (
            1usize..3,
            1usize..9,
            1usize..9,
            1usize..7,
            1usize..21,
            1usize..4,
            1usize..3,
            0usize..2,
            0usize..3,
        )
            .prop_filter_map(
                "kernel fits",
                |(batch, h, w, c_in, c_out, k, stride, pad, pad_end)| {
                    let g = ConvGeom {
                        batch,
                        h,
                        w,
                        c_in,
                        c_out,
                        kh: k,
                        kw: k.min(2),
                        stride,
                        pad,
                        pad_end,
                    };
                    g.validate().ok().map(|_| g)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn conv_matches_reference(g in geom(), abits in 2u32..=8, wbits in 2u32..=8, seed in any::<u64>(), zero_ch in any::<bool>()) {
            let mut r = lcg(seed);
            let x: Vec<u8> = (0..g.input_len()).map(|_| (r() % (1 << abits)) as u8).collect();
            let q = (1i64 << (wbits - 1)) - 1;
            let mut codes: Vec<i8> = (0..g.c_out * g.k()).map(|_| ((r() as i64 % (2 * q + 1)) - q) as i8).collect();
            if zero_ch {
                codes[..g.k()].fill(0);
            }
            let w = PackedWeights::from_codes(&codes, g.c_out, g.k(), wbits, vec![1.0; g.c_out]).unwrap();
            let panel = conv_panel(&w, &g).unwrap();
            let want = reference::conv2d(&x, &g, &codes);
            for isa in Isa::available() {
                prop_assert_eq!(&conv2d(&x, &g, &panel, isa).unwrap(), &want, "{:?}", isa);
            }
        }

        /// One input channel at stride 1 takes the direct path: equal to the reference for
        /// any size, kernel, padding and channel count (past 32: more than one pass of the
        /// AVX2 path), extreme codes included.
        #[test]
        fn one_channel_direct_conv_matches_reference(b in 1usize..4, h in 1usize..12, w in 1usize..12, k in 1usize..6, pad in 0usize..3, pad_end in 0usize..3, c_out in 1usize..40, seed in any::<u64>(), extreme in any::<bool>()) {
            prop_assume!(k <= h + pad + pad_end && k <= w + pad + pad_end && pad < k && pad_end < k);
            let g = ConvGeom { batch: b, h, w, c_in: 1, c_out, kh: k, kw: k, stride: 1, pad, pad_end };
            let mut r = lcg(seed);
            let x: Vec<u8> = (0..g.input_len()).map(|_| if extreme { 255 } else { r() as u8 }).collect();
            let codes: Vec<i8> = (0..c_out * g.k()).map(|i| if extreme { if i % 2 == 0 { 127 } else { -127 } } else { (r() % 255) as i8 }).map(|c| c.max(-127)).collect();
            let pw = PackedWeights::from_codes(&codes, c_out, g.k(), 8, vec![1.0; c_out]).unwrap();
            let panel = conv_panel(&pw, &g).unwrap();
            let want = reference::conv2d(&x, &g, &codes);
            for isa in Isa::available() {
                prop_assert_eq!(&conv2d(&x, &g, &panel, isa).unwrap(), &want, "{:?}", isa);
            }
        }

        /// The whole integer layer (conv + requant) agrees with the fake-quantized float layer
        /// computed in f64, except where the float value sits on a rounding boundary.
        #[test]
        fn conv_requant_matches_fake_quant(g in geom(), abits in 2u32..=8, wbits in 2u32..=8, obits in 2u32..=8, seed in any::<u64>()) {
            let mut r = lcg(seed);
            let xf: Vec<f32> = (0..g.input_len()).map(|_| (r() % 1000) as f32 / 500.0).collect();
            let alpha_in = 1.5;
            let x = quantize_activations(&xf, alpha_in, abits).unwrap();
            let wf: Vec<f32> = (0..g.c_out * g.k()).map(|_| (r() % 2001) as f32 / 1000.0 - 1.0).collect();
            let w = PackedWeights::quantize(&wf, g.c_out, g.k(), wbits).unwrap();
            let bias: Vec<f32> = (0..g.c_out).map(|_| (r() % 100) as f32 / 100.0 - 0.5).collect();
            let s_in = activation_scale(alpha_in, abits);
            let rq = Requant::new(w.scales().iter().map(|s| s * s_in).collect(), bias.clone(), 2.0, obits).unwrap();
            let got = rq.apply(&conv2d(&x, &g, &conv_panel(&w, &g).unwrap(), Isa::detect()).unwrap()).unwrap();
            let y = reference::conv2d_f64(&reference::dequantize(&x, s_in), &g, &w.dequantize(), &bias);
            let qmax = qmax_unsigned(obits) as f64;
            for (i, (&q, &y)) in got.iter().zip(&y).enumerate() {
                let t = y.clamp(0.0, 2.0) / 2.0 * qmax;
                let near_tie = (t - t.floor() - 0.5).abs() < 1e-4;
                prop_assert!(q as f64 == t.round() || near_tie, "index {i}: {q} vs {t}");
            }
        }

        #[test]
        fn pools_match_reference(batch in 1usize..3, h in 1usize..8, w in 1usize..8, c in 1usize..6,
                                 k in 1usize..4, stride in 1usize..3, pad in 0usize..2, pad_end in 0usize..2, seed in any::<u64>()) {
            let g = PoolGeom { batch, h, w, c, k, stride, pad, pad_end };
            prop_assume!(k <= h + pad + pad_end && k <= w + pad + pad_end && pad < k && pad_end < k);
            let mut r = lcg(seed);
            let x: Vec<u8> = (0..batch * h * w * c).map(|_| (r() % 256) as u8).collect();
            prop_assert_eq!(max_pool2d(&x, &g).unwrap(), reference::max_pool2d(&x, &g));
            // Real values of both signs against zero-padding then pooling, cell by cell.
            let xr: Vec<f32> = x.iter().map(|&v| v as f32 / 16.0 - 8.0).collect();
            let (ph, pw) = (h + pad + pad_end, w + pad + pad_end);
            let (oh, ow) = (g.out_h(), g.out_w());
            let mut want = vec![0f32; batch * oh * ow * c];
            // Average pooling as candle computes it on the zero-padded tensor: every cell of
            // the window, padded zeros included, summed in row-major order, times f32(1/k²).
            let mut want_avg = vec![0f32; batch * oh * ow * c];
            let scale = (1.0 / (k * k) as f64) as f32;
            for b in 0..batch {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ch in 0..c {
                            let mut m = f32::NEG_INFINITY;
                            let mut sum = 0f32;
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (py, px) = (oy * stride + ky, ox * stride + kx);
                                    prop_assert!(py < ph && px < pw);
                                    let v = if py < pad || px < pad || py - pad >= h || px - pad >= w {
                                        0.0
                                    } else {
                                        xr[((b * h + py - pad) * w + px - pad) * c + ch]
                                    };
                                    m = m.max(v);
                                    sum += v;
                                }
                            }
                            want[((b * oh + oy) * ow + ox) * c + ch] = m;
                            want_avg[((b * oh + oy) * ow + ox) * c + ch] = sum * scale;
                        }
                    }
                }
            }
            prop_assert_eq!(max_pool2d_real(&xr, &g).unwrap(), want);
            let got_avg = avg_pool2d_real(&xr, &g).unwrap();
            prop_assert_eq!(
                got_avg.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want_avg.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let got = avg_pool2d(&x, &g, 1.0, 255.0, 8).unwrap();
            prop_assert_eq!(got, reference::avg_pool2d(&x, &g));
            let got = global_avg_pool(&x, batch, h * w, c, 1.0, 255.0, 8).unwrap();
            prop_assert_eq!(got, reference::global_avg_pool(&x, batch, h * w, c));
        }
    }

    /// The grouped direct conv against the reference dense conv run group by group
    /// (depthwise, channel multiplier 2, two-channel groups; odd sizes, strides, asymmetric
    /// padding, extreme codes).
    #[test]
    fn grouped_conv_matches_dense_conv_per_group() {
        let mut r = lcg(31);
        for (c_in, c_out, groups, k, stride, pad, pad_end, h, w) in [
            (5, 5, 5, 3, 1, 1, 1, 7, 6),
            (4, 8, 4, 3, 2, 1, 0, 9, 9),
            (6, 9, 3, 2, 1, 0, 1, 5, 4),
            (3, 3, 3, 1, 1, 0, 0, 1, 1),
            (8, 4, 2, 3, 2, 0, 1, 8, 7),
        ] {
            let g = ConvGeom {
                batch: 2,
                h,
                w,
                c_in,
                c_out,
                kh: k,
                kw: k,
                stride,
                pad,
                pad_end,
            };
            let x: Vec<u8> = (0..g.input_len())
                .map(|i| if i % 11 == 0 { 255 } else { (r() % 256) as u8 })
                .collect();
            let (cin_g, cout_g) = (c_in / groups, c_out / groups);
            let wc: Vec<i8> = (0..c_out * cin_g * k * k)
                .map(|i| {
                    if i % 7 == 0 {
                        -128
                    } else {
                        (r() % 256) as u8 as i8
                    }
                })
                .collect();
            let got = conv2d_grouped(&x, &g, groups, &wc).unwrap();
            let (oh, ow) = (g.out_h(), g.out_w());
            let mut want = vec![0i32; g.rows() * c_out];
            for gi in 0..groups {
                let sub: Vec<u8> = x
                    .chunks(c_in)
                    .flat_map(|p| p[gi * cin_g..(gi + 1) * cin_g].to_vec())
                    .collect();
                let gg = ConvGeom {
                    c_in: cin_g,
                    c_out: cout_g,
                    ..g
                };
                let wg = &wc[gi * cout_g * cin_g * k * k..(gi + 1) * cout_g * cin_g * k * k];
                let y = reference::conv2d(&sub, &gg, wg);
                for p in 0..2 * oh * ow {
                    want[p * c_out + gi * cout_g..p * c_out + (gi + 1) * cout_g]
                        .copy_from_slice(&y[p * cout_g..(p + 1) * cout_g]);
                }
            }
            assert_eq!(got, want, "{c_in} {c_out} groups {groups} k {k} s {stride}");
        }
        let g = ConvGeom {
            batch: 1,
            h: 3,
            w: 3,
            c_in: 4,
            c_out: 6,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
            pad_end: 0,
        };
        assert!(conv2d_grouped(&[0; 36], &g, 4, &[0; 6]).is_err()); // 4 does not divide 6
        assert!(conv2d_grouped(&[0; 35], &g, 2, &[0; 12]).is_err()); // short input
        assert!(conv2d_grouped(&[0; 36], &g, 2, &[0; 11]).is_err()); // short weights
    }

    #[test]
    fn round_code_matches_round() {
        for i in 0..=(255 * 64) {
            let v = i as f32 / 64.0;
            for v in [
                v,
                f32::from_bits(v.to_bits().saturating_sub(1)),
                f32::from_bits(v.to_bits() + 1),
            ] {
                if v < 255.5 {
                    assert_eq!(round_code(v), v.round() as u8, "{v}");
                }
            }
        }
    }

    #[test]
    fn requant_residual_and_errors() {
        let rq = Requant::new(vec![0.5, 1.0], vec![0.0, -1.0], 3.0, 2).unwrap();
        assert_eq!(
            rq.apply(&[1, 1, 4, 5, 100, -100]).unwrap(),
            vec![1, 0, 2, 3, 3, 0]
        );
        assert_eq!(
            rq.apply_residual(&[1, 1], &[2, 0], 0.5).unwrap(),
            vec![2, 0]
        );
        assert!(rq.apply(&[1, 2, 3]).is_err());
        assert!(Requant::new(vec![1.0], vec![0.0], 0.0, 4).is_err());
        assert!(Requant::new(vec![f32::NAN], vec![0.0], 1.0, 4).is_err());
        assert!(Requant::new(vec![1.0], vec![0.0], 1.0, 1).is_err());
        let g = ConvGeom {
            batch: 1,
            h: 2,
            w: 2,
            c_in: 1,
            c_out: 1,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: 0,
            pad_end: 0,
        };
        assert!(g.validate().is_err());
    }

    #[test]
    fn one_by_one_conv_skips_im2col_and_linear_works() {
        let g = ConvGeom {
            batch: 2,
            h: 3,
            w: 3,
            c_in: 5,
            c_out: 3,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
            pad_end: 0,
        };
        let x: Vec<u8> = (0..g.input_len()).map(|i| (i * 7 % 256) as u8).collect();
        let codes: Vec<i8> = (0..15).map(|i| (i as i8 % 7) - 3).collect();
        let w = PackedWeights::from_codes(&codes, 3, 5, 4, vec![1.0; 3]).unwrap();
        let p = conv_panel(&w, &g).unwrap();
        assert_eq!(
            conv2d(&x, &g, &p, Isa::detect()).unwrap(),
            reference::conv2d(&x, &g, &codes)
        );
        let lin = linear(&x, 18, &WeightPanel::from_packed(&w), Isa::Portable).unwrap();
        assert_eq!(lin, reference::gemm_u8i8(&x, 18, &codes, 3, 5));
    }
}
