//! The tiny multilayer perceptron at the core of the predictor: batched forward and exact
//! backward (weights and inputs) on plain `f32` slices, and AdamW.
//!
//! Why not candle: for nets this small (a few thousand weights, batches of 32) candle's
//! per-op overhead (tensor allocation, dispatch, graph bookkeeping) dominates the arithmetic;
//! `cargo xtask bench predictor` measures the same training step both ways in one process
//! (see docs/benchmarks.md). The loops here are written over contiguous rows so the
//! compiler vectorises them, and their summation order is fixed, so results are bit-for-bit
//! reproducible.
//!
//! Network: `x (d) → [Linear → SiLU] × H → Linear → y (1)`, plus, with a *skip*, a linear
//! term `s · x` added to the output (a linear model with an MLP on top: on accuracy data that
//! is close to additive in the policy's genes the linear term carries the main effects and the
//! MLP the interactions). Layer `l` stores its weight row-major as `[out, in]` followed by its
//! bias `[out]`, all in one flat parameter vector; the skip's `d` weights come last.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// An MLP's architecture and parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Mlp {
    /// Layer widths: `[d, h_1, …, h_H, 1]`.
    pub sizes: Vec<usize>,
    /// All weights and biases, layer by layer (`W_l` row-major `[out, in]`, then `b_l`),
    /// then the skip's `d` weights when [`Self::skip`].
    pub params: Vec<f32>,
    /// Whether the output adds a linear term of the input (its weights end `params`).
    #[serde(default)]
    pub skip: bool,
}

/// Per-batch activations kept for the backward pass.
#[derive(Debug, Default)]
pub(crate) struct Workspace {
    /// `pre[l]`: pre-activations of layer `l`, `[B, out_l]`.
    pre: Vec<Vec<f32>>,
    /// `post[l]`: inputs of layer `l` (`post[0]` is the batch itself), `[B, in_l]`.
    post: Vec<Vec<f32>>,
    /// `dact[l]`: SiLU′ at `pre[l]` for hidden layers (computed with σ in the forward pass).
    dact: Vec<Vec<f32>>,
    /// Gradient buffers for the backward pass, `[B, width]`.
    g_a: Vec<f32>,
    g_b: Vec<f32>,
    batch: usize,
}

#[inline]
fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// SiLU (swish) `z·σ(z)` is the hidden activation: smooth, so ∇ₓμ (used by the barrier
/// search, docs/method.md §6) is continuous, unlike ReLU's piecewise-constant gradient.
/// `(silu(z), silu′(z))` from one exponential: silu′ = σ(z)·(1 + z·(1 − σ(z))).
#[inline(always)]
fn silu_and_grad(z: f32) -> (f32, f32) {
    let s = sigmoid(z);
    (z * s, s * (1.0 + z * (1.0 - s)))
}

/// Whether the AVX2 code path can run (cached by std). The AVX2 path is the same Rust code
/// compiled for 8-wide vectors without FMA, so it gives bit-identical results.
#[inline]
fn use_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Σ a_k b_k` with 8 independent accumulators (vectorisable; fixed order, deterministic).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += α·x`.
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

impl Mlp {
    /// A freshly initialised MLP: He-uniform weights for hidden layers (suited to SiLU),
    /// LeCun-uniform for the output layer, zero biases; with `skip`, a zero linear term.
    pub fn new(sizes: Vec<usize>, skip: bool, rng: &mut impl Rng) -> Self {
        let n: usize = sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        let mut params = Vec::with_capacity(n);
        let last = sizes.len() - 2;
        for (l, w) in sizes.windows(2).enumerate() {
            let (fan_in, out) = (w[0], w[1]);
            let a = if l == last {
                (3.0 / fan_in as f32).sqrt()
            } else {
                (6.0 / fan_in as f32).sqrt()
            };
            params.extend((0..fan_in * out).map(|_| rng.random_range(-a..a)));
            params.extend(std::iter::repeat_n(0.0, out));
        }
        if skip {
            params.extend(std::iter::repeat_n(0.0, sizes[0]));
        }
        Self {
            sizes,
            params,
            skip,
        }
    }

    /// Offset of the skip's `d` weights in `params` (= the layers' parameter count).
    pub fn skip_offset(&self) -> usize {
        self.sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    /// Number of layers (linear maps).
    pub fn n_layers(&self) -> usize {
        self.sizes.len() - 1
    }

    /// Input width `d`.
    pub fn input_dim(&self) -> usize {
        self.sizes[0]
    }

    /// `(weight offset, bias offset, in, out)` of layer `l` in `params`.
    fn layout(&self, l: usize) -> (usize, usize, usize, usize) {
        let off: usize = self
            .sizes
            .windows(2)
            .take(l)
            .map(|w| w[0] * w[1] + w[1])
            .sum();
        let (i, o) = (self.sizes[l], self.sizes[l + 1]);
        (off, off + i * o, i, o)
    }

    /// Indices ranges of the weight matrices and the skip (weight decay applies to these, not
    /// to biases; on the skip it is ridge's penalty).
    pub fn weight_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut r: Vec<_> = (0..self.n_layers())
            .map(|l| {
                let (w, b, _, _) = self.layout(l);
                w..b
            })
            .collect();
        if self.skip {
            let o = self.skip_offset();
            r.push(o..o + self.input_dim());
        }
        r
    }

    /// Forward pass on a row-major batch `x` (`[B, d]`); returns the outputs (`[B]`) and
    /// leaves the activations in `ws` for [`Self::backward`].
    pub fn forward<'w>(&self, x: &[f32], ws: &'w mut Workspace) -> &'w [f32] {
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            // SAFETY: AVX2 support was just checked.
            unsafe { self.forward_avx2(x, ws) };
            return &ws.pre[self.n_layers() - 1];
        }
        self.forward_impl(x, ws);
        &ws.pre[self.n_layers() - 1]
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn forward_avx2(&self, x: &[f32], ws: &mut Workspace) {
        self.forward_impl(x, ws)
    }

    #[inline(always)]
    fn forward_impl(&self, x: &[f32], ws: &mut Workspace) {
        let d = self.input_dim();
        let b = x.len() / d;
        debug_assert_eq!(b * d, x.len());
        let nl = self.n_layers();
        ws.batch = b;
        ws.pre.resize_with(nl, Vec::new);
        ws.post.resize_with(nl, Vec::new);
        ws.dact.resize_with(nl, Vec::new);
        ws.post[0].clear();
        ws.post[0].extend_from_slice(x);
        for l in 0..nl {
            let (wo, bo, fin, fout) = self.layout(l);
            let w = &self.params[wo..bo];
            let bias = &self.params[bo..bo + fout];
            let (post_l, rest) = ws.post.split_at_mut(l + 1);
            let input = &post_l[l];
            let pre = &mut ws.pre[l];
            pre.resize(b * fout, 0.0);
            for i in 0..b {
                let row = &input[i * fin..(i + 1) * fin];
                let out = &mut pre[i * fout..(i + 1) * fout];
                for (o, z) in out.iter_mut().enumerate() {
                    *z = bias[o] + dot(row, &w[o * fin..(o + 1) * fin]);
                }
            }
            if l + 1 < nl {
                let next = &mut rest[0];
                let dact = &mut ws.dact[l];
                next.resize(pre.len(), 0.0);
                dact.resize(pre.len(), 0.0);
                for ((a, g), &z) in next.iter_mut().zip(dact.iter_mut()).zip(pre.iter()) {
                    (*a, *g) = silu_and_grad(z);
                }
            }
        }
        if self.skip {
            let o = self.skip_offset();
            let sw = &self.params[o..o + d];
            let out = &mut ws.pre[nl - 1];
            for (i, y) in out.iter_mut().enumerate() {
                *y += dot(&x[i * d..(i + 1) * d], sw);
            }
        }
    }

    /// Backward pass for the batch last given to [`Self::forward`].
    ///
    /// `d_out` (`[B]`): ∂loss/∂output per row. Adds ∂loss/∂params into `grad` (same layout as
    /// `params`) when given, and writes ∂loss/∂x (`[B, d]`) into `d_x` when given.
    pub fn backward(
        &self,
        ws: &mut Workspace,
        d_out: &[f32],
        grad: Option<&mut [f32]>,
        d_x: Option<&mut [f32]>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if use_avx2() {
            // SAFETY: AVX2 support was just checked.
            return unsafe { self.backward_avx2(ws, d_out, grad, d_x) };
        }
        self.backward_impl(ws, d_out, grad, d_x)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn backward_avx2(
        &self,
        ws: &mut Workspace,
        d_out: &[f32],
        grad: Option<&mut [f32]>,
        d_x: Option<&mut [f32]>,
    ) {
        self.backward_impl(ws, d_out, grad, d_x)
    }

    #[inline(always)]
    fn backward_impl(
        &self,
        ws: &mut Workspace,
        d_out: &[f32],
        mut grad: Option<&mut [f32]>,
        d_x: Option<&mut [f32]>,
    ) {
        let b = ws.batch;
        let nl = self.n_layers();
        let d = self.input_dim();
        debug_assert_eq!(d_out.len(), b);
        if self.skip
            && let Some(g) = grad.as_deref_mut()
        {
            let o = self.skip_offset();
            let gs = &mut g[o..o + d];
            for (i, &go) in d_out.iter().enumerate() {
                axpy(go, &ws.post[0][i * d..(i + 1) * d], gs);
            }
        }
        // g_a holds ∂loss/∂pre of the current layer.
        let mut g_pre = std::mem::take(&mut ws.g_a);
        let mut g_in = std::mem::take(&mut ws.g_b);
        g_pre.clear();
        g_pre.extend_from_slice(d_out);
        for l in (0..nl).rev() {
            let (wo, bo, fin, fout) = self.layout(l);
            let input = &ws.post[l];
            if let Some(g) = grad.as_deref_mut() {
                let (gw, gb) = g[wo..bo + fout].split_at_mut(bo - wo);
                for i in 0..b {
                    let row = &input[i * fin..(i + 1) * fin];
                    for o in 0..fout {
                        let go = g_pre[i * fout + o];
                        gb[o] += go;
                        axpy(go, row, &mut gw[o * fin..(o + 1) * fin]);
                    }
                }
            }
            if l == 0 && d_x.is_none() {
                break;
            }
            let w = &self.params[wo..bo];
            g_in.clear();
            g_in.resize(b * fin, 0.0);
            for i in 0..b {
                let gi = &mut g_in[i * fin..(i + 1) * fin];
                for o in 0..fout {
                    axpy(g_pre[i * fout + o], &w[o * fin..(o + 1) * fin], gi);
                }
            }
            if l > 0 {
                // Through the SiLU of layer l-1.
                for (g, &s) in g_in.iter_mut().zip(&ws.dact[l - 1]) {
                    *g *= s;
                }
            }
            std::mem::swap(&mut g_pre, &mut g_in);
        }
        if let Some(dx) = d_x {
            // After the loop's last swap, g_pre holds ∂loss/∂x (through the MLP).
            dx.copy_from_slice(&g_pre[..b * d]);
            if self.skip {
                let o = self.skip_offset();
                let sw = &self.params[o..o + d];
                for (i, &go) in d_out.iter().enumerate() {
                    axpy(go, sw, &mut dx[i * d..(i + 1) * d]);
                }
            }
        }
        ws.g_a = g_pre;
        ws.g_b = g_in;
    }
}

/// Adam with decoupled weight decay (AdamW, Loshchilov & Hutter 2019) on a flat parameter vector.
#[derive(Debug, Clone)]
pub(crate) struct AdamW {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
    lr: f32,
    weight_decay: f32,
    decay_ranges: Vec<std::ops::Range<usize>>,
}

impl AdamW {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    /// Optimiser for `n` parameters; weight decay only on `decay_ranges`.
    pub fn new(
        n: usize,
        lr: f32,
        weight_decay: f32,
        decay_ranges: Vec<std::ops::Range<usize>>,
    ) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
            weight_decay,
            decay_ranges,
        }
    }

    /// One step: `p ← p − lr·(m̂/(√v̂+ε) + λ·p)` (λ only on weights).
    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        self.t += 1;
        let bc1 = 1.0 - Self::BETA1.powi(self.t);
        let bc2 = 1.0 - Self::BETA2.powi(self.t);
        let step = self.lr / bc1;
        let decay = self.lr * self.weight_decay;
        for r in &self.decay_ranges {
            for p in &mut params[r.clone()] {
                *p -= decay * *p;
            }
        }
        for ((p, g), (m, v)) in params
            .iter_mut()
            .zip(grad)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= step * *m / ((*v / bc2).sqrt() + Self::EPS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn loss(m: &Mlp, x: &[f32], y: &[f32]) -> f64 {
        let mut ws = Workspace::default();
        let out = m.forward(x, &mut ws);
        out.iter()
            .zip(y)
            .map(|(o, t)| 0.5 * f64::from(o - t).powi(2))
            .sum()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for skip in [false, true] {
            let mut m = Mlp::new(vec![5, 7, 3, 1], skip, &mut rng);
            if skip {
                // A non-zero linear term, so its gradients are checked at a generic point.
                let o = m.skip_offset();
                for k in 0..5 {
                    m.params[o + k] = rng.random_range(-1.0..1.0);
                }
            }
            check_gradients(&m, &mut rng);
        }
    }

    fn check_gradients(m: &Mlp, rng: &mut ChaCha8Rng) {
        let b = 4;
        let x: Vec<f32> = (0..b * 5).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<f32> = (0..b).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut ws = Workspace::default();
        let out = m.forward(&x, &mut ws).to_vec();
        let d_out: Vec<f32> = out.iter().zip(&y).map(|(o, t)| o - t).collect();
        let mut g = vec![0.0; m.params.len()];
        assert_eq!(g.len(), m.skip_offset() + if m.skip { 5 } else { 0 });
        let mut dx = vec![0.0; x.len()];
        m.backward(&mut ws, &d_out, Some(&mut g), Some(&mut dx));
        let h = 1e-2f32;
        for (k, &gk) in g.iter().enumerate() {
            let (mut p, mut q) = (m.clone(), m.clone());
            p.params[k] += h;
            q.params[k] -= h;
            let fd = (loss(&p, &x, &y) - loss(&q, &x, &y)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(gk)).abs() < 2e-3 * (1.0 + fd.abs()),
                "param {k}: fd {fd} vs {}",
                gk
            );
        }
        for k in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[k] += h;
            xm[k] -= h;
            let fd = (loss(m, &xp, &y) - loss(m, &xm, &y)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(dx[k])).abs() < 2e-3 * (1.0 + fd.abs()),
                "x {k}: fd {fd} vs {}",
                dx[k]
            );
        }
    }

    #[test]
    fn avx2_path_is_bit_identical_to_portable_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let mut m = Mlp::new(vec![37, 33, 19, 1], true, &mut rng);
        let o = m.skip_offset();
        for k in 0..37 {
            m.params[o + k] = rng.random_range(-1.0..1.0);
        }
        let x: Vec<f32> = (0..5 * 37).map(|_| rng.random_range(-2.0..2.0)).collect();
        let d_out: Vec<f32> = (0..5).map(|_| rng.random_range(-1.0..1.0)).collect();
        let run = |avx: bool| {
            let mut ws = Workspace::default();
            let mut g = vec![0.0; m.params.len()];
            let mut dx = vec![0.0; x.len()];
            if avx {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: only called when AVX2 is available.
                unsafe {
                    m.forward_avx2(&x, &mut ws);
                    m.backward_avx2(&mut ws, &d_out, Some(&mut g), Some(&mut dx));
                }
            } else {
                m.forward_impl(&x, &mut ws);
                m.backward_impl(&mut ws, &d_out, Some(&mut g), Some(&mut dx));
            }
            (ws.pre.last().unwrap().clone(), g, dx)
        };
        if use_avx2() {
            assert_eq!(run(true), run(false));
        } else {
            // No AVX2 here: the dispatched forward pass must be the portable one.
            let mut ws = Workspace::default();
            let out = m.forward(&x, &mut ws).to_vec();
            assert_eq!(out, run(false).0);
        }
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }
}
