//! Slow reference implementations built only from plain candle ops (candle's own conv2d,
//! `x + (q(x) − x).detach()` for the straight-through estimator). Tests and benchmarks
//! compare the fast custom ops against these; they are not meant for training.

use candle_core::{D, DType, Tensor};

use crate::quant::{act_levels, weight_qmax};
use crate::{Conv2dParams, Result};

/// candle's built-in `conv2d` (same shapes as [`crate::conv2d`]).
pub fn conv2d(x: &Tensor, w: &Tensor, p: &Conv2dParams) -> Result<Tensor> {
    Ok(x.conv2d(w, p.padding, p.stride, p.dilation, p.groups)?)
}

/// candle's `matmul` with the transposed weight (same shapes as [`crate::linear`]).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

/// `max|w_c|` per output channel of `w` (`[C, ...]`), detached and shaped `[C, 1, ...]` to
/// broadcast against `w`, and that shape.
fn channel_max(w: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let c = w.dim(0)?;
    let mut bshape = vec![1usize; w.rank()];
    bshape[0] = c;
    let m = w
        .detach()
        .abs()?
        .reshape((c, ()))?
        .max_keepdim(1)?
        .reshape(bshape.as_slice())?;
    Ok((m, bshape))
}

/// Per-channel symmetric weight fake quantization with STE, from candle ops.
pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    let qmax = weight_qmax(bits) as f64;
    let (m, _) = channel_max(w)?;
    // A true division (candle's `tensor / f64` multiplies by the reciprocal).
    let qm = Tensor::new(qmax as f32, w.device())?;
    let s = m
        .gt(0.0)?
        .where_cond(&m.broadcast_div(&qm)?, &m.ones_like()?)?;
    let q = w
        .detach()
        .broadcast_div(&s)?
        .round()?
        .clamp(-qmax, qmax)?
        .broadcast_mul(&s)?;
    Ok((w + (q - w)?.detach())?)
}

/// Per-channel symmetric weight fake quantization with learned steps (LSQ), from candle ops:
/// the forward and gradients of [`crate::fake_quant_weight_lsq`], up to rounding (`|step|`
/// held to `[LSQ_MIN_STEP, 1]·max|w_c|/qmax` with the gradient passed straight through, LSQ
/// gradient scale `1/√(len·qmax)`, STE for `w` inside the clip, 0 outside).
pub fn fake_quant_weight_lsq(w: &Tensor, steps: &Tensor, bits: u32) -> Result<Tensor> {
    let qmax = weight_qmax(bits) as f64;
    let c = w.dim(0)?;
    let len = w.elem_count() / c.max(1);
    let (m, bshape) = channel_max(w)?;
    let st = steps.reshape(bshape.as_slice())?;
    let qm = Tensor::new(qmax as f32, w.device())?;
    let cap = m.broadcast_div(&qm)?;
    let floor = (&cap * f64::from(crate::quant::LSQ_MIN_STEP))?;
    let held = st.detach().abs()?.maximum(&floor)?.minimum(&cap)?;
    let used = m.gt(0.0)?.where_cond(&held, &m.ones_like()?)?;
    // Value: the step used; gradient: to `steps`, straight through the cap, scaled by g.
    let g = 1.0 / (len as f64 * qmax).sqrt();
    let sg = (st.abs()? * g)?;
    let s = (used + (&sg - sg.detach())?)?;
    let t = w.broadcast_div(&s)?;
    let inside = t.detach().abs()?.le(qmax)?.to_dtype(DType::F32)?;
    let outside = (inside.ones_like()? - &inside)?;
    let edge = (t.detach().sign()? * qmax)?.mul(&outside)?;
    let tc = ((&t * &inside)? + edge)?;
    let r = (&tc + (tc.detach().round()? - tc.detach())?)?;
    Ok(r.broadcast_mul(&s)?)
}

/// Unsigned activation fake quantization with clip range α, from candle ops: forward
/// `s·round(clip(x,0,α)/s)`, STE inside `[0, α]`, LSQ/PACT gradient for α.
pub fn fake_quant_act(x: &Tensor, alpha: &Tensor, bits: u32) -> Result<Tensor> {
    let n = act_levels(bits) as f64;
    let a = alpha.reshape(())?;
    let xd = x.detach();
    let ad = a.detach();
    let inside = xd
        .ge(0.0)?
        .mul(&xd.broadcast_le(&ad)?)?
        .to_dtype(DType::F32)?;
    let above = xd.broadcast_gt(&ad)?.to_dtype(DType::F32)?;
    // c = clip(x, 0, α) with dc/dx = [0 ≤ x ≤ α] and dc/dα = [x > α].
    let c = ((x * &inside)? + above.broadcast_mul(&a)?)?;
    let s = ad.broadcast_div(&Tensor::new(n as f32, x.device())?)?;
    let t = c.detach().broadcast_div(&s)?;
    let q = t.round()?.broadcast_mul(&s)?;
    // LSQ term ∂y/∂α += (round(t) − t)/n inside, carried by (α − α.detach()) whose value is 0.
    let lsq = ((t.round()? - &t)? * &inside)?.affine(1.0 / n, 0.0)?;
    let y = (&c + (q - &c)?.detach())?;
    Ok((y + lsq.broadcast_mul(&(&a - &ad)?)?)?)
}

/// Channel mask along `dim` by broadcasting.
pub fn channel_mask(x: &Tensor, mask: &Tensor, dim: usize) -> Result<Tensor> {
    let mut bshape = vec![1usize; x.rank()];
    bshape[dim] = mask.dim(0)?;
    Ok(x.broadcast_mul(&mask.reshape(bshape.as_slice())?)?)
}

/// Train-mode BatchNorm (biased batch variance) from candle ops; `relu` appends a ReLU whose
/// gradient is `[y > 0]`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mut bshape = vec![1usize; x.rank()];
    bshape[1] = c;
    // [N, C, rest] -> [C, N·rest]
    let xt = x
        .reshape((x.dim(0)?, c, ()))?
        .transpose(0, 1)?
        .reshape((c, ()))?;
    let mean = xt.mean_keepdim(D::Minus1)?;
    let var = xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let mean = mean.reshape(bshape.as_slice())?;
    let var = var.reshape(bshape.as_slice())?;
    let xhat = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = xhat
        .broadcast_mul(&gamma.reshape(bshape.as_slice())?)?
        .broadcast_add(&beta.reshape(bshape.as_slice())?)?;
    if relu { self::relu(&y) } else { Ok(y) }
}

/// ReLU with gradient `[x > 0]` from candle ops.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().gt(0.0)?.to_dtype(DType::F32)?;
    Ok((x * m)?)
}

/// Direct seven-loop convolution in f64 (no im2col, no candle): forward output and, for the
/// upstream gradient `dy`, the gradients of `x` and `w`. Independent of candle's conv
/// backward, which fails when the height and width leave different remainders over the
/// stride (candle 0.11.1 computes one output padding from the height only).
pub fn conv2d_direct(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    p: &Conv2dParams,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, cin, h, wd) = x.dims4()?;
    let (cout, cin_g, kh, kw) = w.dims4()?;
    let (_, _, oh, ow) = dy.dims4()?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let ws = w.flatten_all()?.to_vec1::<f32>()?;
    let gs = dy.flatten_all()?.to_vec1::<f32>()?;
    let cout_g = cout / p.groups;
    let mut y = vec![0f64; n * cout * oh * ow];
    let mut dx = vec![0f64; xs.len()];
    let mut dw = vec![0f64; ws.len()];
    for b in 0..n {
        for co in 0..cout {
            let grp = co / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let oi = ((b * cout + co) * oh + oy) * ow + ox;
                    for ci in 0..cin_g {
                        let c = grp * cin_g + ci;
                        for ky in 0..kh {
                            let iy =
                                (oy * p.stride + ky * p.dilation) as isize - p.padding as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix =
                                    (ox * p.stride + kx * p.dilation) as isize - p.padding as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * cin + c) * h + iy as usize) * wd + ix as usize;
                                let wi = ((co * cin_g + ci) * kh + ky) * kw + kx;
                                y[oi] += xs[xi] as f64 * ws[wi] as f64;
                                dx[xi] += gs[oi] as f64 * ws[wi] as f64;
                                dw[wi] += gs[oi] as f64 * xs[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>, s: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            v.into_iter().map(|v| v as f32).collect::<Vec<f32>>(),
            s,
            x.device(),
        )?)
    };
    Ok((f(y, dy.dims())?, f(dx, x.dims())?, f(dw, w.dims())?))
}
