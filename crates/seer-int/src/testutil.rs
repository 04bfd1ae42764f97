//! Test-only builders shared by the format and interpreter tests: a deterministic
//! generator and small models that touch every node kind.

use std::collections::BTreeMap;

use crate::format::{
    FORMAT, InputSpec, IntModel, LayerWeights, ModelMeta, Node, NodeOp, QuantOut, VERSION,
};
use crate::pack::PackedWeights;

/// Deterministic uniform values in `[0, 1)` (a 64-bit LCG).
pub(crate) fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A 3×3 conv node with padding 1; `out`: `(alpha, bits)` or `None` (real-valued).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
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
            pad_end: None,
            w_bits,
            residual: residual.map(Into::into),
            relu: false,
            relu6: false,
            groups: 1,
        },
        out: out.map(|(alpha, bits)| QuantOut { alpha, bits }),
    }
}

/// The classifier head of the toy models: global average pooling of `input` (`features`
/// channels) to 8-bit codes over [0, 1], then an 8-bit linear layer to 3 logits.
pub(crate) fn head(input: &str, features: usize) -> Vec<Node> {
    vec![
        Node {
            name: "gap".into(),
            input: input.into(),
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
                in_features: features,
                out_features: 3,
                w_bits: 8,
            },
            out: None,
        },
    ]
}

/// A small residual network touching every node kind.
pub(crate) fn toy_model() -> IntModel {
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
                pad_end: None,
            },
            out: None,
        },
        Node {
            name: "ap".into(),
            input: "mp".into(),
            op: NodeOp::AvgPool {
                kernel: 2,
                stride: 1,
                pad: 1,
                pad_end: Some(0),
            },
            out: Some(QuantOut {
                alpha: 1.8,
                bits: 6,
            }),
        },
    ];
    // Fix the node list: ShortcutA keeps its input's quantisation, so it carries none;
    // the validator only requires `out = null` for the final node, so give it its input's.
    let mut nodes = nodes;
    nodes.extend(head("ap", 6));
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
pub(crate) fn build(nodes: Vec<Node>) -> IntModel {
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

pub(crate) fn build_with(nodes: Vec<Node>, input: InputSpec) -> IntModel {
    let mut r = lcg(5);
    let mut weights = BTreeMap::new();
    for n in &nodes {
        let Some((rows, cols, bits)) = n.op.weight_dims() else {
            continue;
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

/// A residual network whose stream the float model keeps in float: real-valued conv
/// outputs (with ReLU), quantize nodes in front of convs, a real residual added inside a
/// conv, an option-A shortcut and global average pooling on real values.
pub(crate) fn toy_real_stream() -> IntModel {
    let q = |alpha, bits| Some(QuantOut { alpha, bits });
    let mut c1 = conv("c1", "input", 1, 4, 1, 8, None, None);
    let mut c3 = conv("c3", "c2", 4, 4, 1, 4, Some("c1"), None);
    let mut c4 = conv("c4", "q2", 4, 6, 2, 5, Some("sc"), None);
    for n in [&mut c1, &mut c3, &mut c4] {
        if let NodeOp::Conv { relu, .. } = &mut n.op {
            *relu = true;
        }
    }
    // c4 clips at 6 (ReLU6 on a real stream, as MobileNetV2's last conv before pooling).
    if let NodeOp::Conv { relu6, .. } = &mut c4.op {
        *relu6 = true;
    }
    let node = |name: &str, input: &str, op: NodeOp, out| Node {
        name: name.into(),
        input: input.into(),
        op,
        out,
    };
    build(
        [
            vec![
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
            ],
            head("c4", 6),
        ]
        .concat(),
    )
}

/// An all-8-bit residual network (8-bit weights, 8-bit activation codes that saturate at
/// 255): on AVX2 every conv runs the `avx2-wide` kernel — an im2col'ed first layer, an
/// implicit-GEMM 3×3 conv with a residual, a strided conv and a conv over a 4×4 map.
pub(crate) fn toy_int8() -> IntModel {
    let mut c1 = conv("c1", "input", 1, 8, 1, 8, None, Some((0.5, 8)));
    if let NodeOp::Conv { relu, .. } = &mut c1.op {
        *relu = true;
    }
    build(
        [
            vec![
                c1,
                conv("c2", "c1", 8, 8, 1, 8, Some("c1"), Some((0.5, 8))),
                conv("c3", "c2", 8, 12, 2, 8, None, Some((0.5, 8))),
                conv("c4", "c3", 12, 12, 1, 8, Some("c3"), Some((0.5, 8))),
            ],
            head("c4", 12),
        ]
        .concat(),
    )
}

/// Concatenations of codes (three convs requantised alike, then max pooling) and of real
/// values (a ReLU'd and a signed real-valued conv, then max pooling of the real stream,
/// padded average pooling of it requantised to codes, and a residual read).
pub(crate) fn toy_concat() -> IntModel {
    let q = |alpha, bits| Some(QuantOut { alpha, bits });
    let node = |name: &str, input: &str, op: NodeOp, out| Node {
        name: name.into(),
        input: input.into(),
        op,
        out,
    };
    let cat = |others: &[&str]| NodeOp::Concat {
        others: others.iter().map(|s| s.to_string()).collect(),
    };
    let mut ra = conv("ra", "c1", 4, 3, 1, 6, None, None);
    let rb = conv("rb", "c1", 4, 2, 1, 4, None, None);
    // `rb` stays signed: the real max pool below must keep negative maxima.
    if let NodeOp::Conv { relu, .. } = &mut ra.op {
        *relu = true;
    }
    build(
        [
            vec![
                conv("c1", "input", 1, 4, 1, 8, None, Some((2.0, 4))),
                conv("a", "c1", 4, 3, 1, 5, None, Some((1.5, 5))),
                conv("b", "c1", 4, 2, 1, 3, None, Some((1.5, 5))),
                conv("a2", "c1", 4, 2, 1, 2, None, Some((1.5, 5))),
                node("cat", "a", cat(&["b", "a2"]), q(1.5, 5)),
                ra,
                rb,
                node("rcat", "ra", cat(&["rb"]), None),
                node(
                    "rmp",
                    "rcat",
                    NodeOp::MaxPool {
                        kernel: 3,
                        stride: 1,
                        pad: 1,
                        pad_end: None,
                    },
                    None,
                ),
                // Average pooling of the real stream (padded before only), requantised.
                node(
                    "q",
                    "rmp",
                    NodeOp::AvgPool {
                        kernel: 2,
                        stride: 1,
                        pad: 1,
                        pad_end: Some(0),
                    },
                    q(2.0, 4),
                ),
                conv("c2", "q", 5, 5, 1, 4, Some("rcat"), Some((2.0, 4))),
                node(
                    "mp",
                    "cat",
                    NodeOp::MaxPool {
                        kernel: 3,
                        stride: 1,
                        pad: 1,
                        pad_end: None,
                    },
                    q(1.5, 5),
                ),
                conv("c3", "mp", 7, 5, 1, 8, Some("c2"), Some((1.3, 7))),
            ],
            head("c3", 5),
        ]
        .concat(),
    )
}

/// Grouped convs: a depthwise 3×3, a channel-multiplier-2 3×3 at stride 2, a two-group 3×3
/// and a dense 1×1 adding the two-group conv's output as its residual.
pub(crate) fn toy_grouped() -> IntModel {
    let grouped = |name: &str, input: &str, c_in, c_out, stride, bits, groups, out| {
        let mut n = conv(name, input, c_in, c_out, stride, bits, None, Some(out));
        if let NodeOp::Conv { groups: g, .. } = &mut n.op {
            *g = groups;
        }
        n
    };
    let mut pw = conv("pw", "g2", 6, 6, 1, 6, Some("g2"), Some((1.3, 7)));
    if let NodeOp::Conv { kernel, pad, .. } = &mut pw.op {
        (*kernel, *pad) = (1, 0);
    }
    build(
        [
            vec![
                conv("c1", "input", 1, 4, 1, 8, None, Some((2.0, 4))),
                grouped("dw", "c1", 4, 4, 1, 5, 4, (1.5, 5)),
                grouped("mult", "dw", 4, 8, 2, 4, 4, (1.7, 6)),
                grouped("g2", "mult", 8, 6, 1, 3, 2, (1.1, 4)),
                pw,
            ],
            head("pw", 6),
        ]
        .concat(),
    )
}
