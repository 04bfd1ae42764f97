//! ONNX graph → [`NetworkSpec`] + named weights (seer-nn's PyTorch-style names), and from
//! those a trainable [`Model`].
//!
//! The nodes are ordered topologically (Kahn; a cycle is an error naming its nodes), then
//! walked once. Every value is either a *constant* (initializer, `Constant`, or folded from
//! constants) or an *activation* `[C, H, W]` produced by one layer of the spec (or the
//! image). Operators map as follows (see [`SUPPORTED`]):
//!
//! | ONNX | spec layer | notes |
//! |---|---|---|
//! | `Conv` | `conv2d` | weight `[O, I/g, kh, kw]`, optional bias; `pads` (asymmetric ones as `padding` + `padding_end`) or `auto_pad` (`SAME_UPPER`, `SAME_LOWER`, `VALID`) |
//! | `BatchNormalization` | `batch_norm` | inference mode; our ε is 1e-5, so `var' = var + ε − 1e-5` (exact) |
//! | `Relu`, `Clip(0, 6)`, `Clip(0, ∞)` | `relu`, `relu6`, `relu` | Clip bounds from constants |
//! | `Add` of two activations | `add` | a residual addition: tie groups follow |
//! | `Concat` of two or more activations (axis 1, or −3 on `[N, C, H, W]`) | `concat` | channels in input order; pruning stops at it (its producers keep every channel) |
//! | `Gemm` (α = β = 1, transA = 0), `MatMul` (+ `Add` of a constant bias) | `linear` | weight stored `[out, in]` |
//! | `MaxPool`, `AveragePool` | `max_pool`, `avg_pool` | floor mode; padding (asymmetric too, as for `Conv`) only where ours means the same (max: after a ReLU; average: `count_include_pad = 1`) |
//! | `GlobalAveragePool`, `ReduceMean` over axes `[2, 3]` | `global_avg_pool` | keepdims or not (the dynamo exporter writes `AdaptiveAvgPool2d(1)` as `ReduceMean`) |
//! | `Softmax`, `LogSoftmax` on the class axis, as the last node | — | dropped: top-1 is unchanged and fine-tuning trains the logits |
//! | `Flatten` (axis 1), `Reshape` to `[N, C·H·W]` | `flatten` | nothing when already `[F, 1, 1]` |
//! | `Identity`, `Dropout` | — | aliases |
//! | `Constant`, ops on constants only | — | folded (`Add`, `Mul`, `Sub`, `Div`, `Identity`, `Reshape`, `Unsqueeze`, `Squeeze`, `Concat` on int64/float constants) |
//!
//! A `Concat` mixing activations and constants, or concatenating the image itself, is refused.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use prost::Message;
use seer_nn::model::{BN_EPS, Model};
use seer_policy::{InputShape, LayerKind, NetworkSpec, SpecBuilder};

use crate::proto::{ModelProto, NodeProto};
use crate::tensor::{Const, decode};
use crate::{Error, Result};

/// What the importer supports, quoted in every [`Error::Unsupported`].
pub const SUPPORTED: &str = "Conv, BatchNormalization, Relu, Clip(0,6)/Clip(0,inf), Add, \
    Concat(axis 1), Gemm, MatMul(+Add bias), MaxPool, AveragePool, GlobalAveragePool, \
    ReduceMean over axes [2, 3], Flatten(axis 1), Reshape to [N, features], Identity, Dropout, \
    a final Softmax/LogSoftmax (dropped), Constant, and Add/Mul/Sub/Div/Reshape/Unsqueeze/Squeeze/\
    Concat on constants (opset 13 or later)";

/// An imported network: its spec, weights and provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The network (layers named after the ONNX weights or nodes).
    pub spec: NetworkSpec,
    /// Weights by seer-nn name (`<layer>.weight`, `.bias`, `.running_mean`, `.running_var`):
    /// dims and f32 values.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// The default-domain opset the file declares.
    pub opset: i64,
    /// `producer_name producer_version` of the file.
    pub producer: String,
}

impl Imported {
    /// A seer-nn model with the imported weights (CPU). Errors: those of `Model::new` (a conv
    /// with different strides, paddings or dilations per axis) or a weight of the wrong shape.
    pub fn model(&self, source: &Path) -> seer_nn::Result<Model> {
        let dev = Device::Cpu;
        let mut m = Model::new(self.spec.clone(), 0, &dev)?;
        let own: HashMap<String, Tensor> = m.named_tensors().into_iter().collect();
        let mut err = None;
        m.load_named(
            |n| match self.tensors.get(n) {
                Some((d, v)) => match Tensor::from_vec(v.clone(), d.as_slice(), &dev) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        err = Some(e);
                        None
                    }
                },
                None => own.get(n).cloned(),
            },
            source,
        )?;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok(m)
    }
}

/// One value of the graph.
#[derive(Debug, Clone)]
enum Val {
    /// A constant.
    Const(Const),
    /// An activation: the producing layer (`None` = the image) and whether it is known to be
    /// non-negative (output of a ReLU), which makes zero padding of a max pool exact.
    Act { layer: Option<usize>, nonneg: bool },
}

struct Ctx {
    builder: SpecBuilder,
    /// The layers pushed so far (name, kind, inputs), to rebuild with the number of classes.
    layers: Vec<(String, LayerKind, Vec<usize>)>,
    /// Values defined besides a node's own outputs (a MatMul's fused bias `Add`).
    extra: Vec<(String, Val)>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    names: HashSet<String>,
}

/// Node label for messages: its name, or `#index`.
fn label(i: usize, n: &NodeProto) -> String {
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("#{i}"),
    }
}

/// A node being converted: its index and the file, for errors.
struct At<'a> {
    file: &'a str,
    i: usize,
    n: &'a NodeProto,
}

impl At<'_> {
    fn op(&self) -> &str {
        self.n.op_type.as_deref().unwrap_or("")
    }
    fn bad(&self, msg: impl Into<String>) -> Error {
        Error::Node {
            file: self.file.into(),
            node: label(self.i, self.n),
            op: self.op().into(),
            msg: msg.into(),
        }
    }
    fn unsupported(&self, msg: impl Into<String>) -> Error {
        Error::Unsupported {
            file: self.file.into(),
            node: label(self.i, self.n),
            op: self.op().into(),
            msg: msg.into(),
            supported: SUPPORTED.into(),
        }
    }
    /// Refuses any attribute not in `allowed`.
    fn only_attrs(&self, allowed: &[&str]) -> Result<()> {
        for a in &self.n.attribute {
            let name = a.name.as_deref().unwrap_or("");
            if !allowed.contains(&name) {
                return Err(self.unsupported(format!(
                    "attribute {name:?} is not supported (this op takes {})",
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }
    fn attr(&self, name: &str) -> Option<&crate::proto::AttributeProto> {
        self.n
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }
    fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.i.is_some() => Ok(a.i.unwrap_or(default)),
            Some(_) => Err(self.bad(format!("attribute {name} is not an integer"))),
        }
    }
    fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.f.is_some() => Ok(a.f.unwrap_or(default)),
            Some(_) => Err(self.bad(format!("attribute {name} is not a float"))),
        }
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Result<Option<String>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) => {
                a.s.as_ref()
                    .map(|s| Some(String::from_utf8_lossy(s).into_owned()))
                    .ok_or_else(|| self.bad(format!("attribute {name} is not a string")))
            }
        }
    }
    /// `ints` attribute of two positive values (or `default` when absent).
    fn pair(&self, name: &str, default: usize, min: i64) -> Result<[usize; 2]> {
        match self.ints(name) {
            None => Ok([default; 2]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= min && x <= 1 << 20) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(self.bad(format!(
                "attribute {name} {v:?}: expected two values ≥ {min} (2-D ops only)"
            ))),
        }
    }
    /// Zero padding `(begin, end)` (`begin = [top, left]`, `end = [bottom, right]`) from
    /// `pads` `[t, l, b, r]` and `auto_pad` (ONNX Conv/pooling spec: `SAME_UPPER` puts the odd
    /// pixel at the end, `SAME_LOWER` at the beginning), for input `[h, w]`, kernel span
    /// `span` (dilated) and `stride`.
    fn pads(
        &self,
        hw: [usize; 2],
        span: [usize; 2],
        stride: [usize; 2],
    ) -> Result<([usize; 2], [usize; 2])> {
        let auto = self.string("auto_pad")?.unwrap_or_else(|| "NOTSET".into());
        match auto.as_str() {
            "NOTSET" => {
                let p = match self.ints("pads") {
                    None => vec![0; 4],
                    Some(p) => p,
                };
                if p.len() != 4 || p.iter().any(|&x| !(0..=1 << 20).contains(&x)) {
                    return Err(self.bad(format!(
                        "attribute pads {p:?}: expected four values ≥ 0 [top, left, bottom, right]"
                    )));
                }
                let p: Vec<usize> = p.iter().map(|&x| x as usize).collect();
                Ok(([p[0], p[1]], [p[2], p[3]]))
            }
            "VALID" => Ok(([0, 0], [0, 0])),
            "SAME_UPPER" | "SAME_LOWER" => {
                let (mut b, mut e) = ([0; 2], [0; 2]);
                for a in 0..2 {
                    let o = hw[a].div_ceil(stride[a]);
                    let total = ((o - 1) * stride[a] + span[a]).saturating_sub(hw[a]);
                    let small = total / 2;
                    (b[a], e[a]) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                }
                Ok((b, e))
            }
            other => Err(self.bad(format!("auto_pad {other:?} is not an ONNX value"))),
        }
    }
}

/// Imports an ONNX model from its bytes; `file` names it in errors.
///
/// Errors: [`Error::Decode`] (not protobuf / truncated), [`Error::Model`] (no graph, opset
/// below 13, not exactly one image input `[N, C, H, W]` or one output, a cycle, a value
/// produced twice), [`Error::Node`] (a missing input or initializer, a shape mismatch, a
/// malformed attribute), [`Error::Unsupported`] (an op or attribute outside [`SUPPORTED`]),
/// [`Error::Spec`] (the result is not a valid network, e.g. no classifier at the end).
pub fn import_bytes(bytes: &[u8], file: &str) -> Result<Imported> {
    import_in(bytes, file, None)
}

/// [`import_bytes`] with initializers stored in external files (the ONNX external-data
/// format, `location`/`offset`/`length` relative to `dir`, the model file's folder) read in.
/// Without `dir`, such an initializer is an [`Error::Model`] that says to import from a path.
pub(crate) fn import_in(bytes: &[u8], file: &str, dir: Option<&Path>) -> Result<Imported> {
    let mut m = ModelProto::decode(bytes).map_err(|e| Error::Decode {
        file: file.into(),
        msg: e.to_string(),
    })?;
    if let Some(g) = m.graph.as_mut() {
        for t in &mut g.initializer {
            if t.data_location == Some(1) {
                crate::tensor::read_external(t, dir, file)?;
            }
        }
    }
    let model_err = |msg: String| Error::Model {
        file: file.into(),
        msg,
    };
    let g = m
        .graph
        .as_ref()
        .ok_or_else(|| model_err("holds no graph (is it an ONNX model?)".into()))?;
    let opset = m
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| model_err("declares no default-domain opset".into()))?;
    if opset < 13 {
        return Err(model_err(format!(
            "opset {opset}: opset 13 or later is supported (re-export with a newer opset)"
        )));
    }
    // Constants.
    let mut vals: HashMap<String, Val> = HashMap::new();
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        let c = decode(t).map_err(|e| model_err(format!("initializer {name:?} {e}")))?;
        vals.insert(name, Val::Const(c));
    }
    // The image input.
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|v| !vals.contains_key(v.name.as_deref().unwrap_or("")))
        .collect();
    let [inp] = inputs[..] else {
        return Err(model_err(format!(
            "has {} non-constant inputs; exactly one image input [N, C, H, W] is supported",
            inputs.len()
        )));
    };
    let in_name = inp.name.clone().unwrap_or_default();
    let dims: Vec<Option<i64>> = inp
        .r#type
        .as_ref()
        .and_then(|t| match &t.value {
            Some(crate::proto::type_proto::Value::TensorType(tt)) => tt.shape.as_ref(),
            _ => None,
        })
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(crate::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                        Some(v)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let chw = match dims[..] {
        [_, Some(c), Some(h), Some(w)] if c > 0 && h > 0 && w > 0 => {
            [c as usize, h as usize, w as usize]
        }
        _ => {
            return Err(model_err(format!(
                "input {in_name:?} has shape {dims:?}; a 4-D image [N, C, H, W] with fixed \
                 C, H, W is supported"
            )));
        }
    };
    let input = InputShape::new(chw[1], chw[2], chw[0]);
    vals.insert(
        in_name.clone(),
        Val::Act {
            layer: None,
            nonneg: false,
        },
    );
    let [out] = &g.output[..] else {
        return Err(model_err(format!(
            "has {} outputs; exactly one (the logits) is supported",
            g.output.len()
        )));
    };
    let out_name = out.name.clone().unwrap_or_default();
    let order = topo_order(&g.node, &vals, file)?;
    // Consumers of each value, for MatMul + Add fusion.
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for x in &n.input {
            consumers.entry(x.as_str()).or_default().push(i);
        }
    }
    let name = g
        .name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "onnx".into());
    let mut cx = Ctx {
        builder: SpecBuilder::new(&name, input, 1).with_source(file),
        layers: Vec::new(),
        extra: Vec::new(),
        tensors: BTreeMap::new(),
        names: HashSet::new(),
    };
    let mut fused: HashSet<usize> = HashSet::new();
    for &i in &order {
        if fused.contains(&i) {
            continue;
        }
        let n = &g.node[i];
        let at = At { file, i, n };
        let outs = convert_node(&mut cx, &at, &vals, &g.node, &consumers, &mut fused)?;
        for (k, v) in outs.into_iter().enumerate() {
            if let Some(o) = n.output.get(k).filter(|o| !o.is_empty()) {
                vals.insert(o.clone(), v);
            }
        }
        for (o, v) in std::mem::take(&mut cx.extra) {
            vals.insert(o, v);
        }
    }
    let logits = match vals.get(&out_name) {
        Some(Val::Act { layer: Some(l), .. }) => *l,
        _ => {
            return Err(model_err(format!(
                "output {out_name:?} is not produced by a layer of the network"
            )));
        }
    };
    if logits + 1 != cx.layers.len() {
        return Err(model_err(format!(
            "output {out_name:?} is not the last layer computed (layers after it would be \
             dead code)"
        )));
    }
    let k = cx.builder.shape(Some(logits))[0];
    // Rebuild with the real number of classes (the builder needs it up front).
    let mut b = SpecBuilder::new(&name, input, k).with_source(file);
    for (name, kind, inputs) in &cx.layers {
        b.push(name, kind.clone(), inputs)
            .map_err(|e| spec_err(file, e))?;
    }
    let spec = b.finish().map_err(|e| spec_err(file, e))?;
    let producer = format!(
        "{} {}",
        m.producer_name.as_deref().unwrap_or("?"),
        m.producer_version.as_deref().unwrap_or("")
    )
    .trim()
    .to_string();
    Ok(Imported {
        spec,
        tensors: cx.tensors,
        opset,
        producer,
    })
}

fn spec_err(file: &str, e: seer_policy::Error) -> Error {
    Error::Spec {
        file: file.into(),
        source: e,
    }
}

/// Topological order of `nodes` (Kahn, stable: among ready nodes the earliest first).
/// Err(Model) for a value produced twice or a cycle; Err(Node) for an input nobody produces.
fn topo_order(nodes: &[NodeProto], known: &HashMap<String, Val>, file: &str) -> Result<Vec<usize>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if known.contains_key(o.as_str()) || producer.insert(o, i).is_some() {
                return Err(Error::Model {
                    file: file.into(),
                    msg: format!(
                        "value {o:?} is produced twice (node {} and an earlier definition)",
                        label(i, n)
                    ),
                });
            }
        }
    }
    let mut indeg = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if let Some(&p) = producer.get(x.as_str()) {
                indeg[i] += 1;
                users[p].push(i);
            } else if !known.contains_key(x.as_str()) {
                return Err(Error::Node {
                    file: file.into(),
                    node: label(i, n),
                    op: n.op_type.clone().unwrap_or_default(),
                    msg: format!(
                        "input {x:?} is neither an initializer, the graph input, nor any \
                         node's output (missing initializer?)"
                    ),
                });
            }
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            indeg[u] -= 1;
            if indeg[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck: Vec<String> = (0..nodes.len())
            .filter(|&i| indeg[i] > 0)
            .take(5)
            .map(|i| label(i, &nodes[i]))
            .collect();
        return Err(Error::Model {
            file: file.into(),
            msg: format!("the graph has a cycle through nodes {}", stuck.join(", ")),
        });
    }
    Ok(order)
}

/// A layer name from a weight initializer (`conv1.weight` → `conv1`) or the node name
/// (`/layer1/conv/Conv` → `layer1.conv.Conv`), made unique.
fn layer_name(cx: &mut Ctx, at: &At<'_>, weight: Option<&str>) -> String {
    let from_weight = weight
        .and_then(|w| w.strip_suffix(".weight"))
        .filter(|w| !w.is_empty() && !w.contains("::"));
    let base = match from_weight {
        Some(w) => w.to_string(),
        None => {
            let s = label(at.i, at.n);
            let s: String = s
                .trim_start_matches('/')
                .chars()
                .map(|c| if c == '/' || c == ':' { '.' } else { c })
                .collect();
            if s.is_empty() || s.starts_with('#') {
                format!("{}_{}", at.op().to_ascii_lowercase(), at.i)
            } else {
                s
            }
        }
    };
    let mut name = base.clone();
    let mut k = 1;
    while !cx.names.insert(name.clone()) {
        k += 1;
        name = format!("{base}_{k}");
    }
    name
}

/// Converts one node; returns the values of its outputs in order.
fn convert_node(
    cx: &mut Ctx,
    at: &At<'_>,
    vals: &HashMap<String, Val>,
    nodes: &[NodeProto],
    consumers: &HashMap<&str, Vec<usize>>,
    fused: &mut HashSet<usize>,
) -> Result<Vec<Val>> {
    let n = at.n;
    let get = |k: usize| -> Result<Option<&Val>> {
        match n.input.get(k).filter(|x| !x.is_empty()) {
            None => Ok(None),
            Some(x) => vals
                .get(x.as_str())
                .map(Some)
                .ok_or_else(|| at.bad(format!("input {x:?} has no value"))),
        }
    };
    let need = |k: usize| -> Result<&Val> {
        get(k)?.ok_or_else(|| at.bad(format!("input {k} is missing")))
    };
    let act = |k: usize| -> Result<(Option<usize>, bool)> {
        match need(k)? {
            Val::Act { layer, nonneg } => Ok((*layer, *nonneg)),
            Val::Const(_) => Err(at.unsupported(format!(
                "input {k} is a constant where an activation is expected"
            ))),
        }
    };
    let konst = |k: usize, what: &str| -> Result<&Const> {
        match need(k)? {
            Val::Const(c) => Ok(c),
            Val::Act { .. } => Err(at.unsupported(format!(
                "{what} (input {k}) must be a constant (initializer or Constant)"
            ))),
        }
    };
    let all_const =
        (0..n.input.len()).all(|k| matches!(get(k), Ok(Some(Val::Const(_))) | Ok(None)));
    let op = at.op().to_string();
    let push = |cx: &mut Ctx, name: &str, kind: LayerKind, inputs: &[usize]| -> Result<usize> {
        let l = cx
            .builder
            .push(name, kind.clone(), inputs)
            .map_err(|e| at.bad(e.to_string()))?;
        cx.layers.push((name.to_string(), kind, inputs.to_vec()));
        Ok(l)
    };
    let one = |v: Val| Ok(vec![v]);
    // A global average pool of activation `x` (with whether it is non-negative).
    let global_avg_pool = |cx: &mut Ctx, (x, nonneg): (Option<usize>, bool)| {
        let name = layer_name(cx, at, None);
        let l = push(
            cx,
            &name,
            LayerKind::GlobalAvgPool,
            &x.into_iter().collect::<Vec<_>>(),
        )?;
        one(Val::Act {
            layer: Some(l),
            nonneg,
        })
    };
    match op.as_str() {
        "Constant" => {
            at.only_attrs(&[
                "value",
                "value_float",
                "value_floats",
                "value_int",
                "value_ints",
            ])?;
            let a = n
                .attribute
                .first()
                .ok_or_else(|| at.bad("has no value attribute"))?;
            let c = match a.name.as_deref().unwrap_or("") {
                "value" => decode(
                    a.t.as_ref()
                        .ok_or_else(|| at.bad("value is not a tensor"))?,
                )
                .map_err(|e| at.bad(format!("value {e}")))?,
                "value_float" => Const {
                    dims: vec![],
                    f: vec![a.f.unwrap_or(0.0)],
                    i: vec![],
                },
                "value_floats" => Const {
                    dims: vec![a.floats.len()],
                    f: a.floats.clone(),
                    i: vec![],
                },
                "value_int" => {
                    let v = a.i.unwrap_or(0);
                    Const {
                        dims: vec![],
                        f: vec![v as f32],
                        i: vec![v],
                    }
                }
                _ => Const {
                    dims: vec![a.ints.len()],
                    f: a.ints.iter().map(|&v| v as f32).collect(),
                    i: a.ints.clone(),
                },
            };
            one(Val::Const(c))
        }
        "Identity" | "Dropout" => {
            if op == "Dropout" {
                at.only_attrs(&["seed"])?;
                if n.input.len() > 2 && !n.input[2].is_empty() {
                    return Err(at.unsupported("a training_mode input"));
                }
            } else {
                at.only_attrs(&[])?;
            }
            one(need(0)?.clone())
        }
        _ if all_const && n.input.iter().any(|x| !x.is_empty()) => {
            let ins: Vec<Option<&Const>> = (0..n.input.len())
                .map(|k| {
                    get(k).map(|v| match v {
                        Some(Val::Const(c)) => Some(c),
                        _ => None,
                    })
                })
                .collect::<Result<_>>()?;
            fold(at, &ins).map(|c| vec![Val::Const(c)])
        }
        "Conv" => {
            at.only_attrs(&[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "pads",
                "strides",
            ])?;
            let (x, _) = act(0)?;
            let w = konst(1, "the weight")?;
            let b = match get(2)? {
                None => None,
                Some(_) => Some(konst(2, "the bias")?),
            };
            let [c, h, wd] = cx.builder.shape(x);
            let [o, cin_g, kh, kw] = w.dims[..] else {
                return Err(at.bad(format!("weight dims {:?}: a 2-D conv needs 4", w.dims)));
            };
            let groups = at.int("group", 1)?;
            if groups < 1 || cin_g * groups as usize != c || o % groups as usize != 0 {
                return Err(at.bad(format!(
                    "weight [{o}, {cin_g}, {kh}, {kw}] with group {groups} does not fit {c} input \
                     channels"
                )));
            }
            if let Some(ks) = at.ints("kernel_shape")
                && ks != [kh as i64, kw as i64]
            {
                return Err(at.bad(format!(
                    "kernel_shape {ks:?} differs from the weight's [{kh}, {kw}]"
                )));
            }
            let stride = at.pair("strides", 1, 1)?;
            let dilation = at.pair("dilations", 1, 1)?;
            let span = [dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1];
            let (padding, padding_end) = at.pads([h, wd], span, stride)?;
            if let Some(b) = b
                && b.len() != o
            {
                return Err(at.bad(format!(
                    "bias of {} values for {o} output channels",
                    b.len()
                )));
            }
            let name = layer_name(cx, at, n.input.get(1).map(String::as_str));
            let kind = LayerKind::Conv2d {
                in_ch: c,
                out_ch: o,
                kernel: [kh, kw],
                stride,
                padding,
                dilation,
                groups: groups as usize,
                bias: b.is_some(),
                padding_end: (padding_end != padding).then_some(padding_end),
            };
            let l = push(cx, &name, kind, &x.into_iter().collect::<Vec<_>>())?;
            cx.tensors
                .insert(format!("{name}.weight"), (w.dims.clone(), w.f.clone()));
            if let Some(b) = b {
                cx.tensors
                    .insert(format!("{name}.bias"), (vec![o], b.f.clone()));
            }
            one(Val::Act {
                layer: Some(l),
                nonneg: false,
            })
        }
        "BatchNormalization" => {
            at.only_attrs(&["epsilon", "momentum", "training_mode"])?;
            if at.int("training_mode", 0)? != 0 {
                return Err(at.unsupported("training_mode 1 (export the model in eval mode)"));
            }
            if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                return Err(at.unsupported("running-statistics outputs (training mode)"));
            }
            let (x, _) = act(0)?;
            let c = cx.builder.shape(x)[0];
            let eps = at.float("epsilon", 1e-5)? as f64;
            let mut parts = Vec::new();
            for (k, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
                let t = konst(k, what)?;
                if t.len() != c {
                    return Err(at.bad(format!("{what} has {} values for {c} channels", t.len())));
                }
                parts.push(t.f.clone());
            }
            let var: Vec<f32> = parts[3]
                .iter()
                .map(|&v| (v as f64 + eps - BN_EPS) as f32)
                .collect();
            if let Some(v) = var.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return Err(at.bad(format!(
                    "variance + epsilon − 1e-5 = {v} is not positive (our BatchNorm's ε is 1e-5)"
                )));
            }
            let name = layer_name(cx, at, None);
            let l = push(
                cx,
                &name,
                LayerKind::BatchNorm,
                &x.into_iter().collect::<Vec<_>>(),
            )?;
            for (suffix, v) in [
                ("weight", &parts[0]),
                ("bias", &parts[1]),
                ("running_mean", &parts[2]),
                ("running_var", &var),
            ] {
                cx.tensors
                    .insert(format!("{name}.{suffix}"), (vec![c], v.clone()));
            }
            one(Val::Act {
                layer: Some(l),
                nonneg: false,
            })
        }
        "Relu" | "Clip" => {
            let kind = if op == "Relu" {
                at.only_attrs(&[])?;
                LayerKind::Relu
            } else {
                at.only_attrs(&[])?;
                let scalar = |k: usize, what: &str| -> Result<Option<f32>> {
                    match get(k)? {
                        None => Ok(None),
                        Some(_) => {
                            let c = konst(k, what)?;
                            if c.len() != 1 {
                                return Err(at.bad(format!("{what} must be a scalar")));
                            }
                            Ok(Some(c.f[0]))
                        }
                    }
                };
                let lo = scalar(1, "the lower bound")?;
                let hi = scalar(2, "the upper bound")?;
                let from_zero = lo == Some(0.0);
                if from_zero && hi == Some(6.0) {
                    LayerKind::Relu6
                } else if from_zero && hi.is_none_or(|h| h == f32::INFINITY) {
                    LayerKind::Relu
                } else {
                    return Err(at.unsupported(format!(
                        "bounds {lo:?}..{hi:?}: only [0, 6] (ReLU6) and [0, ∞) (ReLU)"
                    )));
                }
            };
            let (x, _) = act(0)?;
            let name = layer_name(cx, at, None);
            let l = push(cx, &name, kind, &x.into_iter().collect::<Vec<_>>())?;
            one(Val::Act {
                layer: Some(l),
                nonneg: true,
            })
        }
        "Add" => {
            at.only_attrs(&[])?;
            let (a, _) = act(0)?;
            let (b, _) = act(1)?;
            let (Some(a), Some(b)) = (a, b) else {
                return Err(at.unsupported("adding the input image itself"));
            };
            let name = layer_name(cx, at, None);
            let l = push(cx, &name, LayerKind::Add, &[a, b])?;
            one(Val::Act {
                layer: Some(l),
                nonneg: false,
            })
        }
        "Gemm" | "MatMul" => {
            let (x, _) = act(0)?;
            let w = konst(1, "the weight")?;
            let [c, h, wd] = cx.builder.shape(x);
            if h * wd != 1 {
                return Err(at.bad(format!(
                    "input is [{c}, {h}, {wd}]: flatten it first (Flatten or Reshape)"
                )));
            }
            let [r, s] = w.dims[..] else {
                return Err(at.bad(format!("weight dims {:?}: expected 2", w.dims)));
            };
            let (trans_b, mut bias): (bool, Option<Vec<f32>>) = if op == "Gemm" {
                at.only_attrs(&["alpha", "beta", "transA", "transB"])?;
                if at.float("alpha", 1.0)? != 1.0 || at.float("beta", 1.0)? != 1.0 {
                    return Err(at.unsupported("alpha or beta other than 1"));
                }
                if at.int("transA", 0)? != 0 {
                    return Err(at.unsupported("transA 1"));
                }
                let b = match get(2)? {
                    None => None,
                    Some(_) => Some(konst(2, "the bias")?.f.clone()),
                };
                (at.int("transB", 0)? != 0, b)
            } else {
                at.only_attrs(&[])?;
                (false, None)
            };
            let (fin, fout) = if trans_b { (s, r) } else { (r, s) };
            if fin != c {
                return Err(at.bad(format!(
                    "weight [{r}, {s}] does not take {c} input features"
                )));
            }
            let mut aliases = Vec::new();
            if op == "MatMul" {
                // Fuse a following `Add` of a constant bias.
                let o = n.output.first().map(String::as_str).unwrap_or("");
                if let Some(&[j]) = consumers.get(o).map(Vec::as_slice) {
                    let add = &nodes[j];
                    if add.op_type.as_deref() == Some("Add") && add.input.len() == 2 {
                        let other = if add.input[0] == o {
                            &add.input[1]
                        } else {
                            &add.input[0]
                        };
                        if let Some(Val::Const(b)) = vals.get(other.as_str())
                            && b.len() == fout
                        {
                            bias = Some(b.f.clone());
                            fused.insert(j);
                            aliases.push(add.output.first().cloned().unwrap_or_default());
                        }
                    }
                }
            }
            if let Some(b) = &bias
                && b.len() != fout
            {
                return Err(at.bad(format!("bias of {} values for {fout} outputs", b.len())));
            }
            let name = layer_name(cx, at, n.input.get(1).map(String::as_str));
            let kind = LayerKind::Linear {
                in_features: fin,
                out_features: fout,
                bias: bias.is_some(),
            };
            let l = push(cx, &name, kind, &x.into_iter().collect::<Vec<_>>())?;
            let weight: Vec<f32> = if trans_b {
                w.f.clone()
            } else {
                (0..fout)
                    .flat_map(|o| (0..fin).map(move |i| (i, o)))
                    .map(|(i, o)| w.f[i * fout + o])
                    .collect()
            };
            cx.tensors
                .insert(format!("{name}.weight"), (vec![fout, fin], weight));
            if let Some(b) = bias {
                cx.tensors.insert(format!("{name}.bias"), (vec![fout], b));
            }
            let v = Val::Act {
                layer: Some(l),
                nonneg: false,
            };
            cx.extra.extend(aliases.into_iter().map(|o| (o, v.clone())));
            one(v)
        }
        "Flatten" | "Reshape" => {
            let (x, nonneg) = act(0)?;
            let [c, h, wd] = cx.builder.shape(x);
            let feats = c * h * wd;
            if op == "Flatten" {
                at.only_attrs(&["axis"])?;
                if at.int("axis", 1)? != 1 {
                    return Err(at.unsupported("axis other than 1"));
                }
            } else {
                at.only_attrs(&["allowzero"])?;
                let s = konst(1, "the target shape")?;
                let ok = s.i.len() == 2
                    && (-1..=1).contains(&s.i[0])
                    && (s.i[1] == -1 || s.i[1] == feats as i64)
                    && !(s.i[0] == -1 && s.i[1] == -1);
                if !ok {
                    return Err(at.unsupported(format!(
                        "target shape {:?}: only [N, {feats}] (a flatten) is supported",
                        s.i
                    )));
                }
            }
            if h * wd == 1 {
                return one(Val::Act { layer: x, nonneg });
            }
            let name = layer_name(cx, at, None);
            let l = push(
                cx,
                &name,
                LayerKind::Flatten,
                &x.into_iter().collect::<Vec<_>>(),
            )?;
            one(Val::Act {
                layer: Some(l),
                nonneg,
            })
        }
        "MaxPool" | "AveragePool" => {
            let max = op == "MaxPool";
            if max {
                at.only_attrs(&[
                    "auto_pad",
                    "ceil_mode",
                    "dilations",
                    "kernel_shape",
                    "pads",
                    "storage_order",
                    "strides",
                ])?;
                if at.pair("dilations", 1, 1)? != [1, 1] {
                    return Err(at.unsupported("dilations other than 1"));
                }
                if n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(at.unsupported("the Indices output"));
                }
            } else {
                at.only_attrs(&[
                    "auto_pad",
                    "ceil_mode",
                    "count_include_pad",
                    "kernel_shape",
                    "pads",
                    "strides",
                ])?;
            }
            if at.int("ceil_mode", 0)? != 0 {
                return Err(at.unsupported("ceil_mode 1 (floor mode only)"));
            }
            let (x, nonneg) = act(0)?;
            let [_, h, wd] = cx.builder.shape(x);
            let kernel = at.pair("kernel_shape", 0, 1)?;
            if kernel == [0, 0] {
                return Err(at.bad("kernel_shape is missing"));
            }
            let stride = at.pair("strides", 1, 1)?;
            let (padding, padding_end) = at.pads([h, wd], kernel, stride)?;
            if padding != [0, 0] || padding_end != [0, 0] {
                if max && !nonneg {
                    return Err(at.unsupported(
                        "padding on an input that is not known to be non-negative (our max pool \
                         pads with zeros; it must follow a ReLU)",
                    ));
                }
                if !max && at.int("count_include_pad", 0)? != 1 {
                    return Err(at.unsupported(
                        "padding with count_include_pad 0 (ours averages over the padded window)",
                    ));
                }
            }
            let name = layer_name(cx, at, None);
            let padding_end = (padding_end != padding).then_some(padding_end);
            let kind = if max {
                LayerKind::MaxPool {
                    kernel,
                    stride,
                    padding,
                    padding_end,
                }
            } else {
                LayerKind::AvgPool {
                    kernel,
                    stride,
                    padding,
                    padding_end,
                }
            };
            let l = push(cx, &name, kind, &x.into_iter().collect::<Vec<_>>())?;
            one(Val::Act {
                layer: Some(l),
                nonneg,
            })
        }
        "GlobalAveragePool" => {
            at.only_attrs(&[])?;
            global_avg_pool(cx, act(0)?)
        }
        "ReduceMean" => {
            // torch.onnx.export's dynamo exporter writes `AdaptiveAvgPool2d(1)` / `x.mean((2, 3))`
            // this way: a mean over both spatial axes is a global average pool (keepdims or not:
            // a [C, 1, 1] activation is already flat).
            at.only_attrs(&["axes", "keepdims", "noop_with_empty_axes"])?;
            let x = act(0)?;
            let axes = match at.ints("axes") {
                Some(a) => a,
                None => match get(1)? {
                    Some(Val::Const(c)) => c.i.clone(),
                    Some(Val::Act { .. }) => {
                        return Err(at.unsupported("axes computed at run time"));
                    }
                    None => Vec::new(),
                },
            };
            let mut norm: Vec<i64> = axes
                .iter()
                .map(|&a| if a < 0 { a + 4 } else { a })
                .collect();
            norm.sort_unstable();
            if norm != [2, 3] {
                return Err(at.unsupported(format!(
                    "a mean over axes {axes:?}: only the spatial axes [2, 3] of [N, C, H, W] \
                     (a global average pool) are supported"
                )));
            }
            global_avg_pool(cx, x)
        }
        "Softmax" | "LogSoftmax" => {
            // A classifier exported for deployment often ends in a softmax. It keeps each
            // image's top-1, and training works on the logits before it, so the network is
            // imported without it; anywhere else it would change what later layers see.
            at.only_attrs(&["axis"])?;
            let last = n
                .output
                .iter()
                .all(|o| consumers.get(o.as_str()).is_none_or(|c| c.is_empty()));
            if !last {
                return Err(at.unsupported(
                    "a softmax inside the network (only a final one, on the class scores, is \
                     dropped on import)",
                ));
            }
            if !matches!(at.int("axis", -1)?, -1 | 1) {
                return Err(at.unsupported("a softmax over an axis other than the classes"));
            }
            act(0)?;
            one(need(0)?.clone())
        }
        "Concat" => {
            at.only_attrs(&["axis"])?;
            if n.input.len() < 2 {
                return Err(at.bad("a concatenation needs at least two inputs"));
            }
            let mut layers = Vec::with_capacity(n.input.len());
            let mut all_nonneg = true;
            for k in 0..n.input.len() {
                let (x, nonneg) = act(k)?;
                let Some(x) = x else {
                    return Err(at.unsupported("concatenating the input image itself"));
                };
                layers.push(x);
                all_nonneg &= nonneg;
            }
            // Channels: axis 1, or −3 on [N, C, H, W] activations.
            let [_, h, wd] = cx.builder.shape(Some(layers[0]));
            if at.attr("axis").is_none() {
                return Err(at.bad("the axis attribute is missing (required by ONNX)"));
            }
            match at.int("axis", 1)? {
                1 => {}
                -3 if h * wd > 1 => {}
                a => {
                    return Err(
                        at.unsupported(format!("axis {a}: only the channel axis (1) is supported"))
                    );
                }
            }
            let name = layer_name(cx, at, None);
            let l = push(cx, &name, LayerKind::Concat, &layers)?;
            one(Val::Act {
                layer: Some(l),
                nonneg: all_nonneg,
            })
        }
        _ => Err(at.unsupported(format!("operator {op:?} is not supported"))),
    }
}

/// Constant folding of `at`'s op on constant inputs `ins` (absent optional inputs `None`):
/// element-wise `Add`/`Sub`/`Mul`/`Div` (equal dims, or a one-element operand), `Reshape`
/// (`0` copies a dim, one `-1` is inferred), `Unsqueeze`/`Squeeze` (axes as input, opset 13),
/// `Concat` of 1-D constants. Anything else on constants: [`Error::Unsupported`].
fn fold(at: &At<'_>, ins: &[Option<&Const>]) -> Result<Const> {
    let input = |k: usize| -> Result<&Const> {
        ins.get(k)
            .copied()
            .flatten()
            .ok_or_else(|| at.bad(format!("input {k} is missing")))
    };
    match at.op() {
        op @ ("Add" | "Sub" | "Mul" | "Div") => {
            at.only_attrs(&[])?;
            let (a, b) = (input(0)?, input(1)?);
            let (dims, n) = if a.dims == b.dims || b.len() == 1 {
                (a.dims.clone(), a.len())
            } else if a.len() == 1 {
                (b.dims.clone(), b.len())
            } else {
                return Err(at.unsupported(format!(
                    "broadcasting {:?} with {:?} (equal dims or a scalar only)",
                    a.dims, b.dims
                )));
            };
            let pick = |c: &Const, k: usize| c.f[if c.len() == 1 { 0 } else { k }];
            let ipick = |c: &Const, k: usize| c.i.get(if c.len() == 1 { 0 } else { k }).copied();
            let f: Vec<f32> = (0..n)
                .map(|k| {
                    let (x, y) = (pick(a, k), pick(b, k));
                    match op {
                        "Add" => x + y,
                        "Sub" => x - y,
                        "Mul" => x * y,
                        _ => x / y,
                    }
                })
                .collect();
            let i = if !a.i.is_empty() && !b.i.is_empty() {
                (0..n)
                    .map(|k| {
                        let (x, y) = (ipick(a, k).unwrap_or(0), ipick(b, k).unwrap_or(0));
                        match op {
                            "Add" => x.wrapping_add(y),
                            "Sub" => x.wrapping_sub(y),
                            "Mul" => x.wrapping_mul(y),
                            _ => x.checked_div(y).unwrap_or(0),
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            Ok(Const { dims, f, i })
        }
        "Reshape" => {
            at.only_attrs(&["allowzero"])?;
            let (a, s) = (input(0)?, input(1)?);
            let mut dims = Vec::with_capacity(s.i.len());
            let mut infer = None;
            for (k, &d) in s.i.iter().enumerate() {
                match d {
                    0 => dims.push(
                        *a.dims
                            .get(k)
                            .ok_or_else(|| at.bad("0 copies a missing dim"))?,
                    ),
                    -1 if infer.is_none() => {
                        infer = Some(k);
                        dims.push(1);
                    }
                    d if d > 0 => dims.push(d as usize),
                    d => return Err(at.bad(format!("target dim {d}"))),
                }
            }
            let known: usize = dims.iter().product();
            if let Some(k) = infer {
                if known == 0 || a.len() % known != 0 {
                    return Err(at.bad(format!("cannot reshape {:?} to {:?}", a.dims, s.i)));
                }
                dims[k] = a.len() / known;
            }
            if dims.iter().product::<usize>() != a.len() {
                return Err(at.bad(format!("cannot reshape {:?} to {:?}", a.dims, s.i)));
            }
            Ok(Const { dims, ..a.clone() })
        }
        op @ ("Unsqueeze" | "Squeeze") => {
            at.only_attrs(&[])?;
            let a = input(0)?;
            let axes: Vec<i64> = match ins.get(1).copied().flatten() {
                Some(c) => c.i.clone(),
                None if op == "Squeeze" => Vec::new(),
                None => return Err(at.bad("axes input is missing")),
            };
            let mut dims = a.dims.clone();
            if op == "Squeeze" {
                let r = dims.len() as i64;
                let norm: Vec<usize> = axes
                    .iter()
                    .map(|&x| (if x < 0 { x + r } else { x }) as usize)
                    .collect();
                dims = dims
                    .iter()
                    .enumerate()
                    .filter(|&(k, &d)| !(d == 1 && (norm.is_empty() || norm.contains(&k))))
                    .map(|(_, &d)| d)
                    .collect();
            } else {
                let r = (dims.len() + axes.len()) as i64;
                let mut norm: Vec<i64> = axes
                    .iter()
                    .map(|&x| if x < 0 { x + r } else { x })
                    .collect();
                norm.sort_unstable();
                for x in norm {
                    if x < 0 || x as usize > dims.len() {
                        return Err(at.bad(format!("axis {x} out of range")));
                    }
                    dims.insert(x as usize, 1);
                }
            }
            Ok(Const { dims, ..a.clone() })
        }
        "Concat" => {
            at.only_attrs(&["axis"])?;
            let parts: Vec<&Const> = (0..ins.len()).map(input).collect::<Result<_>>()?;
            if parts.iter().any(|c| c.dims.len() != 1) {
                return Err(at.unsupported("concatenating constants of rank other than 1"));
            }
            let f: Vec<f32> = parts.iter().flat_map(|c| c.f.clone()).collect();
            let i: Vec<i64> = if parts.iter().all(|c| !c.i.is_empty() || c.len() == 0) {
                parts.iter().flat_map(|c| c.i.clone()).collect()
            } else {
                Vec::new()
            };
            Ok(Const {
                dims: vec![f.len()],
                f,
                i,
            })
        }
        op => Err(at.unsupported(format!("operator {op:?} on constants"))),
    }
}
