//! CPU counterparts of the CUDA kernels: thin adapters from plain slices to seer-kernels' CPU
//! ops (candle custom ops with backward; backward results are taken from candle's autograd, so
//! they are exactly what training on the CPU computes). Inputs are validated by the caller.

use candle_core::{Device as CDevice, Tensor, Var};
use seer_int::pack::PackedWeights;

use crate::{ActGrad, Error, MaskGrad, Result, WeightFakeQuant};

fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn grad_of(
    grads: &candle_core::backprop::GradStore,
    v: &Var,
    op: &'static str,
) -> Result<Vec<f32>> {
    match grads.get(v.as_tensor()) {
        Some(g) => to_vec(g),
        None => Err(Error::Internal {
            op,
            msg: "candle autograd returned no gradient".into(),
        }),
    }
}

/// Runs `f(input)` and backpropagates `dy` through it: the gradient of `Σ f(x) · dy` is the op's
/// backward applied to `dy` (`∂(y·dy)/∂y = 1·dy` exactly).
fn backprop(y: &Tensor, dy: &[f32]) -> Result<candle_core::backprop::GradStore> {
    let g = Tensor::from_slice(dy, y.dims(), &CDevice::Cpu)?;
    Ok((y * g)?.sum_all()?.backward()?)
}

pub(crate) fn fake_quant_weight(w: &[f32], c_out: usize, bits: u32) -> Result<WeightFakeQuant> {
    let t = Tensor::from_slice(w, (c_out, w.len() / c_out), &CDevice::Cpu)?;
    Ok(WeightFakeQuant {
        values: to_vec(&seer_kernels::fake_quant_weight(&t, bits)?)?,
        scales: to_vec(&seer_kernels::weight_scales(&t, bits)?)?,
    })
}

pub(crate) fn fake_quant_weight_backward(
    w: &[f32],
    c_out: usize,
    bits: u32,
    dy: &[f32],
) -> Result<Vec<f32>> {
    let v = Var::from_tensor(&Tensor::from_slice(
        w,
        (c_out, w.len() / c_out),
        &CDevice::Cpu,
    )?)?;
    let y = seer_kernels::fake_quant_weight(v.as_tensor(), bits)?;
    grad_of(&backprop(&y, dy)?, &v, "fake_quant_weight_backward")
}

pub(crate) fn fake_quant_act(x: &[f32], alpha: f32, bits: u32) -> Result<Vec<f32>> {
    let t = Tensor::from_slice(x, x.len(), &CDevice::Cpu)?;
    let a = Tensor::new(&[alpha], &CDevice::Cpu)?;
    to_vec(&seer_kernels::fake_quant_act(&t, &a, bits)?)
}

pub(crate) fn fake_quant_act_backward(
    x: &[f32],
    alpha: f32,
    bits: u32,
    dy: &[f32],
) -> Result<ActGrad> {
    let xv = Var::from_tensor(&Tensor::from_slice(x, x.len(), &CDevice::Cpu)?)?;
    let av = Var::new(&[alpha], &CDevice::Cpu)?;
    let y = seer_kernels::fake_quant_act(xv.as_tensor(), av.as_tensor(), bits)?;
    let grads = backprop(&y, dy)?;
    Ok(ActGrad {
        dx: grad_of(&grads, &xv, "fake_quant_act_backward")?,
        dalpha: grad_of(&grads, &av, "fake_quant_act_backward")?[0],
    })
}

pub(crate) fn channel_mask(
    x: &[f32],
    (dims, dim): (&[usize], usize),
    mask: &[f32],
) -> Result<Vec<f32>> {
    let t = Tensor::from_slice(x, dims, &CDevice::Cpu)?;
    let m = Tensor::from_slice(mask, mask.len(), &CDevice::Cpu)?;
    to_vec(&seer_kernels::channel_mask(&t, &m, dim)?)
}

pub(crate) fn channel_mask_backward(
    x: &[f32],
    (dims, dim): (&[usize], usize),
    mask: &[f32],
    dy: &[f32],
    want_dmask: bool,
) -> Result<MaskGrad> {
    let xv = Var::from_tensor(&Tensor::from_slice(x, dims, &CDevice::Cpu)?)?;
    let mt = Tensor::from_slice(mask, mask.len(), &CDevice::Cpu)?;
    let mv = Var::from_tensor(&mt)?;
    let m = if want_dmask { mv.as_tensor() } else { &mt };
    let y = seer_kernels::channel_mask(xv.as_tensor(), m, dim)?;
    let grads = backprop(&y, dy)?;
    Ok(MaskGrad {
        dx: grad_of(&grads, &xv, "channel_mask_backward")?,
        dmask: if want_dmask {
            Some(grad_of(&grads, &mv, "channel_mask_backward")?)
        } else {
            None
        },
    })
}

/// `x` [m, k] · dequantize(w)ᵀ [k, n] with candle's f32 matmul on the CPU.
pub(crate) fn dequant_gemm(x: &[f32], m: usize, w: &PackedWeights) -> Result<Vec<f32>> {
    let (n, k) = (w.rows(), w.cols());
    let xt = Tensor::from_slice(x, (m, k), &CDevice::Cpu)?;
    let wt = Tensor::from_vec(w.dequantize(), (n, k), &CDevice::Cpu)?;
    to_vec(&xt.matmul(&wt.t()?)?)
}
