//! Network specifications: an ordered layer graph with shapes, built by [`SpecBuilder`].
//!
//! A [`NetworkSpec`] is a topologically ordered list of [`Layer`]s; each layer names its
//! producers by index (`inputs`, empty = the input image) and carries its output shape
//! `[C, H, W]`. Shapes are inferred and checked when the spec is built (docs/method.md §2).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Input image shape: height, width, channels (written `HxWxC`, e.g. `32x32x3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InputShape {
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
    /// Channels (3 for RGB, 1 for grey).
    pub c: usize,
}

impl InputShape {
    /// A new shape; all three must be positive (checked by the spec builder).
    pub fn new(h: usize, w: usize, c: usize) -> Self {
        Self { h, w, c }
    }
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.h, self.w, self.c)
    }
}

impl FromStr for InputShape {
    type Err = Error;
    /// Parses `HxWxC` (e.g. `28x28x1`); Err(InvalidInputShape) otherwise.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidInputShape {
            value: s.to_string(),
        };
        let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
        if parts.len() != 3 {
            return Err(bad());
        }
        let mut v = [0usize; 3];
        for (slot, p) in v.iter_mut().zip(&parts) {
            *slot = p.trim().parse::<usize>().map_err(|_| bad())?;
            if *slot == 0 || *slot > MAX_DIM {
                return Err(bad());
            }
        }
        Ok(Self {
            h: v[0],
            w: v[1],
            c: v[2],
        })
    }
}

impl Serialize for InputShape {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for InputShape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a layer computes. Only `Conv2d` and `Linear` carry weights and count toward MACs,
/// BOPs and size (docs/method.md §2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LayerKind {
    /// 2-D convolution, weights `[out_ch, in_ch / groups, kernel[0], kernel[1]]`.
    /// `groups == in_ch == out_ch` is a depthwise conv (its channels follow its producer).
    Conv2d {
        /// Input channels (must equal the producer's channels).
        in_ch: usize,
        /// Output channels.
        out_ch: usize,
        /// Kernel `[k_h, k_w]`.
        kernel: [usize; 2],
        /// Stride `[s_h, s_w]`.
        stride: [usize; 2],
        /// Zero padding `[p_h, p_w]` before the input (top, left), and after it (bottom,
        /// right) too unless `padding_end` is given.
        padding: [usize; 2],
        /// Dilation `[d_h, d_w]`.
        dilation: [usize; 2],
        /// Groups (divides `in_ch` and `out_ch`).
        groups: usize,
        /// Whether the conv has a bias vector.
        bias: bool,
        /// Asymmetric padding: zeros `[p_h, p_w]` after the input (bottom, right) when they
        /// differ from `padding` (TF-style "SAME", ONNX `pads` `[t, l, b, r]` with `b ≠ t`
        /// or `r ≠ l`); absent (None) means symmetric padding, so older specs read unchanged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<[usize; 2]>,
    },
    /// Fully connected layer, weights `[out_features, in_features]`; its input is `[in_features, 1, 1]`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Whether the layer has a bias vector.
        bias: bool,
    },
    /// Batch normalisation (folded into the preceding conv's scale at export; not counted).
    BatchNorm,
    /// ReLU.
    Relu,
    /// ReLU clipped at 6 (MobileNetV2).
    Relu6,
    /// Element-wise sum of two or more equal-shaped inputs (a residual addition).
    Add,
    /// Concatenation of two or more inputs along channels (ONNX `Concat` on axis 1): inputs
    /// `[C_k, H, W]` with equal `H, W` give `[ΣC_k, H, W]`, channels in input order.
    /// Counts 0 MACs and 0 bits. Channel pruning does not pass through it: its inputs and
    /// its output keep all their channels (docs/network-spec.md, "Channel flow").
    Concat,
    /// `[C, H, W]` → `[C·H·W, 1, 1]`.
    Flatten,
    /// Max pooling (floor mode).
    MaxPool {
        /// Window `[k_h, k_w]`.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding before the input (top, left), and after it unless `padding_end` is given.
        padding: [usize; 2],
        /// Asymmetric padding after the input (bottom, right), as for `conv2d`; absent
        /// (None) means symmetric.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<[usize; 2]>,
    },
    /// Average pooling (floor mode).
    AvgPool {
        /// Window `[k_h, k_w]`.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding before the input (top, left), and after it unless `padding_end` is given.
        padding: [usize; 2],
        /// Asymmetric padding after the input (bottom, right), as for `conv2d`; absent
        /// (None) means symmetric.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding_end: Option<[usize; 2]>,
    },
    /// Global average pooling: `[C, H, W]` → `[C, 1, 1]`.
    GlobalAvgPool,
    /// Parameter-free "option A" residual shortcut of CIFAR ResNets: subsample by `stride`
    /// (`x[:, ::s, ::s]`) and zero-pad channels to `out_ch` (half before, half after).
    /// Counts 0 MACs and 0 bits.
    PadShortcut {
        /// Subsampling stride `[s_h, s_w]`.
        stride: [usize; 2],
        /// Output channels after zero padding (≥ input channels).
        out_ch: usize,
    },
}

impl LayerKind {
    /// Short lowercase name (`conv2d`, `linear`, `batch_norm`, ...), as in the JSON `op` tag.
    pub fn name(&self) -> &'static str {
        match self {
            LayerKind::Conv2d { .. } => "conv2d",
            LayerKind::Linear { .. } => "linear",
            LayerKind::BatchNorm => "batch_norm",
            LayerKind::Relu => "relu",
            LayerKind::Relu6 => "relu6",
            LayerKind::Add => "add",
            LayerKind::Concat => "concat",
            LayerKind::Flatten => "flatten",
            LayerKind::MaxPool { .. } => "max_pool",
            LayerKind::AvgPool { .. } => "avg_pool",
            LayerKind::GlobalAvgPool => "global_avg_pool",
            LayerKind::PadShortcut { .. } => "pad_shortcut",
        }
    }

    /// `[kernel, stride, padding]` of a max or average pooling layer (`padding` before the
    /// input; see [`pads`](Self::pads) for the end); None for other kinds.
    pub fn pool_window(&self) -> Option<[[usize; 2]; 3]> {
        match *self {
            LayerKind::MaxPool {
                kernel,
                stride,
                padding,
                ..
            }
            | LayerKind::AvgPool {
                kernel,
                stride,
                padding,
                ..
            } => Some([kernel, stride, padding]),
            _ => None,
        }
    }

    /// Zero padding of a conv or pooling layer as `(begin, end)`: `begin = [top, left]`,
    /// `end = [bottom, right]` (`end = begin` when symmetric). None for other kinds.
    pub fn pads(&self) -> Option<([usize; 2], [usize; 2])> {
        match *self {
            LayerKind::Conv2d {
                padding,
                padding_end,
                ..
            }
            | LayerKind::MaxPool {
                padding,
                padding_end,
                ..
            }
            | LayerKind::AvgPool {
                padding,
                padding_end,
                ..
            } => Some((padding, padding_end.unwrap_or(padding))),
            _ => None,
        }
    }

    /// Zero padding of a conv as `(begin, end)`: `begin = [top, left]`, `end = [bottom, right]`
    /// (`end = begin` for symmetric padding). None for other kinds.
    pub fn conv_pads(&self) -> Option<([usize; 2], [usize; 2])> {
        match *self {
            LayerKind::Conv2d {
                padding,
                padding_end,
                ..
            } => Some((padding, padding_end.unwrap_or(padding))),
            _ => None,
        }
    }

    /// Whether the layer has weights (conv or linear): only these count MACs, BOPs and size.
    pub fn is_weighted(&self) -> bool {
        matches!(self, LayerKind::Conv2d { .. } | LayerKind::Linear { .. })
    }

    /// Whether this is a depthwise conv (`groups == in_ch == out_ch`, more than one channel).
    pub fn is_depthwise(&self) -> bool {
        matches!(self, LayerKind::Conv2d { in_ch, out_ch, groups, .. }
            if *groups == *in_ch && *in_ch == *out_ch && *groups > 1)
    }

    /// For a conv whose every group reads one input channel (`groups == in_ch > 1`): its
    /// channel multiplier `m = out_ch / in_ch` (1 for a depthwise conv). Output channel
    /// `c·m + r` (`r < m`) reads input channel `c` alone, so such a conv cannot prune on its
    /// own: its channels follow its producer's, `m` outputs per kept input (docs/network-spec.md,
    /// "Channel flow"). None for every other layer.
    pub fn channel_multiplier(&self) -> Option<usize> {
        match *self {
            LayerKind::Conv2d {
                in_ch,
                out_ch,
                groups,
                ..
            } if groups == in_ch && groups > 1 => Some(out_ch / in_ch),
            _ => None,
        }
    }

    /// Number of weights (biases excluded): conv `out·in/groups·k_h·k_w`, linear `in·out`, else 0.
    pub fn weight_count(&self) -> u64 {
        match *self {
            LayerKind::Conv2d {
                in_ch,
                out_ch,
                kernel,
                groups,
                ..
            } => (out_ch * (in_ch / groups) * kernel[0] * kernel[1]) as u64,
            LayerKind::Linear {
                in_features,
                out_features,
                ..
            } => (in_features * out_features) as u64,
            _ => 0,
        }
    }

    /// Whether the layer has a bias vector.
    pub fn has_bias(&self) -> bool {
        matches!(
            self,
            LayerKind::Conv2d { bias: true, .. } | LayerKind::Linear { bias: true, .. }
        )
    }
}

/// One node of the layer graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Unique name (PyTorch-style for the built-ins, e.g. `layer1.0.conv1`).
    pub name: String,
    /// What the layer computes.
    pub kind: LayerKind,
    /// Producer layer indices (all smaller than this layer's index); empty = the input image.
    pub inputs: Vec<usize>,
    /// Output shape `[C, H, W]`.
    pub out_shape: [usize; 3],
}

/// A network: ordered layers, input shape and number of classes. The last layer is the output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Architecture name (a built-in name, or the `name` of a user JSON file).
    pub name: String,
    /// Input image shape.
    pub input: InputShape,
    /// Number of classes (output features of the classifier).
    pub num_classes: usize,
    /// Layers in topological order.
    pub layers: Vec<Layer>,
}

impl NetworkSpec {
    /// Shape `[C, H, W]` of a layer's (first) input: the image for an empty `inputs`.
    pub fn input_shape_of(&self, layer: usize) -> [usize; 3] {
        match self.layers[layer].inputs.first() {
            Some(&p) => self.layers[p].out_shape,
            None => [self.input.c, self.input.h, self.input.w],
        }
    }

    /// Indices of the layers with weights (conv and linear), in order.
    pub fn weighted_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].kind.is_weighted())
            .collect()
    }

    /// Index of the layer with this name.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.name == name)
    }

    /// Total weights of all conv and linear layers (biases excluded).
    pub fn weight_count(&self) -> u64 {
        self.layers.iter().map(|l| l.kind.weight_count()).sum()
    }

    /// Residual tie groups: sets of channel-producing layers (conv or linear, except convs
    /// that follow their producer: see [`LayerKind::channel_multiplier`])
    /// whose outputs meet, transitively, at residual additions and so must keep the same
    /// channels (docs/method.md §1). Each group is sorted; groups are ordered by first layer.
    /// Only groups formed by at least one `Add` are listed.
    pub fn tie_groups(&self) -> Vec<Vec<usize>> {
        crate::graph::Channels::analyse(self, crate::space::ResidualPruning::Tied).tie_groups(self)
    }

    /// Re-checks every layer's shape and producers (e.g. after deserializing a full spec).
    /// Err(InvalidSpec) naming the first inconsistent layer.
    pub fn check(&self) -> Result<()> {
        let mut b = SpecBuilder::new(&self.name, self.input, self.num_classes);
        for l in &self.layers {
            let idx = b.push(&l.name, l.kind.clone(), &l.inputs)?;
            if b.spec.layers[idx].out_shape != l.out_shape {
                return Err(b.err(
                    &l.name,
                    format!(
                        "out_shape {:?} does not match the inferred {:?}",
                        l.out_shape, b.spec.layers[idx].out_shape
                    ),
                ));
            }
        }
        b.finish().map(|_| ())
    }
}

/// Options of a conv layer for [`SpecBuilder::conv`]: defaults stride 1, padding 0,
/// dilation 1, groups 1, no bias.
#[derive(Clone, Copy, Debug)]
pub struct ConvOpts {
    /// Output channels.
    pub out_ch: usize,
    /// Kernel `[k_h, k_w]`.
    pub kernel: [usize; 2],
    /// Stride.
    pub stride: [usize; 2],
    /// Padding before the input (top, left), and after it unless `padding_end` is set.
    pub padding: [usize; 2],
    /// Padding after the input (bottom, right) when it differs from `padding`.
    pub padding_end: Option<[usize; 2]>,
    /// Dilation.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
    /// Bias.
    pub bias: bool,
}

impl ConvOpts {
    /// A square `k×k` conv with `out_ch` outputs, stride 1, no padding, no bias.
    pub fn new(out_ch: usize, k: usize) -> Self {
        Self {
            out_ch,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            padding_end: None,
            dilation: [1, 1],
            groups: 1,
            bias: false,
        }
    }
    /// Square stride.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Square padding.
    pub fn pad(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// Square dilation.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// Groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    /// Bias.
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// Builds a [`NetworkSpec`] layer by layer, inferring and checking shapes.
///
/// Every method returns the new layer's index; `input: None` means the image.
#[derive(Debug)]
pub struct SpecBuilder {
    spec: NetworkSpec,
    source: String,
    /// Upper bound of the network's total BOPs/size (u128), kept below `u64::MAX`.
    bound: u128,
}

/// Largest accepted size parameter (channels, kernel, stride, padding, dilation, groups,
/// input height/width/channels): 2²⁰. Larger values are rejected so no count can overflow.
pub const MAX_DIM: usize = 1 << 20;

impl SpecBuilder {
    /// Starts an empty network.
    pub fn new(name: &str, input: InputShape, num_classes: usize) -> Self {
        Self {
            spec: NetworkSpec {
                name: name.to_string(),
                input,
                num_classes,
                layers: Vec::new(),
            },
            source: name.to_string(),
            bound: 0,
        }
    }

    /// Names the source (e.g. a file path) used in error messages.
    pub fn with_source(mut self, source: &str) -> Self {
        self.source = source.to_string();
        self
    }

    /// Channels of a tensor (`None` = image).
    pub fn channels(&self, input: Option<usize>) -> usize {
        self.shape(input)[0]
    }

    /// Shape `[C, H, W]` of a tensor (`None` = image).
    pub fn shape(&self, input: Option<usize>) -> [usize; 3] {
        match input {
            Some(i) => self.spec.layers[i].out_shape,
            None => [self.spec.input.c, self.spec.input.h, self.spec.input.w],
        }
    }

    /// The network's number of classes.
    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    /// Number of layers so far.
    pub fn len(&self) -> usize {
        self.spec.layers.len()
    }

    /// Whether no layer was added yet.
    pub fn is_empty(&self) -> bool {
        self.spec.layers.is_empty()
    }

    fn err(&self, layer: &str, msg: String) -> Error {
        Error::InvalidSpec {
            source_name: self.source.clone(),
            layer: layer.to_string(),
            msg,
        }
    }

    /// A conv reading `input`; `in_ch` is taken from the producer.
    pub fn conv(&mut self, name: &str, input: Option<usize>, o: ConvOpts) -> Result<usize> {
        let kind = LayerKind::Conv2d {
            in_ch: self.channels(input),
            out_ch: o.out_ch,
            kernel: o.kernel,
            stride: o.stride,
            padding: o.padding,
            dilation: o.dilation,
            groups: o.groups,
            bias: o.bias,
            padding_end: o.padding_end,
        };
        self.push(name, kind, &input.into_iter().collect::<Vec<_>>())
    }

    /// A linear layer reading `input` (shape `[F, 1, 1]`); `in_features` from the producer.
    pub fn linear(
        &mut self,
        name: &str,
        input: Option<usize>,
        out: usize,
        bias: bool,
    ) -> Result<usize> {
        let kind = LayerKind::Linear {
            in_features: self.channels(input),
            out_features: out,
            bias,
        };
        self.push(name, kind, &input.into_iter().collect::<Vec<_>>())
    }

    /// A shape-preserving or parameter-free layer of `kind` with one input.
    pub fn op(&mut self, name: &str, input: Option<usize>, kind: LayerKind) -> Result<usize> {
        self.push(name, kind, &input.into_iter().collect::<Vec<_>>())
    }

    /// A residual addition of two or more producers.
    pub fn add(&mut self, name: &str, inputs: &[usize]) -> Result<usize> {
        self.push(name, LayerKind::Add, inputs)
    }

    /// A channel concatenation of two or more producers (equal height and width).
    pub fn concat(&mut self, name: &str, inputs: &[usize]) -> Result<usize> {
        self.push(name, LayerKind::Concat, inputs)
    }

    /// Appends a layer with explicit producers, checking `kind` against the input shape.
    /// Err(InvalidSpec) naming the layer when names repeat, producers are not earlier
    /// layers, channel counts disagree, or a spatial size would drop below 1.
    pub fn push(&mut self, name: &str, mut kind: LayerKind, inputs: &[usize]) -> Result<usize> {
        // One form per padding: an end padding equal to the begin one is symmetric (None).
        if let LayerKind::Conv2d {
            padding,
            padding_end: pe @ Some(_),
            ..
        }
        | LayerKind::MaxPool {
            padding,
            padding_end: pe @ Some(_),
            ..
        }
        | LayerKind::AvgPool {
            padding,
            padding_end: pe @ Some(_),
            ..
        } = &mut kind
            && *pe == Some(*padding)
        {
            *pe = None;
        }
        let idx = self.spec.layers.len();
        if name.is_empty() {
            return Err(self.err(&format!("#{idx}"), "empty layer name".into()));
        }
        if self.spec.layers.iter().any(|l| l.name == name) {
            return Err(self.err(name, "duplicate layer name".into()));
        }
        for &p in inputs {
            if p >= idx {
                return Err(self.err(name, format!("input #{p} is not an earlier layer")));
            }
        }
        let multi = matches!(kind, LayerKind::Add | LayerKind::Concat);
        if multi && inputs.len() < 2 {
            return Err(self.err(name, format!("{} needs at least two inputs", kind.name())));
        }
        if !multi && inputs.len() > 1 {
            return Err(self.err(
                name,
                format!("{} takes one input, got {}", kind.name(), inputs.len()),
            ));
        }
        let [c, h, w] = self.shape(inputs.first().copied());
        // Every size parameter, checked against MAX_DIM below.
        let params: Vec<usize> = match kind {
            LayerKind::Conv2d {
                in_ch,
                out_ch,
                groups,
                kernel: k,
                stride: s,
                padding: p,
                dilation: d,
                padding_end: pe,
                ..
            } => [
                vec![in_ch, out_ch, groups],
                k.to_vec(),
                s.to_vec(),
                p.to_vec(),
                pe.unwrap_or(p).to_vec(),
                d.to_vec(),
            ]
            .concat(),
            LayerKind::PadShortcut { stride, out_ch } => vec![stride[0], stride[1], out_ch],
            LayerKind::Linear { out_features, .. } => vec![out_features],
            _ => match (kind.pool_window(), kind.pads()) {
                (Some(w), Some((_, e))) => [w.concat(), e.to_vec()].concat(),
                _ => Vec::new(),
            },
        };
        if let Some(v) = params.iter().find(|&&v| v > MAX_DIM) {
            return Err(self.err(
                name,
                format!("size parameter {v} exceeds the supported maximum {MAX_DIM}"),
            ));
        }
        let out = self.infer(name, &kind, inputs, [c, h, w])?;
        // Worst case over every policy: all weights at 32 bits times 32-bit activations.
        let weights: u128 = match kind {
            LayerKind::Conv2d {
                in_ch,
                out_ch,
                kernel,
                groups,
                ..
            } => out_ch as u128 * (in_ch / groups) as u128 * kernel[0] as u128 * kernel[1] as u128,
            LayerKind::Linear {
                in_features,
                out_features,
                ..
            } => in_features as u128 * out_features as u128,
            _ => 0,
        };
        self.bound +=
            weights * (out[1] * out[2]) as u128 * 1024 + weights * 32 + 64 * out[0] as u128;
        if self.bound > u64::MAX as u128 {
            return Err(self.err(
                name,
                "the network is too large: its BOPs would overflow 64 bits".into(),
            ));
        }
        self.spec.layers.push(Layer {
            name: name.to_string(),
            kind,
            inputs: inputs.to_vec(),
            out_shape: out,
        });
        Ok(idx)
    }

    fn infer(
        &self,
        name: &str,
        kind: &LayerKind,
        inputs: &[usize],
        [c, h, w]: [usize; 3],
    ) -> Result<[usize; 3]> {
        let e = |m: String| self.err(name, m);
        let pos2 = |what: &str, v: [usize; 2]| -> Result<()> {
            if v[0] == 0 || v[1] == 0 {
                Err(self.err(name, format!("{what} must be positive, got {v:?}")))
            } else {
                Ok(())
            }
        };
        Ok(match *kind {
            LayerKind::Conv2d {
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
                dilation,
                groups,
                padding_end,
                ..
            } => {
                let pe = padding_end.unwrap_or(padding);
                if in_ch != c {
                    return Err(e(format!("in_ch {in_ch} but its input has {c} channels")));
                }
                if out_ch == 0 {
                    return Err(e("out_ch must be positive".into()));
                }
                pos2("kernel", kernel)?;
                pos2("stride", stride)?;
                pos2("dilation", dilation)?;
                if groups == 0 || in_ch % groups != 0 || out_ch % groups != 0 {
                    return Err(e(format!(
                        "groups {groups} must divide in_ch {in_ch} and out_ch {out_ch}"
                    )));
                }
                let misfit = || {
                    e(format!(
                        "kernel {kernel:?} does not fit input {h}x{w} with padding {padding:?} \
                         before and {pe:?} after"
                    ))
                };
                let oh = conv_out_padded(h, kernel[0], stride[0], [padding[0], pe[0]], dilation[0])
                    .ok_or_else(misfit)?;
                let ow = conv_out_padded(w, kernel[1], stride[1], [padding[1], pe[1]], dilation[1])
                    .ok_or_else(misfit)?;
                [out_ch, oh, ow]
            }
            LayerKind::Linear {
                in_features,
                out_features,
                ..
            } => {
                if h != 1 || w != 1 {
                    return Err(e(format!(
                        "a linear layer needs a [F,1,1] input (add a flatten or global_avg_pool), got [{c},{h},{w}]"
                    )));
                }
                if in_features != c {
                    return Err(e(format!(
                        "in_features {in_features} but its input has {c} features"
                    )));
                }
                if out_features == 0 {
                    return Err(e("out_features must be positive".into()));
                }
                [out_features, 1, 1]
            }
            LayerKind::BatchNorm | LayerKind::Relu | LayerKind::Relu6 => [c, h, w],
            LayerKind::Add => {
                for &p in inputs {
                    let s = self.spec.layers[p].out_shape;
                    if s != [c, h, w] {
                        return Err(e(format!(
                            "add inputs have different shapes: {:?} ({}) vs {:?} ({})",
                            [c, h, w],
                            self.spec.layers[inputs[0]].name,
                            s,
                            self.spec.layers[p].name
                        )));
                    }
                }
                [c, h, w]
            }
            LayerKind::Concat => {
                let mut total = 0usize;
                for &p in inputs {
                    let [pc, ph, pw] = self.spec.layers[p].out_shape;
                    if [ph, pw] != [h, w] {
                        return Err(e(format!(
                            "concat inputs have different spatial sizes: {h}x{w} ({}) vs {ph}x{pw} ({})",
                            self.spec.layers[inputs[0]].name, self.spec.layers[p].name
                        )));
                    }
                    total += pc;
                }
                if total > MAX_DIM {
                    return Err(e(format!(
                        "concat of {total} channels exceeds the supported maximum {MAX_DIM}"
                    )));
                }
                [total, h, w]
            }
            LayerKind::Flatten => [c * h * w, 1, 1],
            LayerKind::MaxPool { .. } | LayerKind::AvgPool { .. } => {
                let (Some([kernel, stride, padding]), Some((_, pe))) =
                    (kind.pool_window(), kind.pads())
                else {
                    return Err(e("not a pooling layer".into()));
                };
                pos2("kernel", kernel)?;
                pos2("stride", stride)?;
                for p in [padding, pe] {
                    if 2 * p[0] > kernel[0] || 2 * p[1] > kernel[1] {
                        return Err(e(format!(
                            "padding {p:?} must be at most half the kernel {kernel:?}"
                        )));
                    }
                }
                let oh = conv_out_padded(h, kernel[0], stride[0], [padding[0], pe[0]], 1)
                    .ok_or_else(|| e(format!("window {kernel:?} does not fit input {h}x{w}")))?;
                let ow = conv_out_padded(w, kernel[1], stride[1], [padding[1], pe[1]], 1)
                    .ok_or_else(|| e(format!("window {kernel:?} does not fit input {h}x{w}")))?;
                [c, oh, ow]
            }
            LayerKind::GlobalAvgPool => [c, 1, 1],
            LayerKind::PadShortcut { stride, out_ch } => {
                pos2("stride", stride)?;
                if out_ch < c {
                    return Err(e(format!(
                        "out_ch {out_ch} is smaller than its input's {c} channels"
                    )));
                }
                [out_ch, h.div_ceil(stride[0]), w.div_ceil(stride[1])]
            }
        })
    }

    /// Finishes the spec. Err(InvalidSpec) if it is empty or its last layer does not output
    /// `num_classes` values of shape `[num_classes, 1, 1]`.
    pub fn finish(self) -> Result<NetworkSpec> {
        let Some(last) = self.spec.layers.last() else {
            return Err(self.err("-", "the network has no layers".into()));
        };
        if last.out_shape != [self.spec.num_classes, 1, 1] {
            return Err(self.err(
                &last.name,
                format!(
                    "the last layer outputs {:?}, expected [{}, 1, 1] (num_classes)",
                    last.out_shape, self.spec.num_classes
                ),
            ));
        }
        if !last.kind.is_weighted() {
            return Err(self.err(
                &last.name,
                "the last layer must be the classifier (conv2d or linear)".into(),
            ));
        }
        Ok(self.spec)
    }
}

/// Output size of a conv/pool along one axis: ⌊(n + 2p − d(k−1) − 1)/s⌋ + 1, or None if < 1.
pub fn conv_out(n: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    conv_out_padded(n, k, s, [p, p], d)
}

/// Output size along one axis with `[begin, end]` zero padding:
/// ⌊(n + begin + end − d(k−1) − 1)/s⌋ + 1, or None if < 1.
pub fn conv_out_padded(n: usize, k: usize, s: usize, pad: [usize; 2], d: usize) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 {
        return None;
    }
    let span = d * (k - 1) + 1;
    let padded = n + pad[0] + pad[1];
    if padded < span {
        None
    } else {
        Some((padded - span) / s + 1)
    }
}
