//! Fake quantization with the straight-through estimator (docs/method.md §3): weights per output
//! channel, symmetric, signed; activations unsigned with a learnable clip range α.

use std::sync::{Arc, Mutex};

use candle_core::{Layout, Tensor};
use rayon::prelude::*;

use crate::view::{
    BLOCK, Backward, F32View, Forward, check_finite, custom_op, par_map, prepare, to_tensor,
};
use crate::{Error, Result};

pub(crate) fn check_bits(op: &'static str, bits: u32) -> Result<()> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidBits { op, bits })
    }
}

/// `x.round()` (to the nearest integer, halves away from zero), bit for bit, without the
/// `roundf` library call that `f32::round` compiles to on x86-64 without SSE4.1 (one call
/// per quantized value was a measurable share of a QAT step and of calibration), and without
/// an `as i32` cast, whose saturation checks kept loops scalar. For `|x| < 2^23`,
/// `(|x| + 2^23) − 2^23` is `|x|` rounded to an integer (ties to even), one less when that
/// is above `|x|` gives `⌊|x|⌋`, and `|x| − ⌊|x|⌋` is exact; larger values and NaN are
/// returned as they are (already integers); the sign of a zero result follows `x`. Written
/// with selects only (no branches, no casts), so loops over slices vectorise.
#[inline]
pub fn round_half_away(x: f32) -> f32 {
    const TWO_23: f32 = 8_388_608.0;
    let ax = x.abs();
    // Also true for NaN.
    let keep = x.is_nan() | (ax >= TWO_23);
    let near = (ax + TWO_23) - TWO_23;
    let floor = if near > ax { near - 1.0 } else { near };
    let up = if ax - floor >= 0.5 { 1.0 } else { 0.0 };
    let r = (floor + up).copysign(x);
    if keep { x } else { r }
}

/// Largest signed level `2^(b−1) − 1` of a `bits`-bit symmetric quantizer.
pub fn weight_qmax(bits: u32) -> f32 {
    ((1u32 << (bits - 1)) - 1) as f32
}

/// Largest unsigned level `2^b − 1` of a `bits`-bit activation quantizer.
pub fn act_levels(bits: u32) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// The activation quantizer of [`fake_quant_act`] as a value: clip range `a` (> 0), `n =
/// 2^b − 1` levels, step `s = a / n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActQ {
    pub(crate) a: f32,
    pub(crate) n: f32,
    pub(crate) s: f32,
}

impl ActQ {
    pub(crate) fn new(a: f32, bits: u32) -> Self {
        let n = act_levels(bits);
        Self { a, n, s: a / n }
    }
    /// `s · round(clamp(v, 0, a) / s)`: [`fake_quant_act`]'s forward of one value.
    #[inline(always)]
    pub(crate) fn apply(self, v: f32) -> f32 {
        round_half_away(v.clamp(0.0, self.a) / self.s) * self.s
    }
}

/// A typed error raised inside a custom op's forward, handed back to the public wrapper
/// (candle's custom-op interface only carries its own error type).
pub(crate) type ErrSlot = Arc<Mutex<Option<Error>>>;

pub(crate) fn fail(slot: &ErrSlot, e: Error) -> candle_core::Error {
    let c = candle_core::Error::Msg(e.to_string());
    if let Ok(mut s) = slot.lock() {
        *s = Some(e);
    }
    c
}

pub(crate) fn take(slot: &ErrSlot, e: candle_core::Error) -> Error {
    slot.lock()
        .ok()
        .and_then(|mut s| s.take())
        .unwrap_or(Error::Candle(e))
}

/// Per-output-channel scales `max|w_c| / qmax` (1 for an all-zero channel) of `w` viewed as
/// `[C, len]`; also checks finiteness.
fn channel_scales(w: &[f32], c: usize, qmax: f32, op: &'static str) -> Result<Vec<f32>> {
    check_finite(w, op, "w")?;
    let len = w.len().checked_div(c).unwrap_or(0);
    Ok((0..c)
        .map(|ch| {
            let m = w[ch * len..(ch + 1) * len]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            if m > 0.0 { m / qmax } else { 1.0 }
        })
        .collect())
}

const WOP: &str = "fake_quant_weight";

struct FakeQuantWeightOp {
    bits: u32,
    err: ErrSlot,
}

impl FakeQuantWeightOp {
    fn forward(&self, [w]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        let c = l.dims()[0];
        let qmax = weight_qmax(self.bits);
        let scales = channel_scales(w, c, qmax, WOP).map_err(|e| fail(&self.err, e))?;
        let mut out = vec![0f32; w.len()];
        let len = w.len().checked_div(c).unwrap_or(0);
        if len > 0 {
            out.par_chunks_mut(len)
                .zip(w.par_chunks(len))
                .zip(scales.par_iter())
                .for_each(|((o, wc), &s)| {
                    for (o, &v) in o.iter_mut().zip(wc) {
                        *o = round_half_away(v / s).clamp(-qmax, qmax) * s;
                    }
                });
        }
        Ok((out, l.shape().clone()))
    }

    fn backward(&self, [_w]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Backward<1> {
        // Straight-through estimator: every weight lies inside its channel's range, so the
        // gradient passes unchanged (docs/method.md §3).
        Ok([Some(grad.clone())])
    }
}

custom_op!(CustomOp1 for FakeQuantWeightOp, |_| "seer-fake-quant-weight", WOP);

/// Checks the bit-width and rank of a weight for [`fake_quant_weight`] and
/// [`weight_scales`]; returns it contiguous.
fn prepare_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    check_bits(WOP, bits)?;
    if w.rank() == 0 {
        return Err(Error::Shape {
            op: WOP,
            msg: "weight must have rank ≥ 1, got a scalar".into(),
        });
    }
    prepare(w, WOP)
}

/// Fake-quantizes weights per output channel, symmetric, signed (docs/method.md §3):
/// `s_c = max|w_c| / (2^(b−1) − 1)` (`s_c = 1` for an all-zero channel, which stays zero),
/// `q = clamp(round(w / s_c), −qmax, qmax) · s_c` with round-half-away-from-zero.
/// Backward: straight-through (identity) gradient for `w`.
///
/// `w`: `[C_out, ...]` f32 (a conv weight `[C_out, C_in/g, K_h, K_w]` or a linear weight
/// `[out, in]`); returns the same shape. Errors: [`Error::InvalidBits`] if `bits ∉ 2..=8`,
/// [`Error::NonFinite`] for NaN/Inf in `w`, [`Error::Shape`] for a rank-0 tensor.
pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    let w = prepare_weight(w, bits)?;
    let err = ErrSlot::default();
    w.apply_op1(FakeQuantWeightOp {
        bits,
        err: err.clone(),
    })
    .map_err(|e| take(&err, e))
}

/// Per-output-channel scales `s_c` that [`fake_quant_weight`] uses, `[C_out]` f32.
/// Errors as [`fake_quant_weight`].
pub fn weight_scales(w: &Tensor, bits: u32) -> Result<Tensor> {
    let w = prepare_weight(w, bits)?;
    let c = w.dim(0)?;
    let v = F32View::new(&w, WOP)?;
    let s = channel_scales(v.slice(), c, weight_qmax(bits), WOP)?;
    Ok(to_tensor(s, &[c])?)
}

const LOP: &str = "fake_quant_weight_lsq";

/// The grid of [`weight_mse_steps`]: step = `f · max|w_c| / qmax` for `f` = 1.00, 0.98, …,
/// 0.10 (46 candidates).
const MSE_GRID: usize = 46;

/// Least-squares starting steps for [`fake_quant_weight_lsq`], `[C_out]` f32: per output
/// channel, among `f · max|w_c| / (2^(b−1) − 1)` for `f` = 1.00, 0.98, …, 0.10, the step
/// with the least squared quantization error `Σ (w − clamp(round(w/s), −qmax, qmax)·s)²`
/// (ties to the larger `f`); 1 for an all-zero channel (docs/method.md §3, "Learned weight
/// steps").
///
/// `w`: `[C_out, ...]` f32. Errors as [`fake_quant_weight`].
pub fn weight_mse_steps(w: &Tensor, bits: u32) -> Result<Tensor> {
    let w = prepare_weight(w, bits)?;
    let c = w.dim(0)?;
    let v = F32View::new(&w, LOP)?;
    let v = v.slice();
    check_finite(v, LOP, "w")?;
    let qmax = weight_qmax(bits);
    let len = v.len().checked_div(c).unwrap_or(0);
    let steps: Vec<f32> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let wc = &v[ch * len..(ch + 1) * len];
            let m = wc.iter().fold(0f32, |m, x| m.max(x.abs()));
            if m == 0.0 {
                return 1.0;
            }
            let mut best = (f64::INFINITY, m / qmax);
            for i in 0..MSE_GRID {
                let s = (1.0 - 0.02 * i as f32) * m / qmax;
                let e: f64 = wc
                    .iter()
                    .map(|&x| {
                        let d = x - round_half_away(x / s).clamp(-qmax, qmax) * s;
                        f64::from(d * d)
                    })
                    .sum();
                if e < best.0 {
                    best = (e, s);
                }
            }
            best.1
        })
        .collect();
    Ok(to_tensor(steps, &[c])?)
}

/// The smallest step [`fake_quant_weight_lsq`] uses, as a fraction of `max|w_c| / qmax`.
pub const LSQ_MIN_STEP: f32 = 1.0 / 1024.0;

/// The step channel `wc` is quantized with by [`fake_quant_weight_lsq`]: the learned step's
/// magnitude `|step|` held to `[LSQ_MIN_STEP · cap, cap]`, `cap = max|w_c| / qmax` (the step
/// [`fake_quant_weight`] takes, computed the same way); 1 for an all-zero channel (which stays
/// zero whatever the step).
#[inline]
fn lsq_step(wc: &[f32], step: f32, qmax: f32) -> f32 {
    let m = wc.iter().fold(0f32, |m, v| m.max(v.abs()));
    if m == 0.0 {
        return 1.0;
    }
    let cap = m / qmax;
    step.abs()
        .clamp((cap * LSQ_MIN_STEP).max(f32::MIN_POSITIVE).min(cap), cap)
}

/// Learned steps checked: `[C_out]`, finite.
fn check_steps(steps: &[f32], c: usize) -> Result<()> {
    if steps.len() != c {
        return Err(Error::Shape {
            op: LOP,
            msg: format!("{} steps for {c} output channels", steps.len()),
        });
    }
    match steps.iter().position(|s| !s.is_finite()) {
        Some(i) => Err(Error::InvalidParam {
            op: LOP,
            msg: format!("step of channel {i} must be finite, got {}", steps[i]),
        }),
        None => Ok(()),
    }
}

struct FakeQuantWeightLsqOp {
    bits: u32,
    err: ErrSlot,
}

impl FakeQuantWeightLsqOp {
    fn forward(&self, [w, st]: [&[f32]; 2], [l, _]: [&Layout; 2]) -> Forward {
        let c = l.dims()[0];
        check_finite(w, LOP, "w").map_err(|e| fail(&self.err, e))?;
        check_steps(st, c).map_err(|e| fail(&self.err, e))?;
        let qmax = weight_qmax(self.bits);
        let mut out = vec![0f32; w.len()];
        let len = w.len().checked_div(c).unwrap_or(0);
        if len > 0 {
            out.par_chunks_mut(len)
                .zip(w.par_chunks(len))
                .zip(st.par_iter())
                .for_each(|((o, wc), &step)| {
                    let s = lsq_step(wc, step, qmax);
                    for (o, &v) in o.iter_mut().zip(wc) {
                        *o = round_half_away(v / s).clamp(-qmax, qmax) * s;
                    }
                });
        }
        Ok((out, l.shape().clone()))
    }

    fn backward(&self, [w, steps]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Backward<2> {
        let grad = grad.contiguous()?;
        let wv = F32View::of(w, LOP)?;
        let sv = F32View::of(steps, LOP)?;
        let gv = F32View::of(&grad, LOP)?;
        let c = w.dim(0)?;
        let (dw, ds) = lsq_backward(wv.slice(), sv.slice(), gv.slice(), c, self.bits);
        Ok([
            Some(to_tensor(dw, w.dims())?),
            Some(to_tensor(ds, steps.dims())?),
        ])
    }
}

custom_op!(CustomOp2 for FakeQuantWeightLsqOp, |_| "seer-fake-quant-weight-lsq", LOP);

/// The backward of [`fake_quant_weight_lsq`] on slices: `(dw, ds)` for weights `w` viewed as
/// `[c, len]`, steps `st` (`[c]`) and upstream gradient `g` (as `w`). Per channel, with `s`
/// the step used ([`lsq_step`]) and `t = w/s`: `dw = g` where `|t| ≤ qmax`, else 0;
/// `ds = (1/√(len·qmax)) · Σ g · (round(t) − t)` inside and `g · sign(t) · qmax` outside,
/// summed in element order in f64 (so independent of the thread count).
fn lsq_backward(w: &[f32], st: &[f32], g: &[f32], c: usize, bits: u32) -> (Vec<f32>, Vec<f32>) {
    let qmax = weight_qmax(bits);
    let len = w.len().checked_div(c).unwrap_or(0);
    let mut dw = vec![0f32; w.len()];
    if len == 0 {
        return (dw, vec![0.0; c]);
    }
    let scale = 1.0 / ((len as f64) * f64::from(qmax)).sqrt();
    let ds = dw
        .par_chunks_mut(len)
        .zip(w.par_chunks(len).zip(g.par_chunks(len)))
        .zip(st.par_iter())
        .map(|((d, (wc, gc)), &step)| {
            let s = lsq_step(wc, step, qmax);
            let mut sum = 0f64;
            for ((d, &v), &gr) in d.iter_mut().zip(wc).zip(gc) {
                let t = v / s;
                let term = if t.abs() <= qmax {
                    *d = gr;
                    gr * (round_half_away(t) - t)
                } else {
                    gr * qmax.copysign(t)
                };
                sum += f64::from(term);
            }
            // The step used is |step|'s: the gradient carries the sign back.
            let sign = if step < 0.0 { -1.0 } else { 1.0 };
            (sum * scale) as f32 * sign
        })
        .collect();
    (dw, ds)
}

/// Fake-quantizes weights per output channel, symmetric, signed, with learned steps (LSQ,
/// Esser et al., ICLR 2020; docs/method.md §3, "Learned weight steps"):
/// `q = clamp(round(w / s_c), −qmax, qmax) · s_c`, `qmax = 2^(b−1) − 1`, round half away from
/// zero, where `s_c` is `|steps[c]|` held to `[LSQ_MIN_STEP · cap_c, cap_c]`, `cap_c =
/// max|w_c| / qmax`. The quantizer is the same for `s` and `−s`, so a step that an update
/// pushed below zero keeps working as its magnitude; the floor keeps one at zero usable. The
/// cap makes the largest-magnitude weight map to `±qmax`, so weights replaced by `q` quantize
/// to the same codes under [`fake_quant_weight`]. An all-zero channel stays zero.
///
/// Backward: straight-through for `w` inside the clip (`|w/s_c| ≤ qmax`), 0 outside; for
/// `steps[c]`, LSQ's step gradient with its scale `1/√(len·qmax)` (`len` weights per channel),
/// taken at the step used (straight through the cap and the floor), times the sign of
/// `steps[c]`.
///
/// `w`: `[C_out, ...]` f32; `steps`: `[C_out]` f32, finite (see [`weight_mse_steps`] for a
/// start); returns `w`'s shape. Errors: [`Error::InvalidBits`] if `bits ∉ 2..=8`,
/// [`Error::NonFinite`] for NaN/Inf in `w`, [`Error::InvalidParam`] for a non-finite step,
/// [`Error::Shape`] for a rank-0 `w` or `steps` not `[C_out]`.
pub fn fake_quant_weight_lsq(w: &Tensor, steps: &Tensor, bits: u32) -> Result<Tensor> {
    let w = prepare_weight(w, bits)?;
    if steps.dims() != [w.dim(0)?] {
        return Err(Error::Shape {
            op: LOP,
            msg: format!(
                "steps must be [{}] (one per output channel), got {:?}",
                w.dim(0)?,
                steps.dims()
            ),
        });
    }
    let steps = prepare(steps, LOP)?;
    let err = ErrSlot::default();
    w.apply_op2(
        &steps,
        FakeQuantWeightLsqOp {
            bits,
            err: err.clone(),
        },
    )
    .map_err(|e| take(&err, e))
}

pub(crate) const AOP: &str = "fake_quant_act";

struct FakeQuantActOp {
    bits: u32,
    err: ErrSlot,
}

/// The activation quantizer's arguments checked before an op is built: `bits ∈ 2..=8`
/// ([`Error::InvalidBits`]) and α of one element ([`Error::Shape`]; its value is checked
/// when read, [`read_alpha`]).
pub(crate) fn check_act_args(alpha: &Tensor, bits: u32) -> Result<()> {
    check_bits(AOP, bits)?;
    if alpha.elem_count() != 1 {
        return Err(Error::Shape {
            op: AOP,
            msg: format!("alpha must hold one element, got shape {:?}", alpha.dims()),
        });
    }
    Ok(())
}

pub(crate) fn read_alpha(a: &[f32], op: &'static str) -> Result<f32> {
    match a {
        [alpha] if alpha.is_finite() && *alpha > 0.0 => Ok(*alpha),
        [alpha] => Err(Error::InvalidParam {
            op,
            msg: format!("clip range alpha must be finite and > 0, got {alpha}"),
        }),
        _ => Err(Error::Shape {
            op,
            msg: format!("alpha must hold one element, got {}", a.len()),
        }),
    }
}

impl FakeQuantActOp {
    fn forward(&self, [x, a]: [&[f32]; 2], [l, _]: [&Layout; 2]) -> Forward {
        let alpha = read_alpha(a, AOP).map_err(|e| fail(&self.err, e))?;
        check_finite(x, AOP, "x").map_err(|e| fail(&self.err, e))?;
        let q = ActQ::new(alpha, self.bits);
        let out = par_map(x, move |v| q.apply(v));
        Ok((out, l.shape().clone()))
    }

    fn backward(&self, [x, alpha]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Backward<2> {
        let grad = grad.contiguous()?;
        let xv = F32View::of(x, AOP)?;
        let av = F32View::of(alpha, AOP)?;
        let gv = F32View::of(&grad, AOP)?;
        let a = read_alpha(av.slice(), AOP).map_err(Error::into_candle)?;
        let (dx, dalpha) = act_backward(xv.slice(), gv.slice(), ActQ::new(a, self.bits));
        let dx = to_tensor(dx, x.dims())?;
        let da = Tensor::full(dalpha as f32, alpha.dims(), alpha.device())?;
        Ok([Some(dx), Some(da)])
    }
}

custom_op!(CustomOp2 for FakeQuantActOp, |_| "seer-fake-quant-act", AOP);

/// The backward of [`fake_quant_act`] on slices: `(dx, dα)` for input `x`, upstream gradient
/// `g` (same length) and the quantizer `q`.
///
/// `dα` is summed per fixed block of [`BLOCK`] elements in element order, in f64, and the
/// block sums are added in block order, so the result does not depend on the thread count.
/// Its terms are computed element-wise in f32 (vectorised, [`crate::simd::map2_into`]);
/// outside the clip range below zero the term is `+0.0`, which leaves an f64 sum that never
/// holds `−0.0` unchanged, so the bits equal those of a loop that skips those elements
/// (tested against one). Four blocks are summed in one interleaved loop: four independent
/// add chains instead of one, with each block's own order unchanged.
pub(crate) fn act_backward(xs: &[f32], gs: &[f32], q: ActQ) -> (Vec<f32>, f64) {
    const GROUP: usize = 4;
    let ActQ { a, n, s } = q;
    let len = xs.len();
    assert_eq!(
        gs.len(),
        len,
        "act_backward: gradient and input lengths differ"
    );
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    let sums: Vec<f64> = dx.spare_capacity_mut()[..len]
        .par_chunks_mut(GROUP * BLOCK)
        .zip(
            xs.par_chunks(GROUP * BLOCK)
                .zip(gs.par_chunks(GROUP * BLOCK)),
        )
        .flat_map_iter(|(d, (x, g))| {
            crate::simd::map2_into_uninit(
                x,
                g,
                d,
                move |x, g| if x >= 0.0 && x <= a { g } else { 0.0 },
            );
            let mut terms = vec![0f32; x.len()];
            // Every branch computed, then selected: no branch in the loop body.
            crate::simd::map2_into(x, g, &mut terms, move |x, g| {
                let t = x / s;
                let inside = g * ((round_half_away(t) - t) / n);
                let v = if x > a { g } else { inside };
                if x >= 0.0 { v } else { 0.0 }
            });
            block_sums::<GROUP>(&terms)
        })
        .collect();
    // SAFETY: the chunks cover `0..len` (`xs` has `len` elements, so the zip visited every
    // chunk) and `map2_into_uninit` wrote each whole (`x` and `g` are as long as their chunk
    // of `dx`: all three are the same-sized pieces of `len`-element slices); a panic in a
    // task propagates first.
    unsafe { dx.set_len(len) };
    (dx, sums.iter().sum())
}

/// Per block of [`BLOCK`] elements of `t` (at most `G` blocks), the f64 sum of its elements
/// in order. When there are `G` full blocks their chains run interleaved.
fn block_sums<const G: usize>(t: &[f32]) -> Vec<f64> {
    if t.len() == G * BLOCK {
        let mut acc = [0f64; G];
        for i in 0..BLOCK {
            for (j, a) in acc.iter_mut().enumerate() {
                *a += t[j * BLOCK + i] as f64;
            }
        }
        return acc.to_vec();
    }
    t.chunks(BLOCK)
        .map(|b| b.iter().fold(0f64, |acc, &v| acc + v as f64))
        .collect()
}

/// Fake-quantizes activations, unsigned, to `bits` bits over the clip range `[0, α]`
/// (docs/method.md §3): `y = s · round(clamp(x, 0, α) / s)`, `s = α / (2^b − 1)`,
/// round-half-away-from-zero.
///
/// Backward (PACT/LSQ-style): `∂y/∂x = 1` for `0 ≤ x ≤ α` (straight-through), `0` outside;
/// `∂y/∂α = (round(x/s) − x/s) / (2^b − 1)` inside, `1` for `x > α`, `0` for `x < 0`
/// (LSQ's step-size gradient, without its `1/√(N·Q)` scale), summed over all elements.
///
/// `x`: any shape, f32; `alpha`: one element (shape `[]` or `[1]`), f32, finite and > 0.
/// Errors: [`Error::InvalidBits`] if `bits ∉ 2..=8`, [`Error::NonFinite`] for NaN/Inf in `x`,
/// [`Error::InvalidParam`] for α ≤ 0 or non-finite, [`Error::Shape`] if α has ≠ 1 element.
pub fn fake_quant_act(x: &Tensor, alpha: &Tensor, bits: u32) -> Result<Tensor> {
    check_act_args(alpha, bits)?;
    let x = prepare(x, AOP)?;
    let alpha = prepare(alpha, AOP)?;
    let err = ErrSlot::default();
    x.apply_op2(
        &alpha,
        FakeQuantActOp {
            bits,
            err: err.clone(),
        },
    )
    .map_err(|e| take(&err, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{rel_err, tensor, values, vec};
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Bit for bit `f32::round` on arbitrary bit patterns and on values near halves.
        #[test]
        fn round_half_away_is_round(bits in any::<u32>(), k in -300i32..300, e in -3i32..3) {
            for x in [f32::from_bits(bits), k as f32 * 0.5, k as f32 * 0.5 + f32::EPSILON * e as f32,
                      (k as f32 * 0.5).next_up(), (k as f32 * 0.5).next_down()] {
                let (a, b) = (round_half_away(x), x.round());
                prop_assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{x}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn round_half_away_edges() {
        for x in [
            0.49999997f32,
            -0.49999997,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            8_388_607.5,
            8_388_608.0,
            -0.0,
            0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ] {
            assert_eq!(round_half_away(x).to_bits(), x.round().to_bits(), "{x}");
        }
        assert!(round_half_away(f32::NAN).is_nan());
    }

    /// Weights with edge cases mixed in: zero channels, constant channels, grid midpoints.
    fn weights(seed: u64, c: usize, len: usize, kind: u8) -> Var {
        let mut v = values(seed, c * len);
        for ch in 0..c {
            let row = &mut v[ch * len..(ch + 1) * len];
            match (kind + ch as u8) % 5 {
                0 => row.fill(0.0),
                1 => row.fill(-0.37),
                2 => {
                    // exact grid midpoints for 3 bits: s = 1/3 → (k + 0.5)/3
                    for (i, x) in row.iter_mut().enumerate() {
                        *x = if i == 0 {
                            1.0
                        } else {
                            ((i % 3) as f32 + 0.5) / 3.0
                        };
                    }
                }
                _ => {}
            }
        }
        Var::from_vec(v, (c, len), &Device::Cpu).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn weight_matches_reference(c in 1usize..6, len in 1usize..20, bits in 2u32..=8, kind in 0u8..5, seed in 0u64..1000) {
            let w = weights(seed, c, len, kind);
            let ours = fake_quant_weight(w.as_tensor(), bits).unwrap();
            let refq = reference::fake_quant_weight(w.as_tensor(), bits).unwrap();
            prop_assert!(vec(&ours).iter().all(|v| v.is_finite()));
            prop_assert!(rel_err(&ours, &refq, 1e-6) <= 1e-6);
            // at most 2^b − 1 distinct levels per channel, all multiples of the scale
            let r = tensor(seed + 5, &[c, len]);
            let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refq * &r).unwrap().sum_all().unwrap().backward().unwrap();
            prop_assert_eq!(vec(go.get(w.as_tensor()).unwrap()), vec(gr.get(w.as_tensor()).unwrap()));
        }

        /// The learned-step quantizer against its candle-ops reference: forward, `dw` and the
        /// step gradient to rounding (`dw`'s zeros exactly); steps below, at and above the cap, zero channels.
        #[test]
        fn lsq_weight_matches_reference(c in 1usize..6, len in 1usize..40, bits in 2u32..=8, kind in 0u8..5, seed in 0u64..1000, fs in proptest::collection::vec(0.1f32..1.6, 6), neg in proptest::collection::vec(any::<bool>(), 6)) {
            let w = weights(seed, c, len, kind);
            let wv = vec(w.as_tensor());
            let qmax = weight_qmax(bits);
            let st: Vec<f32> = (0..c).map(|ch| {
                let m = wv[ch * len..(ch + 1) * len].iter().fold(0f32, |m, v| m.max(v.abs()));
                // f ≥ 1 is at or above the cap: the step used is max/qmax; a negative step
                // works as its magnitude.
                let f = if neg[ch] { -fs[ch] } else { fs[ch] };
                if m > 0.0 { f * m / qmax } else { f }
            }).collect();
            let s = Var::from_vec(st, c, &Device::Cpu).unwrap();
            let ours = fake_quant_weight_lsq(w.as_tensor(), s.as_tensor(), bits).unwrap();
            let refq = reference::fake_quant_weight_lsq(w.as_tensor(), s.as_tensor(), bits).unwrap();
            prop_assert!(rel_err(&ours, &refq, 1e-6) <= 1e-6, "{:?} vs {:?}", vec(&ours), vec(&refq));
            let r = tensor(seed + 5, &[c, len]);
            let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refq * &r).unwrap().sum_all().unwrap().backward().unwrap();
            // The reference's `dw` goes through `/s` and `·s`: equal up to an ulp, zeros exact.
            let (dw, dwr) = (vec(go.get(w.as_tensor()).unwrap()), vec(gr.get(w.as_tensor()).unwrap()));
            for (a, b) in dw.iter().zip(&dwr) {
                prop_assert!((a - b).abs() <= 1e-6 * b.abs() && (*a == 0.0) == (*b == 0.0), "dw {:?} vs {:?}", dw, dwr);
            }
            let (ds, dr) = (vec(go.get(s.as_tensor()).unwrap()), vec(gr.get(s.as_tensor()).unwrap()));
            let scale = vec(&r).iter().map(|v| v.abs()).sum::<f32>().max(1e-3) * qmax;
            for (a, b) in ds.iter().zip(&dr) {
                prop_assert!((a - b).abs() <= 1e-5 * scale, "dstep {:?} vs {:?}", ds, dr);
            }
        }

        /// A weight replaced by its learned-step quantization quantizes to the same codes under
        /// the max-range quantizer (what evaluation and the integer export use after a
        /// fine-tune), and to the same values up to rounding of the step.
        #[test]
        fn lsq_weights_keep_their_codes_under_the_max_range(c in 1usize..6, len in 1usize..40, bits in 2u32..=8, seed in 0u64..1000, fs in proptest::collection::vec(0.1f32..1.6, 6)) {
            let w = weights(seed, c, len, 4);
            let wv = vec(w.as_tensor());
            let qmax = weight_qmax(bits);
            let st: Vec<f32> = (0..c).map(|ch| {
                let m = wv[ch * len..(ch + 1) * len].iter().fold(0f32, |m, v| m.max(v.abs()));
                if m > 0.0 { fs[ch] * m / qmax } else { 1.0 }
            }).collect();
            let s = Tensor::from_vec(st, c, &Device::Cpu).unwrap();
            let q = fake_quant_weight_lsq(w.as_tensor(), &s, bits).unwrap();
            let again = fake_quant_weight(&q, bits).unwrap();
            let (sq, sa) = (vec(&weight_scales(&q, bits).unwrap()), vec(&weight_scales(&again, bits).unwrap()));
            let (qv, av) = (vec(&q), vec(&again));
            for ch in 0..c {
                for j in 0..len {
                    let i = ch * len + j;
                    prop_assert_eq!(round_half_away(qv[i] / sq[ch]), round_half_away(av[i] / sa[ch]), "channel {} element {}", ch, j);
                }
            }
            prop_assert!(rel_err(&q, &again, 1e-6) <= 1e-6);
        }
    }

    #[test]
    fn lsq_steps_at_the_cap_equal_the_max_range_quantizer() {
        for (seed, kind) in [(1u64, 0u8), (2, 2), (3, 4)] {
            let w = weights(seed, 5, 27, kind);
            for bits in 2..=8 {
                let big = Tensor::full(1e3f32, 5, &Device::Cpu).unwrap();
                let a = fake_quant_weight_lsq(w.as_tensor(), &big, bits).unwrap();
                let b = fake_quant_weight(w.as_tensor(), bits).unwrap();
                let (a, b) = (vec(&a), vec(&b));
                // Zero channels keep the step 1e3 and stay zero; the rest take max/qmax.
                assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    /// A step quantizes with its magnitude; one at zero or nearer to it than the floor
    /// `LSQ_MIN_STEP · cap` with the floor.
    #[test]
    fn lsq_steps_below_the_floor_use_the_floor() {
        let w = Tensor::new(&[[1f32, 0.5, -0.25, 0.001], [0., 0., 0., 0.]], &Device::Cpu).unwrap();
        let floor = 1.0 / 3.0 * LSQ_MIN_STEP;
        let at = Tensor::new(&[floor, 1.0], &Device::Cpu).unwrap();
        let want = vec(&fake_quant_weight_lsq(&w, &at, 3).unwrap());
        for s in [0f32, -0.0, floor / 2.0, -floor / 2.0, -floor] {
            let st = Tensor::new(&[s, -1.0], &Device::Cpu).unwrap();
            let got = vec(&fake_quant_weight_lsq(&w, &st, 3).unwrap());
            assert_eq!(got, want, "step {s}");
            assert!(got[4..].iter().all(|v| *v == 0.0));
        }
        // With the floor step every weight but the smallest clips to ±3 steps.
        assert_eq!(want[0], 3.0 * floor);
        for s in [0.2f32, 0.01] {
            let pos = Tensor::new(&[s, 1.0], &Device::Cpu).unwrap();
            let neg = Tensor::new(&[-s, -1.0], &Device::Cpu).unwrap();
            assert_eq!(
                vec(&fake_quant_weight_lsq(&w, &pos, 3).unwrap()),
                vec(&fake_quant_weight_lsq(&w, &neg, 3).unwrap())
            );
        }
    }

    #[test]
    fn mse_steps_never_lose_to_the_max_range() {
        let w = weights(7, 5, 300, 4);
        for bits in [2u32, 3, 4, 8] {
            let st = vec(&weight_mse_steps(w.as_tensor(), bits).unwrap());
            let maxs = vec(&weight_scales(w.as_tensor(), bits).unwrap());
            let qmax = weight_qmax(bits);
            let wv = vec(w.as_tensor());
            let err = |ch: usize, s: f32| -> f64 {
                wv[ch * 300..(ch + 1) * 300]
                    .iter()
                    .map(|&x| f64::from(x - round_half_away(x / s).clamp(-qmax, qmax) * s).powi(2))
                    .sum()
            };
            for ch in 0..5 {
                assert!(
                    st[ch] > 0.0 && st[ch] <= maxs[ch],
                    "{bits} bits, channel {ch}"
                );
                assert!(
                    err(ch, st[ch]) <= err(ch, maxs[ch]),
                    "{bits} bits, channel {ch}"
                );
            }
        }
        // A random-normal-like channel at 2 bits: the best ternary step is far below max/1.
        let g: Vec<f32> = values(11, 2000);
        let t = Tensor::from_vec(g, (1, 2000), &Device::Cpu).unwrap();
        let s2 = vec(&weight_mse_steps(&t, 2).unwrap())[0];
        let m2 = vec(&weight_scales(&t, 2).unwrap())[0];
        assert!(s2 < 0.8 * m2, "{s2} vs {m2}");
        let z = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(vec(&weight_mse_steps(&z, 3).unwrap()), vec![1.0, 1.0]);
    }

    #[test]
    fn lsq_bad_steps_are_errors() {
        let w = Tensor::new(&[[1f32, 2.], [0.5, -1.]], &Device::Cpu).unwrap();
        for bad in [vec![1f32], vec![1., 1., 1.]] {
            let s = Tensor::from_vec(bad, 1, &Device::Cpu)
                .unwrap_or_else(|_| Tensor::new(&[1f32, 1., 1.], &Device::Cpu).unwrap());
            assert!(matches!(
                fake_quant_weight_lsq(&w, &s, 4),
                Err(Error::Shape { .. })
            ));
        }
        for bad in [f32::NAN, f32::INFINITY] {
            let s = Tensor::new(&[1f32, bad], &Device::Cpu).unwrap();
            assert!(
                matches!(
                    fake_quant_weight_lsq(&w, &s, 4),
                    Err(Error::InvalidParam { .. })
                ),
                "{bad}"
            );
        }
        let s = Tensor::new(&[1f32, 1.], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_weight_lsq(&w, &s, 9),
            Err(Error::InvalidBits { .. })
        ));
        let nan = Tensor::new(&[[1f32, f32::NAN], [0.5, -1.]], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_weight_lsq(&nan, &s, 4),
            Err(Error::NonFinite { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn act_matches_reference(len in 1usize..200, bits in 2u32..=8, alpha in 0.05f32..3.0, kind in 0u8..4, seed in 0u64..1000) {
            let mut v: Vec<f32> = values(seed, len).into_iter().map(|x| x * 2.0 * alpha).collect();
            let s = alpha / act_levels(bits);
            for (i, x) in v.iter_mut().enumerate() {
                match (i as u8 + kind) % 7 {
                    0 => *x = 0.0,
                    1 => *x = alpha,
                    2 => *x = ((i % 5) as f32 + 0.5) * s, // grid midpoint
                    _ => {}
                }
            }
            let x = Var::from_vec(v, len, &Device::Cpu).unwrap();
            let a = Var::new(&[alpha], &Device::Cpu).unwrap();
            let ours = fake_quant_act(x.as_tensor(), a.as_tensor(), bits).unwrap();
            let refq = reference::fake_quant_act(x.as_tensor(), a.as_tensor(), bits).unwrap();
            prop_assert!(rel_err(&ours, &refq, 1e-6) <= 1e-6, "{:?} vs {:?} (x {:?})", vec(&ours), vec(&refq), vec(x.as_tensor()));
            let r = tensor(seed + 9, &[len]);
            let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refq * &r).unwrap().sum_all().unwrap().backward().unwrap();
            // STE mask for x: exact
            prop_assert_eq!(vec(go.get(x.as_tensor()).unwrap()), vec(gr.get(x.as_tensor()).unwrap()));
            let (da, dr) = (vec(go.get(a.as_tensor()).unwrap())[0], vec(gr.get(a.as_tensor()).unwrap())[0]);
            let scale = vec(&r).iter().map(|v| v.abs()).sum::<f32>().max(1e-3);
            prop_assert!((da - dr).abs() <= 1e-5 * scale, "dalpha {} vs {}", da, dr);
        }
    }

    /// The element-by-element loop that [`act_backward`] replaced (one block at a time,
    /// skipping the elements below zero).
    fn act_backward_loop(xs: &[f32], gs: &[f32], a: f32, n: f32) -> (Vec<f32>, f64) {
        let s = a / n;
        let mut dx = vec![0f32; xs.len()];
        let mut sums = Vec::new();
        for (d, (x, g)) in dx
            .chunks_mut(BLOCK)
            .zip(xs.chunks(BLOCK).zip(gs.chunks(BLOCK)))
        {
            let mut acc = 0f64;
            for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                if x > a {
                    acc += g as f64;
                } else if x >= 0.0 {
                    *d = g;
                    let t = x / s;
                    acc += (g * ((round_half_away(t) - t) / n)) as f64;
                }
            }
            sums.push(acc);
        }
        (dx, sums.iter().sum())
    }

    /// The vectorised, interleaved backward gives the loop's bits, for one block, a group of
    /// four, groups with a tail, negative and signed-zero gradients, on every SIMD level.
    #[test]
    fn act_backward_has_the_loops_bits() {
        use crate::simd::{Level, detected, with_level};
        let levels = [Level::Portable, Level::Avx2, Level::Avx512];
        // One worker thread, so that the capped level holds inside rayon's loops too.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for len in [1, 1000, BLOCK, 4 * BLOCK, 4 * BLOCK + 17, 9 * BLOCK + 5] {
            let a = 1.3f32;
            let mut x: Vec<f32> = values(len as u64, len)
                .into_iter()
                .map(|v| v * 2.0 * a)
                .collect();
            let mut g = values(len as u64 + 1, len);
            for i in (0..len).step_by(7) {
                x[i] = 0.0;
                g[(i * 3) % len] = -0.0;
            }
            x[len / 2] = a;
            for bits in [2, 4, 8] {
                let n = act_levels(bits);
                let want = act_backward_loop(&x, &g, a, n);
                for &l in levels.iter().filter(|&&l| l <= detected()) {
                    let q = ActQ::new(a, bits);
                    let got = pool.install(|| with_level(l, || act_backward(&x, &g, q)));
                    assert_eq!(
                        got.1.to_bits(),
                        want.1.to_bits(),
                        "dα, len {len}, {bits} bits, {l:?}"
                    );
                    let same = got
                        .0
                        .iter()
                        .zip(&want.0)
                        .all(|(p, q)| p.to_bits() == q.to_bits());
                    assert!(same, "dx, len {len}, {bits} bits, {l:?}");
                }
                // And on the default pool (several threads at the detected level).
                let got = act_backward(&x, &g, ActQ::new(a, bits));
                assert_eq!(
                    got.1.to_bits(),
                    want.1.to_bits(),
                    "dα, len {len}, {bits} bits"
                );
            }
        }
    }

    #[test]
    fn zero_and_constant_channels() {
        let w = Tensor::new(
            &[[0f32, 0., 0.], [0.5, 0.5, 0.5], [-2., 1., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let q = vec(&fake_quant_weight(&w, 2).unwrap());
        assert_eq!(q, vec![0., 0., 0., 0.5, 0.5, 0.5, -2., 2., 0.]);
        let s = vec(&weight_scales(&w, 8).unwrap());
        assert_eq!(s, vec![1.0, 0.5 / 127.0, 2.0 / 127.0]);
    }

    #[test]
    fn eight_bit_levels_and_clip() {
        let x = Tensor::new(&[-1f32, 0., 0.3, 1.0, 1.7, 255.0], &Device::Cpu).unwrap();
        let a = Tensor::new(&[255f32], &Device::Cpu).unwrap();
        // s = 1: integers in [0, 255]
        assert_eq!(
            vec(&fake_quant_act(&x, &a, 8).unwrap()),
            vec![0., 0., 0., 1., 2., 255.]
        );
        let a = Tensor::new(&[3f32], &Device::Cpu).unwrap();
        // 2 bits: levels {0,1,2,3}, 1.5 rounds away from zero
        let x = Tensor::new(&[1.5f32, 2.49, 7.0], &Device::Cpu).unwrap();
        assert_eq!(vec(&fake_quant_act(&x, &a, 2).unwrap()), vec![2., 2., 3.]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let w = Tensor::new(&[[1f32, f32::NAN]], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_weight(&w, 4),
            Err(Error::NonFinite { index: 1, .. })
        ));
        let ok = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_weight(&ok, 1),
            Err(Error::InvalidBits { bits: 1, .. })
        ));
        assert!(matches!(
            fake_quant_weight(&ok, 9),
            Err(Error::InvalidBits { bits: 9, .. })
        ));
        let a = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        let x = Tensor::new(&[0.5f32, f32::INFINITY], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_act(&x, &a, 4),
            Err(Error::NonFinite { what: "x", .. })
        ));
        let zero = Tensor::new(&[0f32], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_act(&ok, &zero, 4),
            Err(Error::InvalidParam { .. })
        ));
        let two = Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap();
        assert!(matches!(
            fake_quant_act(&ok, &two, 4),
            Err(Error::Shape { .. })
        ));
    }
}
