//! Structured (channel) pruning: channel masks with backward, and L2 filter-norm scores
//! summed over a residual tie group (docs/method.md §3).

use candle_core::{Layout, Tensor};
use rayon::prelude::*;

use crate::view::{Backward, F32View, Forward, custom_op, prepare, to_tensor};
use crate::{Error, Result};

const OP: &str = "channel_mask";

/// `(outer, channels, inner)` of `dims` split around `dim`.
fn split(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    )
}

struct ChannelMaskOp {
    dim: usize,
}

/// `src` as rows of `inner` values (row `r` in channel `r % c`), each row times `m[r % c]`:
/// copied where the factor is 1, left zero where it is 0.
fn scale_rows(src: &[f32], m: &[f32], c: usize, inner: usize) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    if inner > 0 {
        out.par_chunks_mut(inner)
            .zip(src.par_chunks(inner))
            .enumerate()
            .for_each(|(r, (o, x))| {
                let mv = m[r % c];
                if mv == 1.0 {
                    o.copy_from_slice(x);
                } else if mv != 0.0 {
                    for (o, x) in o.iter_mut().zip(x) {
                        *o = x * mv;
                    }
                }
            });
    }
    out
}

impl ChannelMaskOp {
    fn forward(&self, [x, m]: [&[f32]; 2], [l, _]: [&Layout; 2]) -> Forward {
        let (_, c, inner) = split(l.dims(), self.dim);
        Ok((scale_rows(x, m, c, inner), l.shape().clone()))
    }

    fn backward(&self, [x, mask]: [&Tensor; 2], _res: &Tensor, grad: &Tensor) -> Backward<2> {
        let grad = grad.contiguous()?;
        let xv = F32View::of(x, OP)?;
        let mv = F32View::of(mask, OP)?;
        let gv = F32View::of(&grad, OP)?;
        let (m, g, xs) = (mv.slice(), gv.slice(), xv.slice());
        let (_, c, inner) = split(x.dims(), self.dim);
        let dx = scale_rows(g, m, c, inner);
        let dmask = if mask.track_op() && inner > 0 {
            // d mask_c = Σ g · x over every element of channel c (fixed order: rows ascending).
            let rows: Vec<f64> = g
                .par_chunks(inner)
                .zip(xs.par_chunks(inner))
                .map(|(g, x)| g.iter().zip(x).map(|(g, x)| (g * x) as f64).sum())
                .collect();
            let mut dm = vec![0f64; c];
            for (r, v) in rows.iter().enumerate() {
                dm[r % c] += v;
            }
            Some(to_tensor(
                dm.into_iter().map(|v| v as f32).collect(),
                mask.dims(),
            )?)
        } else {
            None
        };
        Ok([Some(to_tensor(dx, x.dims())?), dmask])
    }
}

custom_op!(CustomOp2 for ChannelMaskOp, |_| "seer-channel-mask", OP);

/// Structured channel mask with backward: `y[.., c, ..] = x[.., c, ..] · mask[c]` along
/// dimension `dim` (1 for NCHW activations, 0 for a weight's output channels). Backward:
/// `dx = dy · mask[c]` (exact), `dmask[c] = Σ dy · x` over the channel.
///
/// `x`: f32, rank > `dim`; `mask`: `[C]` f32 with `C = x.dim(dim)` (usually 0/1). Errors:
/// [`Error::Shape`] if `dim` is out of range or the mask length differs from `C`.
pub fn channel_mask(x: &Tensor, mask: &Tensor, dim: usize) -> Result<Tensor> {
    if dim >= x.rank() {
        return Err(Error::Shape {
            op: OP,
            msg: format!("dim {dim} out of range for input of shape {:?}", x.dims()),
        });
    }
    if mask.dims() != [x.dims()[dim]] {
        return Err(Error::Shape {
            op: OP,
            msg: format!(
                "mask shape {:?} must be [{}] for input {:?} along dim {dim}",
                mask.dims(),
                x.dims()[dim],
                x.dims()
            ),
        });
    }
    let x = prepare(x, OP)?;
    let mask = prepare(mask, OP)?;
    Ok(x.apply_op2(&mask, ChannelMaskOp { dim })?)
}

const SOP: &str = "filter_l2_scores";

/// L2 filter-norm scores of output channels, summed over a residual tie group
/// (docs/method.md §3): `score[c] = Σ_layers ‖w_layer[c, ..]‖₂`.
///
/// `weights`: the weights of every layer of the tie group (one layer for an untied conv),
/// each `[C_out, ...]` f32 with the same `C_out`. Returns `C_out` scores (f32, in the
/// weights' units); no gradient. Errors: [`Error::Shape`] for an empty list, a scalar, or
/// differing `C_out`; [`Error::NonFinite`] for NaN/Inf weights.
pub fn filter_l2_scores(weights: &[&Tensor]) -> Result<Vec<f32>> {
    let Some(first) = weights.first() else {
        return Err(Error::Shape {
            op: SOP,
            msg: "empty tie group".into(),
        });
    };
    if first.rank() == 0 {
        return Err(Error::Shape {
            op: SOP,
            msg: "weights must have rank ≥ 1".into(),
        });
    }
    let c = first.dim(0)?;
    let mut scores = vec![0f64; c];
    for (li, w) in weights.iter().enumerate() {
        if w.rank() == 0 || w.dim(0)? != c {
            return Err(Error::Shape {
                op: SOP,
                msg: format!(
                    "layer {li} of the tie group has shape {:?}, expected [{c}, ...]",
                    w.dims()
                ),
            });
        }
        let w = prepare(w, SOP)?;
        let v = F32View::new(&w, SOP)?;
        crate::view::check_finite(v.slice(), SOP, "weights")?;
        let len = v.slice().len() / c.max(1);
        for (ch, s) in scores.iter_mut().enumerate() {
            let ss: f64 = v.slice()[ch * len..(ch + 1) * len]
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum();
            *s += ss.sqrt();
        }
    }
    Ok(scores.into_iter().map(|s| s as f32).collect())
}

/// Sums per-channel scores over channel-index tie groups: `out[i] = Σ_{c ∈ groups[i]} scores[c]`.
/// Errors: [`Error::Shape`] for an index ≥ `scores.len()`.
pub fn group_scores(scores: &[f32], groups: &[Vec<usize>]) -> Result<Vec<f32>> {
    groups
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            g.iter().try_fold(0f32, |acc, &c| {
                scores.get(c).map(|s| acc + s).ok_or_else(|| Error::Shape {
                    op: SOP,
                    msg: format!(
                        "group {gi} names channel {c}, but there are {} scores",
                        scores.len()
                    ),
                })
            })
        })
        .collect()
}

/// A 0/1 keep-mask `[C]` keeping the `keep` highest-scoring channels (ties: lower index
/// wins). Errors: [`Error::InvalidParam`] if `keep > scores.len()`.
pub fn top_k_mask(scores: &[f32], keep: usize) -> Result<Tensor> {
    if keep > scores.len() {
        return Err(Error::InvalidParam {
            op: "top_k_mask",
            msg: format!("keep {keep} exceeds the {} channels", scores.len()),
        });
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut m = vec![0f32; scores.len()];
    for &i in &idx[..keep] {
        m[i] = 1.0;
    }
    Ok(to_tensor(m, &[scores.len()])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::testutil::{rel_err, tensor, var, vec};
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        #[test]
        fn matches_reference(n in 1usize..4, c in 1usize..6, h in 1usize..5, dim in 0usize..2, bits in 0u32..64, seed in 0u64..1000) {
            let shape = [n, c, h, h];
            let x = var(seed, &shape);
            let mv: Vec<f32> = (0..shape[dim]).map(|i| if (bits >> (i % 32)) & 1 == 1 { 1.0 } else { 0.0 }).collect();
            let m = Var::from_vec(mv, shape[dim], &Device::Cpu).unwrap();
            let ours = channel_mask(x.as_tensor(), m.as_tensor(), dim).unwrap();
            let refm = reference::channel_mask(x.as_tensor(), m.as_tensor(), dim).unwrap();
            prop_assert_eq!(vec(&ours), vec(&refm));
            let r = tensor(seed + 3, &shape);
            let go = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (refm * &r).unwrap().sum_all().unwrap().backward().unwrap();
            prop_assert_eq!(vec(go.get(x.as_tensor()).unwrap()), vec(gr.get(x.as_tensor()).unwrap()));
            // dmask is a sum of dy·x that may cancel: measure its error against Σ|dy·x|, the
            // scale of f32 summation error (saved case: 2e-3 from terms summing to 2.2 in size).
            let scale = vec(&(x.as_tensor() * &r).unwrap().abs().unwrap().sum_all().unwrap())[0];
            prop_assert!(rel_err(go.get(m.as_tensor()).unwrap(), gr.get(m.as_tensor()).unwrap(), scale.max(1e-6)) <= 1e-5);
        }
    }

    #[test]
    fn scores_and_groups() {
        let a = Tensor::new(&[[3f32, 4.], [0., 0.], [1., 0.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 1.], [0., 2.], [0., 0.]], &Device::Cpu).unwrap();
        assert_eq!(filter_l2_scores(&[&a]).unwrap(), vec![5., 0., 1.]);
        assert_eq!(filter_l2_scores(&[&a, &b]).unwrap(), vec![6., 2., 1.]);
        assert_eq!(
            group_scores(&[6., 2., 1.], &[vec![0, 2], vec![1]]).unwrap(),
            vec![7., 2.]
        );
        assert!(matches!(
            group_scores(&[1.], &[vec![3]]),
            Err(Error::Shape { .. })
        ));
        let bad = Tensor::new(&[[1f32, 2.]], &Device::Cpu).unwrap();
        assert!(matches!(
            filter_l2_scores(&[&a, &bad]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(filter_l2_scores(&[]), Err(Error::Shape { .. })));
        assert_eq!(
            vec(&top_k_mask(&[6., 2., 6., 1.], 2).unwrap()),
            vec![1., 0., 1., 0.]
        );
        assert!(top_k_mask(&[1.], 2).is_err());
    }

    #[test]
    fn mask_shape_errors() {
        let x = tensor(1, &[2, 3, 4, 4]);
        let m = tensor(2, &[4]);
        assert!(matches!(channel_mask(&x, &m, 1), Err(Error::Shape { .. })));
        assert!(matches!(channel_mask(&x, &m, 4), Err(Error::Shape { .. })));
    }
}
