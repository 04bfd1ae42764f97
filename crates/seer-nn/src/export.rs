//! Export of a fine-tuned compressed model (`model-<budget>.safetensors`, docs/method.md §7) to
//! the integer engine's file format (`seer_int::format`, `seernet-int-model`): the
//! physically pruned network with every weight packed to its bit-width with per-output-channel
//! f32 scales, BatchNorm folded into a per-channel multiplier and bias, and every activation
//! quantizer of the fake-quantized model turned into a requantisation of its producer.
//!
//! # Mapping (fake-quantized float model → integer graph)
//! The float model (seer-nn) quantizes the *input* of each weighted layer (except the
//! image) to `abits` unsigned codes over `[0, α]`. The engine requantises each weighted
//! layer's *output* instead, so a conv/linear layer `L` gets `out = {α, abits}` of the
//! weighted layer(s) its output reaches through BatchNorm (folded), ReLU (the clip to
//! `[0, α]` subsumes it), max pooling (monotone, so it commutes with quantisation) and
//! flatten. Where the float model keeps a stream in float (the residual stream of a ResNet:
//! it feeds residual adds, option-A shortcuts and global pooling unquantized), the producing
//! conv yields real values (`out = null`, fused ReLU), the residual add is fused into the
//! conv that precedes it (`residual`), and every weighted consumer reads it through a
//! `quantize` node with its own quantizer; global pooling quantizes its mean for the
//! classifier, and average pooling (zero padding counted) quantizes its window means for
//! the weighted layers it feeds. Both then compute the same function up to float rounding
//! at exact ties: every GEMM is integer; only residual adds and average and global pooling
//! run in f32.
//!
//! A channel concatenation passes its consumers' quantizer back to every input (as ReLU and
//! max pooling do), so its inputs arrive as codes of one quantisation (or all real) and the
//! engine's `concat` node only copies them.
//!
//! Not representable, hence a clear [`Error::Export`] naming the layer: masked residual
//! pruning (adds over different channel sets), average pooling that does not feed weighted
//! layers of one quantizer (or reads the image), layers left in full precision, dilated
//! convolutions, grouped convolutions of the image, and a concat whose inputs other layers
//! read with different quantizers. Grouped and
//! depthwise convolutions run as the engine's grouped direct conv. Per-channel
//! input standard deviations that differ (CIFAR) make the first conv run one integer
//! convolution per input channel (`InputSpec::std_per_channel`).
//!
//! Provenance (free-form JSON given by the caller, e.g. the baseline hash, seed, measured
//! test top-1 and the float checkpoint the export came from) and the policy go in the
//! metadata (`ModelMeta::provenance`, `ModelMeta::policy`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::{BN_EPS, Model};
use seer_int::format::{
    FORMAT, InputSpec, IntModel, LayerWeights, ModelMeta, Node, NodeOp, QuantOut, VERSION,
};
use seer_int::pack::PackedWeights;
use seer_policy::LayerKind;

use crate::{Error, Result};

/// What [`export_int`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    /// File size in bytes.
    pub file_bytes: u64,
    /// Bytes of packed weight codes plus per-channel scales, multipliers and biases.
    pub packed_weight_bytes: u64,
    /// Bytes of the same weights as f32 before packing (after physical pruning).
    pub f32_weight_bytes: u64,
    /// Number of weight tensors packed.
    pub packed_layers: usize,
    /// Nodes of the integer graph.
    pub nodes: usize,
}

/// How a layer's output is represented on the integer engine.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Repr {
    /// Unsigned codes of this quantizer.
    Codes(QuantOut),
    /// Real values (f32), kept in float by the fake-quantized model.
    Real,
    /// The network output.
    Logits,
}

/// An engine value standing for a layer's output.
#[derive(Clone, Debug)]
struct Val {
    /// Engine node name (`input` = the image).
    node: String,
    /// Quantisation of codes (`None` for the image or real values).
    q: Option<QuantOut>,
    /// Real-valued.
    real: bool,
}

fn fmt_err(path: &Path, msg: String) -> Error {
    Error::Export {
        path: path.display().to_string(),
        msg,
    }
}

/// Why a network of `spec` can never run on the integer engine, whatever its policy: the
/// first layer [`to_int_model`] would refuse for its kind and place alone (a BatchNorm that
/// is not the only consumer of a conv or linear layer, so cannot be folded into it). `None` when the structure is
/// exportable; a policy can still be refused later (masked residual pruning, a layer left in
/// full precision). Callers warn before hours of labelling rather than after.
pub fn not_exportable(spec: &seer_policy::NetworkSpec) -> Option<String> {
    let mut consumers = vec![0usize; spec.layers.len()];
    for l in &spec.layers {
        for &p in &l.inputs {
            consumers[p] += 1;
        }
    }
    spec.layers.iter().find_map(|l| match l.kind {
        LayerKind::BatchNorm => {
            let folds = matches!(
                l.inputs.as_slice(),
                [p] if consumers[*p] == 1
                    && matches!(
                        spec.layers[*p].kind,
                        LayerKind::Conv2d { .. } | LayerKind::Linear { .. }
                    )
            );
            (!folds).then(|| {
                format!(
                    "layer {}: a BatchNorm that does not directly follow a conv or linear layer",
                    l.name
                )
            })
        }
        _ => None,
    })
}

/// The model of [`export_int`] without writing it. `model`: fine-tuned with a policy applied
/// (slimmed here) and calibrated activation ranges; `mean`/`std`: the dataset normalisation
/// `x = (p/255 − mean_c)/std_c` the model was trained with. `path` only names errors.
///
/// Errors: `Nn` when slimming fails; `Export` (naming the layer) for what the engine cannot
/// represent exactly (see the module docs) or a weight that cannot be packed.
pub fn to_int_model(
    model: &Model,
    mean: &[f64],
    std: &[f64],
    provenance: &serde_json::Value,
    path: &Path,
) -> Result<IntModel> {
    let slim = if model.is_slim() {
        model.try_clone()?
    } else {
        model.slim()?
    };
    let spec = slim.spec();
    let comp = slim.comp();
    let n = spec.layers.len();
    let err = |msg: String| fmt_err(path, msg);
    if mean.len() != spec.input.c || std.len() != spec.input.c {
        return Err(err(format!(
            "normalisation has {} means and {} stds for {} input channels",
            mean.len(),
            std.len(),
            spec.input.c
        )));
    }
    if let Some(bad) = std.iter().chain(mean).find(|v| !v.is_finite()) {
        return Err(err(format!("normalisation value {bad} is not finite")));
    }
    if let Some(bad) = std.iter().find(|s| **s <= 0.0) {
        return Err(err(format!("normalisation std {bad} is not positive")));
    }
    // The engine takes one input step, or one per channel when the stds differ (the first
    // conv then runs per input channel).
    let std_per_channel: Vec<f32> = if std.iter().all(|s| *s == std[0]) {
        Vec::new()
    } else {
        std.iter().map(|&s| s as f32).collect()
    };
    let tensors: BTreeMap<String, Vec<f32>> = slim
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t.flatten_all().and_then(|t| t.to_vec1::<f32>())?;
            Ok((name, v))
        })
        .collect::<Result<_>>()?;
    let tensor = |name: String| -> Result<&Vec<f32>> {
        tensors
            .get(&name)
            .ok_or_else(|| err(format!("tensor {name} is missing")))
    };
    let mut consumers = vec![Vec::new(); n];
    for (i, l) in spec.layers.iter().enumerate() {
        for &p in &l.inputs {
            consumers[p].push(i);
        }
    }
    let name = |i: usize| spec.layers[i].name.as_str();
    // Activation quantizer of weighted layer c (its input quantisation).
    let quant_in = |c: usize| -> Result<QuantOut> {
        let (Some(bits), Some(_)) = (comp[c].abits, comp[c].wbits) else {
            return Err(err(format!(
                "layer {}: left in full precision; the integer engine needs quantized weights and activations",
                name(c)
            )));
        };
        let alpha = tensor(format!("{}.act_alpha", name(c)))?[0];
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(err(format!(
                "layer {}: activation range α = {alpha} was never calibrated",
                name(c)
            )));
        }
        Ok(QuantOut { alpha, bits })
    };
    // How the value of layer e must be represented: codes when every path reaches weighted
    // layers with one quantizer through ReLU/max-pool/flatten (quantisation commutes with
    // those), real-valued when the float model uses it in float (residual adds, shortcuts,
    // average or global pooling, or quantizers that differ), logits when it is the network output.
    let classify = |e: usize| -> Result<Repr> {
        let mut qs: Vec<QuantOut> = Vec::new();
        let mut float_use = false;
        let mut output = consumers[e].is_empty();
        let mut stack = consumers[e].clone();
        while let Some(c) = stack.pop() {
            match spec.layers[c].kind {
                LayerKind::Conv2d { .. } | LayerKind::Linear { .. } => qs.push(quant_in(c)?),
                LayerKind::Relu
                | LayerKind::MaxPool { .. }
                | LayerKind::Flatten
                | LayerKind::Concat => {
                    output |= consumers[c].is_empty();
                    stack.extend(&consumers[c]);
                }
                _ => float_use = true,
            }
        }
        Ok(match (output, float_use, qs.as_slice()) {
            (true, false, []) => Repr::Logits,
            (true, _, _) => {
                return Err(err(format!(
                    "layer {}: feeds both the network output and other layers",
                    name(e)
                )));
            }
            (false, false, [q, rest @ ..]) if rest.iter().all(|r| r == q) => Repr::Codes(*q),
            _ => Repr::Real,
        })
    };
    let single = |e: usize, pred: &dyn Fn(&LayerKind) -> bool| match consumers[e].as_slice() {
        [c] if pred(&spec.layers[*c].kind) => Some(*c),
        _ => None,
    };
    let is_relu = |k: &LayerKind| matches!(k, LayerKind::Relu | LayerKind::Relu6);

    let mut val: Vec<Option<Val>> = vec![None; n];
    let mut nodes: Vec<Node> = Vec::new();
    let mut weights = BTreeMap::new();
    // A conv/linear (+ folded BatchNorm) whose output goes into a residual add, emitted when
    // the add is reached (its other input is computed by then): (node, chain layers).
    let mut pending: BTreeMap<usize, (Node, Vec<usize>)> = BTreeMap::new();
    // Emits `node` for a chain ending at `end`, with an optional fused ReLU after it.
    let finish = |mut node: Node,
                  mut chain: Vec<usize>,
                  end: usize,
                  nodes: &mut Vec<Node>,
                  val: &mut Vec<Option<Val>>|
     -> Result<()> {
        let mut end = end;
        let relu = single(end, &is_relu);
        if let Some(r) = relu {
            chain.push(r);
            end = r;
        }
        let repr = classify(end)?;
        match repr {
            Repr::Codes(q) => {
                if let Some(r) = relu
                    && matches!(spec.layers[r].kind, LayerKind::Relu6)
                    && q.alpha > 6.0
                {
                    return Err(err(format!(
                        "layer {}: ReLU6 followed by a clip range α = {} > 6 is not representable",
                        name(r),
                        q.alpha
                    )));
                }
                node.out = Some(q);
            }
            Repr::Logits => {
                if relu.is_some() {
                    return Err(err(format!(
                        "layer {}: the network output must be a conv or linear layer",
                        name(end)
                    )));
                }
                node.out = None;
            }
            Repr::Real => {
                node.out = None;
                match (&mut node.op, relu) {
                    (
                        NodeOp::Conv {
                            relu: f, relu6: f6, ..
                        },
                        r,
                    ) => {
                        *f = r.is_some();
                        *f6 = r.is_some_and(|r| matches!(spec.layers[r].kind, LayerKind::Relu6));
                    }
                    _ => {
                        return Err(err(format!(
                            "layer {}: a linear layer whose output stays in float is not supported",
                            node.name
                        )));
                    }
                }
            }
        }
        let v = Val {
            node: node.name.clone(),
            q: node.out,
            real: matches!(repr, Repr::Real),
        };
        for c in chain {
            val[c] = Some(v.clone());
        }
        nodes.push(node);
        Ok(())
    };

    for (i, l) in spec.layers.iter().enumerate() {
        if val[i].is_some() || pending.values().any(|(_, chain)| chain.contains(&i)) {
            continue; // fused into an earlier node (or one waiting for its residual add)
        }
        let input_val = |k: usize| -> Result<Val> {
            match l.inputs.get(k) {
                None => Ok(Val {
                    node: "input".into(),
                    q: None,
                    real: false,
                }),
                Some(&p) => val[p].clone().ok_or_else(|| {
                    err(format!(
                        "layer {}: its input {} is not available on the integer engine",
                        l.name,
                        name(p)
                    ))
                }),
            }
        };
        match l.kind {
            LayerKind::Conv2d { .. } | LayerKind::Linear { .. } => {
                let wbits = comp[i].wbits.ok_or_else(|| {
                    err(format!(
                        "layer {}: left in full precision; the integer engine needs quantized weights",
                        l.name
                    ))
                })?;
                let op = match l.kind {
                    LayerKind::Conv2d {
                        in_ch,
                        out_ch,
                        kernel,
                        stride,
                        padding,
                        dilation,
                        groups,
                        ..
                    } => {
                        if dilation != [1, 1] || kernel[0] != kernel[1] {
                            return Err(err(format!(
                                "layer {}: only undilated square convolutions run on the integer engine (dilation {dilation:?}, kernel {kernel:?})",
                                l.name
                            )));
                        }
                        if groups > 1 && l.inputs.is_empty() {
                            return Err(err(format!(
                                "layer {}: a grouped convolution of the image does not run on the integer engine",
                                l.name
                            )));
                        }
                        let (_, pe) = l.kind.conv_pads().expect("a conv has pads");
                        if stride[0] != stride[1] || padding[0] != padding[1] || pe[0] != pe[1] {
                            return Err(err(format!(
                                "layer {}: per-axis stride/padding differ",
                                l.name
                            )));
                        }
                        NodeOp::Conv {
                            c_in: in_ch,
                            c_out: out_ch,
                            kernel: kernel[0],
                            stride: stride[0],
                            pad: padding[0],
                            pad_end: (pe != padding).then_some(pe[0]),
                            w_bits: wbits,
                            groups,
                            residual: None,
                            relu: false,
                            relu6: false,
                        }
                    }
                    LayerKind::Linear {
                        in_features,
                        out_features,
                        ..
                    } => NodeOp::Linear {
                        in_features,
                        out_features,
                        w_bits: wbits,
                    },
                    _ => unreachable!("matched conv or linear"),
                };
                let v = input_val(0)?;
                let input = if v.real {
                    // The float model quantizes this layer's input: a quantize node.
                    let qn = format!("{}.input_quant", l.name);
                    nodes.push(Node {
                        name: qn.clone(),
                        input: v.node,
                        op: NodeOp::Quantize,
                        out: Some(quant_in(i)?),
                    });
                    qn
                } else {
                    if v.node == "input" && !matches!(op, NodeOp::Conv { .. }) {
                        return Err(err(format!(
                            "layer {}: the image must feed a convolution",
                            l.name
                        )));
                    }
                    v.node
                };
                let w = tensor(format!("{}.weight", l.name))?;
                let rows = l.out_shape[0];
                let cols = w.len() / rows.max(1);
                let packed = PackedWeights::quantize(w, rows, cols, wbits)
                    .map_err(|e| err(format!("packing {}.weight at {wbits} bits: {e}", l.name)))?;
                let conv_bias = tensors.get(&format!("{}.bias", l.name));
                // Fold a BatchNorm that directly follows (its only consumer).
                let bn = single(i, &|k| matches!(k, LayerKind::BatchNorm));
                let (mul, bias) = match bn {
                    Some(b) => {
                        let bname = name(b);
                        let g = tensor(format!("{bname}.weight"))?;
                        let beta = tensor(format!("{bname}.bias"))?;
                        let mu = tensor(format!("{bname}.running_mean"))?;
                        let var = tensor(format!("{bname}.running_var"))?;
                        let k: Vec<f32> = (0..rows)
                            .map(|c| (g[c] as f64 / (var[c] as f64 + BN_EPS).sqrt()) as f32)
                            .collect();
                        let bias = (0..rows)
                            .map(|c| {
                                let b0 = conv_bias.map_or(0.0, |b| b[c]) as f64;
                                (beta[c] as f64 + (b0 - mu[c] as f64) * k[c] as f64) as f32
                            })
                            .collect();
                        (Some(k), Some(bias))
                    }
                    None => (None, conv_bias.cloned()),
                };
                weights.insert(l.name.clone(), LayerWeights { packed, mul, bias });
                let node = Node {
                    name: l.name.clone(),
                    input,
                    op,
                    out: None,
                };
                let mut chain = vec![i];
                chain.extend(bn);
                let end = bn.unwrap_or(i);
                match single(end, &|k| matches!(k, LayerKind::Add)) {
                    Some(add) if matches!(node.op, NodeOp::Conv { .. }) => {
                        pending.insert(add, (node, chain));
                    }
                    _ => finish(node, chain, end, &mut nodes, &mut val)?,
                }
            }
            LayerKind::Add => {
                let Some((mut node, mut chain)) = pending.remove(&i) else {
                    return Err(err(format!(
                        "layer {}: a residual add runs on the integer engine only directly after a conv (+ BatchNorm)",
                        l.name
                    )));
                };
                let own = *chain.last().expect("chain has the conv");
                let [a, b] = l.inputs.as_slice() else {
                    return Err(err(format!(
                        "layer {}: only two-input adds are supported",
                        l.name
                    )));
                };
                let (own_k, other) = if *a == own { (0, *b) } else { (1, *a) };
                let identity = |g: &[Option<usize>], len: usize| {
                    g.len() == len && g.iter().enumerate().all(|(j, s)| *s == Some(j))
                };
                let c_out = spec.layers[own].out_shape[0];
                let gathers = comp[i].gathers.clone().unwrap_or_default();
                if let Some(g) = gathers.get(own_k)
                    && !identity(g, c_out)
                {
                    return Err(err(format!(
                        "layer {}: the add's channels differ from those of {} (masked residual pruning is not supported by the integer engine)",
                        l.name,
                        name(own)
                    )));
                }
                let ov = val[other].clone().ok_or_else(|| {
                    err(format!(
                        "layer {}: its input {} is not available on the integer engine",
                        l.name,
                        name(other)
                    ))
                })?;
                let other_c = spec.layers[other].out_shape[0];
                let residual = match gathers.get(1 - own_k) {
                    Some(g) if !identity(g, other_c) || g.len() != c_out => {
                        let sn = format!("{}.gather", l.name);
                        nodes.push(Node {
                            name: sn.clone(),
                            input: ov.node,
                            op: NodeOp::ShortcutA {
                                stride: 1,
                                gather: g.clone(),
                            },
                            out: ov.q,
                        });
                        sn
                    }
                    _ => ov.node,
                };
                if let NodeOp::Conv { residual: r, .. } = &mut node.op {
                    *r = Some(residual);
                }
                chain.push(i);
                finish(node, chain, i, &mut nodes, &mut val)?;
            }
            LayerKind::Relu | LayerKind::Relu6 => {
                let v = input_val(0)?;
                if v.real {
                    return Err(err(format!(
                        "layer {}: a ReLU on a real-valued stream must directly follow a conv or residual add",
                        l.name
                    )));
                }
                if matches!(l.kind, LayerKind::Relu6) && v.q.is_some_and(|q| q.alpha > 6.0) {
                    return Err(err(format!(
                        "layer {}: ReLU6 before a clip range α > 6 is not representable",
                        l.name
                    )));
                }
                val[i] = Some(v); // codes are already ≥ 0
            }
            LayerKind::Flatten => val[i] = Some(input_val(0)?),
            LayerKind::Concat => {
                let ins = (0..l.inputs.len())
                    .map(input_val)
                    .collect::<Result<Vec<_>>>()?;
                let first = &ins[0];
                if ins.iter().any(|v| v.node == "input") {
                    return Err(err(format!(
                        "layer {}: the image cannot be concatenated on the integer engine",
                        l.name
                    )));
                }
                if let Some(k) = ins
                    .iter()
                    .position(|v| v.real != first.real || v.q != first.q)
                {
                    return Err(err(format!(
                        "layer {}: its inputs {} and {} are quantized differently (a concat's inputs must feed only it, or layers with one activation quantizer)",
                        l.name,
                        name(l.inputs[0]),
                        name(l.inputs[k])
                    )));
                }
                nodes.push(Node {
                    name: l.name.clone(),
                    input: first.node.clone(),
                    op: NodeOp::Concat {
                        others: ins[1..].iter().map(|v| v.node.clone()).collect(),
                    },
                    out: first.q,
                });
                val[i] = Some(Val {
                    node: l.name.clone(),
                    q: first.q,
                    real: first.real,
                });
            }
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => {
                let v = input_val(0)?;
                if v.node == "input" {
                    return Err(err(format!(
                        "layer {}: max pooling of the image does not run on the integer engine",
                        l.name
                    )));
                }
                let (_, pe) = l.kind.pads().expect("a pool has pads");
                if kernel[0] != kernel[1]
                    || stride[0] != stride[1]
                    || padding[0] != padding[1]
                    || pe[0] != pe[1]
                {
                    return Err(err(format!(
                        "layer {}: only square max pooling runs on the integer engine",
                        l.name
                    )));
                }
                nodes.push(Node {
                    name: l.name.clone(),
                    input: v.node,
                    op: NodeOp::MaxPool {
                        kernel: kernel[0],
                        stride: stride[0],
                        pad: padding[0],
                        pad_end: (pe != padding).then_some(pe[0]),
                    },
                    out: v.q,
                });
                val[i] = Some(Val {
                    node: l.name.clone(),
                    q: v.q,
                    real: v.real,
                });
            }
            LayerKind::GlobalAvgPool => {
                let v = input_val(0)?;
                if v.node == "input" {
                    return Err(err(format!(
                        "layer {}: the image must feed a convolution",
                        l.name
                    )));
                }
                let Repr::Codes(q) = classify(i)? else {
                    return Err(err(format!(
                        "layer {}: global pooling must feed conv/linear layers with one activation quantizer",
                        l.name
                    )));
                };
                nodes.push(Node {
                    name: l.name.clone(),
                    input: v.node,
                    op: NodeOp::GlobalAvgPool,
                    out: Some(q),
                });
                val[i] = Some(Val {
                    node: l.name.clone(),
                    q: Some(q),
                    real: false,
                });
            }
            LayerKind::PadShortcut { stride, out_ch } => {
                let v = input_val(0)?;
                if stride[0] != stride[1] || v.node == "input" {
                    return Err(err(format!(
                        "layer {}: only square-stride shortcuts of a layer's output are supported",
                        l.name
                    )));
                }
                let c_in = l
                    .inputs
                    .first()
                    .map_or(spec.input.c, |&p| spec.layers[p].out_shape[0]);
                let gather = match comp[i].gathers.as_ref().and_then(|g| g.first()) {
                    Some(g) => g.clone(),
                    None => {
                        let before = (out_ch - c_in) / 2;
                        (0..out_ch)
                            .map(|j| j.checked_sub(before).filter(|&s| s < c_in))
                            .collect()
                    }
                };
                nodes.push(Node {
                    name: l.name.clone(),
                    input: v.node.clone(),
                    op: NodeOp::ShortcutA {
                        stride: stride[0],
                        gather,
                    },
                    out: v.q,
                });
                val[i] = Some(Val {
                    node: l.name.clone(),
                    ..v
                });
            }
            LayerKind::AvgPool {
                kernel,
                stride,
                padding,
                padding_end,
            } => {
                // The float model averages the real values (zero padding counted) and the
                // consumer quantizes the means: on the engine, a real stream in, codes of the
                // consumers' quantizer out.
                let v = input_val(0)?;
                let pe = padding_end.unwrap_or(padding);
                if kernel[0] != kernel[1]
                    || stride[0] != stride[1]
                    || padding[0] != padding[1]
                    || pe[0] != pe[1]
                {
                    return Err(err(format!(
                        "layer {}: only square average pooling runs on the integer engine",
                        l.name
                    )));
                }
                if !v.real {
                    return Err(err(format!(
                        "layer {}: average pooling must read a conv's output (the image, or a value the engine holds as codes, cannot be averaged as the float model does)",
                        l.name
                    )));
                }
                let Repr::Codes(q) = classify(i)? else {
                    return Err(err(format!(
                        "layer {}: average pooling must feed conv/linear layers with one activation quantizer",
                        l.name
                    )));
                };
                nodes.push(Node {
                    name: l.name.clone(),
                    input: v.node,
                    op: NodeOp::AvgPool {
                        kernel: kernel[0],
                        stride: stride[0],
                        pad: padding[0],
                        pad_end: (pe != padding).then_some(pe[0]),
                    },
                    out: Some(q),
                });
                val[i] = Some(Val {
                    node: l.name.clone(),
                    q: Some(q),
                    real: false,
                });
            }
            LayerKind::BatchNorm => {
                return Err(err(format!(
                    "layer {} ({}): not representable on the integer engine (a BatchNorm must directly follow a conv/linear)",
                    l.name,
                    l.kind.name()
                )));
            }
        }
    }
    if let Some((&add, _)) = pending.iter().next() {
        return Err(err(format!(
            "layer {}: residual add never reached",
            name(add)
        )));
    }
    let policy = match slim.policy() {
        Some(p) => {
            serde_json::from_str(&p.to_json()).map_err(|e| err(format!("policy JSON: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    let meta = ModelMeta {
        format: FORMAT.into(),
        version: VERSION,
        arch: spec.name.clone(),
        input: InputSpec {
            channels: spec.input.c,
            height: spec.input.h,
            width: spec.input.w,
            mean: mean.iter().map(|&m| m as f32).collect(),
            std: std[0] as f32,
            std_per_channel,
        },
        num_classes: spec.num_classes,
        policy,
        provenance: provenance.clone(),
        nodes,
    };
    let m = IntModel::new(meta, weights).map_err(|e| err(format!("integer model: {e}")))?;
    Ok(m)
}

/// Physically prunes `model` (fine-tuned, policy applied, activation ranges calibrated),
/// converts it with [`to_int_model`] and writes it to `path` atomically. Returns what was
/// written. Errors as [`to_int_model`], plus `Io` for the write.
pub fn export_int(
    model: &Model,
    mean: &[f64],
    std: &[f64],
    path: &Path,
    provenance: &serde_json::Value,
) -> Result<ExportSummary> {
    let m = to_int_model(model, mean, std, provenance, path)?;
    let bytes = m
        .to_bytes()
        .map_err(|e| fmt_err(path, format!("serialising: {e}")))?;
    crate::data::idx::write_atomic(path, &bytes)?;
    let f32_bytes: u64 = m
        .meta()
        .nodes
        .iter()
        .filter_map(|n| n.op.weight_dims())
        .map(|(rows, cols, _)| 4 * (rows * cols) as u64)
        .sum();
    Ok(ExportSummary {
        file_bytes: bytes.len() as u64,
        packed_weight_bytes: m.storage_bytes() as u64,
        f32_weight_bytes: f32_bytes,
        packed_layers: m
            .meta()
            .nodes
            .iter()
            .filter(|n| n.op.weight_dims().is_some())
            .count(),
        nodes: m.meta().nodes.len(),
    })
}

/// An upper bound, in bytes, on what an exported file of `baseline` (unpruned, before any
/// policy) holds beyond the engine's storage ([`IntModel::storage_bytes`]): the safetensors
/// header with the graph, the policy and `provenance`. A size budget keeps this much of the
/// file free, so that the exported file, not only its weights, fits (docs/method.md §2).
///
/// Measured on the export of `baseline` under the most expensive policy of `space` (every
/// channel kept: pruning only shortens the graph's gathers and numbers), with α's calibrated
/// on `calib` (`[N, C, H, W]`, normalised), plus a margin for what the text of a final
/// export may lengthen: 16 bytes per f32 in the metadata (α's written shortest-first), 4 per
/// shortcut gather entry (`null` where a kept channel lost its source), 24
/// per searchable unit (pruning ratios in the policy), 64 for provenance numbers, 8 for the
/// header's alignment. `provenance` should have the keys of the final export.
///
/// Errors: as [`to_int_model`] (a network the engine cannot represent), and the policy's.
pub fn header_bound(
    baseline: &Model,
    space: &seer_policy::SearchSpace,
    mean: &[f64],
    std: &[f64],
    calib: &candle_core::Tensor,
    provenance: &serde_json::Value,
) -> Result<u64> {
    let mut m = baseline.try_clone()?;
    let dearest = space.from_indices(&space.most_expensive())?;
    m.apply_policy(space, &dearest)?;
    m.calibrate([calib])?;
    let path = Path::new("<header bound>");
    let im = to_int_model(&m, mean, std, provenance, path)?;
    let bytes = im
        .to_bytes()
        .map_err(|e| fmt_err(path, format!("serialising: {e}")))?;
    let header = (bytes.len() - im.storage_bytes()) as u64;
    let floats = im.meta().nodes.iter().filter(|n| n.out.is_some()).count() as u64;
    let gathers: u64 = im
        .meta()
        .nodes
        .iter()
        .map(|n| match &n.op {
            NodeOp::ShortcutA { gather, .. } => gather.len() as u64,
            _ => 0,
        })
        .sum();
    Ok(header + 16 * floats + 4 * gathers + 24 * space.units().len() as u64 + 64 + 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use seer_int::Isa;
    use seer_policy::{InputShape, SearchSpace, SpaceConfig, builtin};

    const MEAN: f64 = 0.2864;
    const STD: f64 = 0.3532;

    fn pixels(n: usize, len: usize, seed: u64) -> Vec<u8> {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        // Mostly dark images with bright blobs, like Fashion-MNIST.
        (0..n * len)
            .map(|_| {
                if r.random_bool(0.4) {
                    r.random_range(0..=255)
                } else {
                    0
                }
            })
            .collect()
    }

    fn normalise(p: &[u8], n: usize, s: InputShape) -> Tensor {
        let norm = crate::data::batch::Normalize::new(&[MEAN], &[STD]);
        let v: Vec<f32> = p.iter().map(|&q| norm.apply(0, q)).collect();
        Tensor::from_vec(v, (n, s.c, s.h, s.w), &Device::Cpu).unwrap()
    }

    /// A policy with a uniformly drawn candidate for every gene of `space`.
    fn random_policy(space: &SearchSpace, r: &mut ChaCha8Rng) -> seer_policy::Policy {
        let idx: Vec<usize> = space
            .genes()
            .iter()
            .map(|g| r.random_range(0..g.candidates.len()))
            .collect();
        space.from_indices(&idx).unwrap()
    }

    /// A model with a random mixed policy (pruning included), BN statistics and activation
    /// ranges from data.
    fn compressed(arch: &str, input: &str, seed: u64) -> Model {
        compressed_with(arch, input, seed, SpaceConfig::default())
    }

    fn compressed_with(arch: &str, input: &str, seed: u64, cfg: SpaceConfig) -> Model {
        let spec = builtin(arch, Some(input.parse().unwrap()), None).unwrap();
        compressed_spec(spec, seed, cfg)
    }

    fn compressed_spec(spec: seer_policy::NetworkSpec, seed: u64, cfg: SpaceConfig) -> Model {
        let s = spec.input;
        let mut m = Model::new(spec.clone(), seed, &Device::Cpu).unwrap();
        let len = s.c * s.h * s.w;
        for k in 0..3 {
            m.forward(&normalise(&pixels(16, len, 100 + k), 16, s), true)
                .unwrap();
        }
        let space = SearchSpace::new(spec, cfg).unwrap();
        let pol = random_policy(&space, &mut ChaCha8Rng::seed_from_u64(seed));
        m.apply_policy(&space, &pol).unwrap();
        let calib: Vec<Tensor> = (0..2)
            .map(|k| normalise(&pixels(32, len, 200 + k), 32, s))
            .collect();
        m.calibrate(calib.iter()).unwrap();
        m
    }

    /// The integer engine computes the fake-quantized float model's function: identical
    /// top-1 on (almost) every image and matching logits; round trip through the file.
    #[test]
    fn exported_engine_matches_fake_quant_model() {
        let td = tempfile::tempdir().unwrap();
        for (arch, input, seed) in [
            ("lenet5", "28x28x1", 1u64),
            ("lenet5", "28x28x1", 2),
            ("vgg-small", "8x8x1", 3),
            ("resnet20", "8x8x1", 6),
            ("resnet20", "12x12x1", 7),
            // Depthwise convs (the engine's grouped direct conv), inverted residuals, ReLU6.
            ("mobilenetv2", "16x16x1", 8),
        ] {
            let m = compressed(arch, input, seed);
            let path = td.path().join(format!("{arch}-{seed}.safetensors"));
            let prov = serde_json::json!({"seed": seed, "float_model": "x.safetensors"});
            let sum = export_int(&m, &[MEAN], &[STD], &path, &prov).unwrap();
            assert!(
                sum.packed_weight_bytes * 3 < sum.f32_weight_bytes,
                "{sum:?}"
            );
            let im = IntModel::load(&path).unwrap();
            // The cost model's size is the engine's storage (issue 13, case 3).
            let space = SearchSpace::new(m.spec().clone(), SpaceConfig::default()).unwrap();
            let counted = space.cost(m.policy().unwrap()).unwrap().total_size_bits;
            assert_eq!(8 * im.storage_bytes() as u64, counted, "{arch} {input}");
            assert_eq!(sum.packed_weight_bytes, im.storage_bytes() as u64);
            assert_eq!(im.meta().provenance, prov);
            assert_eq!(
                im.meta().policy,
                serde_json::from_str::<serde_json::Value>(&m.policy().unwrap().to_json()).unwrap()
            );
            assert_engine_computes(&m, &im, 300 + seed, arch);
        }
    }

    /// On 64 random images and every available ISA: the engine's top-1 equals the
    /// fake-quantized float model's on ≥ 98% of the images, and all logits of ≥ 90% of the
    /// images lie within 1e-3 of the largest logit magnitude.
    fn assert_engine_computes(m: &Model, im: &IntModel, seed: u64, what: &str) {
        let s = m.spec().input;
        let n = 64;
        let px = pixels(n, s.c * s.h * s.w, seed);
        let want: Vec<f32> = m
            .forward(&normalise(&px, n, s), false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let k = m.spec().num_classes;
        let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
        for isa in Isa::available() {
            let got = im.forward(&px, n, isa).unwrap();
            let top = |v: &[f32]| (0..k).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            let (mut agree, mut close) = (0, 0);
            for b in 0..n {
                let (g, w) = (&got[b * k..(b + 1) * k], &want[b * k..(b + 1) * k]);
                agree += (top(g) == top(w)) as usize;
                close += g.iter().zip(w).all(|(a, b)| (a - b).abs() <= 1e-3 * scale) as usize;
            }
            assert!(
                agree * 100 >= n * 98,
                "{what} {isa:?}: top-1 agreement {agree}/{n}"
            );
            assert!(
                close * 100 >= n * 90,
                "{what} {isa:?}: close logits {close}/{n}"
            );
        }
    }

    /// Channel concatenations (issue 20): the three branches feeding a concat are
    /// requantised to the quantizer of the conv after it and joined by a `concat` node; the
    /// engine then computes the fake-quantized model's function. A concat on a stream kept in
    /// float that feeds a residual add is refused with a clear error.
    #[test]
    fn concat_exports_and_matches_fake_quant_model() {
        let nets = crate::tests::concat_nets();
        for seed in [11u64, 12, 13] {
            let m = compressed_spec(nets[0].clone(), seed, SpaceConfig::default());
            let im = to_int_model(
                &m,
                &[MEAN],
                &[STD],
                &serde_json::Value::Null,
                Path::new("c"),
            )
            .unwrap();
            let cat = im.meta().nodes.iter().find(|n| n.name == "cat").unwrap();
            assert!(matches!(&cat.op, NodeOp::Concat { others } if others.len() == 2));
            let im = IntModel::from_bytes(&im.to_bytes().unwrap(), "mem").unwrap();
            assert_engine_computes(&m, &im, 400 + seed, "concat");
        }
        let m = compressed_spec(nets[1].clone(), 14, SpaceConfig::default());
        let e = to_int_model(
            &m,
            &[MEAN],
            &[STD],
            &serde_json::Value::Null,
            Path::new("r"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("add"), "{e}");
    }

    /// Three input channels with different stds (CIFAR-like): NCHW pixels for the float
    /// model, NHWC for the engine.
    #[test]
    fn per_channel_normalisation_matches() {
        let (mean, std) = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]);
        for (arch, seed) in [("vgg-small", 8u64), ("resnet20", 9)] {
            let m = compressed(arch, "8x8x3", seed);
            let im =
                to_int_model(&m, &mean, &std, &serde_json::Value::Null, Path::new("x")).unwrap();
            assert_eq!(im.meta().input.std_per_channel.len(), 3);
            let n = 32;
            let px = pixels(n, 3 * 64, 500 + seed);
            let norm = crate::data::batch::Normalize::new(&mean, &std);
            let xf: Vec<f32> = px
                .iter()
                .enumerate()
                .map(|(i, &p)| norm.apply((i / 64) % 3, p))
                .collect();
            let x = Tensor::from_vec(xf, (n, 3, 8, 8), &Device::Cpu).unwrap();
            let want: Vec<f32> = m
                .forward(&x, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let nhwc: Vec<u8> = (0..n * 192)
                .map(|i| {
                    let (b, pos, c) = (i / 192, (i % 192) / 3, i % 3);
                    px[b * 192 + c * 64 + pos]
                })
                .collect();
            let got = im.forward(&nhwc, n, Isa::detect()).unwrap();
            let k = m.spec().num_classes;
            let top = |v: &[f32]| (0..k).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            let agree = (0..n)
                .filter(|&b| top(&got[b * k..(b + 1) * k]) == top(&want[b * k..(b + 1) * k]))
                .count();
            let scale = want.iter().fold(0f32, |a, b| a.max(b.abs()));
            let close = (0..n * k)
                .filter(|&i| (got[i] - want[i]).abs() <= 1e-3 * scale)
                .count();
            assert!(agree * 100 >= n * 95, "{arch}: {agree}/{n}");
            assert!(
                close * 10 >= n * k * 9,
                "{arch}: {close}/{} logits close",
                n * k
            );
        }
    }

    #[test]
    fn unsupported_graphs_are_clear_errors() {
        let masked = SpaceConfig {
            residual_pruning: seer_policy::ResidualPruning::Masked,
            ..SpaceConfig::default()
        };
        let m = compressed_with("resnet20", "8x8x1", 4, masked);
        let e = to_int_model(
            &m,
            &[MEAN],
            &[STD],
            &serde_json::Value::Null,
            Path::new("r.st"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("r.st") && e.contains("masked"), "{e}");
        let m = compressed("lenet5", "28x28x1", 5);
        let e = to_int_model(
            &m,
            &[MEAN, 0.1],
            &[STD],
            &serde_json::Value::Null,
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("normalisation"), "{e}");
        // An uncalibrated activation range.
        let spec = builtin("lenet5", None, None).unwrap();
        let mut raw = Model::new(spec.clone(), 1, &Device::Cpu).unwrap();
        let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
        raw.apply_policy(&space, &space.uniform(8, 8, 0.0).unwrap())
            .unwrap();
        let e = to_int_model(
            &raw,
            &[MEAN],
            &[STD],
            &serde_json::Value::Null,
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("calibrated"), "{e}");
    }

    /// `not_exportable` names exactly the structures `to_int_model` refuses by layer kind:
    /// none in the built-in networks (every one exports), a BatchNorm after a ReLU in a small
    /// hand-made one (then refused by the conversion too).
    #[test]
    fn structural_blockers_are_named_before_any_conversion() {
        for arch in [
            "resnet20",
            "resnet56",
            "vgg-small",
            "lenet5",
            "resnet18",
            "mobilenetv2",
        ] {
            let spec = builtin(arch, None, None).unwrap();
            assert_eq!(not_exportable(&spec), None, "{arch}");
        }
        use seer_policy::{ConvOpts, SpecBuilder};
        let mut b = SpecBuilder::new("t", "8x8x1".parse().unwrap(), 3);
        let c = b.conv("conv", None, ConvOpts::new(4, 3).pad(1)).unwrap();
        let r = b.op("relu", Some(c), LayerKind::Relu).unwrap();
        let x = b.op("bn", Some(r), LayerKind::BatchNorm).unwrap();
        let f = b.op("flatten", Some(x), LayerKind::Flatten).unwrap();
        b.linear("fc", Some(f), 3, true).unwrap();
        let spec = b.finish().unwrap();
        let why = not_exportable(&spec).unwrap();
        assert!(
            why.contains("layer bn") && why.contains("BatchNorm"),
            "{why}"
        );
        let m = compressed_spec(spec, 3, SpaceConfig::default());
        let e = to_int_model(
            &m,
            &[MEAN],
            &[STD],
            &serde_json::Value::Null,
            Path::new("x"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer bn"), "{e}");
    }

    /// Average pooling (LeNet-5's original subsampling; a padded 3×3 one, stride 1, as in
    /// Inception's pool branch; one padded after the input only) exports as the engine's
    /// `avg_pool` on the real stream, requantised to its consumer's codes, and the engine
    /// computes the fake-quantized model's function under random policies (pruning
    /// included). Average pooling that feeds a residual add, or reads the image, is a clear
    /// error naming the layer.
    #[test]
    fn average_pooling_exports_and_matches_fake_quant_model() {
        use seer_policy::{ConvOpts, SpecBuilder};
        let avg = |k: usize, s: usize, p: usize, pe: Option<usize>| LayerKind::AvgPool {
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            padding_end: pe.map(|e| [e, e]),
        };
        let mut b = SpecBuilder::new("avg", "16x16x1".parse().unwrap(), 10);
        let c1 = b.conv("c1", None, ConvOpts::new(6, 5).pad(2)).unwrap();
        let n1 = b.op("c1_bn", Some(c1), LayerKind::BatchNorm).unwrap();
        let r1 = b.op("c1_relu", Some(n1), LayerKind::Relu).unwrap();
        let p1 = b.op("sub1", Some(r1), avg(2, 2, 0, None)).unwrap();
        let c2 = b.conv("c2", Some(p1), ConvOpts::new(8, 3).pad(1)).unwrap();
        let r2 = b.op("c2_relu", Some(c2), LayerKind::Relu).unwrap();
        let p2 = b.op("pool3", Some(r2), avg(3, 1, 1, None)).unwrap();
        let c3 = b.conv("c3", Some(p2), ConvOpts::new(8, 3).pad(1)).unwrap();
        let r3 = b.op("c3_relu", Some(c3), LayerKind::Relu).unwrap();
        let p3 = b.op("sub2", Some(r3), avg(3, 2, 1, Some(0))).unwrap();
        let f = b.op("flatten", Some(p3), LayerKind::Flatten).unwrap();
        b.linear("fc", Some(f), 10, true).unwrap();
        let spec = b.finish().unwrap();
        assert_eq!(not_exportable(&spec), None);
        for seed in [21u64, 22, 23] {
            let m = compressed_spec(spec.clone(), seed, SpaceConfig::default());
            let im = to_int_model(
                &m,
                &[MEAN],
                &[STD],
                &serde_json::Value::Null,
                Path::new("a"),
            )
            .unwrap();
            let pools: Vec<_> = im
                .meta()
                .nodes
                .iter()
                .filter_map(|n| match n.op {
                    NodeOp::AvgPool {
                        kernel,
                        stride,
                        pad,
                        pad_end,
                    } => Some((
                        n.name.as_str(),
                        kernel,
                        stride,
                        pad,
                        pad_end,
                        n.out.is_some(),
                    )),
                    _ => None,
                })
                .collect();
            assert_eq!(
                pools,
                [
                    ("sub1", 2, 2, 0, None, true),
                    ("pool3", 3, 1, 1, None, true),
                    ("sub2", 3, 2, 1, Some(0), true)
                ]
            );
            let im = IntModel::from_bytes(&im.to_bytes().unwrap(), "mem").unwrap();
            assert_engine_computes(&m, &im, 600 + seed, "avg-pool");
        }
        // Into a residual add (the float model keeps its output in float).
        let mut b = SpecBuilder::new("avg-add", "8x8x1".parse().unwrap(), 3);
        let c = b.conv("c", None, ConvOpts::new(4, 3).pad(1)).unwrap();
        let r = b.op("r", Some(c), LayerKind::Relu).unwrap();
        let p = b.op("pool", Some(r), avg(3, 1, 1, None)).unwrap();
        let add = b.add("add", &[p, r]).unwrap();
        let g = b.op("gap", Some(add), LayerKind::GlobalAvgPool).unwrap();
        b.linear("fc", Some(g), 3, true).unwrap();
        // Of the image.
        let mut b2 = SpecBuilder::new("avg-image", "8x8x1".parse().unwrap(), 3);
        let p = b2.op("pool", None, avg(2, 2, 0, None)).unwrap();
        let c = b2.conv("c", Some(p), ConvOpts::new(4, 3).pad(1)).unwrap();
        let g = b2.op("gap", Some(c), LayerKind::GlobalAvgPool).unwrap();
        b2.linear("fc", Some(g), 3, true).unwrap();
        for (spec, want) in [
            (b.finish().unwrap(), "one activation quantizer"),
            (b2.finish().unwrap(), "must read a conv"),
        ] {
            let m = compressed_spec(spec, 3, SpaceConfig::default());
            let e = to_int_model(
                &m,
                &[MEAN],
                &[STD],
                &serde_json::Value::Null,
                Path::new("x"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("layer pool") && e.contains(want), "{e}");
        }
    }

    /// The header bound holds for random policies (issue 13, case 3: a size budget must hold
    /// for the file the user gets): file bytes ≤ engine storage + bound.
    #[test]
    fn header_bound_covers_every_policy() {
        let td = tempfile::tempdir().unwrap();
        for (arch, input) in [("lenet5", "28x28x1"), ("resnet20", "8x8x1")] {
            let spec = builtin(arch, Some(input.parse().unwrap()), None).unwrap();
            let s = spec.input;
            let len = s.c * s.h * s.w;
            let base = Model::new(spec.clone(), 5, &Device::Cpu).unwrap();
            base.forward(&normalise(&pixels(16, len, 100), 16, s), true)
                .unwrap();
            let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
            let calib = normalise(&pixels(32, len, 200), 32, s);
            let prov = serde_json::json!({"seed": 1, "test_top1": 0.0, "policy_hash": "x"});
            let bound = header_bound(&base, &space, &[MEAN], &[STD], &calib, &prov).unwrap();
            let mut r = ChaCha8Rng::seed_from_u64(9);
            for k in 0..4 {
                let pol = random_policy(&space, &mut r);
                let mut m = base.try_clone().unwrap();
                m.apply_policy(&space, &pol).unwrap();
                m.calibrate([&normalise(&pixels(32, len, 300 + k), 32, s)])
                    .unwrap();
                let prov = serde_json::json!({"seed": 123456789u64, "test_top1": 91.23456789,
                    "policy_hash": "0123456789abcdef"});
                let path = td.path().join(format!("{arch}-{k}.safetensors"));
                let sum = export_int(&m, &[MEAN], &[STD], &path, &prov).unwrap();
                let counted = space.cost(&pol).unwrap().total_size_bits;
                assert_eq!(8 * sum.packed_weight_bytes, counted);
                assert!(
                    sum.file_bytes <= sum.packed_weight_bytes + bound,
                    "{arch}: file {} > storage {} + bound {bound}",
                    sum.file_bytes,
                    sum.packed_weight_bytes
                );
            }
        }
    }
}
