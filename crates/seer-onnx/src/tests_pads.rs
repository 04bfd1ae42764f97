//! Asymmetric zero padding end to end (issue 20): an ONNX graph built here whose convs and
//! max pool pad unequally (`pads` `[1, 1, 2, 2]` and `[0, 0, 1, 1]`, `auto_pad` `SAME_LOWER`
//! and `SAME_UPPER`) imports to `padding` + `padding_end`, its fp32 logits equal tract's, and
//! its compressed integer-engine model and that model's QDQ export agree in tract.

use std::path::Path;

use candle_core::{Device, Tensor};
use prost::Message;
use seer_policy::{LayerKind, SearchSpace, SpaceConfig};

use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, attribute_proto::AttributeType,
};
use crate::qdq::ints;
use crate::tests::{model_of, node, tensor, value, worst_relative};
use crate::tests_qdq::{eq_images, mixed_policy, normalised, top1, tract_agreement, tract_run};

/// A `STRING` attribute `name` = `v`.
fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// A `Conv` node `name` reading `x` with the initializers `<name>.weight` and `<name>.bias`,
/// writing `y`.
pub(crate) fn conv(name: &str, x: &str, y: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    node(
        name,
        "Conv",
        &[x, &format!("{name}.weight"), &format!("{name}.bias")],
        &[y],
        attrs,
    )
}

/// Deterministic weights in [−0.5, 0.5) scaled by `2/√fan_in` (xorshift).
pub(crate) fn weights(n: usize, fan_in: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 / (fan_in as f32).sqrt()
        })
        .collect()
}

/// image `[N, 1, 28, 28]` → Conv 1→4 4×4 pads `[1, 1, 2, 2]` (PyTorch `padding="same"` with
/// an even kernel) → Relu → MaxPool 2×2 stride 1 pads `[0, 0, 1, 1]` (TF "SAME") → Conv 4→8 3×3 s2 pads `[0, 0, 1, 1]` (TF "SAME": 28 → 14) → Relu →
/// Conv 8→8 3×3 s2 `SAME_LOWER` (14 → 7, the odd pixel first) → Relu → Conv 8→8 2×2
/// `SAME_UPPER` (7 → 7, the odd pixel last) → Relu → GlobalAveragePool → Flatten → Gemm 8→10.
pub(crate) fn asym_model() -> ModelProto {
    let graph = GraphProto {
        name: Some("asym".into()),
        node: vec![
            conv("c1", "image", "a1", vec![ints("pads", &[1, 1, 2, 2])]),
            node("r1", "Relu", &["a1"], &["r1o"], vec![]),
            node(
                "mp",
                "MaxPool",
                &["r1o"],
                &["b1"],
                vec![ints("kernel_shape", &[2, 2]), ints("pads", &[0, 0, 1, 1])],
            ),
            conv(
                "c2",
                "b1",
                "a2",
                vec![ints("pads", &[0, 0, 1, 1]), ints("strides", &[2, 2])],
            ),
            node("r2", "Relu", &["a2"], &["b2"], vec![]),
            conv(
                "c3",
                "b2",
                "a3",
                vec![string("auto_pad", "SAME_LOWER"), ints("strides", &[2, 2])],
            ),
            node("r3", "Relu", &["a3"], &["b3"], vec![]),
            conv("c4", "b3", "a4", vec![string("auto_pad", "SAME_UPPER")]),
            node("r4", "Relu", &["a4"], &["b4"], vec![]),
            node("gap", "GlobalAveragePool", &["b4"], &["g"], vec![]),
            node("flat", "Flatten", &["g"], &["f"], vec![]),
            node(
                "fc",
                "Gemm",
                &["f", "fc.weight", "fc.bias"],
                &["logits"],
                vec![crate::qdq::int("transB", 1)],
            ),
        ],
        initializer: vec![
            tensor("c1.weight", &[4, 1, 4, 4], weights(64, 16, 1)),
            tensor("c1.bias", &[4], weights(4, 4, 2)),
            tensor("c2.weight", &[8, 4, 3, 3], weights(288, 36, 3)),
            tensor("c2.bias", &[8], weights(8, 4, 4)),
            tensor("c3.weight", &[8, 8, 3, 3], weights(576, 72, 5)),
            tensor("c3.bias", &[8], weights(8, 4, 6)),
            tensor("c4.weight", &[8, 8, 2, 2], weights(256, 32, 7)),
            tensor("c4.bias", &[8], weights(8, 4, 8)),
            tensor("fc.weight", &[10, 8], weights(80, 2, 9)),
            tensor("fc.bias", &[10], weights(10, 4, 10)),
        ],
        input: vec![value("image", &[-1, 1, 28, 28])],
        output: vec![value("logits", &[-1, 10])],
        ..Default::default()
    };
    model_of(graph)
}

#[test]
fn asymmetric_pads_import_to_padding_end_with_exact_shapes_and_macs() {
    let imp = crate::import_bytes(&asym_model().encode_to_vec(), "asym.onnx").unwrap();
    let convs: Vec<_> = imp
        .spec
        .layers
        .iter()
        .filter(|l| matches!(l.kind, LayerKind::Conv2d { .. }))
        .map(|l| (l.kind.conv_pads().unwrap(), l.out_shape))
        .collect();
    assert_eq!(
        convs,
        vec![
            (([1, 1], [2, 2]), [4, 28, 28]),
            (([0, 0], [1, 1]), [8, 14, 14]),
            (([1, 1], [0, 0]), [8, 7, 7]),
            (([0, 0], [1, 1]), [8, 7, 7]),
        ]
    );
    let pool = imp.spec.layer_index("mp").unwrap();
    assert_eq!(imp.spec.layers[pool].kind.pads(), Some(([0, 0], [1, 1])));
    assert_eq!(imp.spec.layers[pool].out_shape, [4, 28, 28]);
    // Exact MACs: H_out·W_out·(weights), docs/network-spec.md.
    let space = SearchSpace::new(imp.spec.clone(), SpaceConfig::default()).unwrap();
    let full = space.uniform(8, 8, 0.0).unwrap();
    let macs = space.cost(&full).unwrap().total_macs;
    let want = 28 * 28 * 64 + 14 * 14 * 288 + 7 * 7 * 576 + 7 * 7 * 256 + 80;
    assert_eq!(macs, want as u64);
    // The spec's JSON keeps the end padding and reads back equal.
    let json = imp.spec.to_json();
    assert!(json.contains("\"padding_end\":[2,2]"), "{json}");
    let back = seer_policy::NetworkSpec::from_json_str(&json, "asym.json").unwrap();
    assert_eq!(back, imp.spec);
}

/// fp32 logits of the imported model equal tract's on the 64 real images within 1e-4
/// relative to each image's largest logit, with the same top-1.
#[test]
fn asymmetric_pads_logits_match_tract() {
    let bytes = asym_model().encode_to_vec();
    let (px, _) = eq_images();
    let x = normalised(&px);
    let want = tract_run(&bytes, x.clone(), [64, 1, 28, 28]);
    let imp = crate::import_bytes(&bytes, "asym.onnx").unwrap();
    let model = imp.model(Path::new("asym.onnx")).unwrap();
    let xt = Tensor::from_vec(x, (64, 1, 28, 28), &Device::Cpu).unwrap();
    let got: Vec<f32> = model
        .forward(&xt, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let worst = worst_relative(&got, &want, 10);
    assert!(worst <= 1e-4, "worst relative difference {worst:e}");
    assert_eq!(top1(&got, 10), top1(&want, 10));
}

/// Compressed (mixed bits, pruning) and exported: the integer engine (asymmetric padding on
/// the first conv's normalisation correction, the one-channel direct path and the fused
/// GEMM) agrees with tract on the QDQ export on all 64 images, and the evaluation path
/// equals the forward pass bit for bit.
#[test]
fn asymmetric_pads_export_agrees_in_tract() {
    let bytes = asym_model().encode_to_vec();
    let imp = crate::import_bytes(&bytes, "asym.onnx").unwrap();
    let mut m = imp.model(Path::new("asym.onnx")).unwrap();
    let (px, _) = eq_images();
    let xt = Tensor::from_vec(normalised(&px), (64, 1, 28, 28), &Device::Cpu).unwrap();
    let space = SearchSpace::new(imp.spec.clone(), SpaceConfig::default()).unwrap();
    m.apply_policy(&space, &mixed_policy(&space)).unwrap();
    m.calibrate([xt.clone()].iter()).unwrap();
    // The evaluation path (explicit zeros before the convolution) is the forward pass.
    let fwd: Vec<f32> = m
        .forward(&xt, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ev = seer_nn::eval::EvalNet::compile(&m)
        .unwrap()
        .logits(&normalised(&px), 64)
        .unwrap();
    assert_eq!(
        fwd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        ev.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let im = seer_nn::export::to_int_model(
        &m,
        &[0.2860],
        &[0.3530],
        &serde_json::Value::Null,
        Path::new("asym"),
    )
    .unwrap();
    let pads: Vec<_> = im
        .meta()
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            seer_int::format::NodeOp::Conv { pad, pad_end, .. }
            | seer_int::format::NodeOp::MaxPool { pad, pad_end, .. } => Some((pad, pad_end)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pads,
        vec![
            (1, Some(2)),
            (0, Some(1)),
            (0, Some(1)),
            (1, Some(0)),
            (0, Some(1))
        ]
    );
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(agree, n, "tract and the engine agree on {agree}/{n}");
}
