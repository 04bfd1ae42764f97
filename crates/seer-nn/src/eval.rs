//! Evaluation without autograd (issue 14): a [`Model`] compiled once into a flat list of
//! per-image operations on plain `f32` buffers, run image by image on rayon's threads
//! (no graph, no tensor per operation, no allocation once each thread's buffers have grown).
//!
//! At compile time the weights are constant, so each weighted layer's weight is taken once,
//! exactly as the forward pass uses it (absent input channels zeroed, fake-quantized per
//! output channel). The layers after a conv or linear layer that only it feeds — bias,
//! channel mask, BatchNorm with running statistics as a per-channel affine map
//! `x·k + (β − μ·k)`, `k = γ/√(σ² + ε)`, its mask, ReLU/ReLU6 — are folded into one pass over
//! the layer's output, as is the ReLU after a residual add. Every folded step performs the
//! same float operation as the forward pass (absent steps are the identities `+0`, `×1`),
//! so the logits are **bitwise** those of [`Model::forward`] in evaluation mode, which
//! matters under activation quantization, where a rounding difference can flip a level.
//! Activation fake quantization (docs/method.md §3) runs on a layer's input with the same α.
//! Each image's logits are independent of the batch (every image runs alone).
//!
//! The slow reference is `Model::forward` itself; `tests` compare them on random policies,
//! odd input sizes and grouped convs; the kernels' own tests cover zero-width layers.

use candle_core::Tensor;
use rayon::prelude::*;
use seer_kernels::{Conv2dParams, PackedConv2d, PackedLinear};
use seer_policy::LayerKind;

use crate::model::{BN_EPS, Model};
use crate::{Error, Result};

/// Activation applied at the end of a node.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    #[inline]
    fn apply(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// Unsigned activation fake quantizer: `s · round(clamp(x, 0, α) / s)`, `s = α / levels`.
#[derive(Clone, Copy, Debug)]
struct Fq {
    alpha: f32,
    step: f32,
}

impl Fq {
    #[inline]
    fn apply(&self, v: f32) -> f32 {
        seer_kernels::round_half_away(v.clamp(0.0, self.alpha) / self.step) * self.step
    }
}

/// Index of a value (one per materialised layer output) in the per-image scratch.
type Slot = usize;

/// The per-channel steps after a weighted layer (or a lone BatchNorm), in the forward
/// pass's order: `(((v + bias)·m₁)·k + b)·m₂`, then the node's activation.
#[derive(Debug)]
struct Epi {
    bias: Vec<f32>,
    m1: Vec<f32>,
    k: Vec<f32>,
    b: Vec<f32>,
    m2: Vec<f32>,
}

impl Epi {
    fn identity(c: usize) -> Self {
        Epi {
            bias: vec![0.0; c],
            m1: vec![1.0; c],
            k: vec![1.0; c],
            b: vec![0.0; c],
            m2: vec![1.0; c],
        }
    }

    /// Applies the steps to `o` `[C, hw]` in place.
    fn apply(&self, o: &mut [f32], hw: usize, act: Act) {
        for ch in 0..self.bias.len() {
            let (bi, m1, k, b, m2) = (
                self.bias[ch],
                self.m1[ch],
                self.k[ch],
                self.b[ch],
                self.m2[ch],
            );
            for v in &mut o[ch * hw..(ch + 1) * hw] {
                *v = act.apply((((*v + bi) * m1) * k + b) * m2);
            }
        }
    }
}

#[derive(Debug)]
enum Op {
    Conv {
        fq: Option<Fq>,
        /// The weight, prepared for the input shape (after `extra`).
        conv: Box<PackedConv2d>,
        /// Zeros added to the (quantized) input before the convolution for asymmetric
        /// padding, `[top, bottom, left, right]` beyond `params.padding` (as the forward pass,
        /// `ops::conv2d_padded`); None for symmetric padding.
        extra: Option<[usize; 4]>,
        epi: Epi,
    },
    Linear {
        fq: Option<Fq>,
        w: PackedLinear,
        epi: Epi,
    },
    /// A BatchNorm (and mask) not folded into a layer.
    Affine {
        epi: Epi,
    },
    /// Activation only.
    Act,
    /// Sum of the inputs (each optionally gathered), times an optional channel mask.
    Add {
        gathers: Vec<Option<Vec<Option<usize>>>>,
        mask: Option<Vec<f32>>,
    },
    /// Channel concatenation of the inputs (CHW buffers one after another).
    Concat,
    Pool {
        max: bool,
        k: [usize; 2],
        s: [usize; 2],
        p: [usize; 2],
    },
    GlobalAvg,
    /// Option-A shortcut: subsample, then gather channels or zero-pad `before` channels.
    Shortcut {
        stride: [usize; 2],
        gather: Option<Vec<Option<usize>>>,
        before: usize,
    },
}

#[derive(Debug)]
struct Node {
    op: Op,
    inputs: Vec<Slot>,
    /// Per-image input shapes `[C, H, W]` (`[F, 1, 1]` for vectors).
    in_shapes: Vec<[usize; 3]>,
    out: Slot,
    out_shape: [usize; 3],
    act: Act,
}

/// A model compiled for evaluation. See the module docs.
#[derive(Debug)]
pub struct EvalNet {
    nodes: Vec<Node>,
    input: [usize; 3],
    /// Slot holding the image.
    image: Slot,
    /// Slot of the logits.
    output: Slot,
    classes: usize,
    slots: usize,
}

thread_local! {
    /// Each thread's scratch, kept across images, batches and nets (buffers only grow).
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Per-thread scratch: one buffer per slot, the im2col tile, the quantized input.
#[derive(Default)]
struct Scratch {
    bufs: Vec<Vec<f32>>,
    col: Vec<f32>,
    q: Vec<f32>,
}

fn vec_of(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

impl EvalNet {
    /// Compiles `model` (its current weights, BatchNorm running statistics, policy and α's).
    /// Errors: an activation quantizer never calibrated; a spec the forward pass would also
    /// refuse.
    pub fn compile(model: &Model) -> Result<Self> {
        let spec = model.spec();
        let layers = &spec.layers;
        let n = layers.len();
        if n == 0 {
            return Err(Error::Invalid("a network without layers".into()));
        }
        let mut consumers = vec![Vec::new(); n];
        for (i, l) in layers.iter().enumerate() {
            for &p in &l.inputs {
                consumers[p].push(i);
            }
        }
        let only = |i: usize| -> Option<usize> {
            (consumers[i].len() == 1 && i != n - 1).then(|| consumers[i][0])
        };
        let mask_of = |i: usize| -> Result<Option<Vec<f32>>> {
            model.plan.out_mask[i].as_ref().map(vec_of).transpose()
        };
        let act_of = |kind: &LayerKind| match kind {
            LayerKind::Relu => Some(Act::Relu),
            LayerKind::Relu6 => Some(Act::Relu6),
            _ => None,
        };
        let inp = spec.input;
        let image = 0;
        // Value (slot before allocation) and per-image shape of every layer's output.
        let mut value: Vec<Option<usize>> = vec![None; n];
        let mut shape: Vec<[usize; 3]> = vec![[0; 3]; n];
        let mut done = vec![false; n];
        let mut nodes = Vec::new();
        let mut next_value = 1usize;
        for i in 0..n {
            if done[i] {
                continue;
            }
            let l = &layers[i];
            let in_val = |k: usize| -> (usize, [usize; 3]) {
                match l.inputs.get(k) {
                    Some(&p) => (
                        value[p].expect("producer compiled before consumer"),
                        shape[p],
                    ),
                    None => (image, [inp.c, inp.h, inp.w]),
                }
            };
            let comp = &model.comp()[i];
            let params = &model.params[i];
            let fq_of = |per_image: usize| -> Result<Option<Fq>> {
                match comp.abits {
                    Some(bits) if !l.inputs.is_empty() => {
                        let a = model.scaled_alpha(i, bits, per_image)?.to_vec1::<f32>()?[0];
                        Ok(Some(Fq {
                            alpha: a,
                            step: a / seer_kernels::act_levels(bits),
                        }))
                    }
                    _ => Ok(None),
                }
            };
            // The last layer of a fused chain and its activation.
            let mut last = i;
            // Every layer of the chain (not necessarily consecutive in the spec).
            let mut chain = vec![i];
            let mut act = Act::None;
            let (op, ins, out_shape) = match l.kind {
                LayerKind::Conv2d {
                    out_ch,
                    kernel,
                    stride,
                    dilation,
                    groups,
                    ..
                } => {
                    let (x, xs) = in_val(0);
                    let fq = fq_of(xs.iter().product())?;
                    let (pb, pe) = l.kind.conv_pads().expect("a conv has pads");
                    let m = pb[0].min(pb[1]).min(pe[0]).min(pe[1]);
                    let extra = (pb != [m, m] || pe != [m, m])
                        .then(|| [pb[0] - m, pe[0] - m, pb[1] - m, pe[1] - m]);
                    let wq = model.eff_weight(i, false)?;
                    let w_shape: [usize; 4] = wq.dims4()?.into();
                    let w = vec_of(&wq)?;
                    let mut epi = Epi::identity(out_ch);
                    if let Some(b) = &params.bias {
                        epi.bias = vec_of(b.as_tensor())?;
                    }
                    if let Some(m) = mask_of(i)? {
                        epi.m1 = m;
                    }
                    // Fold a BatchNorm that only this conv feeds.
                    if let Some(b) =
                        only(i).filter(|&b| matches!(layers[b].kind, LayerKind::BatchNorm))
                    {
                        (epi.k, epi.b) = bn_affine(model, b)?;
                        if let Some(m) = mask_of(b)? {
                            epi.m2 = m;
                        }
                        last = b;
                        chain.push(b);
                    }
                    if let Some((r, a)) =
                        only(last).and_then(|r| act_of(&layers[r].kind).map(|a| (r, a)))
                    {
                        last = r;
                        chain.push(r);
                        act = a;
                    }
                    let p = Conv2dParams {
                        stride: stride[0],
                        padding: m,
                        dilation: dilation[0],
                        groups,
                    };
                    let [e_t, e_b, e_l, e_r] = extra.unwrap_or_default();
                    let (oh, ow) = seer_kernels::conv2d_output_hw(
                        (xs[1] + e_t + e_b, xs[2] + e_l + e_r),
                        (kernel[0], kernel[1]),
                        &p,
                    )?;
                    let conv = Box::new(PackedConv2d::new(
                        &w,
                        w_shape,
                        &p,
                        [xs[0], xs[1] + e_t + e_b, xs[2] + e_l + e_r],
                    )?);
                    (
                        Op::Conv {
                            fq,
                            conv,
                            extra,
                            epi,
                        },
                        vec![(x, xs)],
                        [out_ch, oh, ow],
                    )
                }
                LayerKind::Linear { out_features, .. } => {
                    let (x, xs) = in_val(0);
                    let fq = fq_of(xs.iter().product())?;
                    let k: usize = xs.iter().product();
                    let w =
                        PackedLinear::new(&vec_of(&model.eff_weight(i, false)?)?, out_features, k)?;
                    let mut epi = Epi::identity(out_features);
                    if let Some(b) = &params.bias {
                        epi.bias = vec_of(b.as_tensor())?;
                    }
                    if let Some(m) = mask_of(i)? {
                        epi.m1 = m;
                    }
                    if let Some((r, a)) =
                        only(i).and_then(|r| act_of(&layers[r].kind).map(|a| (r, a)))
                    {
                        last = r;
                        chain.push(r);
                        act = a;
                    }
                    (
                        Op::Linear { fq, w, epi },
                        vec![(x, [xs.iter().product(), 1, 1])],
                        [out_features, 1, 1],
                    )
                }
                LayerKind::BatchNorm => {
                    let (x, xs) = in_val(0);
                    let mut epi = Epi::identity(xs[0]);
                    (epi.k, epi.b) = bn_affine(model, i)?;
                    if let Some(m) = mask_of(i)? {
                        epi.m2 = m;
                    }
                    if let Some((r, a)) =
                        only(i).and_then(|r| act_of(&layers[r].kind).map(|a| (r, a)))
                    {
                        last = r;
                        chain.push(r);
                        act = a;
                    }
                    (Op::Affine { epi }, vec![(x, xs)], xs)
                }
                LayerKind::Relu | LayerKind::Relu6 => {
                    let (x, xs) = in_val(0);
                    act = act_of(&l.kind).expect("relu");
                    (Op::Act, vec![(x, xs)], xs)
                }
                LayerKind::Add => {
                    let ins: Vec<(usize, [usize; 3])> = (0..l.inputs.len()).map(in_val).collect();
                    let gathers: Vec<Option<Vec<Option<usize>>>> = (0..ins.len())
                        .map(|k| comp.gathers.as_ref().and_then(|g| g.get(k)).cloned())
                        .collect();
                    let c = l.out_shape[0];
                    let [_, h, w] = ins.first().map(|v| v.1).unwrap_or([0, 0, 0]);
                    if let Some((r, a)) =
                        only(i).and_then(|r| act_of(&layers[r].kind).map(|a| (r, a)))
                    {
                        last = r;
                        chain.push(r);
                        act = a;
                    }
                    (
                        Op::Add {
                            gathers,
                            mask: mask_of(i)?,
                        },
                        ins,
                        [c, h, w],
                    )
                }
                LayerKind::Concat => {
                    let ins: Vec<(usize, [usize; 3])> = (0..l.inputs.len()).map(in_val).collect();
                    let c = ins.iter().map(|v| v.1[0]).sum();
                    let [_, h, w] = ins.first().map(|v| v.1).unwrap_or([0, 0, 0]);
                    (Op::Concat, ins, [c, h, w])
                }
                LayerKind::Flatten => {
                    let (x, xs) = in_val(0);
                    // Same memory, a vector view.
                    value[i] = Some(x);
                    shape[i] = [xs.iter().product(), 1, 1];
                    done[i] = true;
                    continue;
                }
                LayerKind::MaxPool { kernel, stride, .. }
                | LayerKind::AvgPool { kernel, stride, .. } => {
                    let (x, xs) = in_val(0);
                    let (padding, pe) = l.kind.pads().expect("a pool has pads");
                    let oh = (xs[1] + padding[0] + pe[0]).saturating_sub(kernel[0]) / stride[0] + 1;
                    let ow = (xs[2] + padding[1] + pe[1]).saturating_sub(kernel[1]) / stride[1] + 1;
                    (
                        Op::Pool {
                            max: matches!(l.kind, LayerKind::MaxPool { .. }),
                            k: kernel,
                            s: stride,
                            p: padding,
                        },
                        vec![(x, xs)],
                        [xs[0], oh, ow],
                    )
                }
                LayerKind::GlobalAvgPool => {
                    let (x, xs) = in_val(0);
                    (Op::GlobalAvg, vec![(x, xs)], [xs[0], 1, 1])
                }
                LayerKind::PadShortcut { stride, out_ch } => {
                    let (x, xs) = in_val(0);
                    let gather = comp.gathers.as_ref().and_then(|g| g.first()).cloned();
                    let oc = gather.as_ref().map_or(out_ch, Vec::len);
                    (
                        Op::Shortcut {
                            stride,
                            gather,
                            before: (out_ch.saturating_sub(xs[0])) / 2,
                        },
                        vec![(x, xs)],
                        [oc, xs[1].div_ceil(stride[0]), xs[2].div_ceil(stride[1])],
                    )
                }
            };
            for &j in &chain {
                done[j] = true;
            }
            let v = next_value;
            next_value += 1;
            value[last] = Some(v);
            shape[last] = out_shape;
            // An unfused mask on an activation-only or pooling layer never occurs (the plan
            // masks convs, linears, BatchNorms and adds only); refuse rather than ignore one.
            if matches!(
                op,
                Op::Act | Op::Concat | Op::Pool { .. } | Op::GlobalAvg | Op::Shortcut { .. }
            ) && model.plan.out_mask[i].is_some()
            {
                return Err(Error::Invalid(format!(
                    "layer {}: an output mask on a {:?} layer",
                    l.name, l.kind
                )));
            }
            nodes.push(Node {
                op,
                inputs: ins.iter().map(|x| x.0).collect(),
                in_shapes: ins.iter().map(|x| x.1).collect(),
                out: v,
                out_shape,
                act,
            });
        }
        let output = value[n - 1].expect("last layer compiled");
        let classes = shape[n - 1].iter().product();
        // Slots: a value's buffer is free again after its last reader.
        let mut last_read = vec![0usize; next_value];
        for (k, nd) in nodes.iter().enumerate() {
            for &x in &nd.inputs {
                last_read[x] = k;
            }
        }
        last_read[output] = usize::MAX;
        let mut slot_of = vec![usize::MAX; next_value];
        slot_of[image] = 0;
        let mut free: Vec<usize> = Vec::new();
        let mut slots = 1;
        for (k, nd) in nodes.iter_mut().enumerate() {
            let s = free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            });
            slot_of[nd.out] = s;
            for x in nd.inputs.iter_mut() {
                let v = *x;
                *x = slot_of[v];
                if last_read[v] == k && !free.contains(&slot_of[v]) {
                    free.push(slot_of[v]);
                }
            }
            nd.out = s;
        }
        Ok(EvalNet {
            nodes,
            input: [inp.c, inp.h, inp.w],
            image: 0,
            output: slot_of[output],
            classes,
            slots,
        })
    }

    /// Number of output classes (logits per image).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Logits `[n, classes]` (row-major) of `n` images `x` `[n, C, H, W]` (normalised),
    /// parallel over images. Err(Invalid) when `x` does not hold `n` images of the input shape.
    pub fn logits(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let per: usize = self.input.iter().product();
        if x.len() != n * per {
            return Err(Error::Invalid(format!(
                "{} values are not {n} images of {:?}",
                x.len(),
                self.input
            )));
        }
        let mut out = vec![0f32; n * self.classes];
        if self.classes == 0 {
            return Ok(out);
        }
        out.par_chunks_mut(self.classes)
            .enumerate()
            .try_for_each(|(i, o)| {
                SCRATCH.with(|s| self.image(&x[i * per..(i + 1) * per], &mut s.borrow_mut(), o))
            })?;
        Ok(out)
    }

    fn image(&self, x: &[f32], s: &mut Scratch, out: &mut [f32]) -> Result<()> {
        if s.bufs.len() < self.slots {
            s.bufs.resize_with(self.slots, Vec::new);
        }
        s.bufs[self.image].clear();
        s.bufs[self.image].extend_from_slice(x);
        for nd in &self.nodes {
            let mut o = std::mem::take(&mut s.bufs[nd.out]);
            run(nd, &s.bufs, &mut s.col, &mut s.q, &mut o)?;
            s.bufs[nd.out] = o;
        }
        out.copy_from_slice(&s.bufs[self.output][..self.classes]);
        Ok(())
    }
}

/// BatchNorm `i` in evaluation mode as a per-channel affine map `(g, β − μ g)`,
/// `g = γ / √(σ² + ε)`, computed as `seer_kernels::batch_norm_eval` does.
fn bn_affine(model: &Model, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let p = &model.params[i];
    let get = |v: &Option<candle_core::Var>| -> Result<Vec<f32>> {
        vec_of(v.as_ref().expect("BatchNorm parameters").as_tensor())
    };
    let (g, b, m, v) = (
        get(&p.weight)?,
        get(&p.bias)?,
        get(&p.running_mean)?,
        get(&p.running_var)?,
    );
    let scale: Vec<f32> = g
        .iter()
        .zip(&v)
        .map(|(g, v)| g / (v + BN_EPS as f32).sqrt())
        .collect();
    let shift = b
        .iter()
        .zip(&m)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    Ok((scale, shift))
}

/// `x` (`[C, H, W]`, the first `C·H·W` values) with `[top, bottom, left, right]` rows and
/// columns of zeros added: `[C, H + top + bottom, W + left + right]`.
fn pad_image(x: &[f32], [c, h, w]: [usize; 3], [t, b, l, r]: [usize; 4]) -> Vec<f32> {
    let (hp, wp) = (h + t + b, w + l + r);
    let mut out = vec![0f32; c * hp * wp];
    for ch in 0..c {
        for y in 0..h {
            let src = &x[(ch * h + y) * w..(ch * h + y + 1) * w];
            let at = (ch * hp + y + t) * wp + l;
            out[at..at + w].copy_from_slice(src);
        }
    }
    out
}

/// Runs one node for one image into `o`.
fn run(
    nd: &Node,
    bufs: &[Vec<f32>],
    col: &mut Vec<f32>,
    q: &mut Vec<f32>,
    o: &mut Vec<f32>,
) -> Result<()> {
    let x = &bufs[nd.inputs[0]];
    let [c, h, w] = nd.out_shape;
    let hw = h * w;
    let act = nd.act;
    match &nd.op {
        Op::Conv {
            fq,
            conv,
            extra,
            epi,
        } => {
            let xin: &[f32] = match fq {
                Some(f) => {
                    q.clear();
                    q.resize(x.len(), 0.0);
                    seer_kernels::map_into(x, q, |v| f.apply(v));
                    q
                }
                None => x,
            };
            match extra {
                None => conv.image(xin, col, o)?,
                Some(e) => {
                    let padded = pad_image(xin, nd.in_shapes[0], *e);
                    conv.image(&padded, col, o)?
                }
            };
            epi.apply(o, hw, act);
        }
        Op::Linear { fq, w: wt, epi } => {
            let k = nd.in_shapes[0][0];
            let xin: &[f32] = match fq {
                Some(f) => {
                    q.clear();
                    q.resize(k, 0.0);
                    seer_kernels::map_into(&x[..k], q, |v| f.apply(v));
                    q
                }
                None => &x[..k],
            };
            wt.row(xin, col, o)?;
            epi.apply(o, 1, act);
        }
        Op::Affine { epi } => {
            o.clear();
            o.extend_from_slice(&x[..c * hw]);
            epi.apply(o, hw, act);
        }
        Op::Act => {
            o.clear();
            o.extend(x[..c * hw].iter().map(|&v| act.apply(v)));
        }
        Op::Add { gathers, mask } => {
            o.clear();
            o.resize(c * hw, 0.0);
            for (k, &src) in nd.inputs.iter().enumerate() {
                let xs = &bufs[src];
                match &gathers[k] {
                    None => {
                        for (d, v) in o.iter_mut().zip(&xs[..c * hw]) {
                            *d += v;
                        }
                    }
                    Some(g) => {
                        for (ch, sc) in g.iter().enumerate() {
                            if let Some(sc) = sc {
                                for (d, v) in o[ch * hw..(ch + 1) * hw]
                                    .iter_mut()
                                    .zip(&xs[sc * hw..(sc + 1) * hw])
                                {
                                    *d += v;
                                }
                            }
                        }
                    }
                }
            }
            for ch in 0..c {
                let m = mask.as_ref().map_or(1.0, |m| m[ch]);
                for v in &mut o[ch * hw..(ch + 1) * hw] {
                    *v = act.apply(*v * m);
                }
            }
        }
        Op::Concat => {
            o.clear();
            for (&src, sh) in nd.inputs.iter().zip(&nd.in_shapes) {
                let len: usize = sh.iter().product();
                o.extend(bufs[src][..len].iter().map(|&v| act.apply(v)));
            }
        }
        Op::Pool { max, k, s, p } => {
            let [_, ih, iw] = nd.in_shapes[0];
            o.clear();
            o.resize(c * hw, 0.0);
            // candle's avg_pool2d: the window sum times the f32 of 1/area.
            let inv_area = (1.0 / (k[0] * k[1]) as f64) as f32;
            for ch in 0..c {
                let xc = &x[ch * ih * iw..(ch + 1) * ih * iw];
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = if *max { f32::NEG_INFINITY } else { 0.0 };
                        for ky in 0..k[0] {
                            for kx in 0..k[1] {
                                // Zero padding, as the forward pass pads with zeros.
                                let (y, xx) = (oy * s[0] + ky, ox * s[1] + kx);
                                let v =
                                    if y < p[0] || xx < p[1] || y - p[0] >= ih || xx - p[1] >= iw {
                                        0.0
                                    } else {
                                        xc[(y - p[0]) * iw + xx - p[1]]
                                    };
                                acc = if *max { acc.max(v) } else { acc + v };
                            }
                        }
                        o[ch * hw + oy * w + ox] =
                            act.apply(if *max { acc } else { acc * inv_area });
                    }
                }
            }
        }
        Op::GlobalAvg => {
            // Mean over H, then over W, as the forward pass computes it.
            // (candle's mean: the sum times the f32 of 1/n.)
            let [ic, ih, iw] = nd.in_shapes[0];
            let (sh, sw) = ((1.0 / ih as f64) as f32, (1.0 / iw as f64) as f32);
            o.clear();
            o.extend((0..ic).map(|ch| {
                let xc = &x[ch * ih * iw..(ch + 1) * ih * iw];
                let mut s = 0f32;
                for xx in 0..iw {
                    let mut col = 0f32;
                    for y in 0..ih {
                        col += xc[y * iw + xx];
                    }
                    s += col * sh;
                }
                act.apply(s * sw)
            }));
        }
        Op::Shortcut {
            stride,
            gather,
            before,
        } => {
            let [ic, ih, iw] = nd.in_shapes[0];
            o.clear();
            o.resize(c * hw, 0.0);
            let src = |ch: usize| -> Option<usize> {
                match gather {
                    Some(g) => g[ch],
                    None => (ch >= *before && ch - before < ic).then(|| ch - before),
                }
            };
            for ch in 0..c {
                if let Some(sc) = src(ch) {
                    let xc = &x[sc * ih * iw..(sc + 1) * ih * iw];
                    for oy in 0..h {
                        for ox in 0..w {
                            o[ch * hw + oy * w + ox] =
                                act.apply(xc[oy * stride[0] * iw + ox * stride[1]]);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use seer_policy::{ResidualPruning, SearchSpace, SpaceConfig, builtin};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    /// The compiled net against the slow reference (`Model::forward` in evaluation mode) on
    /// random architectures, odd input sizes, random policies (masked and slimmed, calibrated
    /// activation quantizers), and each image alone against its batch.
    #[test]
    fn compiled_net_matches_the_forward_pass() {
        let mut r = ChaCha8Rng::seed_from_u64(14);
        let cases = [
            ("resnet20", "11x13x1", ResidualPruning::Tied),
            ("resnet20", "9x9x2", ResidualPruning::Masked),
            ("lenet5", "28x28x1", ResidualPruning::Tied),
            ("vgg-small", "8x8x3", ResidualPruning::Tied),
            ("mobilenetv2", "17x17x3", ResidualPruning::Tied),
        ];
        let specs = cases
            .into_iter()
            .map(|(arch, inp, mode)| {
                let Ok(spec) = builtin(arch, Some(inp.parse().unwrap()), None) else {
                    panic!("builtin {arch} at {inp}");
                };
                (spec, mode)
            })
            // Channel concatenations (issue 20).
            .chain(
                crate::tests::concat_nets()
                    .into_iter()
                    .map(|s| (s, ResidualPruning::Tied)),
            );
        for (ci, (spec, mode)) in specs.enumerate() {
            let (arch, inp) = (spec.name.clone(), spec.input.to_string());
            let space = SearchSpace::new(
                spec.clone(),
                SpaceConfig {
                    residual_pruning: mode,
                    ..SpaceConfig::default()
                },
            )
            .unwrap();
            let per = spec.input.c * spec.input.h * spec.input.w;
            for trial in 0..3u64 {
                let mut m = Model::new(spec.clone(), trial, &Device::Cpu).unwrap();
                let x = |n: usize, s: u64| {
                    Tensor::from_vec(
                        rand_vec(n * per, s),
                        (n, spec.input.c, spec.input.h, spec.input.w),
                        &Device::Cpu,
                    )
                    .unwrap()
                };
                for k in 0..2 {
                    m.forward(&x(6, 100 + k), true).unwrap();
                }
                if trial > 0 {
                    let idx: Vec<usize> = space
                        .genes()
                        .iter()
                        .map(|g| r.random_range(0..g.candidates.len()))
                        .collect();
                    let pol = space.from_indices(&idx).unwrap();
                    m.apply_policy(&space, &pol).unwrap();
                    m.calibrate([x(4, 7)].iter()).unwrap();
                }
                let models = if trial > 0 {
                    let s = m.slim().unwrap();
                    vec![m, s]
                } else {
                    vec![m]
                };
                for model in &models {
                    let xs = x(5, 1000 + ci as u64 * 10 + trial);
                    let want: Vec<f32> = model
                        .forward(&xs, false)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let net = EvalNet::compile(model).unwrap();
                    let xv: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
                    let got = net.logits(&xv, 5).unwrap();
                    assert_eq!(got.len(), want.len(), "{arch}");
                    let scale = want.iter().fold(1f32, |s, v| s.max(v.abs()));
                    let d = got
                        .iter()
                        .zip(&want)
                        .fold(0f32, |s, (a, b)| s.max((a - b).abs()));
                    assert!(
                        d == 0.0,
                        "{arch} {inp} trial {trial} slim {}: max diff {d} (scale {scale})",
                        model.is_slim()
                    );
                    // Each image alone gives the same bits as in the batch.
                    let k = net.classes();
                    for i in [0, 4] {
                        let one = net.logits(&xv[i * per..(i + 1) * per], 1).unwrap();
                        assert_eq!(one, got[i * k..(i + 1) * k], "{arch}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_input_size_is_an_error() {
        let spec = builtin("lenet5", None, None).unwrap();
        let m = Model::new(spec, 0, &Device::Cpu).unwrap();
        let net = EvalNet::compile(&m).unwrap();
        let e = net.logits(&[0.0; 10], 1).unwrap_err().to_string();
        assert!(e.contains("10 values are not 1 images"), "{e}");
        // An uncalibrated activation quantizer is refused, as by the forward pass.
        let mut m = Model::new(builtin("lenet5", None, None).unwrap(), 0, &Device::Cpu).unwrap();
        let space = SearchSpace::new(m.spec().clone(), SpaceConfig::default()).unwrap();
        m.apply_policy(&space, &space.uniform(4, 4, 0.0).unwrap())
            .unwrap();
        let e = EvalNet::compile(&m).unwrap_err().to_string();
        assert!(e.contains("not calibrated"), "{e}");
    }
}
