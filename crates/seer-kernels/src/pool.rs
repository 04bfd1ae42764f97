//! Max and average pooling with backward for any window and stride, overlapping windows
//! included (candle's `max_pool2d` and `avg_pool2d` have no backward when the kernel differs
//! from the stride, e.g. the 3×3 stride-1 pool of an Inception branch or the 3×3 stride-2
//! stem pool of an ImageNet ResNet).

use candle_core::{Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::view::{Backward, F32View, Forward, custom_op, prepare, to_tensor};
use crate::{Error, Result};

const OP: &str = "max_pool2d";

struct MaxPoolOp {
    k: [usize; 2],
    s: [usize; 2],
}

/// Output height and width of a window `k` at stride `s` over `h×w` (floor mode, no padding).
fn out_hw(k: [usize; 2], s: [usize; 2], h: usize, w: usize) -> (usize, usize) {
    ((h - k[0]) / s[0] + 1, (w - k[1]) / s[1] + 1)
}

/// `x` ready for a pooling op `op` of window `k` and stride `s`: Err(Shape) for a rank
/// other than 4, a zero window or stride, or a window larger than the input.
fn pool_input(x: &Tensor, k: [usize; 2], s: [usize; 2], op: &'static str) -> Result<Tensor> {
    let d = x.dims();
    if d.len() != 4 || k.contains(&0) || s.contains(&0) || k[0] > d[2] || k[1] > d[3] {
        return Err(Error::Shape {
            op,
            msg: format!("input {d:?} with window {k:?} and stride {s:?}"),
        });
    }
    prepare(x, op)
}

impl MaxPoolOp {
    /// Output height and width (floor mode, no padding).
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        out_hw(self.k, self.s, h, w)
    }

    /// Offset within the `h×w` plane of the first maximum of output cell `(oy, ox)`'s window
    /// (windows scanned row by row: ties go to the first, as in PyTorch).
    #[inline]
    fn argmax(&self, x: &[f32], w: usize, oy: usize, ox: usize) -> usize {
        let (y0, x0) = (oy * self.s[0], ox * self.s[1]);
        let mut best = y0 * w + x0;
        for ky in 0..self.k[0] {
            let row = (y0 + ky) * w + x0;
            for (kx, &v) in x[row..row + self.k[1]].iter().enumerate() {
                // `>` keeps the first of equal values; a NaN never wins after the first cell.
                if v > x[best] {
                    best = row + kx;
                }
            }
        }
        best
    }

    fn forward(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        let [n, c, h, w] = dims4(l.dims());
        let (oh, ow) = self.out_hw(h, w);
        let mut out = vec![0f32; n * c * oh * ow];
        if !out.is_empty() {
            out.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, xp)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            o[oy * ow + ox] = xp[self.argmax(xp, w, oy, ox)];
                        }
                    }
                });
        }
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    /// Each output's gradient goes to its window's (first) maximum; overlapping windows add.
    fn backward(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Backward<1> {
        let grad = grad.contiguous()?;
        let (xv, gv) = (F32View::of(x, OP)?, F32View::of(&grad, OP)?);
        let [_, _, h, w] = dims4(x.dims());
        let (oh, ow) = self.out_hw(h, w);
        let mut dx = vec![0f32; x.elem_count()];
        if !dx.is_empty() {
            dx.par_chunks_mut(h * w)
                .zip(xv.slice().par_chunks(h * w))
                .zip(gv.slice().par_chunks(oh * ow))
                .for_each(|((d, xp), g)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            d[self.argmax(xp, w, oy, ox)] += g[oy * ow + ox];
                        }
                    }
                });
        }
        Ok([Some(to_tensor(dx, x.dims())?)])
    }
}

fn dims4(d: &[usize]) -> [usize; 4] {
    [d[0], d[1], d[2], d[3]]
}

custom_op!(CustomOp1 for MaxPoolOp, |_| "seer-max-pool2d", OP);

/// Max pooling of `x` `[N, C, H, W]` (f32, no padding: pad first) with window `k` `[k_h, k_w]`
/// and stride `s`, floor mode → `[N, C, ⌊(H − k_h)/s_h⌋ + 1, ⌊(W − k_w)/s_w⌋ + 1]`, with
/// backward for every window and stride (each output's gradient to the first maximum of its
/// window, PyTorch's rule). Errors: [`Error::Shape`] for a rank other than 4, a zero window
/// or stride, or a window larger than the input.
pub fn max_pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2]) -> Result<Tensor> {
    Ok(pool_input(x, k, s, OP)?.apply_op1(MaxPoolOp { k, s })?)
}

const AVG_OP: &str = "avg_pool2d";

struct AvgPoolOp {
    k: [usize; 2],
    s: [usize; 2],
}

impl AvgPoolOp {
    /// Output height and width (floor mode, no padding).
    fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        out_hw(self.k, self.s, h, w)
    }

    /// `1/(k_h·k_w)` rounded to f32 once, as candle's `avg_pool2d` scales.
    fn scale(&self) -> f32 {
        (1.0 / (self.k[0] * self.k[1]) as f64) as f32
    }

    /// Per output cell, the window summed row by row from `0.0`, times [`Self::scale`]: the
    /// same operations in the same order as candle's forward, so the same bits.
    fn forward(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        let [n, c, h, w] = dims4(l.dims());
        let (oh, ow) = self.out_hw(h, w);
        let scale = self.scale();
        let mut out = vec![0f32; n * c * oh * ow];
        if !out.is_empty() {
            out.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, xp)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let (y0, x0) = (oy * self.s[0], ox * self.s[1]);
                            let mut sum = 0f32;
                            for ky in 0..self.k[0] {
                                let row = (y0 + ky) * w + x0;
                                for &v in &xp[row..row + self.k[1]] {
                                    sum += v;
                                }
                            }
                            o[oy * ow + ox] = sum * scale;
                        }
                    }
                });
        }
        Ok((out, Shape::from((n, c, oh, ow))))
    }

    /// Each output's gradient times [`Self::scale`] to every cell of its window; overlapping
    /// windows add, in row-major order of the outputs.
    fn backward(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Backward<1> {
        let grad = grad.contiguous()?;
        let gv = F32View::of(&grad, AVG_OP)?;
        let [_, _, h, w] = dims4(x.dims());
        let (oh, ow) = self.out_hw(h, w);
        let scale = self.scale();
        let mut dx = vec![0f32; x.elem_count()];
        if !dx.is_empty() {
            dx.par_chunks_mut(h * w)
                .zip(gv.slice().par_chunks(oh * ow))
                .for_each(|(d, g)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let gs = g[oy * ow + ox] * scale;
                            let (y0, x0) = (oy * self.s[0], ox * self.s[1]);
                            for ky in 0..self.k[0] {
                                let row = (y0 + ky) * w + x0;
                                for d in &mut d[row..row + self.k[1]] {
                                    *d += gs;
                                }
                            }
                        }
                    }
                });
        }
        Ok([Some(to_tensor(dx, x.dims())?)])
    }
}

custom_op!(CustomOp1 for AvgPoolOp, |_| "seer-avg-pool2d", AVG_OP);

/// Average pooling of `x` `[N, C, H, W]` (f32, no padding: pad first, and the zeros count in
/// the mean) with window `k` `[k_h, k_w]` and stride `s`, floor mode →
/// `[N, C, ⌊(H − k_h)/s_h⌋ + 1, ⌊(W − k_w)/s_w⌋ + 1]`: candle's `avg_pool2d` bit for bit, with backward
/// for every window and stride (each output's gradient spread evenly over its window).
/// Errors: [`Error::Shape`] for a rank other than 4, a zero window or stride, or a window
/// larger than the input.
pub fn avg_pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2]) -> Result<Tensor> {
    Ok(pool_input(x, k, s, AVG_OP)?.apply_op1(AvgPoolOp { k, s })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tensor, var, vec};

    /// Forward against candle's average pool bit for bit; backward against it where it
    /// exists (k = s) and against a loop over windows everywhere.
    #[test]
    fn avg_pool_matches_candle_and_the_window_loop() {
        for (shape, k, s) in [
            ([2, 3, 6, 6], [2, 2], [2, 2]),
            ([1, 2, 7, 5], [3, 3], [1, 1]),
            ([2, 1, 9, 8], [3, 2], [2, 1]),
            ([1, 4, 5, 5], [5, 5], [1, 1]),
            ([1, 3, 7, 7], [3, 3], [2, 2]),
            ([1, 1, 1, 1], [1, 1], [1, 1]),
        ] {
            let x = var(5, &shape);
            let ours = avg_pool2d(x.as_tensor(), k, s).unwrap();
            let theirs = x
                .as_tensor()
                .avg_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(vec(&ours)),
                bits(vec(&theirs)),
                "{shape:?} {k:?} {s:?}"
            );
            let r = tensor(6, ours.dims());
            let g = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let got = vec(g.get(x.as_tensor()).unwrap());
            if k == s {
                let g = (theirs * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert_eq!(got, vec(g.get(x.as_tensor()).unwrap()), "{shape:?} candle");
            }
            let [n, c, h, w] = shape;
            let (oh, ow) = ((h - k[0]) / s[0] + 1, (w - k[1]) / s[1] + 1);
            let scale = (1.0 / (k[0] * k[1]) as f64) as f32;
            let rv = vec(&r);
            let mut want = vec![0f32; n * c * h * w];
            for p in 0..n * c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for ky in 0..k[0] {
                            for kx in 0..k[1] {
                                let i = p * h * w + (oy * s[0] + ky) * w + ox * s[1] + kx;
                                want[i] += rv[p * oh * ow + oy * ow + ox] * scale;
                            }
                        }
                    }
                }
            }
            assert_eq!(got, want, "{shape:?} k {k:?} s {s:?}");
        }
        assert!(avg_pool2d(&tensor(1, &[1, 1, 2, 2]), [3, 3], [1, 1]).is_err());
        assert!(avg_pool2d(&tensor(1, &[1, 2, 2]), [1, 1], [1, 1]).is_err());
        assert!(avg_pool2d(&tensor(1, &[1, 1, 2, 2]), [1, 1], [0, 1]).is_err());
    }

    /// Forward against candle's max pool (whose backward exists only when k = s), backward
    /// against it where it exists and against a loop over windows everywhere, with ties
    /// (values rounded to a coarse grid) going to the first maximum.
    #[test]
    fn max_pool_matches_candle_and_the_window_loop() {
        for (shape, k, s) in [
            ([2, 3, 6, 6], [2, 2], [2, 2]),
            ([1, 2, 7, 5], [3, 3], [1, 1]),
            ([2, 1, 9, 8], [3, 2], [2, 1]),
            ([1, 4, 5, 5], [5, 5], [1, 1]),
            ([1, 1, 1, 1], [1, 1], [1, 1]),
        ] {
            let x = var(3, &shape);
            // A coarse grid makes ties common.
            let xq = (x.as_tensor() * 4.0).unwrap().round().unwrap();
            let x = candle_core::Var::from_tensor(&xq).unwrap();
            let ours = max_pool2d(x.as_tensor(), k, s).unwrap();
            let theirs = x
                .as_tensor()
                .max_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))
                .unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert_eq!(vec(&ours), vec(&theirs));
            let r = tensor(4, ours.dims());
            let g = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let got = vec(g.get(x.as_tensor()).unwrap());
            // The window loop: first maximum in row-major window order.
            let [n, c, h, w] = shape;
            let (oh, ow) = ((h - k[0]) / s[0] + 1, (w - k[1]) / s[1] + 1);
            let (xv, rv) = (vec(x.as_tensor()), vec(&r));
            let mut want = vec![0f32; xv.len()];
            for p in 0..n * c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = None::<(usize, f32)>;
                        for ky in 0..k[0] {
                            for kx in 0..k[1] {
                                let i = p * h * w + (oy * s[0] + ky) * w + ox * s[1] + kx;
                                if best.is_none_or(|(_, b)| xv[i] > b) {
                                    best = Some((i, xv[i]));
                                }
                            }
                        }
                        want[best.unwrap().0] += rv[p * oh * ow + oy * ow + ox];
                    }
                }
            }
            assert_eq!(got, want, "{shape:?} k {k:?} s {s:?}");
        }
        assert!(max_pool2d(&tensor(1, &[1, 1, 2, 2]), [3, 3], [1, 1]).is_err());
        assert!(max_pool2d(&tensor(1, &[1, 2, 2]), [1, 1], [1, 1]).is_err());
        assert!(max_pool2d(&tensor(1, &[1, 1, 2, 2]), [1, 1], [0, 1]).is_err());
    }
}
