//! Fully connected layer `y = x·Wᵀ` as a candle custom op with backward, whose forward gives
//! every sample the same bits whatever batch it is computed in.
//!
//! candle's `matmul` hands the product to the `gemm` crate, which picks its algorithm from the
//! matrix sizes: a matrix-vector kernel for one row, a horizontal (dot-product) kernel for
//! small products, packed blocking otherwise. Each sums the reduction dimension in its own
//! order, so the logits of an image changed with the evaluation batch (issue 13, case 5).
//! Here every output element is summed over the reduction dimension `K` in one fixed order,
//! `0, 1, …, K − 1` ([`crate::simd::gemm_rows`]), and work is split across threads only
//! along the batch, never along `K`.

use candle_core::{Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::matmul::Mat;
use crate::simd::{gemm_bcast, gemm_rows};
use crate::view::{Backward, F32View, Forward, custom_op, prepare, to_tensor};
use crate::{Error, Result};

const OP: &str = "linear";

/// Multiply-adds per parallel task of the forward pass (rows of `x` per task follow from it;
/// the result does not depend on the split).
const TASK_MACS: usize = 1 << 16;

/// `(n, k, f)` of `x` `[N, K]` and `w` `[F, K]`.
fn dims(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    match (x, w) {
        (&[n, k], &[f, kw]) if k == kw => Ok((n, k, f)),
        _ => Err(Error::Shape {
            op: OP,
            msg: format!("input must be [N, K] and weight [F, K], got {x:?} and {w:?}"),
        }),
    }
}

/// Forward: `x` `[n, k]`, `w` `[f, k]` → `x·Wᵀ` `[n, f]`, parallel over blocks of rows.
///
/// `W` is transposed once into `[k, f8]` (`f` padded with zero columns to a multiple of 8)
/// so that every output column is a vector lane of [`gemm_rows`]'s kernel; the padding is
/// dropped at the end.
fn linear_forward(x: &[f32], w: &[f32], n: usize, k: usize, f: usize) -> Vec<f32> {
    if n * f == 0 || k == 0 {
        return vec![0f32; n * f];
    }
    let f8 = f.next_multiple_of(8);
    let mut wt = vec![0f32; k * f8];
    for (j, row) in w.chunks_exact(k).enumerate() {
        for (q, &v) in row.iter().enumerate() {
            wt[q * f8 + j] = v;
        }
    }
    let mut out = vec![0f32; n * f8];
    let rows = (TASK_MACS / (k * f8)).next_multiple_of(4).max(4);
    out.par_chunks_mut(rows * f8)
        .zip(x.par_chunks(rows * k))
        .for_each(|(o, xs)| gemm_rows(o.len() / f8, f8, k, xs, k, &wt, f8, o, f8));
    if f8 == f {
        return out;
    }
    out.chunks_exact(f8)
        .flat_map(|r| &r[..f])
        .copied()
        .collect()
}

/// A fully connected layer's weight prepared once for [`PackedLinear::row`]: inference on
/// plain slices, one sample at a time, without tensors or an autograd graph.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    /// `W` transposed to `[k, f8]`, `f8 = f` rounded up to a multiple of 8.
    wt: Vec<f32>,
    k: usize,
    f: usize,
    f8: usize,
}

impl PackedLinear {
    /// Packs `w` `[f, k]` (row-major). Err(Shape) when `w.len() ≠ f·k`.
    pub fn new(w: &[f32], f: usize, k: usize) -> Result<Self> {
        if w.len() != f * k {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "weight slice holds {} values, [{f}, {k}] needs {}",
                    w.len(),
                    f * k
                ),
            });
        }
        let f8 = f.next_multiple_of(8);
        let mut wt = vec![0f32; k * f8];
        if k > 0 {
            for (j, row) in w.chunks_exact(k).enumerate() {
                for (q, &v) in row.iter().enumerate() {
                    wt[q * f8 + j] = v;
                }
            }
        }
        Ok(Self { wt, k, f, f8 })
    }

    /// `x·Wᵀ` of one sample `x` `[k]` into `out` (resized to `[f]`; `pad` is scratch):
    /// bitwise the same as that sample's row of [`linear`] (the same fixed-order kernel).
    /// Err(Shape) when `x.len() ≠ k`.
    pub fn row(&self, x: &[f32], pad: &mut Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        if x.len() != self.k {
            return Err(Error::Shape {
                op: OP,
                msg: format!(
                    "input holds {} values, the weight needs {}",
                    x.len(),
                    self.k
                ),
            });
        }
        out.clear();
        if self.f == 0 || self.k == 0 {
            out.resize(self.f, 0.0);
            return Ok(());
        }
        pad.clear();
        pad.resize(self.f8, 0.0);
        gemm_rows(
            1, self.f8, self.k, x, self.k, &self.wt, self.f8, pad, self.f8,
        );
        out.extend_from_slice(&pad[..self.f]);
        Ok(())
    }
}

/// `C[m×n] = A[m×k] · B[k×n]` (`B` and `C` row-major, leading dimensions `n`) with the
/// [`gemm_bcast`] kernels, parallel over blocks of rows of `C` when `macs` is large. Every
/// element is one chain of multiply-adds over `k` in order, so the bits depend neither on
/// the split nor on the machine's vector width (AVX2 and AVX-512 give the same; the
/// `gemm` crate, used here before, picks kernels and blockings per CPU).
fn bcast_rows_par(m: usize, n: usize, k: usize, a: Mat<'_>, b: &[f32], c: &mut [f32], macs: usize) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let rows = if macs >= 1 << 20 && threads > 1 {
        m.div_ceil(threads).next_multiple_of(4).max(4)
    } else {
        m.max(1)
    };
    c.par_chunks_mut(rows * n).enumerate().for_each(|(t, ct)| {
        let r0 = t * rows;
        let at = Mat {
            data: &a.data[(r0 * a.rs).min(a.data.len())..],
            ..a
        };
        gemm_bcast(ct.len() / n, n, k, at, b, n, ct, n, false);
    });
}
struct LinearOp;

impl LinearOp {
    fn forward(&self, [x, w]: [&[f32]; 2], [lx, lw]: [&Layout; 2]) -> Forward {
        let (n, k, f) = dims(lx.dims(), lw.dims()).map_err(Error::into_candle)?;
        Ok((linear_forward(x, w, n, k, f), Shape::from((n, f))))
    }

    fn backward(&self, [x, w]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Backward<2> {
        let (n, k, f) = dims(x.dims(), w.dims()).map_err(Error::into_candle)?;
        let grad = grad.contiguous()?;
        let (dx, dw) = {
            let xv = F32View::of(x, OP)?;
            let wv = F32View::of(w, OP)?;
            let gv = F32View::of(&grad, OP)?;
            let (xs, ws, dy) = (xv.slice(), wv.slice(), gv.slice());
            let dx = x.track_op().then(|| {
                // dx[n×k] = dy[n×f] · W[f×k]
                let mut dx = vec![0f32; n * k];
                bcast_rows_par(n, k, f, Mat::rows(dy, f), ws, &mut dx, n * k * f);
                dx
            });
            let dw = w.track_op().then(|| {
                // dW[f×k] = dyᵀ[f×n] · x[n×k]
                let mut dw = vec![0f32; f * k];
                bcast_rows_par(f, k, n, Mat::rows_t(dy, f), xs, &mut dw, n * k * f);
                dw
            });
            (dx, dw)
        };
        let dx = dx.map(|v| to_tensor(v, x.dims())).transpose()?;
        let dw = dw.map(|v| to_tensor(v, w.dims())).transpose()?;
        Ok([dx, dw])
    }
}

custom_op!(CustomOp2 for LinearOp, |_| "seer-linear", OP);

/// Fully connected layer without bias, with backward (candle custom op): `x` `[N, K]` f32,
/// `w` `[F, K]` f32 (PyTorch's `Linear.weight` layout) → `x·Wᵀ` `[N, F]`. Add a bias with
/// `broadcast_add`.
///
/// **Batch-invariant forward:** row `i` of the output is bitwise the same whether `x` holds
/// that one sample or thousands (each element is summed over `K` in one fixed order),
/// unlike `x.matmul(&w.t())`, whose `gemm` kernel and blocking change with `N`. The backward runs the same kernels (`bcast_rows_par`): its bits do not depend on the CPU's vector width either.
/// Same result as `x.matmul(&w.t())` up to f32 summation order.
///
/// Errors: [`Error::Shape`] unless `x` is `[N, K]` and `w` is `[F, K]`;
/// [`Error::Unsupported`] for non-f32 or non-CPU tensors.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    dims(x.dims(), w.dims())?;
    let x = prepare(x, OP)?;
    let w = prepare(w, OP)?;
    Ok(x.apply_op2(&w, LinearOp)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{rel_err, tensor, var, vec};

    /// Forward and both gradients (of `Σ y·r`) against the reference (candle's matmul +
    /// autograd).
    fn check(n: usize, k: usize, f: usize, seed: u64) {
        let x = var(seed, &[n, k]);
        let w = var(seed + 1, &[f, k]);
        let ours = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let want = reference::linear(x.as_tensor(), w.as_tensor()).unwrap();
        assert!(rel_err(&ours, &want, 1e-6) <= 1e-5, "forward {n} {k} {f}");
        let r = tensor(seed + 2, &[n, f]);
        let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gw = (want * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let e = rel_err(
                go.get(v.as_tensor()).unwrap(),
                gw.get(v.as_tensor()).unwrap(),
                1e-6,
            );
            assert!(e <= 1e-5, "grad rel err {e} for {n} {k} {f}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// One sample at a time on slices: bitwise the rows of the tensor op, close to the
        /// reference; odd and zero sizes included.
        #[test]
        fn packed_rows_match_the_op(n in 1usize..4, k in 0usize..40, f in 0usize..21, seed in 0u64..1000) {
            let x = tensor(seed, &[n, k]);
            let w = tensor(seed + 1, &[f, k]);
            let ours = vec(&linear(&x, &w).unwrap());
            let want = vec(&reference::linear(&x, &w).unwrap());
            let p = PackedLinear::new(&vec(&w), f, k).unwrap();
            let xv = vec(&x);
            let (mut pad, mut out) = (Vec::new(), vec![3.0; 2]);
            for i in 0..n {
                p.row(&xv[i * k..(i + 1) * k], &mut pad, &mut out).unwrap();
                prop_assert_eq!(&out[..], &ours[i * f..(i + 1) * f]);
                for (a, b) in out.iter().zip(&want[i * f..(i + 1) * f]) {
                    prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
                }
            }
        }
    }

    #[test]
    fn packed_shape_errors() {
        assert!(PackedLinear::new(&[0.0; 5], 2, 3).is_err());
        let p = PackedLinear::new(&[0.0; 6], 2, 3).unwrap();
        let e = p
            .row(&[0.0; 2], &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("input holds 2 values"), "{e}");
    }

    #[test]
    fn matches_candle_matmul() {
        for (n, k, f, seed) in [
            (1, 1, 1, 1),
            (1, 64, 10, 2),
            (7, 64, 10, 3),
            (5, 13, 3, 4),
            (33, 400, 120, 5),
            (300, 100, 7, 6),
            (64, 2048, 10, 7),
        ] {
            check(n, k, f, seed);
        }
    }

    /// Each output row is bitwise the same whether computed alone, in a small batch or in a
    /// large one (the shapes of ResNet-20's classifier and of odd reduction lengths).
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        for (k, f) in [(64, 10), (61, 10), (400, 120), (9, 3)] {
            let n = 512;
            let x = tensor(11, &[n, k]);
            let w = tensor(12, &[f, k]);
            let full = vec(&linear(&x, &w).unwrap());
            for b in [1usize, 3, 7, 64, 100] {
                let mut got = Vec::with_capacity(n * f);
                for s in (0..n).step_by(b) {
                    let xs = x.narrow(0, s, b.min(n - s)).unwrap();
                    got.extend(vec(&linear(&xs, &w).unwrap()));
                }
                let differ = got
                    .iter()
                    .zip(&full)
                    .filter(|(a, b)| a.to_bits() != b.to_bits())
                    .count();
                assert_eq!(differ, 0, "k {k} f {f}: batch {b} vs {n}");
            }
        }
    }

    #[test]
    fn shape_errors() {
        let x = tensor(1, &[4, 5]);
        for w in [tensor(2, &[3, 4]), tensor(2, &[3, 5, 1])] {
            assert!(matches!(linear(&x, &w), Err(Error::Shape { .. })));
        }
        let x3 = tensor(1, &[4, 5, 1]);
        assert!(matches!(
            linear(&x3, &tensor(2, &[3, 5])),
            Err(Error::Shape { .. })
        ));
        let f64x = x.to_dtype(candle_core::DType::F64).unwrap();
        assert!(matches!(
            linear(&f64x, &tensor(2, &[3, 5])),
            Err(Error::Unsupported { .. })
        ));
        let empty = linear(&tensor(1, &[0, 5]), &tensor(2, &[3, 5])).unwrap();
        assert_eq!(empty.dims(), &[0, 3]);
    }
}
