//! The layer operations the models are built from: convolution, fake quantization with the
//! straight-through estimator (STE), batch normalisation, channel gathers.
//!
//! One thin module so the backend can be swapped in one place. The fast path uses
//! `seer-kernels`' custom ops with backward (im2col + GEMM convolution, fused quantizers and
//! BatchNorm); [`reference`] keeps the same operations built from plain candle ops (candle's
//! conv2d; STE as `x + (q(x) − x).detach()`, since candle's `round()` has no gradient), which
//! the tests compare against (method.md §3).

use candle_core::Tensor;

use crate::Result;

pub use seer_kernels::{act_levels, weight_qmax};

/// 2-D convolution (seer-kernels). `x`: `[N, C_in, H, W]`, `w`: `[C_out, C_in/groups, K_h,
/// K_w]`; returns `[N, C_out, H_out, W_out]`. Gradients for `x` and `w`.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let p = seer_kernels::Conv2dParams {
        stride,
        padding,
        dilation,
        groups,
    };
    Ok(seer_kernels::conv2d(x, w, &p)?)
}

/// Per-output-channel symmetric signed fake quantization of weights with STE (method.md §3;
/// seer-kernels). `w`: `[C_out, ...]`; errors for `bits ∉ 2..=8` or NaN/Inf.
pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    Ok(seer_kernels::fake_quant_weight(w, bits)?)
}

/// Unsigned activation fake quantization over `[0, α]` with STE and the PACT/LSQ gradient
/// for α (method.md §3; seer-kernels). `alpha`: one element, > 0.
pub fn fake_quant_act(x: &Tensor, alpha: &Tensor, bits: u32) -> Result<Tensor> {
    Ok(seer_kernels::fake_quant_act(x, alpha, bits)?)
}

/// Batch normalisation with batch statistics (seer-kernels' fused op): returns `(y, mean
/// [C], biased var [C])`. `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let o = seer_kernels::batch_norm_train(x, gamma, beta, eps)?;
    Ok((o.y, o.mean, o.var))
}

/// Batch normalisation from running statistics. Shapes as [`batch_norm_train`].
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    Ok(seer_kernels::batch_norm_eval(
        x, gamma, beta, mean, var, eps,
    )?)
}

/// The same operations from plain candle ops: the slow reference the fast path is checked
/// against.
pub mod reference {
    use candle_core::{DType, Tensor};

    use crate::{Error, Result};

    /// Largest signed level of a `bits`-bit symmetric weight quantizer: `2^(b−1) − 1`.
    pub fn weight_qmax(bits: u32) -> f64 {
        ((1u64 << (bits - 1)) - 1) as f64
    }

    /// Number of positive levels of a `bits`-bit unsigned activation quantizer: `2^b − 1`.
    pub fn act_levels(bits: u32) -> f64 {
        ((1u64 << bits) - 1) as f64
    }

    fn check_bits(bits: u32) -> Result<()> {
        if (2..=8).contains(&bits) {
            Ok(())
        } else {
            Err(Error::Invalid(format!("bit-width {bits} is outside 2..=8")))
        }
    }

    /// 2-D convolution. `x`: `[N, C_in, H, W]`, `w`: `[C_out, C_in/groups, K_h, K_w]`;
    /// returns `[N, C_out, H_out, W_out]`. Gradients for `x` and `w`.
    pub fn conv2d(
        x: &Tensor,
        w: &Tensor,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        Ok(x.conv2d(w, padding, stride, dilation, groups)?)
    }

    /// Per-output-channel symmetric signed fake quantization of weights (method.md §3):
    /// `q = clamp(round(w/s), −qmax, qmax)·s`, `s = max|w_c|/qmax` (`qmax = 2^(b−1) − 1`), an
    /// all-zero channel gets `s = 1` and stays zero. STE: `∂q/∂w = 1`.
    ///
    /// `w`: `[C_out, ...]` f32. Errors: `bits ∉ 2..=8`.
    pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
        check_bits(bits)?;
        let qmax = weight_qmax(bits);
        let c = w.dim(0)?;
        let mut bshape = vec![1usize; w.rank()];
        bshape[0] = c;
        let wd = w.detach();
        let m = wd
            .abs()?
            .reshape((c, ()))?
            .max_keepdim(1)?
            .reshape(bshape.as_slice())?;
        let s = m.gt(0.0)?.where_cond(&(&m / qmax)?, &m.ones_like()?)?;
        let q = wd
            .broadcast_div(&s)?
            .round()?
            .clamp(-qmax, qmax)?
            .broadcast_mul(&s)?;
        Ok((w + (q - &wd)?.detach())?)
    }

    /// Per-output-channel weight scales `[C_out]` of [`fake_quant_weight`].
    pub fn weight_scales(w: &Tensor, bits: u32) -> Result<Tensor> {
        check_bits(bits)?;
        let c = w.dim(0)?;
        let m = w
            .detach()
            .abs()?
            .reshape((c, ()))?
            .max_keepdim(1)?
            .reshape(c)?;
        Ok(m.gt(0.0)?
            .where_cond(&(&m / weight_qmax(bits))?, &m.ones_like()?)?)
    }

    /// Unsigned fake quantization of activations over the clip range `[0, α]` (method.md §3,
    /// PACT-style): `y = s·round(clamp(x, 0, α)/s)`, `s = α/(2^b − 1)`. STE inside `[0, α]`;
    /// `∂y/∂α` = 1 above α plus LSQ's rounding term inside.
    ///
    /// `x`: any shape f32; `alpha`: one element, > 0. Errors: `bits ∉ 2..=8`.
    pub fn fake_quant_act(x: &Tensor, alpha: &Tensor, bits: u32) -> Result<Tensor> {
        check_bits(bits)?;
        let n = act_levels(bits);
        let a = alpha.reshape(())?;
        let xd = x.detach();
        let ad = a.detach();
        let inside = xd
            .ge(0.0)?
            .mul(&xd.broadcast_le(&ad)?)?
            .to_dtype(DType::F32)?;
        let above = xd.broadcast_gt(&ad)?.to_dtype(DType::F32)?;
        let c = ((x * &inside)? + above.broadcast_mul(&a)?)?;
        let s = (&a / n)?;
        let t = c.broadcast_div(&s)?;
        let frac = (t.detach().round()? - t.detach())?;
        Ok((t + frac)?.broadcast_mul(&s)?)
    }

    /// Batch normalisation with batch statistics: returns `(y, mean [C], biased var [C])`.
    /// `x`: `[N, C, H, W]`; `gamma`, `beta`: `[C]`.
    pub fn batch_norm_train(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(1)?;
        let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc
            .sqr()?
            .mean_keepdim(0)?
            .mean_keepdim(2)?
            .mean_keepdim(3)?;
        let inv = (var.clone() + eps)?.sqrt()?.recip()?;
        let y = xc
            .broadcast_mul(&inv)?
            .broadcast_mul(&gamma.reshape((1, c, 1, 1))?)?
            .broadcast_add(&beta.reshape((1, c, 1, 1))?)?;
        Ok((y, mean.reshape(c)?.detach(), var.reshape(c)?.detach()))
    }

    /// Batch normalisation from running statistics. Shapes as [`batch_norm_train`].
    pub fn batch_norm_eval(
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f64,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        let k = (gamma / (var + eps)?.sqrt()?)?;
        let b = (beta - (mean * &k)?)?;
        Ok(x.broadcast_mul(&k.reshape((1, c, 1, 1))?)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?)?)
    }
}

/// Channel gather with zeros: output channel `j` is input channel `src[j]`, or zero where
/// `src[j]` is `None`. `x`: `[N, C, H, W]`; returns `[N, src.len(), H, W]`. Differentiable.
pub fn gather_channels(x: &Tensor, src: &[Option<usize>]) -> Result<Tensor> {
    let c = x.dim(1)?;
    let padded = x.pad_with_zeros(1, 0, 1)?;
    let idx: Vec<u32> = src
        .iter()
        .map(|s| s.map_or(c as u32, |v| v as u32))
        .collect();
    let idx = Tensor::from_vec(idx, src.len(), x.device())?;
    Ok(padded.index_select(&idx, 1)?)
}

/// Spatial subsampling `x[:, :, ::s_h, ::s_w]`. `x`: `[N, C, H, W]`.
pub fn subsample(x: &Tensor, s: [usize; 2]) -> Result<Tensor> {
    let mut y = x.clone();
    for (dim, st) in [(2usize, s[0]), (3, s[1])] {
        if st > 1 {
            let n = y.dim(dim)?;
            let idx: Vec<u32> = (0..n).step_by(st).map(|i| i as u32).collect();
            let len = idx.len();
            y = y.index_select(&Tensor::from_vec(idx, len, x.device())?, dim)?;
        }
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fast_ops_match_reference() {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut t = |s: &[usize]| {
            let n = s.iter().product();
            Var::from_vec(
                (0..n)
                    .map(|_| r.random_range(-1f32..1.0))
                    .collect::<Vec<_>>(),
                s,
                &Device::Cpu,
            )
            .unwrap()
        };
        let x = t(&[2, 3, 7, 7]);
        let w = t(&[4, 3, 3, 3]);
        let close = |a: &Tensor, b: &Tensor| {
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "diff {d}");
        };
        let a = conv2d(x.as_tensor(), w.as_tensor(), 2, 1, 1, 1).unwrap();
        let b = reference::conv2d(x.as_tensor(), w.as_tensor(), 2, 1, 1, 1).unwrap();
        close(&a, &b);
        let ga = a.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gb = b.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        close(
            ga.get(w.as_tensor()).unwrap(),
            gb.get(w.as_tensor()).unwrap(),
        );
        close(
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        for bits in [2, 4, 8] {
            close(
                &fake_quant_weight(w.as_tensor(), bits).unwrap(),
                &reference::fake_quant_weight(w.as_tensor(), bits).unwrap(),
            );
            let alpha = Tensor::new(&[0.7f32], &Device::Cpu).unwrap();
            close(
                &fake_quant_act(x.as_tensor(), &alpha, bits).unwrap(),
                &reference::fake_quant_act(x.as_tensor(), &alpha, bits).unwrap(),
            );
        }
        let g = t(&[3]);
        let be = t(&[3]);
        let (ya, ma, va) =
            batch_norm_train(x.as_tensor(), g.as_tensor(), be.as_tensor(), 1e-5).unwrap();
        let (yb, mb, vb) =
            reference::batch_norm_train(x.as_tensor(), g.as_tensor(), be.as_tensor(), 1e-5)
                .unwrap();
        close(&ya, &yb);
        close(&ma, &mb);
        close(&va, &vb);
    }

    #[test]
    fn weight_quant_values_and_ste() {
        let w = Var::from_vec(
            vec![0.5f32, -1.0, 0.26, 0.0, 0.0, 0.0],
            (2, 3),
            &Device::Cpu,
        )
        .unwrap();
        let q = reference::fake_quant_weight(w.as_tensor(), 2).unwrap();
        // 2 bits: qmax = 1, s = 1 for row 0 -> {1, -1, 0}? round(0.5)=1 (half away), round(0.26)=0
        assert_eq!(
            q.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, -1.0, 0.0], vec![0.0, 0.0, 0.0]]
        );
        let g = q.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![1.0; 3]; 2]
        );
    }

    #[test]
    fn act_quant_clips_and_has_ste() {
        let x = Var::from_vec(vec![-1.0f32, 0.4, 1.0, 3.0], 4, &Device::Cpu).unwrap();
        let a = Var::from_vec(vec![2.0f32], 1, &Device::Cpu).unwrap();
        let y = reference::fake_quant_act(x.as_tensor(), a.as_tensor(), 2).unwrap(); // s = 2/3
        let v = y.to_vec1::<f32>().unwrap();
        let want = [0.0, 2.0 / 3.0, 4.0 / 3.0, 2.0];
        for (a, b) in v.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.0, 1.0, 0.0]
        );
        assert!(g.get(a.as_tensor()).is_some());
    }

    #[test]
    fn gather_and_subsample() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 3.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 3, 3))
            .unwrap();
        let g = gather_channels(&x, &[Some(2), None, Some(0)]).unwrap();
        assert_eq!(g.dims(), &[2, 3, 3, 3]);
        let v = g.to_vec3::<f32>().ok();
        assert!(v.is_none());
        let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[0], 18.0);
        assert!(v[9..18].iter().all(|&z| z == 0.0));
        let s = subsample(&x, [2, 2]).unwrap();
        assert_eq!(s.dims(), &[2, 3, 2, 2]);
        assert_eq!(
            s.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..4],
            [0.0, 2.0, 6.0, 8.0]
        );
    }
}
