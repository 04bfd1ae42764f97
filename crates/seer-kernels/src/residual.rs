//! Residual-block helpers with fused backward: `relu(a + b)`, the option-A (parameter-free)
//! ResNet shortcut and the channel gather of slimmed residual joins, each one pass over memory
//! where candle's ops take several.

use candle_core::{Layout, Shape, Tensor};

use crate::view::{
    Backward, F32View, Forward, custom_op, par_chunks_filled, par_map2, prepare, relu_grad,
    to_tensor,
};
use crate::{Error, Result};

const AOP: &str = "add_relu";

struct AddReluOp;

impl AddReluOp {
    fn forward(&self, [a, b]: [&[f32]; 2], [l, _]: [&Layout; 2]) -> Forward {
        Ok((par_map2(a, b, |a, b| (a + b).max(0.0)), l.shape().clone()))
    }

    fn backward(&self, [a, b]: [&Tensor; 2], res: &Tensor, grad: &Tensor) -> Backward<2> {
        let grad = grad.contiguous()?;
        let rv = F32View::of(res, AOP)?;
        let gv = F32View::of(&grad, AOP)?;
        let d = to_tensor(relu_grad(gv.slice(), rv.slice()), res.dims())?;
        Ok([a.track_op().then(|| d.clone()), b.track_op().then_some(d)])
    }
}

custom_op!(CustomOp2 for AddReluOp, |_| "seer-add-relu", AOP);

/// `relu(a + b)` with a fused backward (`da = db = dy · [y > 0]`): the residual join of a
/// ResNet basic block. `a`, `b`: f32, equal shapes. Errors: [`Error::Shape`] if the shapes
/// differ.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::Shape {
            op: AOP,
            msg: format!("operands have shapes {:?} and {:?}", a.dims(), b.dims()),
        });
    }
    let a = prepare(a, AOP)?;
    let b = prepare(b, AOP)?;
    Ok(a.apply_op2(&b, AddReluOp)?)
}

const SOP: &str = "shortcut_a";

/// The option-A ResNet shortcut (He et al. 2016, CIFAR variant): `x[:, :, ::2, ::2]` with its
/// channels zero-padded to `cout` (`(cout − C)/2` zero channels before, the rest after), with
/// backward: the [`gather_channels`] of that channel placement at stride 2.
/// `x`: `[N, C, H, W]` f32 → `[N, cout, ⌈H/2⌉, ⌈W/2⌉]`.
/// Errors: [`Error::Shape`] for a rank other than 4 or `cout < C`.
pub fn shortcut_a(x: &Tensor, cout: usize) -> Result<Tensor> {
    if x.rank() != 4 || cout < x.dims()[1] {
        return Err(Error::Shape {
            op: SOP,
            msg: format!(
                "input {:?} must be [N, C, H, W] with C ≤ cout = {cout}",
                x.dims()
            ),
        });
    }
    let (c, lo) = (x.dims()[1], (cout - x.dims()[1]) / 2);
    let src: Vec<Option<usize>> = (0..cout)
        .map(|j| (lo..lo + c).contains(&j).then(|| j - lo))
        .collect();
    gather_channels(x, &src, [2, 2])
}

const GOP: &str = "gather_channels";

/// Channel gather with zeros and spatial subsampling: output channel `j` of each image is
/// input channel `src[j]` read at every `stride`-th row and column, or zeros for `None`.
struct GatherOp {
    src: Vec<Option<usize>>,
    stride: [usize; 2],
}

impl GatherOp {
    /// `(n, c, h, w, oh, ow)` for an input of dimensions `x`.
    fn dims(&self, x: &[usize]) -> (usize, usize, usize, usize, usize, usize) {
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        (
            n,
            c,
            h,
            w,
            h.div_ceil(self.stride[0]),
            w.div_ceil(self.stride[1]),
        )
    }

    fn forward(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        let (n, c, h, w, oh, ow) = self.dims(l.dims());
        let (j, [sh, sw]) = (self.src.len(), self.stride);
        let out = par_chunks_filled(n * j * oh * ow, (oh * ow).max(1), |r, o| {
            let Some(ci) = self.src[r % j] else { return };
            let xc = &x[((r / j) * c + ci) * h * w..][..h * w];
            if sh == 1 && sw == 1 {
                o.copy_from_slice(xc);
                return;
            }
            for (oy, orow) in o.chunks_exact_mut(ow).enumerate() {
                let xr = &xc[oy * sh * w..];
                for (ox, v) in orow.iter_mut().enumerate() {
                    *v = xr[ox * sw];
                }
            }
        });
        Ok((out, Shape::from((n, j, oh, ow))))
    }

    fn backward(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Backward<1> {
        let grad = grad.contiguous()?;
        let gv = F32View::of(&grad, GOP)?;
        let g = gv.slice();
        let (_, c, h, w, oh, ow) = self.dims(x.dims());
        let (j, [sh, sw]) = (self.src.len(), self.stride);
        // The output channels each input channel feeds, in order.
        let mut users = vec![Vec::new(); c];
        for (k, s) in self.src.iter().enumerate() {
            if let Some(ci) = *s {
                users[ci].push(k);
            }
        }
        let dx = par_chunks_filled(x.elem_count(), (h * w).max(1), |r, d| {
            let img = r / c;
            for &k in &users[r % c] {
                let gc = &g[(img * j + k) * oh * ow..][..oh * ow];
                for (oy, grow) in gc.chunks_exact(ow).enumerate() {
                    let drow = &mut d[oy * sh * w..];
                    for (ox, &v) in grow.iter().enumerate() {
                        drow[ox * sw] += v;
                    }
                }
            }
        });
        Ok([Some(to_tensor(dx, x.dims())?)])
    }
}

custom_op!(CustomOp1 for GatherOp, |_| "seer-gather-channels", GOP);

/// Channel gather with zeros and subsampling, with backward: output channel `j` is input
/// channel `src[j]` at rows `0, s_h, 2·s_h, …` and columns `0, s_w, …` (`x[:, src[j], ::s_h,
/// ::s_w]`), or zeros where `src[j]` is `None` — a slimmed network's residual joins and
/// option-A shortcuts (docs/method.md §7). The input gradient of a channel is the sum of the
/// gradients of the output channels it feeds, added in output order from zero (the bits of
/// candle's `index_select` gradients). `x`: `[N, C, H, W]` f32 → `[N, src.len(), ⌈H/s_h⌉,
/// ⌈W/s_w⌉]`. Errors: [`Error::Shape`] for a rank other than 4, [`Error::InvalidParam`] for
/// a source channel ≥ `C` or a stride of 0.
pub fn gather_channels(x: &Tensor, src: &[Option<usize>], stride: [usize; 2]) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::Shape {
            op: GOP,
            msg: format!("input {:?} must be [N, C, H, W]", x.dims()),
        });
    }
    let c = x.dims()[1];
    if let Some(bad) = src.iter().flatten().find(|&&s| s >= c) {
        return Err(Error::InvalidParam {
            op: GOP,
            msg: format!("source channel {bad} of an input with {c} channels"),
        });
    }
    if stride.contains(&0) {
        return Err(Error::InvalidParam {
            op: GOP,
            msg: format!("stride {stride:?} must be ≥ 1"),
        });
    }
    let x = prepare(x, GOP)?;
    let op = GatherOp {
        src: src.to_vec(),
        stride,
    };
    Ok(x.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{tensor, var, vec};
    use candle_core::DType;

    #[test]
    fn add_relu_matches_candle_ops() {
        let a = var(1, &[2, 3, 5, 5]);
        let b = var(2, &[2, 3, 5, 5]);
        let r = tensor(3, &[2, 3, 5, 5]);
        let ours = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
        let s = (a.as_tensor() + b.as_tensor()).unwrap();
        let refy = crate::reference::relu(&s).unwrap();
        assert_eq!(vec(&ours), vec(&refy));
        let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&a, &b] {
            assert_eq!(
                vec(go.get(v.as_tensor()).unwrap()),
                vec(gr.get(v.as_tensor()).unwrap())
            );
        }
        assert!(add_relu(a.as_tensor(), &tensor(4, &[2, 3, 5, 4])).is_err());
    }

    /// The gather as seer-nn built it from candle ops before: subsampling by `index_select`
    /// on rows and columns, one zero channel appended by `pad_with_zeros`, then
    /// `index_select` on the channels (the zero channel for `None`).
    fn gather_reference(x: &Tensor, src: &[Option<usize>], stride: [usize; 2]) -> Tensor {
        let mut y = x.clone();
        for (dim, st) in [(2usize, stride[0]), (3, stride[1])] {
            if st > 1 {
                let n = y.dim(dim).unwrap() as u32;
                let idx = Tensor::arange_step(0u32, n, st as u32, x.device()).unwrap();
                y = y.index_select(&idx, dim).unwrap();
            }
        }
        let c = x.dim(1).unwrap();
        let idx: Vec<u32> = src.iter().map(|s| s.map_or(c, |v| v) as u32).collect();
        let idx = Tensor::from_vec(idx, src.len(), x.device()).unwrap();
        y.pad_with_zeros(1, 0, 1)
            .unwrap()
            .index_select(&idx, 1)
            .unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]
        /// Values and input gradients bit for bit those of the candle ops, for gathers with
        /// repeats, zeros and dropped channels, strides 1–3, odd sizes and empty outputs.
        #[test]
        fn gather_has_the_bits_of_the_candle_ops(
            n in 1usize..3, c in 1usize..5, h in 1usize..7, w in 1usize..7,
            sh in 1usize..4, sw in 1usize..4, picks in proptest::collection::vec(0usize..6, 0..7),
            seed in 0u64..1000,
        ) {
            // Picks ≥ c are zero channels.
            let src: Vec<Option<usize>> = picks.iter().map(|&p| (p < c).then_some(p)).collect();
            let x = var(seed, &[n, c, h, w]);
            let ours = gather_channels(x.as_tensor(), &src, [sh, sw]).unwrap();
            let refy = gather_reference(x.as_tensor(), &src, [sh, sw]);
            proptest::prop_assert_eq!(ours.dims(), refy.dims());
            let bits = |t: &Tensor| vec(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&ours), bits(&refy));
            if ours.elem_count() > 0 {
                let r = tensor(seed + 1, ours.dims());
                let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let gr = (refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let (a, b) = (go.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap());
                proptest::prop_assert_eq!(bits(a), bits(b));
            }
        }
    }

    #[test]
    fn gather_rejects_bad_input() {
        let x = tensor(1, &[2, 3, 4, 4]);
        assert!(matches!(
            gather_channels(&x, &[Some(3)], [1, 1]),
            Err(Error::InvalidParam { .. })
        ));
        assert!(matches!(
            gather_channels(&x, &[Some(0)], [0, 1]),
            Err(Error::InvalidParam { .. })
        ));
        assert!(matches!(
            gather_channels(&tensor(1, &[2, 3, 4]), &[Some(0)], [1, 1]),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn shortcut_matches_candle_ops() {
        for (h, w) in [(6, 4), (5, 7)] {
            let x = var(5, &[2, 3, h, w]);
            let cout = 7;
            let ours = shortcut_a(x.as_tensor(), cout).unwrap();
            // reference: strided subsample by index_select, then zero-pad channels with cat
            let ri = Tensor::arange_step(0u32, h as u32, 2, x.device()).unwrap();
            let ci = Tensor::arange_step(0u32, w as u32, 2, x.device()).unwrap();
            let sub = x
                .as_tensor()
                .index_select(&ri, 2)
                .unwrap()
                .index_select(&ci, 3)
                .unwrap();
            let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
            let z1 = Tensor::zeros((2, 2, oh, ow), DType::F32, x.device()).unwrap();
            let z2 = Tensor::zeros((2, 2, oh, ow), DType::F32, x.device()).unwrap();
            let refy = Tensor::cat(&[&z1, &sub, &z2], 1).unwrap();
            assert_eq!(vec(&ours), vec(&refy));
            let r = tensor(6, &[2, cout, oh, ow]);
            let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refy * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(
                vec(go.get(x.as_tensor()).unwrap()),
                vec(gr.get(x.as_tensor()).unwrap())
            );
        }
        assert!(shortcut_a(&tensor(1, &[2, 8, 4, 4]), 4).is_err());
    }
}
