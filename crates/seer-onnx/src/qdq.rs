//! ONNX QDQ export (`model-<budget>.onnx`, docs/export.md): an integer-engine model
//! ([`IntModel`], the slim, BatchNorm-folded network of `seer_nn::export`) written as a standard
//! ONNX graph (opset 13) in which every quantizer is a `QuantizeLinear`/`DequantizeLinear`
//! pair, so that ONNX Runtime, tract, TensorRT or OpenVINO run it.
//!
//! # Mapping (one engine node → ONNX nodes)
//! - **Weights**: the engine's packed codes `q` (per output channel, symmetric) are stored as
//!   an `int8` initializer `[O, I, kh, kw]` (`[out, in]` for a linear layer) with a per-axis
//!   (`axis = 0`) `DequantizeLinear`, zero point 0, scale `|s_o·m_o|` where `s_o` is the
//!   engine's weight scale and `m_o` the folded BatchNorm multiplier (a row whose `s_o·m_o` is
//!   negative is stored negated; a zero one as zeros with scale 1). Codes of `b < 8` bits stay
//!   on the int8 grid in the restricted range `[−(2^(b−1)−1), 2^(b−1)−1]` (4-bit: `[−7, 7]`)
//!   with the same scale, so the file stores one byte per kept weight. (The quantized
//!   initializer plus its `DequantizeLinear` is the constant-folded form of a weight's
//!   `QuantizeLinear`/`DequantizeLinear` pair, the form ONNX Runtime's quantizer writes.)
//! - **Activations** (per tensor): an engine output `out = {α, b}` becomes `Clip(0, α)` →
//!   `QuantizeLinear(scale = α/(2^b − 1), zero point uint8 0)` → `DequantizeLinear`: unsigned
//!   codes in `[0, 2^b − 1]` on the uint8 grid (the clip keeps `b < 8` codes in range and is
//!   the fused ReLU of the engine).
//! - **Conv / linear**: `Conv` (pads, strides, `group` for grouped and depthwise convs) then
//!   `Add` of the folded bias
//!   (`β − γμ/σ + γb/σ`, f32 `[O, 1, 1]`), or `Flatten` + `Gemm(transB = 1)` with it as the bias
//!   input, on the dequantized input and weights (a conv's bias is not its third input: ONNX
//!   Runtime's optimizer would round it to the int32 grid `x_scale·w_scale`); a fused residual is an `Add` of the residual's (dequantized or real) value before
//!   the clip; a real-valued output keeps the optional `Relu`; the final node's output,
//!   flattened, is the graph output `logits` `[N, classes]`.
//! - **Pools**: `MaxPool` (followed by the input's own Q/DQ pair: exact; on a real-valued
//!   stream after an explicit zero `Pad`, the engine's padding), `AveragePool`,
//!   `GlobalAveragePool` (requantised like the engine). **Quantize**: Clip → Q → DQ.
//!   **Option-A shortcut**: `Slice` with steps (subsampling), then `Pad` (one zero channel) and
//!   `Gather` on channels. **Concat**: `Concat` on axis 1 of the inputs' dequantized (or real)
//!   values, which share one step.
//! - **Input**: `input`, f32 `[N, C, H, W]`, the normalised image `x = (p/255 − mean_c)/std_c`
//!   (as for the imported ONNX model); the engine's exact mean correction at padded borders
//!   is what a float conv on `x` with zero padding computes. Mean and std are in the model's
//!   metadata (`input_mean`, `input_std`, JSON arrays).
//!
//! # What differs from the engine
//! The engine accumulates in exact integers and requantises with one f32 multiply per channel;
//! the graph accumulates dequantized products in f32, so an output code can differ by one
//! where `y/step` lies within float rounding of a half-integer. ONNX rounds ties to even, the
//! engine away from zero; exact ties need `y/step` to be exactly `k + ½`, which f32 scales
//! make rare. Measured agreement of top-1 predictions: docs/benchmarks.md.

use std::path::Path;

use prost::Message;
use seer_int::format::{IntModel, LayerWeights, NodeOp, QuantOut};
use seer_int::pack::qmax_unsigned;

use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use crate::{Error, Result};

/// The default-domain opset the export declares (per-axis `QuantizeLinear`/`DequantizeLinear`,
/// `Clip` with bound inputs, `Pad` with a pads input).
pub const OPSET: i64 = 13;
/// ONNX IR version written (IR 7 is the first with opset 13).
pub const IR_VERSION: i64 = 7;
/// Name of the graph input (f32 `[N, C, H, W]`, normalised image).
pub const INPUT: &str = "input";
/// Name of the graph output (f32 `[N, classes]` logits).
pub const OUTPUT: &str = "logits";

/// What [`write_qdq`] wrote.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct QdqSummary {
    /// File size in bytes.
    pub file_bytes: u64,
    /// ONNX nodes in the graph.
    pub nodes: usize,
    /// `QuantizeLinear` nodes (one per activation quantizer).
    pub quantize_nodes: usize,
    /// `DequantizeLinear` nodes (activations and weights).
    pub dequantize_nodes: usize,
    /// Kept weights stored as int8 (one byte each).
    pub weight_codes: usize,
}

/// How an engine node's output appears in the graph.
#[derive(Clone, Debug)]
struct Val {
    /// Name of its f32 tensor (dequantized codes or real values).
    name: String,
    /// Quantisation when it is codes.
    q: Option<QuantOut>,
    /// `(C, H, W)`.
    chw: (usize, usize, usize),
}

/// The graph under construction.
struct Builder<'a> {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Names the engine node in errors.
    what: &'a str,
}

/// An `INTS` attribute `name` = `v`.
pub(crate) fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// An `INT` attribute `name` = `v`.
pub(crate) fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], dt: DataType, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dt as i32),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// A float tensor value info with a symbolic batch dimension `N` first.
fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut dim = vec![tensor_shape_proto::Dimension {
        denotation: None,
        value: Some(tensor_shape_proto::dimension::Value::DimParam("N".into())),
    }];
    dim.extend(dims.iter().map(|&d| tensor_shape_proto::Dimension {
        denotation: None,
        value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
    }));
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// The real value of one output code, `α / (2^b − 1)` (as the engine computes it).
fn step(q: QuantOut) -> f32 {
    q.alpha / qmax_unsigned(q.bits) as f32
}

impl Builder<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Export {
            what: self.what.to_string(),
            msg: msg.into(),
        }
    }

    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
    }

    fn f32s(&mut self, name: &str, dims: &[usize], v: &[f32]) {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.inits.push(tensor(name, dims, DataType::Float, raw));
    }

    fn i64s(&mut self, name: &str, v: &[i64]) {
        let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.inits
            .push(tensor(name, &[v.len()], DataType::Int64, raw));
    }

    /// `Clip(x, 0, α)` → `QuantizeLinear` → `DequantizeLinear` with `q`'s step: the engine's
    /// requantisation of the real value `x`. Returns the dequantized tensor's name.
    fn requant(&mut self, base: &str, x: &str, q: QuantOut) -> String {
        let (lo, hi) = (format!("{base}.clip_min"), format!("{base}.clip_max"));
        self.f32s(&lo, &[], &[0.0]);
        self.f32s(&hi, &[], &[q.alpha]);
        let clipped = format!("{base}.clipped");
        self.node("Clip", &clipped, &[x, &lo, &hi], &clipped, vec![]);
        self.qdq(base, &clipped, q)
    }

    /// `QuantizeLinear` → `DequantizeLinear` (uint8, zero point 0, scale `α/(2^b − 1)`) of a
    /// value already within `[0, α]`. Returns the dequantized tensor's name.
    fn qdq(&mut self, base: &str, x: &str, q: QuantOut) -> String {
        let (s, z) = (format!("{base}.act_scale"), format!("{base}.act_zero"));
        self.f32s(&s, &[], &[step(q)]);
        self.inits.push(tensor(&z, &[], DataType::Uint8, vec![0]));
        let (qn, dq) = (format!("{base}.q"), format!("{base}.dq"));
        self.node("QuantizeLinear", &qn, &[x, &s, &z], &qn, vec![]);
        self.node("DequantizeLinear", &dq, &[&qn, &s, &z], &dq, vec![]);
        dq
    }

    /// The int8 weight initializer of `lw` with its per-axis `DequantizeLinear` (dims `dims`,
    /// rows first) and the float bias (dims `bias_dims`). Returns (weight, bias) tensor names.
    fn weights(
        &mut self,
        base: &str,
        lw: &LayerWeights,
        dims: &[usize],
        bias_dims: &[usize],
    ) -> Result<(String, String)> {
        let p = &lw.packed;
        let (rows, cols) = (p.rows(), p.cols());
        let mut codes = p.unpack();
        let mut scales = Vec::with_capacity(rows);
        for r in 0..rows {
            let s = p.scales()[r] * lw.mul.as_ref().map_or(1.0, |m| m[r]);
            if !s.is_finite() {
                return Err(self.err(format!("row {r}: weight scale {s} is not finite")));
            }
            let row = &mut codes[r * cols..(r + 1) * cols];
            if s == 0.0 {
                row.fill(0);
                scales.push(1.0);
            } else if s < 0.0 {
                for c in row.iter_mut() {
                    *c = c.checked_neg().ok_or_else(|| {
                        self.err(format!(
                            "row {r}: code −128 with a negative scale cannot be negated"
                        ))
                    })?;
                }
                scales.push(-s);
            } else {
                scales.push(s);
            }
        }
        let (w, s, z, dq) = (
            format!("{base}.weight_quantized"),
            format!("{base}.weight_scale"),
            format!("{base}.weight_zero"),
            format!("{base}.weight"),
        );
        let raw = codes.iter().map(|&c| c as u8).collect();
        self.inits.push(tensor(&w, dims, DataType::Int8, raw));
        self.f32s(&s, &[rows], &scales);
        self.inits
            .push(tensor(&z, &[rows], DataType::Int8, vec![0; rows]));
        self.node(
            "DequantizeLinear",
            &dq,
            &[&w, &s, &z],
            &dq,
            vec![int("axis", 0)],
        );
        let b = format!("{base}.bias");
        let bias = lw.bias.clone().unwrap_or_else(|| vec![0.0; rows]);
        self.f32s(&b, bias_dims, &bias);
        Ok((dq, b))
    }
}

/// The ONNX QDQ model of `m` (see the module docs). Errors: [`Error::Export`] naming the
/// engine node, for a value whose shape does not chain or a weight row that cannot be
/// represented (a −128 code on a negative scale).
pub fn to_qdq(m: &IntModel) -> Result<ModelProto> {
    let meta = m.meta();
    let inp = &meta.input;
    let mut vals: std::collections::HashMap<&str, Val> = std::collections::HashMap::new();
    vals.insert(
        "input",
        Val {
            name: INPUT.into(),
            q: None,
            chw: (inp.channels, inp.height, inp.width),
        },
    );
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        what: "model",
    };
    let n_nodes = meta.nodes.len();
    for (ni, node) in meta.nodes.iter().enumerate() {
        b.what = &node.name;
        let last = ni + 1 == n_nodes;
        let base = node.name.as_str();
        let x = vals
            .get(node.input.as_str())
            .cloned()
            .ok_or_else(|| b.err(format!("input {} was not computed", node.input)))?;
        let (c, h, w) = x.chw;
        let out: Val = match &node.op {
            NodeOp::Conv {
                c_in,
                c_out,
                kernel,
                stride,
                pad,
                pad_end,
                residual,
                relu,
                relu6,
                groups,
                ..
            } => {
                let pe = pad_end.unwrap_or(*pad);
                if *groups == 0 || !c_in.is_multiple_of(*groups) || !c_out.is_multiple_of(*groups) {
                    return Err(b.err(format!(
                        "groups {groups} must divide c_in {c_in} and c_out {c_out}"
                    )));
                }
                if c != *c_in || *stride == 0 || h + pad + pe < *kernel || w + pad + pe < *kernel {
                    return Err(b.err(format!(
                        "input {c}x{h}x{w} does not fit a {kernel}x{kernel} conv of {c_in} channels"
                    )));
                }
                let lw = m
                    .weights()
                    .get(&node.name)
                    .ok_or_else(|| b.err("missing weights"))?;
                // The bias is an `Add` after the conv, not its third input: ONNX Runtime's
                // optimizer rounds a conv bias between dequantized inputs to the int32 grid of
                // x_scale·w_scale, which moved 0.4% of top-1 predictions off the engine's.
                let (wt, bias) = b.weights(
                    base,
                    lw,
                    &[*c_out, c_in / groups, *kernel, *kernel],
                    &[*c_out, 1, 1],
                )?;
                let (k, s, p, e) = (*kernel as i64, *stride as i64, *pad as i64, pe as i64);
                let conv = format!("{base}.conv_nobias");
                b.node(
                    "Conv",
                    &conv,
                    &[&x.name, &wt],
                    &conv,
                    vec![
                        ints("kernel_shape", &[k, k]),
                        ints("strides", &[s, s]),
                        ints("pads", &[p, p, e, e]),
                        ints("dilations", &[1, 1]),
                        int("group", *groups as i64),
                    ],
                );
                let y = format!("{base}.conv");
                b.node("Add", &y, &[&conv, &bias], &y, vec![]);
                let chw = (
                    *c_out,
                    (h + pad + pe - kernel) / stride + 1,
                    (w + pad + pe - kernel) / stride + 1,
                );
                let mut y = y;
                if let Some(r) = residual {
                    let rv = vals
                        .get(r.as_str())
                        .ok_or_else(|| b.err(format!("residual {r} was not computed")))?;
                    if rv.chw != chw {
                        return Err(b.err(format!(
                            "residual {r} is {:?}, the conv's output {chw:?}",
                            rv.chw
                        )));
                    }
                    let sum = format!("{base}.add");
                    let rn = rv.name.clone();
                    b.node("Add", &sum, &[&y, &rn], &sum, vec![]);
                    y = sum;
                }
                match node.out {
                    Some(q) => Val {
                        name: b.requant(base, &y, q),
                        q: Some(q),
                        chw,
                    },
                    None if last => {
                        if chw.1 * chw.2 != 1 {
                            return Err(b.err(format!(
                                "the final conv yields {chw:?}, not one value per class"
                            )));
                        }
                        b.node("Flatten", OUTPUT, &[&y], OUTPUT, vec![int("axis", 1)]);
                        Val {
                            name: OUTPUT.into(),
                            q: None,
                            chw,
                        }
                    }
                    None if *relu6 => {
                        let (lo, hi) = (format!("{base}.relu6_min"), format!("{base}.relu6_max"));
                        b.f32s(&lo, &[], &[0.0]);
                        b.f32s(&hi, &[], &[6.0]);
                        let r = format!("{base}.relu6");
                        b.node("Clip", &r, &[&y, &lo, &hi], &r, vec![]);
                        Val {
                            name: r,
                            q: None,
                            chw,
                        }
                    }
                    None if *relu => {
                        let r = format!("{base}.relu");
                        b.node("Relu", &r, &[&y], &r, vec![]);
                        Val {
                            name: r,
                            q: None,
                            chw,
                        }
                    }
                    None => Val {
                        name: y,
                        q: None,
                        chw,
                    },
                }
            }
            NodeOp::Linear {
                in_features,
                out_features,
                ..
            } => {
                if c * h * w != *in_features {
                    return Err(b.err(format!(
                        "input has {} features, the layer {in_features}",
                        c * h * w
                    )));
                }
                let lw = m
                    .weights()
                    .get(&node.name)
                    .ok_or_else(|| b.err("missing weights"))?;
                let (wt, bias) =
                    b.weights(base, lw, &[*out_features, *in_features], &[*out_features])?;
                let flat = format!("{base}.flatten");
                b.node("Flatten", &flat, &[&x.name], &flat, vec![int("axis", 1)]);
                let y = if last && node.out.is_none() {
                    OUTPUT.to_string()
                } else {
                    format!("{base}.gemm")
                };
                b.node("Gemm", &y, &[&flat, &wt, &bias], &y, vec![int("transB", 1)]);
                let chw = (*out_features, 1, 1);
                match node.out {
                    // Gemm yields [N, F]: later nodes see [N, F, 1, 1].
                    Some(q) => {
                        let dq = b.requant(base, &y, q);
                        let shape = format!("{base}.shape");
                        b.i64s(&shape, &[0, *out_features as i64, 1, 1]);
                        let r = format!("{base}.nchw");
                        b.node("Reshape", &r, &[&dq, &shape], &r, vec![]);
                        Val {
                            name: r,
                            q: Some(q),
                            chw,
                        }
                    }
                    None if last => Val {
                        name: y,
                        q: None,
                        chw,
                    },
                    None => return Err(b.err("a linear layer with a real-valued output")),
                }
            }
            NodeOp::MaxPool {
                kernel,
                stride,
                pad,
                pad_end,
            } => {
                let pe = pad_end.unwrap_or(*pad);
                if *stride == 0 || h + pad + pe < *kernel || w + pad + pe < *kernel {
                    return Err(b.err(format!("input {h}x{w} is smaller than the window")));
                }
                let (k, s, mut p, mut e) = (*kernel as i64, *stride as i64, *pad as i64, pe as i64);
                let mut src = x.name.clone();
                if x.q.is_none() && (p > 0 || e > 0) {
                    // A real stream may be negative: ONNX pads a MaxPool with −∞, the engine
                    // (and the float model) with zeros, so the zeros come first.
                    let pads = format!("{base}.zero_pads");
                    b.i64s(&pads, &[0, 0, p, p, 0, 0, e, e]);
                    let padded = format!("{base}.zero_padded");
                    b.node("Pad", &padded, &[&src, &pads], &padded, vec![]);
                    (src, p, e) = (padded, 0, 0);
                }
                let y = format!("{base}.max_pool");
                b.node(
                    "MaxPool",
                    &y,
                    &[&src],
                    &y,
                    vec![
                        ints("kernel_shape", &[k, k]),
                        ints("strides", &[s, s]),
                        ints("pads", &[p, p, e, e]),
                    ],
                );
                let chw = (
                    c,
                    (h + pad + pe - kernel) / stride + 1,
                    (w + pad + pe - kernel) / stride + 1,
                );
                // The maximum of dequantized codes is a dequantized code: its Q/DQ pair is exact.
                match x.q {
                    Some(q) => Val {
                        name: b.qdq(base, &y, q),
                        q: Some(q),
                        chw,
                    },
                    None => Val {
                        name: y,
                        q: None,
                        chw,
                    },
                }
            }
            NodeOp::AvgPool {
                kernel,
                stride,
                pad,
                pad_end,
            } => {
                let q = node
                    .out
                    .ok_or_else(|| b.err("average pooling without out"))?;
                let pe = pad_end.unwrap_or(*pad);
                if *stride == 0 || h + pad + pe < *kernel || w + pad + pe < *kernel {
                    return Err(b.err(format!("input {h}x{w} is smaller than the window")));
                }
                let (k, s, p, e) = (*kernel as i64, *stride as i64, *pad as i64, pe as i64);
                let y = format!("{base}.avg_pool");
                let mut attrs = vec![ints("kernel_shape", &[k, k]), ints("strides", &[s, s])];
                if p > 0 || e > 0 {
                    // Zeros count in the divisor, as the engine and the float model average.
                    attrs.push(ints("pads", &[p, p, e, e]));
                    attrs.push(int("count_include_pad", 1));
                }
                b.node("AveragePool", &y, &[&x.name], &y, attrs);
                Val {
                    name: b.requant(base, &y, q),
                    q: Some(q),
                    chw: (
                        c,
                        (h + pad + pe - kernel) / stride + 1,
                        (w + pad + pe - kernel) / stride + 1,
                    ),
                }
            }
            NodeOp::GlobalAvgPool => {
                let q = node
                    .out
                    .ok_or_else(|| b.err("global pooling without out"))?;
                let y = format!("{base}.global_avg_pool");
                b.node("GlobalAveragePool", &y, &[&x.name], &y, vec![]);
                Val {
                    name: b.requant(base, &y, q),
                    q: Some(q),
                    chw: (c, 1, 1),
                }
            }
            NodeOp::Quantize => {
                let q = node.out.ok_or_else(|| b.err("quantize without out"))?;
                Val {
                    name: b.requant(base, &x.name, q),
                    q: Some(q),
                    chw: x.chw,
                }
            }
            NodeOp::ShortcutA { stride, gather } => {
                if *stride == 0 {
                    return Err(b.err("stride 0"));
                }
                if let Some(&Some(bad)) = gather.iter().find(|g| g.is_some_and(|g| g >= c)) {
                    return Err(b.err(format!("gather index {bad} ≥ {c} input channels")));
                }
                let mut y = x.name.clone();
                if *stride > 1 {
                    let (st, en, ax, sp) = (
                        format!("{base}.starts"),
                        format!("{base}.ends"),
                        format!("{base}.axes"),
                        format!("{base}.steps"),
                    );
                    b.i64s(&st, &[0, 0]);
                    b.i64s(&en, &[i64::MAX, i64::MAX]);
                    b.i64s(&ax, &[2, 3]);
                    b.i64s(&sp, &[*stride as i64, *stride as i64]);
                    let s = format!("{base}.subsample");
                    b.node("Slice", &s, &[&y, &st, &en, &ax, &sp], &s, vec![]);
                    y = s;
                }
                let identity =
                    gather.len() == c && gather.iter().enumerate().all(|(j, g)| *g == Some(j));
                if !identity {
                    let mut src = y.clone();
                    if gather.iter().any(Option::is_none) {
                        // One zero channel after the input's channels for the absent ones.
                        let pads = format!("{base}.pads");
                        b.i64s(&pads, &[0, 0, 0, 0, 0, 1, 0, 0]);
                        let p = format!("{base}.pad");
                        b.node("Pad", &p, &[&y, &pads], &p, vec![]);
                        src = p;
                    }
                    let idx = format!("{base}.indices");
                    let v: Vec<i64> = gather.iter().map(|g| g.unwrap_or(c) as i64).collect();
                    b.i64s(&idx, &v);
                    let g = format!("{base}.gather");
                    b.node("Gather", &g, &[&src, &idx], &g, vec![int("axis", 1)]);
                    y = g;
                }
                let chw = (gather.len(), h.div_ceil(*stride), w.div_ceil(*stride));
                Val {
                    name: y,
                    q: x.q,
                    chw,
                }
            }
            NodeOp::Concat { others } => {
                let mut names = vec![x.name.clone()];
                let mut total = c;
                for o in others {
                    let v = vals
                        .get(o.as_str())
                        .ok_or_else(|| b.err(format!("input {o} was not computed")))?;
                    if (v.chw.1, v.chw.2) != (h, w) || v.q != x.q {
                        return Err(b.err(format!(
                            "input {o} differs from {} in size or quantisation",
                            node.input
                        )));
                    }
                    names.push(v.name.clone());
                    total += v.chw.0;
                }
                // Dequantized codes of one step concatenated are dequantized codes: no new
                // Q/DQ pair.
                let y = format!("{base}.concat");
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                b.node("Concat", &y, &refs, &y, vec![int("axis", 1)]);
                Val {
                    name: y,
                    q: x.q,
                    chw: (total, h, w),
                }
            }
        };
        if last && out.name != OUTPUT {
            return Err(b.err("the final node does not yield logits"));
        }
        vals.insert(node.name.as_str(), out);
    }
    if !b.nodes.iter().any(|n| n.output.iter().any(|o| o == OUTPUT)) {
        return Err(Error::Export {
            what: "model".into(),
            msg: "no node yields the logits".into(),
        });
    }
    let stds: Vec<f32> = (0..inp.channels).map(|c| inp.channel_std(c)).collect();
    let json = |v: &[f32]| serde_json::to_string(v).unwrap_or_default();
    let props = [
        (
            "producer",
            "seernet (ONNX QDQ export of the integer-engine model)".to_string(),
        ),
        ("seernet_arch", meta.arch.clone()),
        ("input_mean", json(&inp.mean)),
        ("input_std", json(&stds)),
        (
            "input_normalisation",
            "input = (pixels/255 - input_mean[c]) / input_std[c], NCHW float32".into(),
        ),
        ("policy", meta.policy.to_string()),
    ];
    let graph = GraphProto {
        node: b.nodes,
        name: Some(meta.arch.clone()),
        initializer: b.inits,
        input: vec![value_info(INPUT, &[inp.channels, inp.height, inp.width])],
        output: vec![value_info(OUTPUT, &[meta.num_classes])],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("seernet".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.into()),
                value: Some(v),
            })
            .collect(),
        ..Default::default()
    })
}

/// The encoded bytes of [`to_qdq`]`(m)`.
pub fn to_qdq_bytes(m: &IntModel) -> Result<Vec<u8>> {
    Ok(to_qdq(m)?.encode_to_vec())
}

/// Writes the ONNX QDQ model of `m` to `path` (through a temporary file beside it, renamed:
/// a reader never sees a partial file). Errors: those of [`to_qdq`]; [`Error::Io`] naming
/// the file.
pub fn write_qdq(m: &IntModel, path: &Path) -> Result<QdqSummary> {
    let model = to_qdq(m)?;
    let bytes = model.encode_to_vec();
    let empty = Vec::new();
    let nodes = model.graph.as_ref().map_or(&empty, |g| &g.node);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("onnx.tmp");
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    let count = |op: &str| {
        nodes
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    Ok(QdqSummary {
        file_bytes: bytes.len() as u64,
        nodes: nodes.len(),
        quantize_nodes: count("QuantizeLinear"),
        dequantize_nodes: count("DequantizeLinear"),
        weight_codes: m
            .weights()
            .values()
            .map(|w| w.packed.rows() * w.packed.cols())
            .sum(),
    })
}
