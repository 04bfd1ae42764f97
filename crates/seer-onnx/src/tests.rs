//! Tests of the importer on models built here with the prost types: a valid small CNN (spec,
//! weights, forward pass checked by hand) and twenty malformed files, each one clear error.

use prost::Message;
use seer_policy::LayerKind;

use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto, type_proto,
};
use crate::{Error, import_bytes};

pub(crate) fn tensor(name: &str, dims: &[i64], v: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: v,
        ..Default::default()
    }
}

fn itensor(name: &str, v: Vec<i64>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: v,
        ..Default::default()
    }
}

use crate::qdq::{int, ints};

pub(crate) fn node(
    name: &str,
    op: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: Some(name.into()),
        op_type: Some(op.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

pub(crate) fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d < 0 {
                tensor_shape_proto::dimension::Value::DimParam("n".into())
            } else {
                tensor_shape_proto::dimension::Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// image [N,1,4,4] → Conv 1→2 3×3 pad 1 (+bias) → BN → Relu → residual Add with a 1×1 conv →
/// Clip(0,6) → MaxPool 2 → GlobalAveragePool → Flatten → Gemm 2→3 (transB).
pub(crate) fn good() -> ModelProto {
    let conv_w: Vec<f32> = (0..18).map(|i| (i as f32 - 9.0) / 10.0).collect();
    let graph = GraphProto {
        name: Some("tiny".into()),
        node: vec![
            node(
                "c1",
                "Conv",
                &["image", "c1.weight", "c1.bias"],
                &["a"],
                vec![ints("pads", &[1, 1, 1, 1]), ints("kernel_shape", &[3, 3])],
            ),
            node(
                "bn",
                "BatchNormalization",
                &["a", "g", "b", "m", "v"],
                &["b1"],
                vec![],
            ),
            node("r", "Relu", &["b1"], &["r1"], vec![]),
            node("side", "Conv", &["image", "side.weight"], &["s"], vec![]),
            node("add", "Add", &["r1", "s"], &["sum"], vec![]),
            node(
                "lo",
                "Constant",
                &[],
                &["zero"],
                vec![AttributeProto {
                    name: Some("value".into()),
                    t: Some(tensor("", &[], vec![0.0])),
                    r#type: Some(AttributeType::Tensor as i32),
                    ..Default::default()
                }],
            ),
            node("clip", "Clip", &["sum", "zero", "six"], &["c"], vec![]),
            node(
                "pool",
                "MaxPool",
                &["c"],
                &["p"],
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            ),
            node("gap", "GlobalAveragePool", &["p"], &["gp"], vec![]),
            node("flat", "Flatten", &["gp"], &["f"], vec![int("axis", 1)]),
            node(
                "fc",
                "Gemm",
                &["f", "fc.weight", "fc.bias"],
                &["logits"],
                vec![int("transB", 1)],
            ),
        ],
        initializer: vec![
            tensor("c1.weight", &[2, 1, 3, 3], conv_w),
            tensor("c1.bias", &[2], vec![0.1, -0.2]),
            tensor("g", &[2], vec![1.5, 0.5]),
            tensor("b", &[2], vec![0.0, 0.3]),
            tensor("m", &[2], vec![0.2, -0.1]),
            tensor("v", &[2], vec![2.0, 0.5]),
            tensor("side.weight", &[2, 1, 1, 1], vec![0.7, -0.4]),
            tensor("six", &[], vec![6.0]),
            tensor("fc.weight", &[3, 2], vec![1.0, -1.0, 0.5, 0.25, -0.3, 0.8]),
            tensor("fc.bias", &[3], vec![0.01, 0.02, 0.03]),
        ],
        input: vec![value("image", &[-1, 1, 4, 4])],
        output: vec![value("logits", &[-1, 3])],
        ..Default::default()
    };
    model_of(graph)
}

/// The largest |got − want| over the logits of `classes`-wide rows, relative to the row's
/// largest |want| (the importer's equivalence measure, issue 20: ≤ 1e-4).
pub(crate) fn worst_relative(got: &[f32], want: &[f32], classes: usize) -> f64 {
    let mut worst = 0f64;
    for (g, w) in got.chunks(classes).zip(want.chunks(classes)) {
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((*a as f64 - *b as f64).abs() / scale);
        }
    }
    worst
}

/// An opset-17 model around `graph` (the tests' common wrapper).
pub(crate) fn model_of(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("seer-onnx tests".into()),
        graph: Some(graph),
        ..Default::default()
    }
}

fn bytes(m: &ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

#[test]
fn good_model_imports_with_exact_spec_and_weights() {
    let imp = import_bytes(&bytes(&good()), "tiny.onnx").unwrap();
    let s = &imp.spec;
    let kinds: Vec<&str> = s.layers.iter().map(|l| l.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "conv2d",
            "batch_norm",
            "relu",
            "conv2d",
            "add",
            "relu6",
            "max_pool",
            "global_avg_pool",
            "linear"
        ]
    );
    assert_eq!(s.layers[0].name, "c1");
    assert_eq!(s.layers[3].name, "side");
    assert_eq!(s.layers[8].name, "fc");
    assert_eq!(s.num_classes, 3);
    assert!(matches!(
        s.layers[0].kind,
        LayerKind::Conv2d {
            padding: [1, 1],
            bias: true,
            ..
        }
    ));
    // The residual Add ties c1 and side.
    assert_eq!(s.tie_groups(), vec![vec![0, 3]]);
    // MACs: c1 2·9·16 = 288, side 2·16 = 32, fc 6.
    assert_eq!(s.weight_count(), 18 + 2 + 6);
    assert_eq!(imp.tensors["fc.weight"].0, vec![3, 2]);
    // BN variance keeps ε: var + 1e-5 − 1e-5.
    assert_eq!(imp.tensors["bn.running_var"].1, vec![2.0, 0.5]);
    let model = imp.model(std::path::Path::new("tiny.onnx")).unwrap();
    // Forward a constant image by hand: every pixel 0 → c1 gives its bias (0.1, -0.2).
    let x = candle_core::Tensor::zeros(
        (1, 1, 4, 4),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let y: Vec<f32> = model
        .forward(&x, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // BN: (0.1−0.2)/√(2+1e-5)·1.5 + 0 and (−0.2+0.1)/√(0.5+1e-5)·0.5 + 0.3; ReLU; side = 0.
    let bn = [
        (-0.1f64) / (2.0f64 + 1e-5).sqrt() * 1.5,
        -0.1 / (0.5f64 + 1e-5).sqrt() * 0.5 + 0.3,
    ];
    let r: Vec<f64> = bn.iter().map(|v| v.clamp(0.0, 6.0)).collect();
    let want: Vec<f64> = (0..3)
        .map(|o| {
            let w = [[1.0, -1.0], [0.5, 0.25], [-0.3, 0.8]][o];
            w[0] * r[0] + w[1] * r[1] + [0.01, 0.02, 0.03][o]
        })
        .collect();
    for (a, b) in y.iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-5, "{y:?} vs {want:?}");
    }
}

/// Applies `f` to a copy of the good model.
fn mutate(f: impl FnOnce(&mut ModelProto)) -> Vec<u8> {
    let mut m = good();
    f(&mut m);
    bytes(&m)
}

fn g(m: &mut ModelProto) -> &mut GraphProto {
    m.graph.as_mut().unwrap()
}

fn find<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut NodeProto {
    g(m).node
        .iter_mut()
        .find(|n| n.name.as_deref() == Some(name))
        .unwrap()
}

#[test]
fn twenty_malformed_files_each_give_one_clear_error() {
    let full = bytes(&good());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            full[..full.len() / 2].to_vec(),
            "not a readable ONNX model",
        ),
        (
            "not protobuf",
            b"\xff\xff\xff\xff garbage".to_vec(),
            "not a readable ONNX model",
        ),
        ("no graph", mutate(|m| m.graph = None), "holds no graph"),
        (
            "old opset",
            mutate(|m| m.opset_import[0].version = Some(11)),
            "opset 11",
        ),
        (
            "unknown op",
            mutate(|m| find(m, "r").op_type = Some("Softsign".into())),
            "node r (Softsign): operator \"Softsign\" is not supported; supported: Conv",
        ),
        (
            "missing initializer",
            mutate(|m| {
                g(m).initializer
                    .retain(|t| t.name.as_deref() != Some("side.weight"))
            }),
            "node side (Conv): input \"side.weight\" is neither",
        ),
        (
            "cyclic graph",
            mutate(|m| find(m, "c1").input[0] = "logits".into()),
            "cycle",
        ),
        (
            "value produced twice",
            mutate(|m| find(m, "side").output[0] = "a".into()),
            "produced twice",
        ),
        (
            "conv shape mismatch",
            mutate(|m| g(m).initializer[0] = tensor("c1.weight", &[2, 2, 3, 3], vec![0.1; 36])),
            "does not fit 1 input channels",
        ),
        (
            "weight count mismatch",
            mutate(|m| {
                g(m).initializer[0]
                    .float_data
                    .pop()
                    .map(|_| ())
                    .unwrap_or(())
            }),
            "initializer \"c1.weight\" holds 17 values",
        ),
        (
            "add shape mismatch",
            mutate(|m| find(m, "side").attribute.push(ints("strides", &[2, 2]))),
            "node add (Add)",
        ),
        (
            "pool padding beyond half its window",
            mutate(|m| find(m, "pool").attribute.push(ints("pads", &[0, 0, 2, 2]))),
            "must be at most half the kernel",
        ),
        (
            "unknown attribute",
            mutate(|m| find(m, "r").attribute.push(int("alpha", 1))),
            "attribute \"alpha\" is not supported",
        ),
        (
            "clip bounds",
            mutate(|m| {
                g(m).initializer
                    .iter_mut()
                    .find(|t| t.name.as_deref() == Some("six"))
                    .unwrap()
                    .float_data = vec![4.0]
            }),
            "only [0, 6]",
        ),
        (
            "two inputs",
            mutate(|m| g(m).input.push(value("extra", &[1, 1, 4, 4]))),
            "2 non-constant inputs",
        ),
        (
            "input not 4-D",
            mutate(|m| g(m).input[0] = value("image", &[-1, 16])),
            "a 4-D image",
        ),
        (
            "output not produced by a layer",
            mutate(|m| g(m).output[0] = value("six", &[1])),
            "is not produced by a layer",
        ),
        (
            "int8 initializer",
            mutate(|m| g(m).initializer[1].data_type = Some(DataType::Int8 as i32)),
            "only FLOAT and INT64",
        ),
        (
            "concat without an axis",
            mutate(|m| find(m, "add").op_type = Some("Concat".into())),
            "axis attribute is missing",
        ),
        (
            "concat on a spatial axis",
            mutate(|m| {
                let n = find(m, "add");
                n.op_type = Some("Concat".into());
                n.attribute.push(int("axis", 2));
            }),
            "only the channel axis",
        ),
        (
            "ceil mode pool",
            mutate(|m| find(m, "pool").attribute.push(int("ceil_mode", 1))),
            "ceil_mode 1",
        ),
        (
            "training-mode BN",
            mutate(|m| find(m, "bn").attribute.push(int("training_mode", 1))),
            "training_mode 1",
        ),
        (
            "reshape that is not a flatten",
            mutate(|m| {
                g(m).initializer.push(itensor("shape", vec![2, -1]));
                let n = find(m, "flat");
                n.op_type = Some("Reshape".into());
                n.input.push("shape".into());
                n.attribute.clear();
            }),
            "only [N, 2] (a flatten)",
        ),
        (
            "bad raw data",
            mutate(|m| {
                let t = &mut g(m).initializer[1];
                t.float_data.clear();
                t.raw_data = Some(vec![0; 5]);
            }),
            "raw data of 5 bytes",
        ),
    ];
    assert!(cases.len() >= 20);
    for (what, b, want) in cases {
        let r = std::panic::catch_unwind(|| import_bytes(&b, "bad.onnx"));
        let e = match r {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("{what}: imported without error"),
            Err(_) => panic!("{what}: panicked"),
        };
        let msg = e.to_string();
        let full_msg = match &e {
            Error::Spec { source, .. } => format!("{msg}: {source}"),
            _ => msg.clone(),
        };
        assert!(full_msg.contains(want), "{what}: {full_msg}");
        assert!(msg.starts_with("bad.onnx"), "{what}: {msg}");
    }
}

/// The committed fixtures (tools/make_onnx_fixtures.py): PyTorch models trained briefly on
/// Fashion-MNIST and exported with `torch.onnx.export`, with ONNX Runtime's logits on 64 real
/// images none of them was trained on. The imported model's fp32 logits must match within
/// 1e-4 relative to the largest logit magnitude of each image, and give the same top-1.
#[test]
fn fixtures_match_onnx_runtime_logits() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let images = std::fs::read(dir.join("eq-images.u8")).unwrap();
    assert_eq!(images.len(), 64 * 28 * 28);
    let x: Vec<f32> = images
        .iter()
        .map(|&p| (p as f32 / 255.0 - 0.2860) / 0.3530)
        .collect();
    let x = candle_core::Tensor::from_vec(x, (64, 1, 28, 28), &candle_core::Device::Cpu).unwrap();
    for name in ["resnet_proj", "mbv2", "vgg", "inception", "lenet_avg"] {
        let path = dir.join(format!("{name}.onnx"));
        let imp = crate::import_file(&path).unwrap();
        let model = imp.model(&path).unwrap();
        let got: Vec<f32> = model
            .forward(&x, false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = std::fs::read(dir.join(format!("{name}.ort-logits.f32")))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = worst_relative(&got, &want, 10);
        for (g, w) in got.chunks(10).zip(want.chunks(10)) {
            let top = |v: &[f32]| (0..10).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
            assert_eq!(top(g), top(w), "{name}: top-1 differs");
        }
        assert!(worst <= 1e-4, "{name}: worst relative difference {worst:e}");
    }
}

/// The VGG-style fixture's search space and costs, checked by hand: 28×28×1 input, four 3×3
/// convs (padding 1) with 2×2 max pooling after the second and fourth, then 1568→64→10.
/// MACs per layer = output H·W × out channels × in channels × 9 (convs) or in × out (linear);
/// at w8a8 BOPs = 64 × MACs (the first conv reads the 8-bit image).
#[test]
fn vgg_fixture_costs_match_the_hand_table() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx/vgg.onnx");
    let imp = crate::import_file(&path).unwrap();
    let space = seer_policy::SearchSpace::new(imp.spec.clone(), Default::default()).unwrap();
    let costs = space.cost(&space.uniform(8, 8, 0.0).unwrap()).unwrap();
    let got: Vec<([usize; 3], u64)> = costs.layers.iter().map(|l| (l.out_shape, l.macs)).collect();
    let want: Vec<([usize; 3], u64)> = vec![
        ([16, 28, 28], 28 * 28 * 16 * 9),
        ([16, 28, 28], 28 * 28 * 16 * 16 * 9),
        ([32, 14, 14], 14 * 14 * 32 * 16 * 9),
        ([32, 14, 14], 14 * 14 * 32 * 32 * 9),
        ([64, 1, 1], 1568 * 64),
        ([10, 1, 1], 64 * 10),
    ];
    assert_eq!(got, want);
    assert_eq!(costs.total_macs, 4_729_728);
    assert_eq!(costs.total_bops, 64 * 4_729_728);
    assert_eq!(space.w8a8_bops().unwrap(), 64 * 4_729_728);
    // No residual additions: no tie groups. With the default space (first layer and
    // classifier fixed at 8 bits) the units are the four weighted layers between them, one
    // each, all prunable; layers keep the PyTorch parameter names.
    assert!(imp.spec.tie_groups().is_empty());
    let w = imp.spec.weighted_layers();
    let units: Vec<Vec<usize>> = space.units().iter().map(|u| u.layers.clone()).collect();
    assert_eq!(units, w[1..5].iter().map(|&l| vec![l]).collect::<Vec<_>>());
    assert!(space.units().iter().all(|u| u.prunable));
    let names: Vec<&str> = w
        .iter()
        .map(|&l| imp.spec.layers[l].name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "features.0",
            "features.2",
            "features.5",
            "features.7",
            "fc1",
            "fc2"
        ]
    );
}

/// The ResNet fixture: each block's residual Add ties the block's last conv with its
/// shortcut (the stem's conv for the identity block, the 1×1 projection for the others), and
/// the MobileNetV2 fixture's depthwise convs follow their producers.
#[test]
fn residual_and_depthwise_fixtures_have_their_tie_groups() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx");
    let r = crate::import_file(&dir.join("resnet_proj.onnx"))
        .unwrap()
        .spec;
    let names = |g: &Vec<usize>| {
        g.iter()
            .map(|&i| r.layers[i].name.clone())
            .collect::<Vec<_>>()
    };
    let groups: Vec<Vec<String>> = r.tie_groups().iter().map(names).collect();
    assert_eq!(groups.len(), 3, "{groups:?}");
    let m = crate::import_file(&dir.join("mbv2.onnx")).unwrap().spec;
    let dw = m.layers.iter().filter(|l| l.kind.is_depthwise()).count();
    assert_eq!(dw, 3);
    assert!(m.layers.iter().any(|l| matches!(l.kind, LayerKind::Relu6)));
    assert_eq!(m.tie_groups().len(), 2, "{:?}", m.tie_groups());
}
