//! Tests of the ONNX QDQ export ([`crate::qdq`]) and of the runtimes that consume ONNX: the
//! exported graph's structure on compressed models (node counts, per-axis weight scales, the
//! restricted int8 range below 8 bits, slim shapes), and with tract (a dev-dependency) the
//! imported fixtures' logits and a fine-tuned model's QDQ export against the integer engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use seer_int::Isa;
use seer_int::format::{IntModel, NodeOp};
use seer_nn::data::Dataset;
use seer_nn::data::batch::Normalize;
use seer_nn::model::Model;
use seer_nn::train::{FinetuneNetwork, TrainConfig, finetune_policy};
use seer_policy::{GeneKind, Policy, SearchSpace, SpaceConfig};

use crate::proto::{ModelProto, TensorProto, tensor_proto::DataType};
use crate::qdq::{self, OUTPUT};

const MEAN: f64 = 0.2860;
const STD: f64 = 0.3530;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/onnx")
}

/// The 64 committed Fashion-MNIST test images (`[64, 28, 28]` pixels) and their labels.
pub(crate) fn eq_images() -> (Vec<u8>, Vec<u8>) {
    let d = fixture_dir();
    let px = std::fs::read(d.join("eq-images.u8")).unwrap();
    let labels = std::fs::read(d.join("eq-labels.u8")).unwrap();
    assert_eq!((px.len(), labels.len()), (64 * 28 * 28, 64));
    (px, labels)
}

/// Normalised NCHW f32 values of `px` (one channel).
pub(crate) fn normalised(px: &[u8]) -> Vec<f32> {
    px.iter()
        .map(|&p| ((p as f64 / 255.0 - MEAN) / STD) as f32)
        .collect()
}

/// A mixed policy: per unit, weight bits, activation bits and pruning ratio cycle through
/// the candidates (so bit-widths below 8 and real pruning both occur).
pub(crate) fn mixed_policy(space: &SearchSpace) -> Policy {
    let idx: Vec<usize> = space
        .genes()
        .iter()
        .map(|g| {
            let n = g.candidates.len();
            match g.kind {
                GeneKind::Prune => (2 * g.unit + 1) % n,
                GeneKind::WBits => g.unit % n,
                GeneKind::ABits | GeneKind::Bits => (g.unit + 1) % n,
            }
        })
        .collect();
    space.from_indices(&idx).unwrap()
}

/// The VGG-style fixture compressed with [`mixed_policy`] and fine-tuned (`steps` steps on
/// the 64 images, slim network), exported to the integer engine; with the spec before pruning.
fn compressed_vgg(steps: usize) -> (IntModel, seer_policy::NetworkSpec) {
    compressed_fixture("vgg", steps)
}

/// The committed fixture `name` imported, fine-tuned `steps` steps under [`mixed_policy`] on
/// the 64 images, exported to the integer engine.
fn compressed_fixture(name: &str, steps: usize) -> (IntModel, seer_policy::NetworkSpec) {
    compressed_onnx(&fixture_dir().join(format!("{name}.onnx")), name, steps)
}

/// The ONNX file `path` imported, fine-tuned `steps` steps under [`mixed_policy`] on the 64
/// images, exported to the integer engine.
fn compressed_onnx(path: &Path, name: &str, steps: usize) -> (IntModel, seer_policy::NetworkSpec) {
    let path = path.to_path_buf();
    let imp = crate::import_file(&path).unwrap();
    let mut model = imp.model(&path).unwrap();
    let space = SearchSpace::new(imp.spec.clone(), SpaceConfig::default()).unwrap();
    let policy = mixed_policy(&space);
    let (px, labels) = eq_images();
    let data = Dataset::new([1, 28, 28], 10, px, labels).unwrap();
    let cfg = TrainConfig {
        steps: Some(steps),
        batch_size: 32,
        lr: 0.01,
        seed: 5,
        network: FinetuneNetwork::Slim,
        ..TrainConfig::default()
    };
    let norm = Normalize::new(&[MEAN], &[STD]);
    finetune_policy(&mut model, &space, &policy, &data, &norm, &cfg, &mut |_| {}).unwrap();
    let im = seer_nn::export::to_int_model(
        &model,
        &[MEAN],
        &[STD],
        &serde_json::Value::Null,
        Path::new(name),
    )
    .unwrap();
    (im, imp.spec)
}

/// A zoo network (random weights, BatchNorm statistics from a few batches) compressed with
/// [`mixed_policy`]: ResNet-20 exercises real-valued residual streams, quantize nodes,
/// option-A shortcuts and global pooling.
fn compressed_zoo(arch: &str, input: &str, seed: u64) -> IntModel {
    let spec = seer_policy::builtin(arch, Some(input.parse().unwrap()), None).unwrap();
    let s = spec.input;
    let mut m = Model::new(spec.clone(), seed, &Device::Cpu).unwrap();
    let batch = |k: u64| {
        let px = pixels(32, s.c * s.h * s.w, k);
        Tensor::from_vec(normalised(&px), (32, s.c, s.h, s.w), &Device::Cpu).unwrap()
    };
    for k in 0..3 {
        m.forward(&batch(100 + k), true).unwrap();
    }
    let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
    m.apply_policy(&space, &mixed_policy(&space)).unwrap();
    let calib = [batch(200), batch(201)];
    m.calibrate(calib.iter()).unwrap();
    seer_nn::export::to_int_model(
        &m,
        &[MEAN],
        &[STD],
        &serde_json::Value::Null,
        Path::new(arch),
    )
    .unwrap()
}

/// Deterministic Fashion-MNIST-like pixels: mostly dark with bright blobs.
fn pixels(n: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n * len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if s % 5 < 2 { (s >> 24) as u8 } else { 0 }
        })
        .collect()
}

fn init<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

fn f32s(t: &TensorProto) -> Vec<f32> {
    assert_eq!(t.data_type, Some(DataType::Float as i32));
    t.raw_data
        .as_ref()
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Checks the exported graph of `im` against its engine graph: one `Conv`/`Gemm` per
/// weighted node, one `QuantizeLinear` per activation quantizer, a `DequantizeLinear` for each
/// of those and each weight; weights int8 with per-axis scales `|s·m|` of the kept rows and
/// codes within `±(2^(b−1) − 1)`; activations uint8 with zero point 0 and step `α/(2^b − 1)`.
/// Returns the model and the bit-widths of the weighted nodes.
fn check_structure(im: &IntModel) -> (ModelProto, Vec<u32>) {
    let m = qdq::to_qdq(im).unwrap();
    let g = m.graph.as_ref().unwrap();
    assert_eq!(m.opset_import[0].version, Some(13));
    let count = |op: &str| {
        g.node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    let nodes = &im.meta().nodes;
    let of = |f: &dyn Fn(&NodeOp) -> bool| nodes.iter().filter(|n| f(&n.op)).count();
    assert_eq!(count("Conv"), of(&|op| matches!(op, NodeOp::Conv { .. })));
    assert_eq!(count("Gemm"), of(&|op| matches!(op, NodeOp::Linear { .. })));
    let act_quantizers = nodes
        .iter()
        .filter(|n| n.out.is_some() && !matches!(n.op, NodeOp::ShortcutA { .. }))
        .count();
    let weighted = im.weights().len();
    assert_eq!(count("QuantizeLinear"), act_quantizers);
    assert_eq!(count("DequantizeLinear"), act_quantizers + weighted);
    let mut bits = Vec::new();
    for node in nodes {
        let Some((rows, cols, b)) = node.op.weight_dims() else {
            continue;
        };
        bits.push(b);
        let name = &node.name;
        let w = init(&m, &format!("{name}.weight_quantized"));
        assert_eq!(w.data_type, Some(DataType::Int8 as i32), "{name}");
        assert_eq!(w.dims[0] as usize, rows, "{name}: kept output channels");
        assert_eq!(
            w.dims.iter().skip(1).product::<i64>() as usize,
            cols,
            "{name}"
        );
        let codes: Vec<i8> = w
            .raw_data
            .as_ref()
            .unwrap()
            .iter()
            .map(|&c| c as i8)
            .collect();
        let qmax = (1i32 << (b - 1)) - 1;
        assert!(
            codes.iter().all(|&c| (c as i32).abs() <= qmax),
            "{name}: {b}-bit codes outside ±{qmax}"
        );
        // Symmetric per-channel quantization reaches ±qmax in every non-zero row.
        let row_max: Vec<i32> = codes
            .chunks_exact(cols)
            .map(|r| r.iter().map(|&c| (c as i32).abs()).max().unwrap())
            .collect();
        assert!(
            row_max.iter().all(|&m| m == qmax || m == 0),
            "{name}: {row_max:?}"
        );
        let scale = f32s(init(&m, &format!("{name}.weight_scale")));
        let lw = &im.weights()[name];
        assert_eq!(scale.len(), rows, "{name}: one scale per output channel");
        for (r, s) in scale.iter().enumerate() {
            let want = (lw.packed.scales()[r] * lw.mul.as_ref().map_or(1.0, |m| m[r])).abs();
            assert!(*s > 0.0 && (*s == want || want == 0.0), "{name} row {r}");
        }
        let zero = init(&m, &format!("{name}.weight_zero"));
        assert_eq!(zero.dims, vec![rows as i64]);
        assert_eq!(zero.data_type, Some(DataType::Int8 as i32));
        let dq = g
            .node
            .iter()
            .find(|n| n.output[0] == format!("{name}.weight"))
            .unwrap();
        assert_eq!(dq.op_type.as_deref(), Some("DequantizeLinear"));
        let axis = dq
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some("axis"));
        assert_eq!(axis.and_then(|a| a.i), Some(0), "{name}: per-axis");
        // A conv's bias is a separate Add of [O, 1, 1] (ONNX Runtime would round a Conv bias
        // input to the int32 grid); a linear layer's is Gemm's C input.
        let bias = init(&m, &format!("{name}.bias"));
        if matches!(node.op, NodeOp::Conv { .. }) {
            assert_eq!(bias.dims, vec![rows as i64, 1, 1], "{name}");
            let conv = g
                .node
                .iter()
                .find(|n| {
                    n.op_type.as_deref() == Some("Conv")
                        && n.name.as_deref() == Some(&format!("{name}.conv_nobias"))
                })
                .unwrap();
            assert_eq!(conv.input.len(), 2, "{name}: no bias input");
        } else {
            assert_eq!(bias.dims, vec![rows as i64], "{name}");
        }
        assert_eq!(
            f32s(bias),
            im.weights()[name].bias.clone().unwrap_or(vec![0.0; rows])
        );
        if let Some(q) = node.out {
            let s = f32s(init(&m, &format!("{name}.act_scale")));
            assert_eq!(s, vec![q.alpha / ((1u32 << q.bits) - 1) as f32]);
            let z = init(&m, &format!("{name}.act_zero"));
            assert_eq!(z.data_type, Some(DataType::Uint8 as i32));
            assert_eq!(z.raw_data.as_deref(), Some(&[0u8][..]));
            assert_eq!(f32s(init(&m, &format!("{name}.clip_max"))), vec![q.alpha]);
        }
    }
    (m, bits)
}

/// The fine-tuned VGG fixture: structure, slim shapes (pruned channels absent), bit-widths
/// below 8 on the restricted int8 grid, and the written file's size and metadata.
#[test]
fn qdq_export_of_the_compressed_vgg_fixture_has_the_expected_graph() {
    let (im, full) = compressed_vgg(2);
    let (m, bits) = check_structure(&im);
    assert!(bits.iter().any(|&b| b < 8), "{bits:?}");
    // Slim: every conv's kept output channels are those of the engine graph, and pruning
    // removed channels from at least one layer of the unpruned network.
    let mut pruned = 0;
    for node in &im.meta().nodes {
        if let NodeOp::Conv { c_out, c_in, .. } = node.op {
            let l = full.layers.iter().find(|l| l.name == node.name).unwrap();
            let w = init(&m, &format!("{}.weight_quantized", node.name));
            assert_eq!(&w.dims[..2], &[c_out as i64, c_in as i64]);
            assert!(c_out <= l.out_shape[0]);
            pruned += (c_out < l.out_shape[0]) as usize;
        }
    }
    assert!(pruned > 0, "the policy prunes no conv");
    let td = tempfile::tempdir().unwrap();
    let path = td.path().join("model-x.onnx");
    let sum = qdq::write_qdq(&im, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(sum.file_bytes, bytes.len() as u64);
    assert_eq!(
        sum.quantize_nodes + im.weights().len(),
        sum.dequantize_nodes
    );
    // One byte per kept weight plus small overhead: well under the slim f32 weights.
    assert!(
        sum.file_bytes < 2 * sum.weight_codes as u64 + 16_384,
        "{sum:?}"
    );
    let back = <ModelProto as prost::Message>::decode(&bytes[..]).unwrap();
    assert_eq!(back, m);
    let props: HashMap<_, _> = m
        .metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect();
    assert_eq!(props["input_mean"], "[0.286]");
    assert_eq!(props["input_std"], "[0.353]");
}

/// ResNet-20 (real-valued residual streams, option-A shortcuts, quantize nodes, global
/// pooling) exports with the same structure rules; its shortcut gathers become Pad + Gather.
#[test]
fn qdq_export_of_resnet20_covers_every_node_kind() {
    let im = compressed_zoo("resnet20", "12x12x1", 7);
    let kinds: std::collections::HashSet<&str> =
        im.meta().nodes.iter().map(|n| n.op.kind()).collect();
    for k in [
        "conv",
        "linear",
        "quantize",
        "shortcut_a",
        "global_avg_pool",
    ] {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }
    let (m, _) = check_structure(&im);
    let g = m.graph.as_ref().unwrap();
    let has = |op: &str| g.node.iter().any(|n| n.op_type.as_deref() == Some(op));
    for op in ["Slice", "Gather", "Add", "GlobalAveragePool", "Relu"] {
        assert!(has(op), "no {op}");
    }
    assert_eq!(
        g.node
            .iter()
            .filter(|n| n.output.iter().any(|o| o == OUTPUT))
            .count(),
        1
    );
}

// ---- tract -----------------------------------------------------------------------------

use tract_onnx::prelude::*;

/// Runs the ONNX file `bytes` in tract on `x` (`[n, c, h, w]` f32) and returns the first
/// output's values.
pub(crate) fn tract_run(bytes: &[u8], x: Vec<f32>, shape: [usize; 4]) -> Vec<f32> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = Tensor4::from_shape(&shape, &x);
    let out = model.run(tvec!(input.into())).unwrap();
    out[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

/// A tract tensor `[n, c, h, w]` of f32 values.
struct Tensor4;
impl Tensor4 {
    fn from_shape(shape: &[usize; 4], x: &[f32]) -> tract_onnx::prelude::Tensor {
        tract_onnx::prelude::Tensor::from_shape(shape, x).unwrap()
    }
}

pub(crate) fn top1(v: &[f32], k: usize) -> Vec<usize> {
    v.chunks_exact(k)
        .map(|r| (0..k).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap())
        .collect()
}

/// Issue 20, acceptance 1: the fixtures' logits from our importer equal tract's on the
/// 64 real images within 1e-4 relative to each image's largest logit (the ONNX Runtime check
/// is `fixtures_match_onnx_runtime_logits`).
#[test]
fn fixtures_match_tract_logits() {
    for name in ["resnet_proj", "mbv2", "vgg", "inception", "lenet_avg"] {
        import_matches_tract(&fixture_dir().join(format!("{name}.onnx")), name);
    }
}

/// The ONNX file at `path` (a 10-class network on `[N, 1, 28, 28]`) imported by us and run
/// in tract on the 64 real images: logits within 1e-4 relative to each image's largest, the
/// same top-1.
fn import_matches_tract(path: &Path, name: &str) {
    let (px, _) = eq_images();
    let x = normalised(&px);
    let want = tract_run(&std::fs::read(path).unwrap(), x.clone(), [64, 1, 28, 28]);
    let imp = crate::import_file(path).unwrap();
    let xt = Tensor::from_vec(x, (64, 1, 28, 28), &Device::Cpu).unwrap();
    let got: Vec<f32> = imp
        .model(path)
        .unwrap()
        .forward(&xt, false)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), want.len(), "{name}");
    let worst = crate::tests::worst_relative(&got, &want, 10);
    assert!(worst <= 1e-4, "{name}: worst relative difference {worst:e}");
    assert_eq!(top1(&got, 10), top1(&want, 10), "{name}");
}

/// Top-1 predictions of the QDQ export of `im` in tract and of the engine on `px` (NCHW
/// pixels of `n` images; one channel, so also NHWC). Returns (agreeing, n).
pub(crate) fn tract_agreement(im: &IntModel, px: &[u8], n: usize) -> (usize, usize) {
    let i = &im.meta().input;
    assert_eq!(i.channels, 1);
    let k = im.meta().num_classes;
    let bytes = qdq::to_qdq_bytes(im).unwrap();
    let onnx = tract_run(&bytes, normalised(px), [n, 1, i.height, i.width]);
    let engine = im.forward(px, n, Isa::detect()).unwrap();
    let (a, b) = (top1(&onnx, k), top1(&engine, k));
    (a.iter().zip(&b).filter(|(x, y)| x == y).count(), n)
}

/// Issue 20, acceptance 2 (the Rust side; CI runs ONNX Runtime on the quick job's exports):
/// a fine-tuned compressed model's QDQ export runs in tract and agrees with the integer
/// engine on every one of the 64 real images (≥ 99.9% of 64 is all of them).
#[test]
fn qdq_export_in_tract_agrees_with_the_integer_engine() {
    let (im, _) = compressed_vgg(20);
    let (px, _) = eq_images();
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(agree, n, "vgg: tract and the engine agree on {agree}/{n}");
    // Concatenated branches, max pooling of a real-valued stream (the block inputs feed
    // branches with different quantizers).
    let (im, _) = compressed_fixture("inception", 20);
    assert!(
        im.meta()
            .nodes
            .iter()
            .any(|n| matches!(n.op, seer_int::format::NodeOp::Concat { .. }))
    );
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(
        agree, n,
        "inception: tract and the engine agree on {agree}/{n}"
    );
    // Depthwise convs (ONNX `group`), inverted residuals, ReLU6 before global pooling.
    let (im, _) = compressed_fixture("mbv2", 20);
    assert!(
        im.meta()
            .nodes
            .iter()
            .any(|n| matches!(n.op, seer_int::format::NodeOp::Conv { groups, .. } if groups > 1))
    );
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(agree, n, "mbv2: tract and the engine agree on {agree}/{n}");
    // Average pooling (LeNet-5's subsampling, a padded 3×3 stride-1 pool) of real streams.
    let (im, _) = compressed_fixture("lenet_avg", 20);
    assert_eq!(
        im.meta()
            .nodes
            .iter()
            .filter(|n| matches!(n.op, NodeOp::AvgPool { .. }))
            .count(),
        3
    );
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(
        agree, n,
        "lenet_avg: tract and the engine agree on {agree}/{n}"
    );
    // Residual streams, shortcuts and global pooling (random weights, synthetic images).
    let im = compressed_zoo("resnet20", "12x12x1", 7);
    let px = pixels(64, 144, 9);
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(
        agree, n,
        "resnet20: tract and the engine agree on {agree}/{n}"
    );
}

/// A LeNet-style network with three `AveragePool`s, built here: 2×2 stride 2 (LeNet-5's
/// subsampling), 3×3 stride 1 with `pads` 1 (Inception's pool branch) and 3×3 stride 2
/// padded before only, both with `count_include_pad = 1`; random weights.
/// image `[N, 1, 28, 28]` → Conv 1→6 5×5 pad 2 → Relu → AveragePool 2/2 (14×14) → Conv 6→8
/// 3×3 pad 1 → Relu → AveragePool 3/1 pad 1 → Conv 8→8 3×3 stride 2 pad 1 (7×7) → Relu →
/// AveragePool 3/2 pads (1, 1, 0, 0) (3×3) → Flatten → Gemm 72→10.
fn avg_pool_net() -> ModelProto {
    use crate::qdq::{int, ints};
    use crate::tests::{model_of, node, tensor, value};
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut w = |n: usize, fan_in: usize| -> Vec<f32> {
        let a = (3.0 / fan_in as f32).sqrt();
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect()
    };
    let conv = |name: &str, x: &str, y: &str, k: i64, stride: i64, pad: i64| {
        node(
            name,
            "Conv",
            &[x, &format!("{name}.weight"), &format!("{name}.bias")],
            &[y],
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[stride, stride]),
                ints("pads", &[pad, pad, pad, pad]),
            ],
        )
    };
    let pool = |name: &str, x: &str, y: &str, k: i64, stride: i64, pads: [i64; 4]| {
        let mut attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[stride, stride]),
        ];
        if pads != [0; 4] {
            attrs.push(ints("pads", &pads));
            attrs.push(int("count_include_pad", 1));
        }
        node(name, "AveragePool", &[x], &[y], attrs)
    };
    let graph = crate::proto::GraphProto {
        name: Some("avg-pools".into()),
        node: vec![
            conv("c1", "image", "a1", 5, 1, 2),
            node("r1", "Relu", &["a1"], &["b1"], vec![]),
            pool("sub1", "b1", "p1", 2, 2, [0; 4]),
            conv("c2", "p1", "a2", 3, 1, 1),
            node("r2", "Relu", &["a2"], &["b2"], vec![]),
            pool("pool3", "b2", "p2", 3, 1, [1; 4]),
            conv("c3", "p2", "a3", 3, 2, 1),
            node("r3", "Relu", &["a3"], &["b3"], vec![]),
            pool("sub2", "b3", "p3", 3, 2, [1, 1, 0, 0]),
            node("flat", "Flatten", &["p3"], &["f"], vec![int("axis", 1)]),
            node(
                "fc",
                "Gemm",
                &["f", "fc.weight", "fc.bias"],
                &["logits"],
                vec![int("transB", 1)],
            ),
        ],
        initializer: vec![
            tensor("c1.weight", &[6, 1, 5, 5], w(150, 25)),
            tensor("c1.bias", &[6], w(6, 4)),
            tensor("c2.weight", &[8, 6, 3, 3], w(432, 54)),
            tensor("c2.bias", &[8], w(8, 16)),
            tensor("c3.weight", &[8, 8, 3, 3], w(576, 72)),
            tensor("c3.bias", &[8], w(8, 16)),
            tensor("fc.weight", &[10, 72], w(720, 72)),
            tensor("fc.bias", &[10], w(10, 16)),
        ],
        input: vec![value("image", &[-1, 1, 28, 28])],
        output: vec![value("logits", &[-1, 10])],
        ..Default::default()
    };
    model_of(graph)
}

/// `AveragePool` end to end: the importer computes tract's logits on the float network
/// (padded windows counted as ONNX's `count_include_pad = 1` says), the compressed network
/// exports to the integer engine (each pool an `avg_pool` node requantised to its
/// consumer's codes), and the QDQ export of that model in tract agrees with the engine on
/// all 64 real images.
#[test]
fn average_pooling_imports_exports_and_agrees_in_tract() {
    use prost::Message;
    let td = tempfile::tempdir().unwrap();
    let path = td.path().join("avg.onnx");
    std::fs::write(&path, avg_pool_net().encode_to_vec()).unwrap();
    import_matches_tract(&path, "avg-pools");
    let (px, _) = eq_images();
    let (im, _) = compressed_onnx(&path, "avg", 20);
    let pools: Vec<(usize, usize, usize, Option<usize>)> = im
        .meta()
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            NodeOp::AvgPool {
                kernel,
                stride,
                pad,
                pad_end,
            } => Some((kernel, stride, pad, pad_end)),
            _ => None,
        })
        .collect();
    assert_eq!(
        pools,
        [(2, 2, 0, None), (3, 1, 1, None), (3, 2, 1, Some(0))]
    );
    let (agree, n) = tract_agreement(&im, &px, 64);
    assert_eq!(
        agree, n,
        "avg-pool: tract and the engine agree on {agree}/{n}"
    );
}
