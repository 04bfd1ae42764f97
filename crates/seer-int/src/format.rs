//! The exported integer model file (`model-*.safetensors`, docs/method.md §7): its metadata and
//! graph, reading and writing, and validation. The interpreter that runs it is
//! [`interp`](crate::interp) ([`IntModel::forward`]).
//!
//! # File format (version 1)
//! A safetensors file. Metadata key `seernet_int_model` holds the JSON [`ModelMeta`]
//! (`format = "seernet-int-model"`, `version`, `arch`, `input`, `num_classes`, free-form
//! `policy`, and the ordered `nodes`). Each weighted node `NAME` has the tensors
//! - `NAME.weight`: U8 `[rows, row_bytes]`, the bit-packed codes of
//!   [`PackedWeights`] (rows = kept output channels; columns in OIHW / `[out, in]` order);
//! - `NAME.scale`: F32 `[rows]`, the per-output-channel weight quantization scales;
//! - `NAME.mul` (optional, default 1): F32 `[rows]`, the folded BatchNorm multiplier γ/σ;
//! - `NAME.bias` (optional, default 0): F32 `[rows]`, the folded BatchNorm shift and layer
//!   bias, in output units (`β − γμ/σ + γ·b/σ`).
//!
//! Pruned channels are physically absent: shapes are those of the slimmed network.
//! Activations flow as NHWC unsigned codes; every node output with `out = {alpha, bits}`
//! is requantised (ReLU + clip fused) to those bits; the last node has `out = null` and
//! yields f32 logits. A conv with `out = null` before the last node yields real (f32)
//! values (optionally ReLU'd): a stream the fake-quantized model keeps in float, e.g. a
//! ResNet's residual stream; shortcut nodes and global pooling read it directly, convs
//! through a `quantize` node. The image enters as raw 8-bit pixels `p` with the per-channel
//! normalisation `x = (p/255 − mean_c)/std` (one `std` for all channels); the first conv
//! corrects exactly for the mean at padded borders.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pack::PackedWeights;

/// Format name in the metadata.
pub const FORMAT: &str = "seernet-int-model";
/// Newest format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Safetensors metadata key of the JSON [`ModelMeta`].
pub const META_KEY: &str = "seernet_int_model";

/// How images enter the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Per-channel mean of the normalisation `(p/255 − mean)/std`.
    pub mean: Vec<f32>,
    /// Standard deviation of the normalisation (shared by all channels).
    pub std: f32,
    /// Per-channel standard deviations when they differ (then `std` is unused); empty: `std`
    /// for every channel. The first conv then runs one integer convolution per input channel
    /// and weighs each by its own input step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub std_per_channel: Vec<f32>,
}

impl InputSpec {
    /// Standard deviation of channel `c`.
    pub fn channel_std(&self, c: usize) -> f32 {
        self.std_per_channel.get(c).copied().unwrap_or(self.std)
    }
}

/// Requantisation target of a node's output: unsigned `bits`-bit codes over `[0, alpha]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantOut {
    /// Clip range α (> 0).
    pub alpha: f32,
    /// Bit-width (2..=8).
    pub bits: u32,
}

/// One operation of the integer graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// Dense 2-D convolution (square kernel), folded BatchNorm, optional residual input
    /// added before the fused ReLU/clip.
    Conv {
        /// Input channels (after pruning).
        c_in: usize,
        /// Output channels (after pruning).
        c_out: usize,
        /// Kernel size.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Zero padding before the input (top and left), and after it unless `pad_end` is
        /// given.
        pad: usize,
        /// Zero padding after the input (bottom and right) when it differs from `pad`
        /// (asymmetric "SAME" padding); absent in files with symmetric padding, which read
        /// unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad_end: Option<usize>,
        /// Weight bit-width.
        w_bits: u32,
        /// Groups (divides `c_in` and `c_out`; `c_in` for a depthwise conv): output channel
        /// `o` reads the `c_in/groups` input channels of group `o / (c_out/groups)`. Absent
        /// (1) in files of dense convs, which read unchanged.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        groups: usize,
        /// Node whose output (codes or real-valued) is added (same shape) before the
        /// ReLU/clip.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        residual: Option<String>,
        /// ReLU on a real-valued output (`out = null` mid-graph). Quantised outputs always
        /// clip to `[0, α]`, which includes the ReLU.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relu: bool,
        /// ReLU6 (clip to `[0, 6]`, MobileNetV2) on a real-valued output; implies `relu`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relu6: bool,
    },
    /// Fully connected layer on the flattened input (PyTorch CHW flatten order).
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Weight bit-width.
        w_bits: u32,
    },
    /// Max pooling (square window); keeps the input's quantisation.
    MaxPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding before the input (top and left), and after it unless `pad_end` is given.
        pad: usize,
        /// Padding after the input (bottom and right) when it differs from `pad`; absent in
        /// files with symmetric padding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad_end: Option<usize>,
    },
    /// Average pooling (square window), requantised to `out`. Zero padding counts in the
    /// divisor (ONNX `count_include_pad = 1`, PyTorch's default), as the float model's
    /// `avg_pool` pads with zeros and then averages.
    AvgPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding before the input (top and left), and after it unless `pad_end` is given;
        /// absent (0) in files without padding.
        #[serde(default, skip_serializing_if = "is_zero")]
        pad: usize,
        /// Padding after the input (bottom and right) when it differs from `pad`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pad_end: Option<usize>,
    },
    /// Global average pooling to `[C]`, requantised to `out`.
    GlobalAvgPool,
    /// Quantises a real-valued input to unsigned `out` codes: `round(clamp(x, 0, α)/step)`
    /// (the fake-quantized model's activation quantizer).
    Quantize,
    /// "Option A" residual shortcut: subsample by `stride`, then output channel `j` is input
    /// channel `gather[j]` (or zero). Keeps the input's representation (codes with their
    /// quantisation, or real values).
    ShortcutA {
        /// Subsampling stride.
        stride: usize,
        /// Source channel of every output channel (`null` = zero).
        gather: Vec<Option<usize>>,
    },
    /// Channel concatenation of the node's `input` followed by `others`, in that order (equal
    /// height and width). Keeps the inputs' representation: all codes of one quantisation
    /// (`out` must equal it) or all real values (`out = null`).
    Concat {
        /// The inputs after the first (`input`), at least one.
        others: Vec<String>,
    },
}

impl NodeOp {
    /// The kind's name as written in the file's `op` field (`conv`, `linear`, `max_pool`,
    /// `avg_pool`, `global_avg_pool`, `quantize`, `shortcut_a`, `concat`).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeOp::Conv { .. } => "conv",
            NodeOp::Linear { .. } => "linear",
            NodeOp::MaxPool { .. } => "max_pool",
            NodeOp::AvgPool { .. } => "avg_pool",
            NodeOp::GlobalAvgPool => "global_avg_pool",
            NodeOp::Quantize => "quantize",
            NodeOp::ShortcutA { .. } => "shortcut_a",
            NodeOp::Concat { .. } => "concat",
        }
    }

    /// Names of the values this node reads besides its `input`: a conv's residual, a
    /// concat's further inputs.
    pub fn extra_inputs(&self) -> Vec<&str> {
        match self {
            NodeOp::Conv {
                residual: Some(r), ..
            } => vec![r.as_str()],
            NodeOp::Concat { others } => others.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// `(rows, cols, bits)` of a weighted node's packed weights: `[c_out, (c_in/groups)·k·k]`
    /// for a conv (OIHW order), `[out_features, in_features]` for a linear layer; `None` for the
    /// kinds without weights. `c_in·k·k` saturates at `usize::MAX`, a size no weight tensor
    /// matches, so a model claiming it fails validation (see [`IntModel::from_bytes`]).
    pub fn weight_dims(&self) -> Option<(usize, usize, u32)> {
        match *self {
            NodeOp::Conv {
                c_in,
                c_out,
                kernel,
                w_bits,
                groups,
                ..
            } => Some((
                c_out,
                (c_in / groups.max(1))
                    .saturating_mul(kernel)
                    .saturating_mul(kernel),
                w_bits,
            )),
            NodeOp::Linear {
                in_features,
                out_features,
                w_bits,
            } => Some((out_features, in_features, w_bits)),
            _ => None,
        }
    }
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

/// A node: `op` applied to the output of `input` (`"input"` is the image).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (also the tensor prefix of weighted nodes).
    pub name: String,
    /// Producer node name, or `"input"`.
    pub input: String,
    /// The operation.
    #[serde(flatten)]
    pub op: NodeOp,
    /// Output quantisation. `null`: a real-valued (f32) output — the final node's logits, or
    /// mid-graph a conv whose output the float model keeps in float (a residual stream);
    /// max-pool and shortcut nodes follow their input and ignore it.
    pub out: Option<QuantOut>,
}

/// The JSON metadata of an exported model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`]).
    pub version: u32,
    /// Architecture name (e.g. `resnet20`).
    pub arch: String,
    /// Image input.
    pub input: InputSpec,
    /// Number of classes (outputs of the final node).
    pub num_classes: usize,
    /// The compression policy, free-form JSON (seer-policy's format).
    #[serde(default)]
    pub policy: serde_json::Value,
    /// Where the model came from, free-form JSON (baseline hash, seed, measured top-1, the
    /// float checkpoint it was exported from, ...). `null` when absent.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub provenance: serde_json::Value,
    /// Nodes in execution order.
    pub nodes: Vec<Node>,
}

/// Weights of one conv/linear node.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// Packed codes and per-channel quantization scales.
    pub packed: PackedWeights,
    /// Folded BatchNorm multiplier per output channel (`None` = 1).
    pub mul: Option<Vec<f32>>,
    /// Bias per output channel in output units (`None` = 0).
    pub bias: Option<Vec<f32>>,
}

/// An exported model: metadata plus per-node weights, runnable with [`IntModel::forward`].
///
/// The weights stay bit-packed (as on disk); the first forward call unpacks each conv and
/// linear node's weights once into the GEMM's panel layout and keeps the panel for every
/// later call ([`resident_bytes`](Self::resident_bytes) counts both).
#[derive(Clone, Debug)]
pub struct IntModel {
    meta: ModelMeta,
    weights: BTreeMap<String, LayerWeights>,
    pub(crate) cache: crate::interp::Cache,
}

fn fmt_err(path: &str, why: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_string(),
        why: why.into(),
    }
}

impl IntModel {
    /// Validates and wraps a model. Errors (`Format`, naming `<memory>`): wrong format or
    /// version, duplicate/unknown node names, missing or misshapen weights, bad bits.
    pub fn new(meta: ModelMeta, weights: BTreeMap<String, LayerWeights>) -> Result<Self> {
        let m = Self::assemble(meta, weights);
        m.validate("<memory>")?;
        Ok(m)
    }

    /// The model with an empty panel cache (one slot per node), not yet validated.
    fn assemble(meta: ModelMeta, weights: BTreeMap<String, LayerWeights>) -> Self {
        let cache = crate::interp::Cache::new(meta.nodes.len());
        Self {
            meta,
            weights,
            cache,
        }
    }

    /// Bytes the model holds in memory: the packed weights, scales, multipliers and biases
    /// ([`storage_bytes`](Self::storage_bytes)) plus the GEMM panels unpacked so far (all of
    /// them after one forward call).
    pub fn resident_bytes(&self) -> usize {
        self.storage_bytes() + self.cache.bytes()
    }

    /// The metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The weights of the conv and linear nodes, by node name.
    pub fn weights(&self) -> &BTreeMap<String, LayerWeights> {
        &self.weights
    }

    /// Bytes of packed weights plus per-channel scales, multipliers and biases.
    pub fn storage_bytes(&self) -> usize {
        self.weights
            .values()
            .map(|w| {
                w.packed.storage_bytes()
                    + 4 * w.mul.as_ref().map_or(0, Vec::len)
                    + 4 * w.bias.as_ref().map_or(0, Vec::len)
            })
            .sum()
    }

    /// Checks the whole model; `path` names the source in errors (`Format`).
    fn validate(&self, path: &str) -> Result<()> {
        let meta = &self.meta;
        if meta.format != FORMAT {
            return Err(fmt_err(
                path,
                format!("format {:?} is not {FORMAT:?}", meta.format),
            ));
        }
        if meta.version > VERSION {
            return Err(fmt_err(
                path,
                format!(
                    "written by format version {} but this build reads up to {VERSION}",
                    meta.version
                ),
            ));
        }
        let inp = &meta.input;
        if inp.mean.len() != inp.channels
            || !(inp.std.is_finite() && inp.std > 0.0)
            || !(inp.std_per_channel.is_empty() || inp.std_per_channel.len() == inp.channels)
            || !inp
                .std_per_channel
                .iter()
                .all(|s| s.is_finite() && *s > 0.0)
        {
            return Err(fmt_err(
                path,
                "input: mean (and std_per_channel, if given) must have one entry per channel and every std must be > 0",
            ));
        }
        let mut seen = HashSet::from(["input".to_string()]);
        for (i, node) in meta.nodes.iter().enumerate() {
            self.validate_node(path, node, i + 1 == meta.nodes.len(), &seen)?;
            if !seen.insert(node.name.clone()) {
                return Err(fmt_err(
                    path,
                    format!("duplicate node name {:?}", node.name),
                ));
            }
        }
        if meta.nodes.is_empty() {
            return Err(fmt_err(path, "no nodes"));
        }
        Ok(())
    }

    /// Checks one node: its inputs among the earlier nodes (`seen`), where a real-valued
    /// output may appear (`last`: the final node), its output quantisation and its weights.
    fn validate_node(
        &self,
        path: &str,
        node: &Node,
        last: bool,
        seen: &HashSet<String>,
    ) -> Result<()> {
        let bad = |why: String| Err(fmt_err(path, format!("node {}: {why}", node.name)));
        if !seen.contains(&node.input) {
            return bad(format!("unknown input {:?}", node.input));
        }
        if let Some(r) = node
            .op
            .extra_inputs()
            .into_iter()
            .find(|r| !seen.contains(*r))
        {
            return bad(format!("unknown input {r:?}"));
        }
        if let NodeOp::Conv {
            c_in,
            c_out,
            groups,
            ..
        } = node.op
        {
            if groups == 0 || !c_in.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
                return bad(format!(
                    "groups {groups} must divide c_in {c_in} and c_out {c_out}"
                ));
            }
            if groups > 1 && node.input == "input" {
                return bad("a conv reading the image must have one group".into());
            }
        }
        if let NodeOp::Concat { others } = &node.op {
            if others.is_empty() {
                return bad("a concat needs at least two inputs".into());
            }
            if node.input == "input" || others.iter().any(|o| o == "input") {
                return bad("the image cannot be concatenated".into());
            }
        }
        if let NodeOp::Conv {
            kernel,
            pad,
            pad_end: Some(e),
            ..
        }
        | NodeOp::MaxPool {
            kernel,
            pad,
            pad_end: Some(e),
            ..
        }
        | NodeOp::AvgPool {
            kernel,
            pad,
            pad_end: Some(e),
            ..
        } = node.op
            && (e >= kernel || pad >= kernel)
        {
            return bad(format!(
                "padding {pad} before and {e} after must each be below the kernel {kernel}"
            ));
        }
        let real_ok = matches!(
            node.op,
            NodeOp::Conv { .. }
                | NodeOp::MaxPool { .. }
                | NodeOp::ShortcutA { .. }
                | NodeOp::Concat { .. }
        );
        if last
            && (node.out.is_some()
                || !matches!(node.op, NodeOp::Conv { .. } | NodeOp::Linear { .. }))
        {
            return bad(
                "the final node must be a conv or linear node with out = null (logits)".into(),
            );
        }
        if !last && node.out.is_none() && !real_ok {
            return bad(
                "only conv, max-pool, shortcut and concat nodes may have out = null before the final node"
                    .into(),
            );
        }
        if let NodeOp::AvgPool { kernel, pad, .. } = node.op
            && pad >= kernel
        {
            return bad(format!("padding {pad} must be below the kernel {kernel}"));
        }
        if let Some(q) = node.out
            && !((2..=8).contains(&q.bits) && q.alpha.is_finite() && q.alpha > 0.0)
        {
            return bad(format!("bad output quantisation {q:?}"));
        }
        if let Some((rows, cols, bits)) = node.op.weight_dims() {
            let Some(w) = self.weights.get(&node.name) else {
                return bad("missing weights".into());
            };
            if (w.packed.rows(), w.packed.cols(), w.packed.bits()) != (rows, cols, bits) {
                return bad(format!(
                    "weights are [{}, {}] at {} bits, expected [{rows}, {cols}] at {bits}",
                    w.packed.rows(),
                    w.packed.cols(),
                    w.packed.bits()
                ));
            }
            for (what, v) in [("mul", &w.mul), ("bias", &w.bias)] {
                if let Some(v) = v
                    && (v.len() != rows || v.iter().any(|x| !x.is_finite()))
                {
                    return bad(format!("{what} must be {rows} finite values"));
                }
            }
        }
        if matches!(node.op, NodeOp::AvgPool { .. } | NodeOp::GlobalAvgPool) && node.out.is_none() {
            return bad("pooling needs an output quantisation".into());
        }
        if node.input == "input" && !matches!(node.op, NodeOp::Conv { residual: None, .. }) {
            return bad("the image must feed a convolution".into());
        }
        Ok(())
    }

    /// Serialises to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta =
            serde_json::to_string(&self.meta).map_err(|e| fmt_err("<memory>", e.to_string()))?;
        let mut bufs: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, w) in &self.weights {
            let p = &w.packed;
            bufs.push((
                format!("{name}.weight"),
                safetensors::Dtype::U8,
                vec![p.rows(), p.row_bytes()],
                p.data().to_vec(),
            ));
            let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            bufs.push((
                format!("{name}.scale"),
                safetensors::Dtype::F32,
                vec![p.rows()],
                f32s(p.scales()),
            ));
            for (suffix, v) in [("mul", &w.mul), ("bias", &w.bias)] {
                if let Some(v) = v {
                    let n = vec![v.len()];
                    bufs.push((
                        format!("{name}.{suffix}"),
                        safetensors::Dtype::F32,
                        n,
                        f32s(v),
                    ));
                }
            }
        }
        let views = bufs
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| fmt_err("<memory>", e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(HashMap::from([(META_KEY.to_string(), meta)])))
            .map_err(|e| fmt_err("<memory>", e.to_string()))
    }

    /// Writes the model to `path`. Errors: `Io` naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a model file. Errors: `Io`, or `Format` naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `origin` names the source in errors. Sizes in the metadata
    /// only ever select and check tensors present in the file (whose lengths safetensors
    /// checks against the file's length): nothing is allocated from a claimed size alone.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| fmt_err(origin, format!("not a readable safetensors file ({e})")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| fmt_err(origin, format!("not a readable safetensors file ({e})")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                fmt_err(
                    origin,
                    format!("no {META_KEY:?} metadata: not an exported integer model"),
                )
            })?;
        let version = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
        if let Some(v) = version
            && v > VERSION as u64
        {
            return Err(fmt_err(
                origin,
                format!("written by format version {v} but this build reads up to {VERSION}"),
            ));
        }
        let meta: ModelMeta =
            serde_json::from_str(json).map_err(|e| fmt_err(origin, format!("metadata: {e}")))?;
        let tensor = |name: &str,
                      dtype: safetensors::Dtype|
         -> Result<Option<(Vec<usize>, Vec<u8>)>> {
            match st.tensor(name) {
                Ok(t) if t.dtype() == dtype => Ok(Some((t.shape().to_vec(), t.data().to_vec()))),
                Ok(t) => Err(fmt_err(
                    origin,
                    format!("tensor {name}: dtype {:?}, expected {dtype:?}", t.dtype()),
                )),
                Err(_) => Ok(None),
            }
        };
        let f32s = |b: Vec<u8>| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<f32>>()
        };
        let mut weights = BTreeMap::new();
        for node in &meta.nodes {
            let Some((rows, cols, bits)) = node.op.weight_dims() else {
                continue;
            };
            let name = &node.name;
            let (shape, data) = tensor(&format!("{name}.weight"), safetensors::Dtype::U8)?
                .ok_or_else(|| fmt_err(origin, format!("missing tensor {name}.weight")))?;
            let (_, scale) = tensor(&format!("{name}.scale"), safetensors::Dtype::F32)?
                .ok_or_else(|| fmt_err(origin, format!("missing tensor {name}.scale")))?;
            if shape.first() != Some(&rows) {
                return Err(fmt_err(
                    origin,
                    format!("tensor {name}.weight has shape {shape:?}, expected {rows} rows"),
                ));
            }
            let packed = PackedWeights::from_raw(bits, rows, cols, data, f32s(scale))
                .map_err(|e| fmt_err(origin, format!("node {name}: {e}")))?;
            let mul =
                tensor(&format!("{name}.mul"), safetensors::Dtype::F32)?.map(|(_, b)| f32s(b));
            let bias =
                tensor(&format!("{name}.bias"), safetensors::Dtype::F32)?.map(|(_, b)| f32s(b));
            weights.insert(name.clone(), LayerWeights { packed, mul, bias });
        }
        let m = Self::assemble(meta, weights);
        m.validate(origin)?;
        Ok(m)
    }
}

/// serde's `skip_serializing_if` for a padding of 0 (older files have no such key).
fn is_zero(v: &usize) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{toy_model, toy_real_stream};

    #[test]
    fn file_round_trip_keeps_metadata_and_weights() {
        for m in [toy_model(), toy_real_stream()] {
            let bytes = m.to_bytes().unwrap();
            let back = IntModel::from_bytes(&bytes, "<test>").unwrap();
            assert_eq!(back.meta(), m.meta());
            assert_eq!(back.weights(), m.weights());
            // Canonical: writing what was read gives the same bytes.
            assert_eq!(back.to_bytes().unwrap(), bytes);
            assert!(m.storage_bytes() > 0);
        }
    }

    #[test]
    fn metadata_claiming_2_pow_40_weights_is_refused_before_allocating() {
        let m = toy_model();
        for (c_in, kernel) in [(1usize << 20, 1024usize), (1 << 40, 1), (usize::MAX, 3)] {
            let mut meta = m.meta().clone();
            let NodeOp::Conv {
                c_in: ci,
                c_out,
                kernel: k,
                ..
            } = &mut meta.nodes[0].op
            else {
                panic!("the toy model starts with a conv");
            };
            (*ci, *k) = (c_in, kernel);
            *c_out = 1 << 20;
            let bytes = IntModel::assemble(meta, m.weights.clone())
                .to_bytes()
                .unwrap();
            let e = IntModel::from_bytes(&bytes, "big.safetensors")
                .unwrap_err()
                .to_string();
            assert!(e.contains("big.safetensors") && e.contains("c1"), "{e}");
        }
    }

    #[test]
    fn node_kind_is_the_files_op_tag() {
        for n in &toy_real_stream().meta().nodes {
            let json = serde_json::to_value(n).unwrap();
            assert_eq!(json["op"], n.op.kind(), "{}", n.name);
        }
        for n in &toy_model().meta().nodes {
            let json = serde_json::to_value(n).unwrap();
            assert_eq!(json["op"], n.op.kind(), "{}", n.name);
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let m = toy_model();
        let mut meta = m.meta().clone();
        meta.version = VERSION + 1;
        let future = IntModel::assemble(meta, m.weights.clone())
            .to_bytes()
            .unwrap();
        let e = IntModel::from_bytes(&future, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.safetensors") && e.contains("version"), "{e}");
        assert!(IntModel::from_bytes(b"garbage", "x").is_err());
        let mut meta = m.meta().clone();
        meta.nodes[1].input = "nope".into();
        assert!(IntModel::new(meta, m.weights.clone()).is_err());
        let mut w = m.weights.clone();
        w.remove("c2");
        assert!(IntModel::new(m.meta().clone(), w).is_err());
        // Only convs, max-pools and shortcuts may yield real values mid-graph.
        let r = toy_real_stream();
        let mut meta = r.meta().clone();
        meta.nodes[7].out = None;
        assert!(IntModel::new(meta, r.weights.clone()).is_err());
    }
}
