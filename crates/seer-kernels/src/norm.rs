//! Fused BatchNorm (train mode, optionally with ReLU) and ReLU as candle custom ops with
//! backward: one read pass for the statistics and one read/write pass for the output, where
//! candle's element-wise ops would allocate a tensor per step.

use std::sync::{Arc, OnceLock};

use candle_core::{Layout, Tensor};
use rayon::prelude::*;

use crate::view::{
    Backward, F32View, Forward, custom_op, par_chunks_written, par_map, prepare, relu_grad,
    to_tensor,
};
use crate::{Error, Result};

const OP: &str = "batch_norm_train";

/// Images whose blocks of one channel are summed side by side: independent add chains, so
/// the sums run at the adder's throughput instead of its latency (each block's own sum
/// keeps its order, so the bits are those of one block at a time).
const SIDE: usize = 4;

/// Per block `k`: `(Σ a_k, Σ a_k·(b_k − c))` over `len` elements, eight f32 lanes (lane `l`
/// adds elements `l, l + 8, …` in order), the lanes then added in f64 in lane order, then
/// the `len mod 8` last elements one by one in f64. `K` blocks at once. Panics (an internal
/// bug) when a block is shorter than `len`.
#[inline(always)]
fn dot_sums<const K: usize>(a: [&[f32]; K], b: [&[f32]; K], c: f32, len: usize) -> [(f64, f64); K] {
    let full = len / 8 * 8;
    let mut s = [[0f32; 8]; K];
    let mut p = [[0f32; 8]; K];
    for k in 0..K {
        for (x, y) in a[k][..full]
            .chunks_exact(8)
            .zip(b[k][..full].chunks_exact(8))
        {
            for l in 0..8 {
                s[k][l] += x[l];
                p[k][l] += x[l] * (y[l] - c);
            }
        }
    }
    std::array::from_fn(|k| dot_finish(s[k], p[k], &a[k][full..len], &b[k][full..len], c))
}

/// The end of [`dot_sums`] for one block: its lanes in f64, then its last elements.
#[inline(always)]
fn dot_finish(s: [f32; 8], p: [f32; 8], a: &[f32], b: &[f32], c: f32) -> (f64, f64) {
    let mut s0: f64 = s.iter().map(|&v| v as f64).sum();
    let mut p0: f64 = p.iter().map(|&v| v as f64).sum();
    for (x, y) in a.iter().zip(b) {
        s0 += *x as f64;
        p0 += (*x * (*y - c)) as f64;
    }
    (s0, p0)
}

/// Per block `k`: `Σ (a_k − m)²` over `len` elements as two f64 parts, the sum of eight f32
/// lanes (as in [`dot_sums`]) and the sum of the last `len mod 8` terms. Panics (an
/// internal bug) when a block is shorter than `len`.
#[inline(always)]
fn sq_devs<const K: usize>(a: [&[f32]; K], m: f32, len: usize) -> [(f64, f64); K] {
    let full = len / 8 * 8;
    let mut acc = [[0f32; 8]; K];
    for k in 0..K {
        for x in a[k][..full].chunks_exact(8) {
            for l in 0..8 {
                let d = x[l] - m;
                acc[k][l] += d * d;
            }
        }
    }
    std::array::from_fn(|k| sq_finish(acc[k], &a[k][full..len], m))
}

/// The end of [`sq_devs`] for one block.
#[inline(always)]
fn sq_finish(acc: [f32; 8], a: &[f32], m: f32) -> (f64, f64) {
    (
        acc.iter().map(|&v| v as f64).sum::<f64>(),
        a.iter().map(|&v| ((v - m) * (v - m)) as f64).sum::<f64>(),
    )
}

/// [`dot_sums`] and [`sq_devs`] with the `K` blocks side by side in AVX registers, one
/// 8-lane vector per block and sum: the same IEEE operations per lane in the same order
/// (separate multiply and add), so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// See [`super::dot_sums`]; the caller checked AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_sums<const K: usize>(
        a: [&[f32]; K],
        b: [&[f32]; K],
        c: f32,
        len: usize,
    ) -> [(f64, f64); K] {
        assert!(
            a.iter().chain(&b).all(|t| t.len() >= len),
            "dot_sums: block too short"
        );
        let full = len / 8 * 8;
        let cv = _mm256_set1_ps(c);
        let mut s = [_mm256_setzero_ps(); K];
        let mut p = [_mm256_setzero_ps(); K];
        let mut q = 0;
        while q < full {
            for k in 0..K {
                // SAFETY: q + 8 <= full <= len, and every block holds `len` elements.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(a[k].as_ptr().add(q)),
                        _mm256_loadu_ps(b[k].as_ptr().add(q)),
                    )
                };
                s[k] = _mm256_add_ps(s[k], x);
                p[k] = _mm256_add_ps(p[k], _mm256_mul_ps(x, _mm256_sub_ps(y, cv)));
            }
            q += 8;
        }
        std::array::from_fn(|k| {
            let (mut sl, mut pl) = ([0f32; 8], [0f32; 8]);
            // SAFETY: each array holds 8 floats.
            unsafe {
                _mm256_storeu_ps(sl.as_mut_ptr(), s[k]);
                _mm256_storeu_ps(pl.as_mut_ptr(), p[k]);
            }
            super::dot_finish(sl, pl, &a[k][full..len], &b[k][full..len], c)
        })
    }

    /// See [`super::sq_devs`]; the caller checked AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) fn sq_devs<const K: usize>(a: [&[f32]; K], m: f32, len: usize) -> [(f64, f64); K] {
        assert!(a.iter().all(|t| t.len() >= len), "sq_devs: block too short");
        let full = len / 8 * 8;
        let mv = _mm256_set1_ps(m);
        let mut acc = [_mm256_setzero_ps(); K];
        let mut q = 0;
        while q < full {
            for k in 0..K {
                // SAFETY: q + 8 <= full <= len, and every block holds `len` elements.
                let x = unsafe { _mm256_loadu_ps(a[k].as_ptr().add(q)) };
                let d = _mm256_sub_ps(x, mv);
                acc[k] = _mm256_add_ps(acc[k], _mm256_mul_ps(d, d));
            }
            q += 8;
        }
        std::array::from_fn(|k| {
            let mut l = [0f32; 8];
            // SAFETY: the array holds 8 floats.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), acc[k]) };
            super::sq_finish(l, &a[k][full..len], m)
        })
    }
}

/// What one channel's sums over the images compute ([`channel_sums`]).
#[derive(Clone, Copy)]
enum ChannelSum {
    /// `(Σ a, Σ a·(b − m))` ([`dot_sums`]; `b` is `a` when only `Σ a` is wanted).
    Dot,
    /// `(Σ (a − m)², 0)` ([`sq_devs`]; each block's two parts added in turn).
    SqDev,
}

/// Channel `ch`'s sums over the `[N, C, inner]` data `a` (and `b`, same layout): each
/// image's block summed as [`dot_sums`] / [`sq_devs`] do, the block totals added in f64 in
/// image order — [`SIDE`] images side by side, the same bits as one at a time. On AVX2 CPUs
/// the blocks sit in AVX registers ([`avx2`]; the same bits).
#[allow(clippy::too_many_arguments)]
fn channel_sums(
    kind: ChannelSum,
    a: &[f32],
    b: &[f32],
    m: f32,
    n: usize,
    c: usize,
    inner: usize,
    ch: usize,
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    let simd = crate::simd::level() >= crate::simd::Level::Avx2;
    #[cfg(not(target_arch = "x86_64"))]
    let simd = false;
    fn group<const K: usize>(
        simd: bool,
        kind: ChannelSum,
        a: [&[f32]; K],
        b: [&[f32]; K],
        m: f32,
        len: usize,
        acc: &mut (f64, f64),
    ) {
        match kind {
            ChannelSum::Dot => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 checked by the caller (`simd`).
                let r = if simd {
                    unsafe { avx2::dot_sums::<K>(a, b, m, len) }
                } else {
                    dot_sums::<K>(a, b, m, len)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let r = dot_sums::<K>(a, b, m, len);
                for (s, p) in r {
                    acc.0 += s;
                    acc.1 += p;
                }
            }
            ChannelSum::SqDev => {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX2 checked by the caller (`simd`).
                let r = if simd {
                    unsafe { avx2::sq_devs::<K>(a, m, len) }
                } else {
                    sq_devs::<K>(a, m, len)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let r = sq_devs::<K>(a, m, len);
                for (lanes, tail) in r {
                    acc.0 += lanes;
                    acc.0 += tail;
                }
            }
        }
    }
    fn at(t: &[f32], at: usize, inner: usize) -> &[f32] {
        &t[at..at + inner]
    }
    let block = |t, i: usize| at(t, (i * c + ch) * inner, inner);
    let mut acc = (0f64, 0f64);
    let mut i = 0;
    while i + SIDE <= n {
        let ab: [&[f32]; SIDE] = std::array::from_fn(|k| block(a, i + k));
        let bb: [&[f32]; SIDE] = std::array::from_fn(|k| block(b, i + k));
        group::<SIDE>(simd, kind, ab, bb, m, inner, &mut acc);
        i += SIDE;
    }
    for i in i..n {
        group::<1>(simd, kind, [block(a, i)], [block(b, i)], m, inner, &mut acc);
    }
    acc
}

/// Per-channel `(mean, biased variance)` of the `[N, C, inner]` data, two passes per channel
/// (the channel's data is re-read from cache), so constant channels give variance 0 exactly.
fn channel_stats(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
    let m = (n * inner) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let s = channel_sums(ChannelSum::Dot, x, x, 0.0, n, c, inner, ch).0;
            let mean = (s / m) as f32;
            let q = channel_sums(ChannelSum::SqDev, x, x, mean, n, c, inner, ch).0;
            (mean, (q / m) as f32)
        })
        .unzip()
}

/// `(outer, channels, inner)` of an `[N, C, ...]` tensor.
fn nci(dims: &[usize]) -> (usize, usize, usize) {
    (dims[0], dims[1], dims[2..].iter().product())
}

/// Batch statistics of the fused op: per-channel mean and biased variance.
struct Stats {
    mean: Vec<f32>,
    var: Vec<f32>,
}

struct BatchNormOp {
    eps: f32,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl BatchNormOp {
    fn forward(&self, [x, gamma, beta]: [&[f32]; 3], [l, _, _]: [&Layout; 3]) -> Forward {
        let (n, c, inner) = nci(l.dims());
        let (mean, var) = channel_stats(x, n, c, inner);
        let (scale, shift): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ch| {
                let k = gamma[ch] / (var[ch] + self.eps).sqrt();
                (k, beta[ch] - mean[ch] * k)
            })
            .unzip();
        let relu = self.relu;
        // SAFETY: each chunk is one plane, `o.len()` elements of `x` each written.
        let out = unsafe {
            par_chunks_written(x.len(), inner.max(1), |r, o| {
                let (k, b) = (scale[r % c], shift[r % c]);
                let x = &x[r * inner..][..o.len()];
                if relu {
                    for (o, &x) in o.iter_mut().zip(x) {
                        o.write((x * k + b).max(0.0));
                    }
                } else {
                    for (o, &x) in o.iter_mut().zip(x) {
                        o.write(x * k + b);
                    }
                }
            })
        };
        let _ = self.stats.set(Stats { mean, var });
        Ok((out, l.shape().clone()))
    }

    fn backward(
        &self,
        [x, gamma, _beta]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Backward<3> {
        let Some(st) = self.stats.get() else {
            candle_core::bail!("{OP}: backward before forward");
        };
        let grad = grad.contiguous()?;
        let xv = F32View::of(x, OP)?;
        let gv = F32View::of(gamma, OP)?;
        let dv = F32View::of(&grad, OP)?;
        let rv = F32View::of(res, OP)?;
        let (xs, gam, dys, ys) = (xv.slice(), gv.slice(), dv.slice(), rv.slice());
        let (n, c, inner) = nci(x.dims());
        let m = (n * inner) as f64;
        // With the fused ReLU, the gradient reaching BatchNorm is dy · [y > 0].
        let relu = self.relu;
        let masked: Option<Vec<f32>> = relu.then(|| relu_grad(dys, ys));
        let dy: &[f32] = masked.as_deref().unwrap_or(dys);
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| channel_sums(ChannelSum::Dot, dy, xs, st.mean[ch], n, c, inner, ch))
            .collect();
        // dβ = Σ dy, dγ = Σ dy·x̂ = invstd·Σ dy·(x − mean);
        // dx = k·dy + b·x + d with k = γ·invstd, b = −k·invstd·dγ/M, d = −k·dβ/M − b·mean.
        let mut dgamma = vec![0f32; c];
        let mut dbeta = vec![0f32; c];
        let mut coef = vec![(0f32, 0f32, 0f32); c];
        for ch in 0..c {
            let (s, p) = sums[ch];
            let mean = st.mean[ch] as f64;
            let invstd = 1.0 / ((st.var[ch] + self.eps) as f64).sqrt();
            let dg = invstd * p;
            dgamma[ch] = dg as f32;
            dbeta[ch] = s as f32;
            let k = gam[ch] as f64 * invstd;
            let b = -k * invstd * dg / m;
            let d = -k * s / m - b * mean;
            coef[ch] = (k as f32, b as f32, d as f32);
        }
        // SAFETY: each chunk is one plane, every element written from `dy` and `x`.
        let dx = unsafe {
            par_chunks_written(xs.len(), inner.max(1), |r, o| {
                let (k, b, d) = coef[r % c];
                let (dy, x) = (&dy[r * inner..][..o.len()], &xs[r * inner..][..o.len()]);
                for ((o, &g), &x) in o.iter_mut().zip(dy).zip(x) {
                    o.write(k * g + b * x + d);
                }
            })
        };
        Ok([
            Some(to_tensor(dx, x.dims())?),
            Some(to_tensor(dgamma, &[c])?),
            Some(to_tensor(dbeta, &[c])?),
        ])
    }
}

custom_op!(CustomOp3 for BatchNormOp, |op: &Self| {
        if op.relu {
            "seer-batch-norm-relu-train"
        } else {
            "seer-batch-norm-train"
        }
    }, OP);

/// Output of [`batch_norm_train`]: the normalised tensor (with autograd) and the batch
/// statistics (detached) for updating running estimates.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// `γ·(x − mean)/√(var + eps) + β` (then ReLU for [`batch_norm_relu_train`]), shape of `x`.
    pub y: Tensor,
    /// Per-channel batch mean, `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance (divides by `M = N·H·W`), `[C]`. PyTorch-style
    /// running-variance updates use the unbiased `var · M/(M − 1)`.
    pub var: Tensor,
    /// `M`, the number of values per channel.
    pub count: usize,
}

fn batch_norm_impl(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormOutput> {
    if x.rank() < 2 {
        return Err(Error::Shape {
            op: OP,
            msg: format!("input must be [N, C, ...], got {:?}", x.dims()),
        });
    }
    let c = x.dims()[1];
    for (name, t) in [("gamma", gamma), ("beta", beta)] {
        if t.dims() != [c] {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "{name} has shape {:?}, expected [{c}] for input {:?}",
                    t.dims(),
                    x.dims()
                ),
            });
        }
    }
    let count = x.elem_count() / c.max(1);
    if count == 0 {
        return Err(Error::Shape {
            op: OP,
            msg: format!("no values per channel in input {:?}", x.dims()),
        });
    }
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::InvalidParam {
            op: OP,
            msg: format!("eps must be finite and > 0, got {eps}"),
        });
    }
    let x = prepare(x, OP)?;
    let gamma = prepare(gamma, OP)?;
    let beta = prepare(beta, OP)?;
    let stats = Arc::new(OnceLock::new());
    let y = x.apply_op3(
        &gamma,
        &beta,
        BatchNormOp {
            eps: eps as f32,
            relu,
            stats: stats.clone(),
        },
    )?;
    let Some(st) = stats.get() else {
        return Err(Error::Unsupported {
            op: OP,
            msg: "forward produced no statistics".into(),
        });
    };
    Ok(BatchNormOutput {
        y,
        mean: to_tensor(st.mean.clone(), &[c])?,
        var: to_tensor(st.var.clone(), &[c])?,
        count,
    })
}

/// BatchNorm in training mode (batch statistics), fused forward and backward:
/// `y = γ·(x − μ_c)/√(σ²_c + eps) + β` with μ, σ² (biased) over every dimension but 1.
/// Gradients for `x`, `γ` and `β`.
///
/// `x`: `[N, C, ...]` f32 (NCHW); `gamma`, `beta`: `[C]` f32; `eps` > 0 (1e-5 typical).
/// Errors: [`Error::Shape`] for mismatched shapes or an empty batch, [`Error::InvalidParam`]
/// for a bad `eps`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOutput> {
    batch_norm_impl(x, gamma, beta, eps, false)
}

/// [`batch_norm_train`] followed by ReLU, in one pass forward and backward (the ReLU
/// gradient is `[y > 0]`). Same shapes and errors.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormOutput> {
    batch_norm_impl(x, gamma, beta, eps, true)
}

/// BatchNorm in evaluation mode from running statistics: `y = x·k + b` with
/// `k = γ/√(var + eps)` and `b = β − mean·k`. Built from candle ops when a gradient may be
/// wanted (`x`, `γ` or `β` tracked: gradients flow to those three); otherwise one parallel
/// pass over `x` with the same bits, and no gradient to anything.
/// `x`: `[N, C, ...]`; the rest `[C]`. Errors: [`Error::Shape`] for mismatched shapes.
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if x.rank() < 2 {
        return Err(Error::Shape {
            op: "batch_norm_eval",
            msg: format!("input must be [N, C, ...], got {:?}", x.dims()),
        });
    }
    let c = x.dims()[1];
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ] {
        if t.dims() != [c] {
            return Err(Error::Shape {
                op: "batch_norm_eval",
                msg: format!("{name} has shape {:?}, expected [{c}]", t.dims()),
            });
        }
    }
    let mut bshape = vec![1usize; x.rank()];
    bshape[1] = c;
    let k = (gamma / (running_var + eps)?.sqrt()?)?;
    let b = (beta - (running_mean * &k)?)?;
    // The running statistics get no gradient (they are often variables, kept for updates).
    let tracked = [x, gamma, beta].iter().any(|t| t.track_op());
    if !tracked && x.dtype() == candle_core::DType::F32 && x.device().is_cpu() {
        // No gradient wanted (calibration, BatchNorm re-estimation): one parallel pass of
        // `x·k + b` per element, the two roundings of candle's broadcast multiply and add.
        let x = x.contiguous()?;
        let xv = F32View::new(&x, "batch_norm_eval")?;
        let xs = xv.slice();
        let (kv, bv) = (k.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        let inner = xs.len() / (x.dims()[0] * c).max(1);
        // SAFETY: each chunk is one plane; `xs[r·inner..]` is at least as long, so every
        // element is written.
        let out = unsafe {
            par_chunks_written(xs.len(), inner.max(1), |r, o| {
                let (k, b) = (kv[r % c], bv[r % c]);
                for (o, &v) in o.iter_mut().zip(&xs[r * inner..]) {
                    o.write(v * k + b);
                }
            })
        };
        return Ok(to_tensor(out, x.dims())?);
    }
    Ok(x.broadcast_mul(&k.reshape(bshape.as_slice())?)?
        .broadcast_add(&b.reshape(bshape.as_slice())?)?)
}

const ROP: &str = "relu";

struct ReluOp;

impl ReluOp {
    fn forward(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        Ok((par_map(x, |x| x.max(0.0)), l.shape().clone()))
    }

    fn backward(&self, [_x]: [&Tensor; 1], res: &Tensor, grad: &Tensor) -> Backward<1> {
        let grad = grad.contiguous()?;
        let rv = F32View::of(res, ROP)?;
        let gv = F32View::of(&grad, ROP)?;
        let dx = relu_grad(gv.slice(), rv.slice());
        Ok([Some(to_tensor(dx, res.dims())?)])
    }
}

custom_op!(CustomOp1 for ReluOp, |_| "seer-relu", ROP);

/// ReLU with a fused backward (`dx = dy · [x > 0]`; candle's built-in allocates four
/// tensors for it and passes gradient at `x = 0`). `x`: any shape, f32.
/// Errors: [`Error::Unsupported`] for non-f32 or non-CPU input.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let x = prepare(x, ROP)?;
    Ok(x.apply_op1(ReluOp)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::simd::{Level, with_level};
    use crate::testutil::{rel_err, tensor, var, vec};
    use proptest::prelude::*;

    fn check(shape: &[usize], relu_fused: bool, seed: u64, constant: bool) {
        let x = if constant {
            candle_core::Var::from_tensor(
                &(tensor(seed, shape).zeros_like().unwrap() + 0.75).unwrap(),
            )
            .unwrap()
        } else {
            var(seed, shape)
        };
        let c = shape[1];
        let g = candle_core::Var::from_tensor(&(tensor(seed + 1, &[c]) + 1.5).unwrap()).unwrap();
        let b = var(seed + 2, &[c]);
        let f = if relu_fused {
            batch_norm_relu_train
        } else {
            batch_norm_train
        };
        let out = f(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let refy = reference::batch_norm_train(
            x.as_tensor(),
            g.as_tensor(),
            b.as_tensor(),
            1e-5,
            relu_fused,
        )
        .unwrap();
        assert!(rel_err(&out.y, &refy, 1e-3) <= 1e-4, "forward {shape:?}");
        let r = tensor(seed + 3, shape);
        let go = (out.y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in [("x", &x), ("gamma", &g), ("beta", &b)] {
            // Floor 1e-2: with two values per channel the exact grad-input is ~0 (cancellation),
            // and both sides return rounding noise of order 1e-7; that is checked absolutely.
            let e = rel_err(
                go.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
                1e-2,
            );
            assert!(
                e <= 2e-4,
                "grad {name}: {e} for {shape:?} relu={relu_fused}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn matches_reference(n in 1usize..5, c in 1usize..5, h in 1usize..6, w in 1usize..6, relu_fused in any::<bool>(), seed in 0u64..1000) {
            // With two values per channel, grad-input is a difference of nearly equal terms
            // (exactly 0 when eps = 0), so both sides return rounding noise of different f32
            // sizes relative to the large 1/σ; that degenerate case is not a useful comparison.
            prop_assume!(n * h * w >= 4);
            check(&[n, c, h, w], relu_fused, seed, false);
        }
    }

    #[test]
    fn two_d_and_constant_inputs() {
        check(&[9, 3], false, 4, false);
        check(&[4, 2, 3, 3], false, 5, true);
        check(&[4, 2, 3, 3], true, 6, true);
    }

    #[test]
    fn relu_matches_reference() {
        let x = var(3, &[4, 5, 6]);
        let r = tensor(4, &[4, 5, 6]);
        let ours = relu(x.as_tensor()).unwrap();
        let refy = reference::relu(x.as_tensor()).unwrap();
        assert_eq!(vec(&ours), vec(&refy));
        let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            vec(go.get(x.as_tensor()).unwrap()),
            vec(gr.get(x.as_tensor()).unwrap())
        );
    }

    #[test]
    fn stats_and_errors() {
        let x =
            candle_core::Tensor::new(&[[1f32, 3.], [3., 5.]], &candle_core::Device::Cpu).unwrap();
        let g = candle_core::Tensor::new(&[1f32, 1.], &candle_core::Device::Cpu).unwrap();
        let b = g.zeros_like().unwrap();
        let out = batch_norm_train(&x, &g, &b, 1e-5).unwrap();
        assert_eq!(vec(&out.mean), vec![2., 4.]);
        assert_eq!(vec(&out.var), vec![1., 1.]);
        assert_eq!(out.count, 2);
        let bad = tensor(1, &[3]);
        assert!(matches!(
            batch_norm_train(&x, &bad, &b, 1e-5),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            batch_norm_train(&x, &g, &b, 0.0),
            Err(Error::InvalidParam { .. })
        ));
        let ev = batch_norm_eval(&x, &g, &b, &out.mean, &out.var, 1e-5).unwrap();
        assert!(rel_err(&ev, &out.y, 1e-3) < 1e-5);
    }

    /// The untracked fast path of `batch_norm_eval` gives the bits of the candle ops it
    /// stands for (the tracked path), on 2-D and 4-D inputs with signed zeros and extremes.
    #[test]
    fn eval_fast_path_has_the_bits_of_the_candle_ops() {
        for (seed, shape) in [
            (1u64, vec![3usize, 4]),
            (2, vec![2, 3, 5, 7]),
            (3, vec![1, 2, 1, 1]),
        ] {
            let mut xs = crate::testutil::values(seed, shape.iter().product());
            xs[0] = -0.0;
            if xs.len() > 2 {
                xs[1] = 3e38;
                xs[2] = -1e-40;
            }
            let c = shape[1];
            let x = candle_core::Tensor::from_vec(xs, shape.as_slice(), &candle_core::Device::Cpu)
                .unwrap();
            let g = (tensor(seed + 1, &[c]) + 1.5).unwrap();
            let b = tensor(seed + 2, &[c]);
            // Running statistics as variables, as seer-nn keeps them: still the fast path.
            let m = candle_core::Var::from_tensor(&tensor(seed + 3, &[c])).unwrap();
            let m = m.as_tensor();
            let v = (tensor(seed + 4, &[c]).abs().unwrap() + 0.1).unwrap();
            let fast = batch_norm_eval(&x, &g, &b, m, &v, 1e-5).unwrap();
            assert!(!fast.track_op(), "{shape:?}: the fast path was not taken");
            let gv = candle_core::Var::from_tensor(&g).unwrap();
            let slow = batch_norm_eval(&x, gv.as_tensor(), &b, m, &v, 1e-5).unwrap();
            assert!(slow.track_op());
            let bits = |t: &candle_core::Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(fast.dims(), shape.as_slice());
            assert_eq!(bits(&fast), bits(&slow), "{shape:?}");
        }
    }

    /// The one block at a time sums that [`channel_sums`] replaced (session 24's code):
    /// `(Σ a, Σ a·(b − c))` of one block.
    fn dot_sum_one(a: &[f32], b: &[f32], c: f32) -> (f64, f64) {
        let mut s = [0f32; 8];
        let mut p = [0f32; 8];
        let ca = a.chunks_exact(8);
        let cb = b.chunks_exact(8);
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                s[l] += x[l];
                p[l] += x[l] * (y[l] - c);
            }
        }
        let mut s0: f64 = s.iter().map(|&v| v as f64).sum();
        let mut p0: f64 = p.iter().map(|&v| v as f64).sum();
        for (x, y) in ra.iter().zip(rb) {
            s0 += *x as f64;
            p0 += (*x * (*y - c)) as f64;
        }
        (s0, p0)
    }

    /// Session 24's `channel_stats`: images one at a time, the variance loop inline.
    fn channel_stats_one(x: &[f32], n: usize, c: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
        let m = (n * inner) as f64;
        (0..c)
            .map(|ch| {
                let block = |i: usize| &x[(i * c + ch) * inner..(i * c + ch + 1) * inner];
                let mut s = 0f64;
                for i in 0..n {
                    s += dot_sum_one(block(i), block(i), 0.0).0;
                }
                let mean = (s / m) as f32;
                let mut q = 0f64;
                for i in 0..n {
                    let b = block(i);
                    let mut acc = [0f32; 8];
                    let cb = b.chunks_exact(8);
                    let rem = cb.remainder();
                    for v in cb {
                        for l in 0..8 {
                            let d = v[l] - mean;
                            acc[l] += d * d;
                        }
                    }
                    q += acc.iter().map(|&v| v as f64).sum::<f64>();
                    q += rem
                        .iter()
                        .map(|&v| ((v - mean) * (v - mean)) as f64)
                        .sum::<f64>();
                }
                (mean, (q / m) as f32)
            })
            .unzip()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..Default::default() })]
        /// The side-by-side channel sums (statistics of the forward, the two sums of the
        /// backward) give the bits of one image at a time on every level this CPU runs:
        /// image counts around multiples of [`SIDE`], blocks shorter and longer than a
        /// vector, with large and tiny values mixed so that summation order would show.
        #[test]
        fn side_by_side_channel_sums_have_the_bits_of_one_image_at_a_time(
            n in 0usize..11, c in 1usize..4, inner in 0usize..40, seed in 0u64..1000,
            m in -2f32..2.0,
        ) {
            let len = n * c * inner;
            let scale = |v: Vec<f32>| -> Vec<f32> {
                v.iter()
                    .enumerate()
                    .map(|(i, &x)| if i % 5 == 2 { x * 1e4 } else { x * 1e-3 + 0.5 })
                    .collect()
            };
            let (x, y) = (scale(crate::testutil::values(seed, len)), crate::testutil::values(seed + 1, len));
            let want_stats = channel_stats_one(&x, n, c, inner);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let levels = [Level::Portable, Level::Avx2, Level::Avx512]
                .into_iter()
                .filter(|&l| l <= crate::simd::detected());
            for level in levels {
                let (mean, var) = with_level(level, || channel_stats(&x, n, c, inner));
                prop_assert_eq!(bits(&mean), bits(&want_stats.0), "{:?}", level);
                prop_assert_eq!(bits(&var), bits(&want_stats.1), "{:?}", level);
                for ch in 0..c {
                    let got = with_level(level, || {
                        channel_sums(ChannelSum::Dot, &x, &y, m, n, c, inner, ch)
                    });
                    let mut want = (0f64, 0f64);
                    for i in 0..n {
                        let r = (i * c + ch) * inner..(i * c + ch + 1) * inner;
                        let (s, p) = dot_sum_one(&x[r.clone()], &y[r], m);
                        want.0 += s;
                        want.1 += p;
                    }
                    prop_assert_eq!(got.0.to_bits(), want.0.to_bits(), "{:?} ch {}", level, ch);
                    prop_assert_eq!(got.1.to_bits(), want.1.to_bits(), "{:?} ch {}", level, ch);
                }
            }
        }
    }
}
