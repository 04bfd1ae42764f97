//! The layer operations the models are built from: convolution, fully connected layers, fake
//! quantization with the straight-through estimator (STE), batch normalisation, channel
//! gathers.
//!
//! One thin module so the backend can be swapped in one place: `seer-kernels`' custom ops with
//! backward (im2col + GEMM convolution, fused quantizers and BatchNorm; docs/method.md §3). Their
//! slow references (plain candle ops) and the tests against them live in
//! `seer_kernels::reference`; this module's tests check only the wiring (argument order,
//! returned statistics).

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

/// 2-D convolution with possibly asymmetric zero padding: `pads = (begin, end)`, `begin =
/// [top, left]`, `end = [bottom, right]` ([`seer_policy::LayerKind::conv_pads`]). The
/// padding common to all four sides is the convolution's own; the rest is added to `x` as
/// explicit zeros first (candle's `pad_with_zeros`, with gradients), which computes the same
/// sums as a convolution padding each side by its own amount. Shapes as [`conv2d`].
pub fn conv2d_padded(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    pads: ([usize; 2], [usize; 2]),
    dilation: usize,
    groups: usize,
) -> Result<Tensor> {
    let (b, e) = pads;
    let m = b[0].min(b[1]).min(e[0]).min(e[1]);
    if b == [m, m] && e == [m, m] {
        return conv2d(x, w, stride, m, dilation, groups);
    }
    let xp = x
        .pad_with_zeros(2, b[0] - m, e[0] - m)?
        .pad_with_zeros(3, b[1] - m, e[1] - m)?;
    conv2d(&xp, w, stride, m, dilation, groups)
}

/// `conv2d(fake_quant_act(x, alpha, bits), w)` in one op (seer-kernels
/// [`seer_kernels::conv2d_fq_input`]): the same values and gradients, one tensor and one
/// gradient accumulation fewer. `p` = `(stride, padding, dilation, groups)`; shapes and
/// errors as [`conv2d`] and [`fake_quant_act`].
pub fn conv2d_fq_input(
    x: &Tensor,
    w: &Tensor,
    alpha: &Tensor,
    bits: u32,
    p: (usize, usize, usize, usize),
) -> Result<Tensor> {
    let (stride, padding, dilation, groups) = p;
    let params = seer_kernels::Conv2dParams {
        stride,
        padding,
        dilation,
        groups,
    };
    Ok(seer_kernels::conv2d_fq_input(x, w, alpha, bits, &params)?)
}

/// Fully connected layer `x·Wᵀ` without bias (seer-kernels). `x`: `[N, K]`, `w`: `[F, K]`;
/// returns `[N, F]`. Gradients for `x` and `w`. Each row of the output is bitwise the same
/// whatever batch it is computed in (candle's `matmul` is not: its `gemm` kernel and
/// summation order change with `N`).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(seer_kernels::linear(x, w)?)
}

/// Per-output-channel symmetric signed fake quantization of weights with STE (docs/method.md §3;
/// seer-kernels). `w`: `[C_out, ...]`; errors for `bits ∉ 2..=8` or NaN/Inf.
pub fn fake_quant_weight(w: &Tensor, bits: u32) -> Result<Tensor> {
    Ok(seer_kernels::fake_quant_weight(w, bits)?)
}

/// Unsigned activation fake quantization over `[0, α]` with STE and the PACT/LSQ gradient
/// for α (docs/method.md §3; seer-kernels). `alpha`: one element, > 0.
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

/// [`batch_norm_train`] followed by ReLU in one fused op (seer-kernels; the ReLU gradient is
/// `[y > 0]`). Shapes and returned statistics as [`batch_norm_train`].
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let o = seer_kernels::batch_norm_relu_train(x, gamma, beta, eps)?;
    Ok((o.y, o.mean, o.var))
}

/// ReLU with a one-pass backward (`dx = dy · [x > 0]`; seer-kernels). Any shape.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(seer_kernels::relu(x)?)
}

/// `relu(a + b)` with a one-pass backward (seer-kernels). `a`, `b`: equal shapes.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(seer_kernels::add_relu(a, b)?)
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

/// Channel gather with zeros and subsampling in one op (seer-kernels): output channel `j` is
/// input channel `src[j]` at every `stride`-th row and column (`x[:, src[j], ::s_h, ::s_w]`),
/// or zero where `src[j]` is `None`. `x`: `[N, C, H, W]`; returns `[N, src.len(), ⌈H/s_h⌉,
/// ⌈W/s_w⌉]`. Differentiable.
pub fn gather_channels(x: &Tensor, src: &[Option<usize>], stride: [usize; 2]) -> Result<Tensor> {
    Ok(seer_kernels::gather_channels(x, src, stride)?)
}

/// The option-A ResNet shortcut in one op (seer-kernels): `x[:, :, ::2, ::2]` with its
/// channels zero-padded to `cout` (`(cout − C)/2` zero channels first). `x`: `[N, C, H, W]`
/// → `[N, cout, ⌈H/2⌉, ⌈W/2⌉]`; the same values as [`subsample`] and a channel pad.
pub fn shortcut_a(x: &Tensor, cout: usize) -> Result<Tensor> {
    Ok(seer_kernels::shortcut_a(x, cout)?)
}

/// Max pooling of `x` `[N, C, H, W]` (already padded) with window `k` and stride `s`, floor
/// mode. Non-overlapping windows (`k == s`) use candle's op; overlapping ones (`k ≠ s`, where
/// candle has no backward) seer-kernels' `max_pool2d`, which gives the same values.
pub fn max_pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2]) -> Result<Tensor> {
    if k == s {
        Ok(x.max_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))?)
    } else {
        Ok(seer_kernels::max_pool2d(x, k, s)?)
    }
}

/// Average pooling of `x` `[N, C, H, W]` (already padded: the zeros count) with window `k`
/// and stride `s`, floor mode. Non-overlapping windows (`k == s`) use candle's op;
/// overlapping ones (`k ≠ s`, where candle has no backward) seer-kernels' `avg_pool2d`,
/// which gives the same values bit for bit.
pub fn avg_pool2d(x: &Tensor, k: [usize; 2], s: [usize; 2]) -> Result<Tensor> {
    if k == s {
        Ok(x.avg_pool2d_with_stride((k[0], k[1]), (s[0], s[1]))?)
    } else {
        Ok(seer_kernels::avg_pool2d(x, k, s)?)
    }
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
    use seer_kernels::reference;

    use crate::tests::max_abs_diff;

    /// Asymmetric padding at stride 1: padding 0 before and 1 after is the symmetric
    /// padding-1 convolution shifted by one pixel (its first row and column dropped), in
    /// value and in the weight and input gradients; `(begin, end)` with begin > end is the
    /// other crop.
    #[test]
    fn asymmetric_padding_is_a_crop_of_the_symmetric_conv() {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut t = |s: &[usize]| {
            let n = s.iter().product();
            let v: Vec<f32> = (0..n).map(|_| r.random_range(-1f32..1.0)).collect();
            Var::from_vec(v, s, &Device::Cpu).unwrap()
        };
        let x = t(&[2, 3, 6, 5]);
        let w = t(&[4, 3, 3, 3]);
        let sym = conv2d(x.as_tensor(), w.as_tensor(), 1, 1, 1, 1).unwrap();
        for (pads, lo) in [(([0, 0], [1, 1]), 1), (([1, 1], [0, 0]), 0)] {
            let asym = conv2d_padded(x.as_tensor(), w.as_tensor(), 1, pads, 1, 1).unwrap();
            assert_eq!(asym.dims(), &[2, 4, 5, 4]);
            let crop = sym.narrow(2, lo, 5).unwrap().narrow(3, lo, 4).unwrap();
            assert!(max_abs_diff(&asym, &crop) < 1e-5);
            let ga = asym.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let gb = crop.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&w, &x] {
                let d = max_abs_diff(
                    ga.get(v.as_tensor()).unwrap(),
                    gb.get(v.as_tensor()).unwrap(),
                );
                assert!(d < 1e-4, "{pads:?}: gradient diff {d}");
            }
        }
    }

    /// Each wrapper passes its arguments to seer-kernels in the right order: compared with the
    /// slow references of `seer_kernels::reference` (forward and, for conv, gradients).
    #[test]
    fn wrappers_match_the_kernel_references() {
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
        let x = t(&[2, 4, 7, 7]);
        let w = t(&[4, 2, 3, 3]);
        let close = |a: &Tensor, b: &Tensor| {
            let d = max_abs_diff(a, b);
            assert!(d < 1e-4, "diff {d}");
        };
        // stride 2, padding 1, dilation 2, groups 2: every argument distinct.
        let p = seer_kernels::Conv2dParams {
            stride: 2,
            padding: 1,
            dilation: 2,
            groups: 2,
        };
        let a = conv2d(x.as_tensor(), w.as_tensor(), 2, 1, 2, 2).unwrap();
        let b = reference::conv2d(x.as_tensor(), w.as_tensor(), &p).unwrap();
        close(&a, &b);
        let ga = a.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let gb = b.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&w, &x] {
            close(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
            );
        }
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
        // linear: x [3, 5] · w [4, 5]ᵀ (a swapped order would be a shape error).
        let (xl, wl) = (t(&[3, 5]), t(&[4, 5]));
        close(
            &linear(xl.as_tensor(), wl.as_tensor()).unwrap(),
            &reference::linear(xl.as_tensor(), wl.as_tensor()).unwrap(),
        );
        let g = t(&[4]);
        let be = t(&[4]);
        let (y, mean, var) =
            batch_norm_train(x.as_tensor(), g.as_tensor(), be.as_tensor(), 1e-5).unwrap();
        let want =
            reference::batch_norm_train(x.as_tensor(), g.as_tensor(), be.as_tensor(), 1e-5, false)
                .unwrap();
        close(&y, &want);
        // (mean, var) in that order: per-channel mean and biased variance of x.
        let xt = x
            .as_tensor()
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap();
        close(&mean, &xt.mean(1).unwrap());
        let centred = xt.broadcast_sub(&mean.unsqueeze(1).unwrap()).unwrap();
        close(&var, &centred.sqr().unwrap().mean(1).unwrap());
        // Running statistics equal to the batch's give the training output.
        let ev = batch_norm_eval(
            x.as_tensor(),
            g.as_tensor(),
            be.as_tensor(),
            &mean,
            &var,
            1e-5,
        )
        .unwrap();
        close(&ev, &y);
    }

    #[test]
    fn gather_and_subsample() {
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 3.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 3, 3))
            .unwrap();
        let g = gather_channels(&x, &[Some(2), None, Some(0)], [1, 1]).unwrap();
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
