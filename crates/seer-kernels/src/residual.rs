//! Residual-block helpers with fused backward: `relu(a + b)` and the option-A (parameter-free)
//! ResNet shortcut, each one pass over memory where candle's ops take several.

use candle_core::{Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::view::{Backward, F32View, Forward, custom_op, par_map2, prepare, relu_grad, to_tensor};
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

struct ShortcutAOp {
    cout: usize,
}

/// `(n, c, h, w, oh, ow, lo)` of the shortcut: output `[n, cout, oh, ow]`, input channel `c`
/// lands on output channel `lo + c`.
fn dims(x: &[usize], cout: usize) -> (usize, usize, usize, usize, usize, usize, usize) {
    let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
    (n, c, h, w, h.div_ceil(2), w.div_ceil(2), (cout - c) / 2)
}

impl ShortcutAOp {
    fn forward(&self, [x]: [&[f32]; 1], [l]: [&Layout; 1]) -> Forward {
        let (n, c, h, w, oh, ow, lo) = dims(l.dims(), self.cout);
        let mut out = vec![0f32; n * self.cout * oh * ow];
        if !out.is_empty() {
            out.par_chunks_mut(oh * ow).enumerate().for_each(|(r, o)| {
                let (img, co) = (r / self.cout, r % self.cout);
                if co < lo || co >= lo + c {
                    return;
                }
                let xc = &x[(img * c + co - lo) * h * w..][..h * w];
                for oy in 0..oh {
                    for ox in 0..ow {
                        o[oy * ow + ox] = xc[2 * oy * w + 2 * ox];
                    }
                }
            });
        }
        Ok((out, Shape::from((n, self.cout, oh, ow))))
    }

    fn backward(&self, [x]: [&Tensor; 1], _res: &Tensor, grad: &Tensor) -> Backward<1> {
        let grad = grad.contiguous()?;
        let gv = F32View::of(&grad, SOP)?;
        let g = gv.slice();
        let (_, c, h, w, oh, ow, lo) = dims(x.dims(), self.cout);
        let mut dx = vec![0f32; x.elem_count()];
        if !dx.is_empty() {
            dx.par_chunks_mut(h * w).enumerate().for_each(|(r, d)| {
                let (img, ci) = (r / c, r % c);
                let gc = &g[(img * self.cout + lo + ci) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    for ox in 0..ow {
                        d[2 * oy * w + 2 * ox] = gc[oy * ow + ox];
                    }
                }
            });
        }
        Ok([Some(to_tensor(dx, x.dims())?)])
    }
}

custom_op!(CustomOp1 for ShortcutAOp, |_| "seer-shortcut-a", SOP);

/// The option-A ResNet shortcut (He et al. 2016, CIFAR variant): `x[:, :, ::2, ::2]` with its
/// channels zero-padded to `cout` (`(cout − C)/2` zero channels before, the rest after), with
/// backward. `x`: `[N, C, H, W]` f32 → `[N, cout, ⌈H/2⌉, ⌈W/2⌉]`.
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
    let x = prepare(x, SOP)?;
    Ok(x.apply_op1(ShortcutAOp { cout })?)
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
