//! The exported integer model file (`model-*.safetensors`) and the engine that runs it
//! entirely on the integer kernels (method.md §7).
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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Isa;
use crate::error::{Error, Result, check_len, invalid};
use crate::gemm::WeightPanel;
use crate::layers::{
    ConvGeom, PoolGeom, Requant, avg_pool2d, conv2d, global_avg_pool, linear, max_pool2d,
};
use crate::pack::{PackedWeights, qmax_unsigned};

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
        /// Zero padding.
        pad: usize,
        /// Weight bit-width.
        w_bits: u32,
        /// Node whose output (codes or real-valued) is added (same shape) before the
        /// ReLU/clip.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        residual: Option<String>,
        /// ReLU on a real-valued output (`out = null` mid-graph). Quantised outputs always
        /// clip to `[0, α]`, which includes the ReLU.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relu: bool,
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
        /// Padding.
        pad: usize,
    },
    /// Average pooling (square window, no padding), requantised to `out`.
    AvgPool {
        /// Window.
        kernel: usize,
        /// Stride.
        stride: usize,
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
#[derive(Clone, Debug)]
pub struct IntModel {
    meta: ModelMeta,
    weights: BTreeMap<String, LayerWeights>,
}

/// Shape and quantisation of an activation flowing between nodes.
#[derive(Clone, Debug)]
struct Value {
    codes: Vec<u8>,
    /// Real values (NHWC f32) instead of codes, for streams kept in float.
    real: Option<Vec<f32>>,
    h: usize,
    w: usize,
    c: usize,
    step: f32,
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
        let m = Self { meta, weights };
        m.validate("<memory>")?;
        Ok(m)
    }

    /// The metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
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
        let mut seen = std::collections::HashSet::from(["input".to_string()]);
        for (i, node) in meta.nodes.iter().enumerate() {
            let last = i + 1 == meta.nodes.len();
            if !seen.contains(&node.input) {
                return Err(fmt_err(
                    path,
                    format!("node {}: unknown input {:?}", node.name, node.input),
                ));
            }
            if let NodeOp::Conv {
                residual: Some(r), ..
            } = &node.op
                && !seen.contains(r)
            {
                return Err(fmt_err(
                    path,
                    format!("node {}: unknown residual {r:?}", node.name),
                ));
            }
            let real_ok = matches!(
                node.op,
                NodeOp::Conv { .. } | NodeOp::MaxPool { .. } | NodeOp::ShortcutA { .. }
            );
            if last
                && (node.out.is_some()
                    || !matches!(node.op, NodeOp::Conv { .. } | NodeOp::Linear { .. }))
            {
                return Err(fmt_err(
                    path,
                    format!(
                        "node {}: the final node must be a conv or linear node with out = null (logits)",
                        node.name
                    ),
                ));
            }
            if !last && node.out.is_none() && !real_ok {
                return Err(fmt_err(
                    path,
                    format!(
                        "node {}: only conv, max-pool and shortcut nodes may have out = null before the final node",
                        node.name
                    ),
                ));
            }
            if let Some(q) = node.out
                && (!(2..=8).contains(&q.bits) || !(q.alpha.is_finite() && q.alpha > 0.0))
            {
                return Err(fmt_err(
                    path,
                    format!("node {}: bad output quantisation {q:?}", node.name),
                ));
            }
            let dims = match node.op {
                NodeOp::Conv {
                    c_in,
                    c_out,
                    kernel,
                    w_bits,
                    ..
                } => Some((c_out, c_in * kernel * kernel, w_bits)),
                NodeOp::Linear {
                    in_features,
                    out_features,
                    w_bits,
                } => Some((out_features, in_features, w_bits)),
                _ => None,
            };
            if let Some((rows, cols, bits)) = dims {
                let w = self
                    .weights
                    .get(&node.name)
                    .ok_or_else(|| fmt_err(path, format!("node {}: missing weights", node.name)))?;
                if (w.packed.rows(), w.packed.cols(), w.packed.bits()) != (rows, cols, bits) {
                    return Err(fmt_err(
                        path,
                        format!(
                            "node {}: weights are [{}, {}] at {} bits, expected [{rows}, {cols}] at {bits}",
                            node.name,
                            w.packed.rows(),
                            w.packed.cols(),
                            w.packed.bits()
                        ),
                    ));
                }
                for (what, v) in [("mul", &w.mul), ("bias", &w.bias)] {
                    if let Some(v) = v
                        && (v.len() != rows || v.iter().any(|x| !x.is_finite()))
                    {
                        return Err(fmt_err(
                            path,
                            format!("node {}: {what} must be {rows} finite values", node.name),
                        ));
                    }
                }
            }
            if matches!(node.op, NodeOp::AvgPool { .. } | NodeOp::GlobalAvgPool)
                && node.out.is_none()
            {
                return Err(fmt_err(
                    path,
                    format!("node {}: pooling needs an output quantisation", node.name),
                ));
            }
            if node.input == "input" && !matches!(node.op, NodeOp::Conv { residual: None, .. }) {
                return Err(fmt_err(
                    path,
                    format!("node {}: the image must feed a convolution", node.name),
                ));
            }
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
            if let Some(m) = &w.mul {
                bufs.push((
                    format!("{name}.mul"),
                    safetensors::Dtype::F32,
                    vec![m.len()],
                    f32s(m),
                ));
            }
            if let Some(b) = &w.bias {
                bufs.push((
                    format!("{name}.bias"),
                    safetensors::Dtype::F32,
                    vec![b.len()],
                    f32s(b),
                ));
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

    /// Parses safetensors bytes; `origin` names the source in errors.
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
            let (rows, cols, bits) = match node.op {
                NodeOp::Conv {
                    c_in,
                    c_out,
                    kernel,
                    w_bits,
                    ..
                } => (c_out, c_in * kernel * kernel, w_bits),
                NodeOp::Linear {
                    in_features,
                    out_features,
                    w_bits,
                } => (out_features, in_features, w_bits),
                _ => continue,
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
        let m = Self { meta, weights };
        m.validate(origin)?;
        Ok(m)
    }

    /// Runs a batch of images entirely on the integer kernels.
    ///
    /// `pixels`: `[batch, height, width, channels]` raw 8-bit pixels (NHWC; for one channel
    /// the same as NCHW). Returns f32 logits `[batch, num_classes]`. Errors: `ShapeMismatch`
    /// for a wrong pixel count; `InvalidArgument` if a node's shapes do not chain.
    pub fn forward(&self, pixels: &[u8], batch: usize, isa: Isa) -> Result<Vec<f32>> {
        self.run(pixels, batch, isa, None)
    }

    /// [`forward`](Self::forward), calling `trace(node, real values)` after every node that
    /// produces codes (NHWC, dequantized) — for checking against the float model.
    pub fn forward_traced(
        &self,
        pixels: &[u8],
        batch: usize,
        isa: Isa,
        trace: &mut dyn FnMut(&str, Vec<f32>),
    ) -> Result<Vec<f32>> {
        self.run(pixels, batch, isa, Some(trace))
    }

    fn run(
        &self,
        pixels: &[u8],
        batch: usize,
        isa: Isa,
        mut trace: Option<&mut dyn FnMut(&str, Vec<f32>)>,
    ) -> Result<Vec<f32>> {
        let profile = std::env::var_os("SEER_INT_PROFILE").is_some();
        let inp = &self.meta.input;
        check_len(
            "input pixels",
            batch * inp.height * inp.width * inp.channels,
            pixels.len(),
        )?;
        let mut values: HashMap<&str, Value> = HashMap::new();
        let image = Value {
            codes: pixels.to_vec(),
            real: None,
            h: inp.height,
            w: inp.width,
            c: inp.channels,
            step: 1.0 / (255.0 * inp.std),
        };
        values.insert("input", image);
        let mut logits = None;
        let n_nodes = self.meta.nodes.len();
        for (ni, node) in self.meta.nodes.iter().enumerate() {
            let t0 = std::time::Instant::now();
            let last = ni + 1 == n_nodes;
            let x = values.get(node.input.as_str()).expect("validated input");
            let what = |why: String| invalid(&format!("node {}", node.name), why);
            let need_codes = |v: &Value| -> Result<()> {
                if v.real.is_some() {
                    return Err(what(
                        "its input is real-valued: a quantize node must come first".into(),
                    ));
                }
                Ok(())
            };
            let out: Value = match &node.op {
                NodeOp::Conv {
                    c_in,
                    c_out,
                    kernel,
                    stride,
                    pad,
                    residual,
                    relu,
                    ..
                } => {
                    need_codes(x)?;
                    if x.c != *c_in {
                        return Err(what(format!("input has {} channels, expected {c_in}", x.c)));
                    }
                    let g = ConvGeom {
                        batch,
                        h: x.h,
                        w: x.w,
                        c_in: x.c,
                        c_out: *c_out,
                        kh: *kernel,
                        kw: *kernel,
                        stride: *stride,
                        pad: *pad,
                    };
                    let lw = &self.weights[&node.name];
                    let first = node.input == "input";
                    let split = first && !self.meta.input.std_per_channel.is_empty();
                    let t_gemm = std::time::Instant::now();
                    let acc = if split {
                        Vec::new() // one convolution per input channel, in first_layer_pre
                    } else {
                        conv2d(
                            &x.codes,
                            &g,
                            &crate::layers::conv_panel(&lw.packed, &g)?,
                            isa,
                        )?
                    };
                    if profile {
                        eprintln!(
                            "SEER_INT_PROFILE {}.panel+gemm {:.3} ms (gemm {:.3} ms)",
                            node.name,
                            t0.elapsed().as_secs_f64() * 1e3,
                            t_gemm.elapsed().as_secs_f64() * 1e3
                        );
                    }
                    let (oh, ow) = (g.out_h(), g.out_w());
                    let (acc_scale, bias) = self.affine(lw, x.step);
                    let res = match residual {
                        Some(r) => {
                            let rv = &values[r.as_str()];
                            if (rv.h, rv.w, rv.c) != (oh, ow, *c_out) {
                                return Err(what(format!(
                                    "residual {r} has shape {}x{}x{}",
                                    rv.h, rv.w, rv.c
                                )));
                            }
                            Some(rv)
                        }
                        None => None,
                    };
                    let shape = |codes: Vec<u8>, real: Option<Vec<f32>>, step: f32| Value {
                        codes,
                        real,
                        h: oh,
                        w: ow,
                        c: *c_out,
                        step,
                    };
                    match (node.out, res) {
                        // The fast paths: integer input, codes out, codes (or no) residual.
                        (Some(q), None) if node.input != "input" => shape(
                            Requant::new(acc_scale, bias, q.alpha, q.bits)?.apply(&acc)?,
                            None,
                            q.alpha / qmax_unsigned(q.bits) as f32,
                        ),
                        (Some(q), Some(rv)) if node.input != "input" && rv.real.is_none() => shape(
                            Requant::new(acc_scale, bias, q.alpha, q.bits)?
                                .apply_residual(&acc, &rv.codes, rv.step)?,
                            None,
                            q.alpha / qmax_unsigned(q.bits) as f32,
                        ),
                        (Some(q), None) => shape(
                            self.first_layer_codes(
                                &x.codes, &acc, &g, lw, &acc_scale, &bias, isa, q,
                            )?,
                            None,
                            q.alpha / qmax_unsigned(q.bits) as f32,
                        ),
                        (out, res) => {
                            let mut pre = if first {
                                self.first_layer_pre(
                                    &x.codes, &acc, &g, lw, &acc_scale, &bias, isa,
                                )?
                            } else {
                                Requant::new(acc_scale, bias, 1.0, 8)?.dequantize(&acc)
                            };
                            if let Some(rv) = res {
                                match &rv.real {
                                    Some(r) => pre.iter_mut().zip(r).for_each(|(y, r)| *y += r),
                                    None => pre
                                        .iter_mut()
                                        .zip(&rv.codes)
                                        .for_each(|(y, &r)| *y += r as f32 * rv.step),
                                }
                            }
                            match out {
                                Some(q) => shape(
                                    quantize_real(&pre, q),
                                    None,
                                    q.alpha / qmax_unsigned(q.bits) as f32,
                                ),
                                None if last => {
                                    logits = Some(pre);
                                    break;
                                }
                                None => {
                                    if *relu {
                                        pre.iter_mut().for_each(|y| *y = y.max(0.0));
                                    }
                                    shape(Vec::new(), Some(pre), 0.0)
                                }
                            }
                        }
                    }
                }
                NodeOp::Linear {
                    in_features,
                    out_features,
                    ..
                } => {
                    need_codes(x)?;
                    if x.h * x.w * x.c != *in_features {
                        return Err(what(format!(
                            "input has {} features, expected {in_features}",
                            x.h * x.w * x.c
                        )));
                    }
                    let lw = &self.weights[&node.name];
                    let panel = if x.h * x.w == 1 {
                        WeightPanel::from_packed(&lw.packed)
                    } else {
                        // Activations are HWC-flattened; weights CHW: reorder columns.
                        let perm: Vec<usize> = (0..*in_features)
                            .map(|j| {
                                let (pix, ch) = (j / x.c, j % x.c);
                                ch * x.h * x.w + pix
                            })
                            .collect();
                        WeightPanel::from_packed_permuted(&lw.packed, Some(&perm))
                    };
                    let acc = linear(&x.codes, batch, &panel, isa)?;
                    let (acc_scale, bias) = self.affine(lw, x.step);
                    match node.out {
                        None => {
                            logits = Some(Requant::new(acc_scale, bias, 1.0, 8)?.dequantize(&acc));
                            break;
                        }
                        Some(q) => Value {
                            codes: Requant::new(acc_scale, bias, q.alpha, q.bits)?.apply(&acc)?,
                            real: None,
                            h: 1,
                            w: 1,
                            c: *out_features,
                            step: q.alpha / qmax_unsigned(q.bits) as f32,
                        },
                    }
                }
                NodeOp::MaxPool {
                    kernel,
                    stride,
                    pad,
                } => {
                    need_codes(x)?;
                    let g = PoolGeom {
                        batch,
                        h: x.h,
                        w: x.w,
                        c: x.c,
                        k: *kernel,
                        stride: *stride,
                        pad: *pad,
                    };
                    Value {
                        codes: max_pool2d(&x.codes, &g)?,
                        real: None,
                        h: g.out_h(),
                        w: g.out_w(),
                        c: x.c,
                        step: x.step,
                    }
                }
                NodeOp::AvgPool { kernel, stride } => {
                    need_codes(x)?;
                    let q = node.out.expect("validated");
                    let g = PoolGeom {
                        batch,
                        h: x.h,
                        w: x.w,
                        c: x.c,
                        k: *kernel,
                        stride: *stride,
                        pad: 0,
                    };
                    let codes = avg_pool2d(&x.codes, &g, x.step, q.alpha, q.bits)?;
                    Value {
                        codes,
                        real: None,
                        h: g.out_h(),
                        w: g.out_w(),
                        c: x.c,
                        step: q.alpha / qmax_unsigned(q.bits) as f32,
                    }
                }
                NodeOp::GlobalAvgPool => {
                    let q = node.out.expect("validated");
                    let codes = match &x.real {
                        None => global_avg_pool(
                            &x.codes,
                            batch,
                            x.h * x.w,
                            x.c,
                            x.step,
                            q.alpha,
                            q.bits,
                        )?,
                        Some(r) => {
                            let (hw, c) = (x.h * x.w, x.c);
                            let mut mean = vec![0f32; batch * c];
                            for b in 0..batch {
                                for p in 0..hw {
                                    let row = &r[(b * hw + p) * c..(b * hw + p + 1) * c];
                                    for (m, v) in mean[b * c..(b + 1) * c].iter_mut().zip(row) {
                                        *m += v;
                                    }
                                }
                            }
                            mean.iter_mut().for_each(|m| *m /= hw as f32);
                            quantize_real(&mean, q)
                        }
                    };
                    Value {
                        codes,
                        real: None,
                        h: 1,
                        w: 1,
                        c: x.c,
                        step: q.alpha / qmax_unsigned(q.bits) as f32,
                    }
                }
                NodeOp::Quantize => {
                    let q = node.out.expect("validated");
                    let Some(r) = &x.real else {
                        return Err(what("its input is already quantised".into()));
                    };
                    Value {
                        codes: quantize_real(r, q),
                        real: None,
                        h: x.h,
                        w: x.w,
                        c: x.c,
                        step: q.alpha / qmax_unsigned(q.bits) as f32,
                    }
                }
                NodeOp::ShortcutA { stride, gather } => {
                    if let Some(&Some(bad)) = gather.iter().find(|g| g.is_some_and(|g| g >= x.c)) {
                        return Err(what(format!("gather index {bad} ≥ {} input channels", x.c)));
                    }
                    let (oh, ow) = (x.h.div_ceil(*stride), x.w.div_ceil(*stride));
                    let c = gather.len();
                    fn sc<T: Copy + Default>(
                        src: &[T],
                        (batch, h, w, cin): (usize, usize, usize, usize),
                        (oh, ow): (usize, usize),
                        stride: usize,
                        gather: &[Option<usize>],
                    ) -> Vec<T> {
                        let c = gather.len();
                        let mut out = vec![T::default(); batch * oh * ow * c];
                        for b in 0..batch {
                            for oy in 0..oh {
                                for ox in 0..ow {
                                    let s = ((b * h + oy * stride) * w + ox * stride) * cin;
                                    let d = ((b * oh + oy) * ow + ox) * c;
                                    for (j, g) in gather.iter().enumerate() {
                                        if let Some(g) = g {
                                            out[d + j] = src[s + g];
                                        }
                                    }
                                }
                            }
                        }
                        out
                    }
                    let dims = (batch, x.h, x.w, x.c);
                    Value {
                        codes: match x.real {
                            None => sc(&x.codes, dims, (oh, ow), *stride, gather),
                            Some(_) => Vec::new(),
                        },
                        real: x
                            .real
                            .as_ref()
                            .map(|r| sc(r, dims, (oh, ow), *stride, gather)),
                        h: oh,
                        w: ow,
                        c,
                        step: x.step,
                    }
                }
            };
            if let Some(trace) = trace.as_mut() {
                trace(
                    &node.name,
                    match &out.real {
                        Some(r) => r.clone(),
                        None => out.codes.iter().map(|&q| q as f32 * out.step).collect(),
                    },
                );
            }
            if profile {
                eprintln!(
                    "SEER_INT_PROFILE {} {:.3} ms",
                    node.name,
                    t0.elapsed().as_secs_f64() * 1e3
                );
            }
            values.insert(node.name.as_str(), out);
        }
        let logits = logits.ok_or_else(|| invalid("model", "the final node produced no logits"))?;
        check_len("logits", batch * self.meta.num_classes, logits.len())?;
        Ok(logits)
    }

    /// Per-channel real value of one accumulator unit, and bias.
    fn affine(&self, lw: &LayerWeights, in_step: f32) -> (Vec<f32>, Vec<f32>) {
        let rows = lw.packed.rows();
        let scale = (0..rows)
            .map(|c| lw.packed.scales()[c] * lw.mul.as_ref().map_or(1.0, |m| m[c]) * in_step)
            .collect();
        let bias = lw.bias.clone().unwrap_or_else(|| vec![0.0; rows]);
        (scale, bias)
    }

    /// First conv, real-valued outputs before activation: the image's normalisation offset
    /// `−mean_c/std_c` enters only at valid (unpadded) positions, so it is subtracted per
    /// output position exactly. `acc`: the integer convolution of the pixels with one input
    /// step for all channels; with per-channel stds (`acc` empty) each input channel is
    /// convolved on its own and weighed by its step `1/(255·std_c)`.
    #[allow(clippy::too_many_arguments)]
    fn first_layer_pre(
        &self,
        pixels: &[u8],
        acc: &[i32],
        g: &ConvGeom,
        lw: &LayerWeights,
        acc_scale: &[f32],
        bias: &[f32],
        isa: Isa,
    ) -> Result<Vec<f32>> {
        let inp = &self.meta.input;
        let codes = lw.packed.unpack();
        let (oh, ow, co) = (g.out_h(), g.out_w(), g.c_out);
        let split = !inp.std_per_channel.is_empty();
        let mut raw: Vec<f32> = Vec::new();
        if split {
            let (ci_n, kk) = (g.c_in, g.kh * g.kw);
            let g1 = ConvGeom { c_in: 1, ..*g };
            raw = vec![0f32; g.rows() * co];
            for ci in 0..ci_n {
                let xc: Vec<u8> = pixels.iter().skip(ci).step_by(ci_n).copied().collect();
                let sub: Vec<i8> = (0..co)
                    .flat_map(|o| codes[(o * ci_n + ci) * kk..(o * ci_n + ci + 1) * kk].iter())
                    .copied()
                    .collect();
                let pw = PackedWeights::from_codes(&sub, co, kk, lw.packed.bits(), vec![1.0; co])?;
                let a = conv2d(&xc, &g1, &crate::layers::conv_panel(&pw, &g1)?, isa)?;
                let step = 1.0 / (255.0 * inp.channel_std(ci));
                let w: Vec<f32> = (0..co)
                    .map(|o| lw.packed.scales()[o] * lw.mul.as_ref().map_or(1.0, |m| m[o]) * step)
                    .collect();
                raw.par_chunks_mut(co)
                    .zip(a.par_chunks(co))
                    .for_each(|(r, a)| {
                        for o in 0..co {
                            r[o] += a[o] as f32 * w[o];
                        }
                    });
            }
        }
        let shift = self.first_layer_shift(g, lw, &codes, bias);
        if split {
            raw.par_chunks_mut(oh * ow * co).for_each(|p| {
                for (p, s) in p.chunks_exact_mut(co).zip(shift.chunks_exact(co)) {
                    for o in 0..co {
                        p[o] += s[o];
                    }
                }
            });
            return Ok(raw);
        }
        let mut pre = vec![0f32; acc.len()];
        pre.par_chunks_mut(oh * ow * co)
            .zip(acc.par_chunks(oh * ow * co))
            .for_each(|(p, a)| {
                for ((p, a), s) in p
                    .chunks_exact_mut(co)
                    .zip(a.chunks_exact(co))
                    .zip(shift.chunks_exact(co))
                {
                    for o in 0..co {
                        p[o] = a[o] as f32 * acc_scale[o] + s[o];
                    }
                }
            });
        Ok(pre)
    }

    /// Per output position and channel of the first conv: `bias − offset`, the offset being
    /// the normalisation mean's contribution over the valid (unpadded) taps,
    /// `mul_o·s_o·Σ_valid q·mean_c/std_c`. `codes`: the unpacked weights (OIHW).
    fn first_layer_shift(
        &self,
        g: &ConvGeom,
        lw: &LayerWeights,
        codes: &[i8],
        bias: &[f32],
    ) -> Vec<f32> {
        let inp = &self.meta.input;
        let (oh, ow, co) = (g.out_h(), g.out_w(), g.c_out);
        // offset[pos][o] = mul_o·s_o·Σ_valid q·mean_c/std_c
        let mut offset = vec![0f32; oh * ow * co];
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..co {
                    let mut s = 0f32;
                    for ci in 0..g.c_in {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy >= 0 && ix >= 0 && iy < g.h as isize && ix < g.w as isize {
                                    s += codes[((o * g.c_in + ci) * g.kh + ky) * g.kw + kx] as f32
                                        * inp.mean[ci]
                                        / inp.channel_std(ci);
                                }
                            }
                        }
                    }
                    let mul = lw.mul.as_ref().map_or(1.0, |m| m[o]);
                    offset[(oy * ow + ox) * co + o] = s * lw.packed.scales()[o] * mul;
                }
            }
        }
        // Per image: offset[pos][o] − bias[o] is the same for every image.
        offset
            .chunks_exact(co)
            .flat_map(|row| row.iter().zip(bias).map(|(off, b)| b - off))
            .collect()
    }

    /// The first conv's codes for output quantisation `q`, in one pass over the
    /// accumulators (the values of [`first_layer_pre`](Self::first_layer_pre), quantized).
    #[allow(clippy::too_many_arguments)]
    fn first_layer_codes(
        &self,
        pixels: &[u8],
        acc: &[i32],
        g: &ConvGeom,
        lw: &LayerWeights,
        acc_scale: &[f32],
        bias: &[f32],
        isa: Isa,
        q: QuantOut,
    ) -> Result<Vec<u8>> {
        if !self.meta.input.std_per_channel.is_empty() {
            let pre = self.first_layer_pre(pixels, acc, g, lw, acc_scale, bias, isa)?;
            return Ok(quantize_real(&pre, q));
        }
        let co = g.c_out;
        let hw = g.out_h() * g.out_w();
        let shift = self.first_layer_shift(g, lw, &lw.packed.unpack(), bias);
        let step = q.alpha / qmax_unsigned(q.bits) as f32;
        let mut out = vec![0u8; acc.len()];
        out.par_chunks_mut(hw * co)
            .zip(acc.par_chunks(hw * co))
            .for_each(|(o, a)| {
                for ((o, a), s) in o
                    .chunks_exact_mut(co)
                    .zip(a.chunks_exact(co))
                    .zip(shift.chunks_exact(co))
                {
                    for c in 0..co {
                        let y = a[c] as f32 * acc_scale[c] + s[c];
                        o[c] = crate::layers::round_code(y.clamp(0.0, q.alpha) / step);
                    }
                }
            });
        Ok(out)
    }
}

/// Unsigned `q.bits` codes of real values over `[0, q.alpha]` (the fake quantizer's rounding:
/// half away from zero).
fn quantize_real(x: &[f32], q: QuantOut) -> Vec<u8> {
    let step = q.alpha / qmax_unsigned(q.bits) as f32;
    let mut out = vec![0u8; x.len()];
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(o, x)| {
            for (o, &y) in o.iter_mut().zip(x) {
                *o = crate::layers::round_code(y.clamp(0.0, q.alpha) / step);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;

    fn lcg(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn conv(
        name: &str,
        input: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
        w_bits: u32,
        residual: Option<&str>,
        out: Option<(f32, u32)>,
    ) -> Node {
        Node {
            name: name.into(),
            input: input.into(),
            op: NodeOp::Conv {
                c_in,
                c_out,
                kernel: 3,
                stride,
                pad: 1,
                w_bits,
                residual: residual.map(Into::into),
                relu: false,
            },
            out: out.map(|(alpha, bits)| QuantOut { alpha, bits }),
        }
    }

    /// A small residual network touching every node kind.
    fn toy_model() -> IntModel {
        let nodes = vec![
            conv("c1", "input", 1, 4, 1, 8, None, Some((2.0, 4))),
            conv("c2", "c1", 4, 4, 1, 3, Some("c1"), Some((1.5, 3))),
            Node {
                name: "sc".into(),
                input: "c2".into(),
                op: NodeOp::ShortcutA {
                    stride: 2,
                    gather: vec![Some(0), None, Some(2), Some(3), None, Some(1)],
                },
                out: None,
            },
            conv("c3", "c2", 4, 6, 2, 5, Some("sc"), Some((2.0, 5))),
            Node {
                name: "mp".into(),
                input: "c3".into(),
                op: NodeOp::MaxPool {
                    kernel: 2,
                    stride: 1,
                    pad: 1,
                },
                out: None,
            },
            Node {
                name: "ap".into(),
                input: "mp".into(),
                op: NodeOp::AvgPool {
                    kernel: 2,
                    stride: 1,
                },
                out: Some(QuantOut {
                    alpha: 1.8,
                    bits: 6,
                }),
            },
            Node {
                name: "gap".into(),
                input: "ap".into(),
                op: NodeOp::GlobalAvgPool,
                out: Some(QuantOut {
                    alpha: 1.0,
                    bits: 8,
                }),
            },
            Node {
                name: "fc".into(),
                input: "gap".into(),
                op: NodeOp::Linear {
                    in_features: 6,
                    out_features: 3,
                    w_bits: 8,
                },
                out: None,
            },
        ];
        // Fix the node list: ShortcutA keeps its input's quantisation, so it carries none;
        // the validator only requires `out = null` for the final node, so give it its input's.
        let mut nodes = nodes;
        nodes[2].out = Some(QuantOut {
            alpha: 1.5,
            bits: 3,
        });
        nodes[4].out = Some(QuantOut {
            alpha: 2.0,
            bits: 5,
        });
        build(nodes)
    }

    /// A model over 8×8×1 images with 3 classes from `nodes`, random weights (an all-zero
    /// output channel in each layer), multipliers and biases.
    fn build(nodes: Vec<Node>) -> IntModel {
        build_with(
            nodes,
            InputSpec {
                channels: 1,
                height: 8,
                width: 8,
                mean: vec![0.3],
                std: 0.35,
                std_per_channel: Vec::new(),
            },
        )
    }

    fn build_with(nodes: Vec<Node>, input: InputSpec) -> IntModel {
        let mut r = lcg(5);
        let mut weights = BTreeMap::new();
        for n in &nodes {
            let (rows, cols, bits) = match n.op {
                NodeOp::Conv {
                    c_in,
                    c_out,
                    kernel,
                    w_bits,
                    ..
                } => (c_out, c_in * kernel * kernel, w_bits),
                NodeOp::Linear {
                    in_features,
                    out_features,
                    w_bits,
                } => (out_features, in_features, w_bits),
                _ => continue,
            };
            let mut w: Vec<f32> = (0..rows * cols).map(|_| r() - 0.5).collect();
            w[cols..2 * cols].fill(0.0); // an all-zero channel
            let packed = PackedWeights::quantize(&w, rows, cols, bits).unwrap();
            let mul = Some((0..rows).map(|_| 0.5 + r()).collect());
            let bias = Some((0..rows).map(|_| 0.4 * r() - 0.1).collect());
            weights.insert(n.name.clone(), LayerWeights { packed, mul, bias });
        }
        let meta = ModelMeta {
            format: FORMAT.into(),
            version: VERSION,
            arch: "toy".into(),
            input,
            num_classes: 3,
            policy: serde_json::json!({"note": "test"}),
            provenance: serde_json::json!({"seed": 1}),
            nodes,
        };
        IntModel::new(meta, weights).unwrap()
    }

    /// The fake-quantized float network, in f64 from dequantized weights.
    /// With `engine` given, every node reads its inputs (and residuals) from the engine's
    /// values instead of its own, so each node is checked in isolation.
    fn float_forward(
        m: &IntModel,
        pixels: &[u8],
        batch: usize,
        engine: Option<&HashMap<String, Vec<f64>>>,
        trace: &mut HashMap<String, Vec<f64>>,
    ) -> Vec<f64> {
        let inp = &m.meta.input;
        let fq = |y: f64, q: QuantOut| {
            let s = (q.alpha / qmax_unsigned(q.bits) as f32) as f64;
            (y.clamp(0.0, q.alpha as f64) / s).round() * s
        };
        let mut vals: HashMap<String, (Vec<f64>, usize, usize, usize)> = HashMap::new();
        let x: Vec<f64> = pixels
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let c = i % inp.channels;
                // Independent of `channel_std`, which the engine uses.
                let sd = if inp.std_per_channel.is_empty() {
                    inp.std
                } else {
                    inp.std_per_channel[c]
                };
                (p as f64 / 255.0 - inp.mean[c] as f64) / sd as f64
            })
            .collect();
        vals.insert("input".into(), (x, inp.height, inp.width, inp.channels));
        for n in &m.meta.nodes {
            let (mut x, h, w, c) = vals[&n.input].clone();
            if let Some(e) = engine.and_then(|e| e.get(&n.input)) {
                x = e.clone();
            }
            let out = match &n.op {
                NodeOp::Conv {
                    c_out,
                    stride,
                    residual,
                    kernel,
                    pad,
                    relu,
                    ..
                } => {
                    let lw = &m.weights[&n.name];
                    let cols = lw.packed.cols();
                    let wd: Vec<f32> = lw
                        .packed
                        .dequantize()
                        .iter()
                        .enumerate()
                        .map(|(i, v)| v * lw.mul.as_ref().unwrap()[i / cols])
                        .collect();
                    let g = ConvGeom {
                        batch,
                        h,
                        w,
                        c_in: c,
                        c_out: *c_out,
                        kh: *kernel,
                        kw: *kernel,
                        stride: *stride,
                        pad: *pad,
                    };
                    let mut y = reference::conv2d_f64(&x, &g, &wd, lw.bias.as_ref().unwrap());
                    if let Some(r) = residual {
                        let rv = engine.and_then(|e| e.get(r)).unwrap_or(&vals[r].0);
                        y.iter_mut().zip(rv).for_each(|(y, r)| *y += r);
                    }
                    (
                        y.into_iter()
                            .map(|y| match n.out {
                                Some(q) => fq(y, q),
                                None if *relu => y.max(0.0),
                                None => y,
                            })
                            .collect(),
                        g.out_h(),
                        g.out_w(),
                        *c_out,
                    )
                }
                NodeOp::Quantize => (x.iter().map(|&v| fq(v, n.out.unwrap())).collect(), h, w, c),
                NodeOp::ShortcutA { stride, gather } => {
                    let (oh, ow) = (h.div_ceil(*stride), w.div_ceil(*stride));
                    let mut o = vec![0.0; batch * oh * ow * gather.len()];
                    for b in 0..batch {
                        for oy in 0..oh {
                            for ox in 0..ow {
                                for (j, g) in gather.iter().enumerate() {
                                    if let Some(g) = g {
                                        o[((b * oh + oy) * ow + ox) * gather.len() + j] =
                                            x[((b * h + oy * stride) * w + ox * stride) * c + g];
                                    }
                                }
                            }
                        }
                    }
                    (o, oh, ow, gather.len())
                }
                NodeOp::MaxPool {
                    kernel,
                    stride,
                    pad,
                } => pool_f64(&x, batch, h, w, c, *kernel, *stride, *pad, |v| {
                    v.iter().copied().fold(0.0, f64::max)
                }),
                NodeOp::AvgPool { kernel, stride } => {
                    let q = n.out.unwrap();
                    pool_f64(&x, batch, h, w, c, *kernel, *stride, 0, |v| {
                        fq(v.iter().sum::<f64>() / v.len() as f64, q)
                    })
                }
                NodeOp::GlobalAvgPool => {
                    let mut o = vec![0.0; batch * c];
                    for b in 0..batch {
                        for ch in 0..c {
                            let s: f64 = (0..h * w).map(|p| x[(b * h * w + p) * c + ch]).sum();
                            o[b * c + ch] = fq(s / (h * w) as f64, n.out.unwrap());
                        }
                    }
                    (o, 1, 1, c)
                }
                NodeOp::Linear { out_features, .. } => {
                    let lw = &m.weights[&n.name];
                    let cols = lw.packed.cols();
                    let wd = lw.packed.dequantize();
                    let mut o = vec![0.0; batch * out_features];
                    for b in 0..batch {
                        for j in 0..*out_features {
                            let s: f64 = (0..cols)
                                .map(|t| x[b * cols + t] * wd[j * cols + t] as f64)
                                .sum();
                            o[b * out_features + j] = s * lw.mul.as_ref().unwrap()[j] as f64
                                + lw.bias.as_ref().unwrap()[j] as f64;
                        }
                    }
                    return o;
                }
            };
            trace.insert(n.name.clone(), out.0.clone());
            vals.insert(n.name.clone(), out);
        }
        unreachable!("no logits")
    }

    #[allow(clippy::too_many_arguments)]
    fn pool_f64(
        x: &[f64],
        batch: usize,
        h: usize,
        w: usize,
        c: usize,
        k: usize,
        stride: usize,
        pad: usize,
        f: impl Fn(&[f64]) -> f64,
    ) -> (Vec<f64>, usize, usize, usize) {
        let (oh, ow) = (
            (h + 2 * pad - k) / stride + 1,
            (w + 2 * pad - k) / stride + 1,
        );
        let mut o = vec![0.0; batch * oh * ow * c];
        for b in 0..batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ch in 0..c {
                        let mut cells = Vec::new();
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (
                                    (oy * stride + ky) as isize - pad as isize,
                                    (ox * stride + kx) as isize - pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && iy < h as isize && ix < w as isize {
                                    cells.push(
                                        x[((b * h + iy as usize) * w + ix as usize) * c + ch],
                                    );
                                }
                            }
                        }
                        o[((b * oh + oy) * ow + ox) * c + ch] = f(&cells);
                    }
                }
            }
        }
        (o, oh, ow, c)
    }

    /// A residual network whose stream the float model keeps in float: real-valued conv
    /// outputs (with ReLU), quantize nodes in front of convs, a real residual added inside a
    /// conv, an option-A shortcut and global average pooling on real values.
    fn toy_real_stream() -> IntModel {
        let q = |alpha, bits| Some(QuantOut { alpha, bits });
        let mut c1 = conv("c1", "input", 1, 4, 1, 8, None, None);
        let mut c3 = conv("c3", "c2", 4, 4, 1, 4, Some("c1"), None);
        let mut c4 = conv("c4", "q2", 4, 6, 2, 5, Some("sc"), None);
        for n in [&mut c1, &mut c3, &mut c4] {
            if let NodeOp::Conv { relu, .. } = &mut n.op {
                *relu = true;
            }
        }
        let node = |name: &str, input: &str, op: NodeOp, out| Node {
            name: name.into(),
            input: input.into(),
            op,
            out,
        };
        build(vec![
            c1,
            node("q1", "c1", NodeOp::Quantize, q(2.0, 4)),
            conv("c2", "q1", 4, 4, 1, 3, None, Some((1.5, 3))),
            c3,
            node(
                "sc",
                "c3",
                NodeOp::ShortcutA {
                    stride: 2,
                    gather: vec![Some(0), None, Some(2), Some(3), None, Some(1)],
                },
                None,
            ),
            node("q2", "c3", NodeOp::Quantize, q(2.0, 5)),
            c4,
            node("gap", "c4", NodeOp::GlobalAvgPool, q(1.0, 8)),
            node(
                "fc",
                "gap",
                NodeOp::Linear {
                    in_features: 6,
                    out_features: 3,
                    w_bits: 8,
                },
                None,
            ),
        ])
    }

    #[test]
    fn engine_matches_fake_quant_float_model_and_round_trips() {
        check_engine(toy_model());
    }

    /// Three input channels with different normalisation stds: the first conv runs one
    /// integer convolution per channel (direct path at stride 1, GEMM at stride 2).
    #[test]
    fn per_channel_input_std_matches_the_float_model() {
        for stride in [1, 2] {
            let input = InputSpec {
                channels: 3,
                height: 8,
                width: 8,
                mean: vec![0.49, 0.48, 0.45],
                std: 0.25,
                std_per_channel: vec![0.247, 0.243, 0.261],
            };
            let m = build_with(
                vec![
                    conv("c1", "input", 3, 4, stride, 8, None, Some((2.0, 4))),
                    conv("c2", "c1", 4, 4, 1, 5, None, Some((1.5, 3))),
                    Node {
                        name: "gap".into(),
                        input: "c2".into(),
                        op: NodeOp::GlobalAvgPool,
                        out: Some(QuantOut {
                            alpha: 1.0,
                            bits: 8,
                        }),
                    },
                    Node {
                        name: "fc".into(),
                        input: "gap".into(),
                        op: NodeOp::Linear {
                            in_features: 4,
                            out_features: 3,
                            w_bits: 8,
                        },
                        out: None,
                    },
                ],
                input,
            );
            check_engine(m.clone());
            let mut meta = m.meta().clone();
            meta.input.std_per_channel = vec![0.2, 0.0, 0.3];
            assert!(IntModel::new(meta, m.weights.clone()).is_err());
        }
    }

    #[test]
    fn real_valued_residual_streams_match_the_float_model() {
        let m = toy_real_stream();
        check_engine(m.clone());
        // A conv cannot read a real-valued stream directly.
        let mut meta = m.meta().clone();
        meta.nodes[2].input = "c1".into();
        let bad = IntModel::new(meta, m.weights.clone()).unwrap();
        let e = bad
            .forward(&[0; 64], 1, Isa::Portable)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c2") && e.contains("quantize"), "{e}");
        // Only convs, max-pools and shortcuts may yield real values mid-graph.
        let mut meta = m.meta().clone();
        meta.nodes[7].out = None;
        assert!(IntModel::new(meta, m.weights.clone()).is_err());
    }

    /// Checks the engine against the f64 fake-quantized float model, node by node and end to
    /// end, on every available ISA, and the file round trip.
    fn check_engine(m: IntModel) {
        let batch = 24;
        let mut r = lcg(9);
        let pixels: Vec<u8> = (0..batch * 64 * m.meta.input.channels)
            .map(|_| (r() * 256.0) as u8)
            .collect();
        // Node by node: each integer node, fed the engine's own inputs, equals the float
        // node except for rounding ties (f32 engine vs f64 reference): at most one step off,
        // and rarely (exact ties do occur: e.g. 4-cell means whose code sum is 31 or 93 land
        // exactly on .5 when requantised from α=2/5 bits to α=1.8/6 bits).
        let mut etrace = HashMap::new();
        m.forward_traced(&pixels, batch, Isa::detect(), &mut |name, v| {
            etrace.insert(
                name.to_string(),
                v.iter().map(|&x| x as f64).collect::<Vec<f64>>(),
            );
        })
        .unwrap();
        let steps: HashMap<&str, f64> = m
            .meta
            .nodes
            .iter()
            .filter_map(|n| {
                n.out.map(|q| {
                    (
                        n.name.as_str(),
                        (q.alpha / qmax_unsigned(q.bits) as f32) as f64,
                    )
                })
            })
            .collect();
        let mut ftrace = HashMap::new();
        float_forward(&m, &pixels, batch, Some(&etrace), &mut ftrace);
        for (name, e) in &etrace {
            let f = &ftrace[name];
            let Some(&step) = steps.get(name.as_str()) else {
                // A real-valued node: equal up to f32 rounding.
                let scale = f.iter().fold(1e-3f64, |a, b| a.max(b.abs()));
                assert!(
                    e.iter().zip(f).all(|(a, b)| (a - b).abs() <= 1e-4 * scale),
                    "node {name}: real values differ"
                );
                continue;
            };
            let off: Vec<f64> = e
                .iter()
                .zip(f)
                .map(|(a, b)| (a - b).abs())
                .filter(|d| *d > 1e-4 * step)
                .collect();
            assert!(
                off.iter().all(|d| *d <= step * 1.0001),
                "node {name}: a value is more than one step off"
            );
            assert!(
                off.len() * 40 <= e.len().max(40),
                "node {name}: {}/{} values differ",
                off.len(),
                e.len()
            );
        }
        // End to end the flips propagate a little; predictions must still agree.
        let want = float_forward(&m, &pixels, batch, None, &mut HashMap::new());
        let bytes = m.to_bytes().unwrap();
        let m2 = IntModel::from_bytes(&bytes, "<test>").unwrap();
        assert_eq!(m2.meta(), m.meta());
        assert_eq!(m2.weights, m.weights);
        let scale = want.iter().fold(0f64, |a, &b| a.max(b.abs()));
        let mut agree = 0;
        for isa in Isa::available() {
            let got = m2.forward(&pixels, batch, isa).unwrap();
            assert_eq!(got.len(), batch * 3);
            let mut close = 0;
            for b in 0..batch {
                let row = |v: &[f64]| {
                    (0..3)
                        .max_by(|&i, &j| v[b * 3 + i].total_cmp(&v[b * 3 + j]))
                        .unwrap()
                };
                let g64: Vec<f64> = got.iter().map(|&v| v as f64).collect();
                agree += (row(&g64) == row(&want)) as usize;
                close += (0..3).all(|j| (g64[b * 3 + j] - want[b * 3 + j]).abs() <= 1e-3 * scale)
                    as usize;
            }
            // Rounding-tie flips propagate end to end (pooling spreads them); the logits of
            // most images still match closely.
            assert!(
                close * 2 >= batch,
                "{isa:?}: only {close}/{batch} images have matching logits"
            );
        }
        assert!(
            agree * 5 >= Isa::available().len() * batch * 4,
            "argmax agreement {agree}"
        );
        assert!(m.storage_bytes() > 0);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let m = toy_model();
        let mut meta = m.meta().clone();
        meta.version = VERSION + 1;
        let future = IntModel {
            meta,
            weights: m.weights.clone(),
        }
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
        assert!(m.forward(&[0; 10], 1, Isa::Portable).is_err());
    }
}
