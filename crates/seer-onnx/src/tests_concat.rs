//! Channel concatenation end to end (issue 20): an Inception-style ONNX graph built here
//! (three branches joined by `Concat` on axis 1) imports to a `concat` layer with exact shapes
//! and MACs, its fp32 logits equal tract's, pruning stops at the concat, and its compressed
//! integer-engine model and that model's QDQ export agree in tract.

use std::path::Path;

use candle_core::{Device, Tensor};
use prost::Message;
use seer_policy::{LayerKind, SearchSpace, SpaceConfig};

use crate::proto::{GraphProto, ModelProto};
use crate::qdq::{int, ints};
use crate::tests::{model_of, node, tensor, value, worst_relative};
use crate::tests_pads::{conv, weights};
use crate::tests_qdq::{eq_images, mixed_policy, normalised, top1, tract_agreement, tract_run};

/// image `[N, 1, 28, 28]` → Conv 1→8 3×3 pad 1 → Relu → MaxPool 2 (14×14) → three branches:
/// Conv 8→4 1×1 → Relu; Conv 8→6 3×3 pad 1 → Relu; MaxPool 3×3 stride 1 pad 1 → Conv 8→2
/// 1×1 → Relu → `Concat` (axis 1, 12 channels) → Conv 12→8 3×3 stride 2 pad 1 (7×7) → Relu →
/// GlobalAveragePool → Flatten → Gemm 8→10.
pub(crate) fn inception_model() -> ModelProto {
    let pool = |name: &str, x: &str, y: &str, k: i64, s: i64, p: i64| {
        node(
            name,
            "MaxPool",
            &[x],
            &[y],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[s, s]),
                ints("pads", &[p, p, p, p]),
            ],
        )
    };
    let graph = GraphProto {
        name: Some("inception".into()),
        node: vec![
            conv("stem", "image", "s0", vec![ints("pads", &[1, 1, 1, 1])]),
            node("stem_relu", "Relu", &["s0"], &["s1"], vec![]),
            pool("stem_pool", "s1", "x", 2, 2, 0),
            conv("b1", "x", "b1a", vec![]),
            node("b1_relu", "Relu", &["b1a"], &["b1o"], vec![]),
            conv("b3", "x", "b3a", vec![ints("pads", &[1, 1, 1, 1])]),
            node("b3_relu", "Relu", &["b3a"], &["b3o"], vec![]),
            pool("bp_pool", "x", "bpp", 3, 1, 1),
            conv("bp", "bpp", "bpa", vec![]),
            node("bp_relu", "Relu", &["bpa"], &["bpo"], vec![]),
            node(
                "cat",
                "Concat",
                &["b1o", "b3o", "bpo"],
                &["cat"],
                vec![int("axis", 1)],
            ),
            conv(
                "c2",
                "cat",
                "c2a",
                vec![ints("pads", &[1, 1, 1, 1]), ints("strides", &[2, 2])],
            ),
            node("c2_relu", "Relu", &["c2a"], &["c2o"], vec![]),
            node("gap", "GlobalAveragePool", &["c2o"], &["g"], vec![]),
            node("flat", "Flatten", &["g"], &["f"], vec![]),
            node(
                "fc",
                "Gemm",
                &["f", "fc.weight", "fc.bias"],
                &["logits"],
                vec![int("transB", 1)],
            ),
        ],
        initializer: vec![
            tensor("stem.weight", &[8, 1, 3, 3], weights(72, 9, 1)),
            tensor("stem.bias", &[8], weights(8, 4, 2)),
            tensor("b1.weight", &[4, 8, 1, 1], weights(32, 8, 3)),
            tensor("b1.bias", &[4], weights(4, 4, 4)),
            tensor("b3.weight", &[6, 8, 3, 3], weights(432, 72, 5)),
            tensor("b3.bias", &[6], weights(6, 4, 6)),
            tensor("bp.weight", &[2, 8, 1, 1], weights(16, 8, 7)),
            tensor("bp.bias", &[2], weights(2, 4, 8)),
            tensor("c2.weight", &[8, 12, 3, 3], weights(864, 108, 9)),
            tensor("c2.bias", &[8], weights(8, 4, 10)),
            tensor("fc.weight", &[10, 8], weights(80, 2, 11)),
            tensor("fc.bias", &[10], weights(10, 4, 12)),
        ],
        input: vec![value("image", &[-1, 1, 28, 28])],
        output: vec![value("logits", &[-1, 10])],
        ..Default::default()
    };
    model_of(graph)
}

/// The concat layer, its shape and producers, exact MACs, units that cannot prune (the three
/// branches) and one that can (`c2`), and the JSON round trip.
#[test]
fn concat_imports_with_exact_shapes_macs_and_locked_branches() {
    let imp = crate::import_bytes(&inception_model().encode_to_vec(), "inc.onnx").unwrap();
    let spec = &imp.spec;
    let cat = spec.layer_index("cat").unwrap();
    assert!(matches!(spec.layers[cat].kind, LayerKind::Concat));
    assert_eq!(spec.layers[cat].out_shape, [12, 14, 14]);
    let producers: Vec<&str> = spec.layers[cat]
        .inputs
        .iter()
        .map(|&p| spec.layers[p].name.as_str())
        .collect();
    assert_eq!(producers, ["b1_relu", "b3_relu", "bp_relu"]);
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let macs = space
        .cost(&space.uniform(8, 8, 0.0).unwrap())
        .unwrap()
        .total_macs;
    let want = 28 * 28 * 72 + 14 * 14 * (32 + 432 + 16) + 7 * 7 * 864 + 80;
    assert_eq!(macs, want as u64);
    let prunable = |layer: &str| {
        let i = spec.layer_index(layer).unwrap();
        space
            .units()
            .iter()
            .find(|u| u.layers.contains(&i))
            .unwrap()
            .prunable
    };
    for b in ["b1", "b3", "bp"] {
        assert!(!prunable(b), "{b} feeds the concat");
    }
    assert!(prunable("c2"));
    // The stem reads the image: fixed at 8 bits, never pruned (the default space).
    let stem = spec.layer_index("stem").unwrap();
    assert!(space.units().iter().all(|u| !u.layers.contains(&stem)));
    let back = seer_policy::NetworkSpec::from_json_str(&spec.to_json(), "inc.json").unwrap();
    assert_eq!(&back, spec);
}

/// fp32 logits of the imported model equal tract's on the 64 real images within 1e-4
/// relative, with the same top-1.
#[test]
fn concat_logits_match_tract() {
    let bytes = inception_model().encode_to_vec();
    let imp = crate::import_bytes(&bytes, "inc.onnx").unwrap();
    let m = imp.model(Path::new("inc.onnx")).unwrap();
    let (px, _) = eq_images();
    let x = normalised(&px);
    let want = tract_run(&bytes, x.clone(), [64, 1, 28, 28]);
    let xt = Tensor::from_vec(x, (64, 1, 28, 28), &Device::Cpu).unwrap();
    let got: Vec<f32> = m
        .forward(&xt, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(top1(&got, 10), top1(&want, 10));
    let worst = worst_relative(&got, &want, 10);
    assert!(worst <= 1e-4, "worst relative difference {worst:e}");
}

/// A mixed policy (pruned `c2`, bit-widths below 8; the branches read the stem's output with
/// different quantizers, so it stays real-valued and its max pool runs on real values): the slimmed model and the
/// evaluation path equal the masked forward pass, the integer engine joins the branches with
/// one `concat` node, and the QDQ export agrees with the engine in tract on all 64 images.
#[test]
fn concat_export_agrees_in_tract() {
    let bytes = inception_model().encode_to_vec();
    let imp = crate::import_bytes(&bytes, "inc.onnx").unwrap();
    let mut m = imp.model(Path::new("inc.onnx")).unwrap();
    let (px, _) = eq_images();
    let xt = Tensor::from_vec(normalised(&px), (64, 1, 28, 28), &Device::Cpu).unwrap();
    let space = SearchSpace::new(imp.spec.clone(), SpaceConfig::default()).unwrap();
    let pol = mixed_policy(&space);
    assert!(pol.units.iter().any(|u| u.prune > 0.0), "{pol:?}");
    m.apply_policy(&space, &pol).unwrap();
    m.calibrate([xt.clone()].iter()).unwrap();
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
    let slim: Vec<f32> = m
        .slim()
        .unwrap()
        .forward(&xt, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(worst_relative(&slim, &fwd, 10) <= 1e-4);
    let im = seer_nn::export::to_int_model(
        &m,
        &[0.2860],
        &[0.3530],
        &serde_json::Value::Null,
        Path::new("inc"),
    )
    .unwrap();
    let cats: Vec<_> = im
        .meta()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, seer_int::format::NodeOp::Concat { .. }))
        .collect();
    assert_eq!(cats.len(), 1);
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(agree, n, "tract and the engine agree on {agree}/{n}");
}
