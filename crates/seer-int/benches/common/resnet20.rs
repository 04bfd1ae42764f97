//! The synthetic ResNet-20 shared by the `int` bench and the `node_timing` example (one
//! builder, so both time the same network): CIFAR layout, option-A shortcuts, random
//! He-initialised weights, uniform bit-widths, as the integer engine's graph plus its f32
//! weights.

use std::collections::BTreeMap;

use seer_int::format::{InputSpec, IntModel, LayerWeights, ModelMeta, Node, NodeOp, QuantOut};

/// Deterministic 31-bit values (a 64-bit LCG).
pub fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

/// Gaussian-ish weights (sum of uniforms) with He scaling, `[rows, cols]`.
pub fn he_weights(r: &mut impl FnMut() -> u64, rows: usize, cols: usize) -> Vec<f32> {
    let std = (2.0 / cols as f32).sqrt();
    (0..rows * cols)
        .map(|_| {
            let u: f32 = (0..4)
                .map(|_| (r() % 10_000) as f32 / 10_000.0)
                .sum::<f32>()
                - 2.0;
            u * std * 1.7
        })
        .collect()
}

/// f32 weights of one conv: values, OIHW shape, stride.
pub type F32Conv = (Vec<f32>, [usize; 4], usize);

/// CIFAR-style ResNet-20 (option-A shortcuts) on `hw`×`hw`×1 inputs, uniform bit-widths,
/// random He-initialised weights: as the integer engine's graph, plus the f32 weights.
pub fn resnet20(hw: usize, wbits: u32, abits: u32) -> (IntModel, Vec<F32Conv>) {
    let mut r = lcg(11);
    let mut nodes = Vec::new();
    let mut weights = BTreeMap::new();
    let mut f32w = Vec::new();
    let out = |bits| Some(QuantOut { alpha: 3.0, bits });
    let mut conv = |name: String,
                    input: &str,
                    c_in,
                    c_out,
                    stride,
                    wb: u32,
                    residual: Option<String>,
                    nodes: &mut Vec<Node>| {
        let w = he_weights(&mut r, c_out, c_in * 9);
        let packed =
            seer_int::pack::PackedWeights::quantize(&w, c_out, c_in * 9, wb).expect("quantize");
        weights.insert(
            name.clone(),
            LayerWeights {
                packed,
                mul: None,
                bias: Some(vec![0.05; c_out]),
            },
        );
        f32w.push((w, [c_out, c_in, 3, 3], stride));
        nodes.push(Node {
            name: name.clone(),
            input: input.into(),
            op: NodeOp::Conv {
                c_in,
                c_out,
                kernel: 3,
                stride,
                pad: 1,
                pad_end: None,
                w_bits: wb,
                residual,
                relu: false,
                relu6: false,
                groups: 1,
            },
            out: out(abits),
        });
        name
    };
    let mut x = conv("conv1".into(), "input", 1, 16, 1, 8, None, &mut nodes);
    let mut c_in = 16;
    for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
        for b in 0..3 {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let shortcut = if stride == 2 {
                let pad = (c - c_in) / 2;
                let gather = (0..c)
                    .map(|j| {
                        if j >= pad && j < pad + c_in {
                            Some(j - pad)
                        } else {
                            None
                        }
                    })
                    .collect();
                let name = format!("s{s}b{b}.sc");
                nodes.push(Node {
                    name: name.clone(),
                    input: x.clone(),
                    op: NodeOp::ShortcutA { stride: 2, gather },
                    out: out(abits),
                });
                name
            } else {
                x.clone()
            };
            let a = conv(
                format!("s{s}b{b}.a"),
                &x,
                c_in,
                c,
                stride,
                wbits,
                None,
                &mut nodes,
            );
            x = conv(
                format!("s{s}b{b}.b"),
                &a,
                c,
                c,
                1,
                wbits,
                Some(shortcut),
                &mut nodes,
            );
            c_in = c;
        }
    }
    nodes.push(Node {
        name: "gap".into(),
        input: x,
        op: NodeOp::GlobalAvgPool,
        out: Some(QuantOut {
            alpha: 3.0,
            bits: 8,
        }),
    });
    let fc = he_weights(&mut r, 10, 64);
    let packed = seer_int::pack::PackedWeights::quantize(&fc, 10, 64, 8).expect("quantize");
    weights.insert(
        "fc".into(),
        LayerWeights {
            packed,
            mul: None,
            bias: None,
        },
    );
    f32w.push((fc, [10, 64, 1, 1], 1));
    nodes.push(Node {
        name: "fc".into(),
        input: "gap".into(),
        op: NodeOp::Linear {
            in_features: 64,
            out_features: 10,
            w_bits: 8,
        },
        out: None,
    });
    let meta = ModelMeta {
        format: seer_int::format::FORMAT.into(),
        version: seer_int::format::VERSION,
        arch: "resnet20".into(),
        input: InputSpec {
            channels: 1,
            height: hw,
            width: hw,
            mean: vec![0.286],
            std: 0.353,
            std_per_channel: Vec::new(),
        },
        num_classes: 10,
        policy: serde_json::json!({ "uniform": { "w_bits": wbits, "a_bits": abits } }),
        provenance: serde_json::Value::Null,
        nodes,
    };
    (IntModel::new(meta, weights).expect("valid model"), f32w)
}
