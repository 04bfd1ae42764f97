//! The files behind the fuzz seeds and the hostile inputs, made with the code that writes
//! each format (so the seeds are real files of the current formats).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use seer_label::manifest::{RESULT_FORMAT, RESULT_VERSION};
use seer_label::{LabelRecord, LabelResult, LabelStore, Manifest, ManifestEntry, Protocol};
use seer_nn::checkpoint;
use seer_nn::model::Model;
use seer_policy::{NetworkSpec, Policy, SearchSpace, SpaceConfig, builtin};
use seer_predictor::{Config, Samples};

/// A residual toy network (6x6 grey input, 10 classes): conv, BatchNorm, ReLU, a second
/// conv whose output is added back, global pooling, linear.
const TOY_NET: &str = r#"{
  "format": "seernet-network", "version": 1, "name": "toy-res", "input": "6x6x1",
  "num_classes": 10,
  "layers": [
    {"name": "c1", "op": "conv2d", "out_ch": 4, "kernel": 3, "padding": 1},
    {"name": "bn1", "op": "batch_norm"},
    {"name": "r1", "op": "relu"},
    {"name": "c2", "op": "conv2d", "out_ch": 4, "kernel": 3, "padding": 1},
    {"name": "bn2", "op": "batch_norm"},
    {"name": "add", "op": "add", "inputs": ["r1", "bn2"]},
    {"name": "r2", "op": "relu"},
    {"name": "pool", "op": "global_avg_pool"},
    {"name": "fc", "op": "linear", "out_features": 10, "bias": true}
  ]
}
"#;

fn toy_spec() -> NetworkSpec {
    NetworkSpec::from_json_str(TOY_NET, "toy").unwrap()
}

/// Deterministic normalised images `[n, 1, 6, 6]`.
fn images(n: usize, salt: usize) -> Tensor {
    let v: Vec<f32> = (0..n * 36)
        .map(|i| (((i * 37 + salt * 11) % 29) as f32 - 14.0) / 7.0)
        .collect();
    Tensor::from_vec(v, (n, 1, 6, 6), &Device::Cpu).unwrap()
}

/// The toy network with BatchNorm statistics from a few batches, a uniform 4-bit policy
/// pruning a quarter of the channels, and calibrated activation ranges.
fn compressed_toy() -> (Model, Policy) {
    let spec = toy_spec();
    let mut m = Model::new(spec.clone(), 7, &Device::Cpu).unwrap();
    for k in 0..3 {
        m.forward(&images(8, k), true).unwrap();
    }
    let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
    let pol = space.uniform(4, 4, 0.25).unwrap();
    m.apply_policy(&space, &pol).unwrap();
    let calib = [images(16, 5)];
    m.calibrate(calib.iter()).unwrap();
    (m, pol)
}

fn lenet_space() -> SearchSpace {
    SearchSpace::new(
        builtin("lenet5", None, None).unwrap(),
        SpaceConfig::default(),
    )
    .unwrap()
}

fn protocol(space: &SearchSpace) -> Protocol {
    Protocol::for_space(
        space,
        "fashion-mnist",
        "split-seed",
        "baseline-seed",
        50,
        32,
        0.05,
        3,
    )
}

/// The `k`-th distinct policy of the space (mixed-radix counter over the genes' candidates).
fn nth_policy(space: &SearchSpace, mut k: usize) -> Policy {
    let idx: Vec<usize> = space
        .genes()
        .iter()
        .map(|g| {
            let n = g.candidates.len();
            let i = k % n;
            k /= n;
            i
        })
        .collect();
    space.from_indices(&idx).unwrap()
}

fn record(space: &SearchSpace, p: &Protocol, k: usize) -> LabelRecord {
    LabelRecord::new(space, p, nth_policy(space, k), 70.0 + k as f64 * 1.25, 3.5).unwrap()
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

/// Writes every seed under `dir/<target>/`.
pub fn write_all(dir: &Path) {
    // IDX images [2, 28, 28] and labels [2], and the images gzipped.
    let px: Vec<u8> = (0..2 * 28 * 28).map(|i| ((i * 7) % 256) as u8).collect();
    let images_idx = seer_nn::data::idx::encode_idx_u8(&[2, 28, 28], &px).unwrap();
    write(dir, "idx", "images-2x28x28.idx", &images_idx);
    write(
        dir,
        "idx",
        "labels-2.idx",
        &seer_nn::data::idx::encode_idx_u8(&[2], &[3, 9]).unwrap(),
    );
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&images_idx).unwrap();
    write(dir, "idx", "images-2x28x28.idx.gz", &enc.finish().unwrap());
    // CIFAR-10: two records.
    let mut batch = Vec::new();
    for (label, salt) in [(6u8, 1usize), (2, 2)] {
        batch.push(label);
        batch.extend((0..3072).map(|i| ((i * salt * 13) % 251) as u8));
    }
    write(dir, "cifar10", "batch-2.bin", &batch);
    // Training checkpoints: fresh, compressed (masked) and slimmed.
    let fresh = Model::new(toy_spec(), 3, &Device::Cpu).unwrap();
    let info = serde_json::json!({"epochs": 2, "top1": 81.5});
    let (m, pol) = compressed_toy();
    for (name, model) in [
        ("fresh.safetensors", fresh),
        ("masked.safetensors", m.try_clone().unwrap()),
        ("slim.safetensors", m.slim().unwrap()),
    ] {
        let b = checkpoint::to_bytes(&model, Some("synthetic"), &info).unwrap();
        write(dir, "checkpoint", name, &b);
    }
    // Exported integer model of the compressed toy network.
    let im = seer_nn::export::to_int_model(&m, &[0.5], &[0.25], &info, Path::new("toy")).unwrap();
    write(
        dir,
        "int_model",
        "toy-res.safetensors",
        &im.to_bytes().unwrap(),
    );
    // Policies: the toy network's and LeNet-5's.
    write(dir, "policy", "toy-res.json", pol.to_json().as_bytes());
    let lenet = lenet_space();
    write(
        dir,
        "policy",
        "lenet5.json",
        nth_policy(&lenet, 17).to_json().as_bytes(),
    );
    // Network specs: the documented example, the toy network, LeNet-5 and ResNet-20.
    let tiny = std::fs::read(seernet_tests::workspace_root().join("docs/examples/tiny-net.json"));
    write(dir, "network_spec", "tiny-net.json", &tiny.unwrap());
    write(dir, "network_spec", "toy-res.json", TOY_NET.as_bytes());
    for arch in ["lenet5", "resnet20"] {
        let s = builtin(arch, None, None).unwrap().to_json();
        write(dir, "network_spec", &format!("{arch}.json"), s.as_bytes());
    }
    // A label store of three records, and the same torn in its last record.
    let proto = protocol(&lenet);
    let td = tempfile::tempdir().unwrap();
    let path = td.path().join("labels.jsonl");
    {
        let (mut store, _) = LabelStore::open(&path, &proto).unwrap();
        for k in 0..3 {
            store.append(record(&lenet, &proto, k)).unwrap();
        }
    }
    let store = std::fs::read(&path).unwrap();
    write(dir, "label_store", "three.jsonl", &store);
    write(dir, "label_store", "torn.jsonl", &store[..store.len() - 40]);
    // A manifest of three policies and one shard result.
    let man = Manifest::new(proto.clone(), (0..3).map(|k| nth_policy(&lenet, k))).unwrap();
    write(
        dir,
        "shard_manifest",
        "three.jsonl",
        man.to_jsonl().as_bytes(),
    );
    let res = LabelResult {
        format: RESULT_FORMAT.into(),
        version: RESULT_VERSION,
        writer: "seernet seed".into(),
        id: 1,
        protocol: proto.clone(),
        record: record(&lenet, &proto, 1),
    };
    write(dir, "shard_result", "one.json", res.to_json().as_bytes());
    // Predictors: the committed version-1 file and a small fit (version 3: `bits_0` is a noise
    // column). `v2.safetensors` in the seed folder is the same fit written before version 3.
    let v1 = seernet_tests::workspace_root()
        .join("crates/seer-predictor/testdata/predictor-v1.safetensors");
    write(
        dir,
        "predictor",
        "v1.safetensors",
        &std::fs::read(v1).unwrap(),
    );
    let x: Vec<Vec<f64>> = (0..24)
        .map(|i| vec![2.0 + (i % 4) as f64, 0.25 * (i / 4) as f64])
        .collect();
    let y: Vec<f64> = x.iter().map(|r| 80.0 + 3.0 * r[0] - 4.0 * r[1]).collect();
    let samples =
        Samples::new(vec!["bits_0".into(), "prune_0".into()], "top1".into(), x, y).unwrap();
    let config = Config {
        members: 2,
        hidden: vec![4],
        max_epochs: 30,
        ..Config::default()
    };
    let p = seer_predictor::fit(&samples, &config).unwrap();
    write(dir, "predictor", "v3.safetensors", &p.to_bytes().unwrap());
}

/// A checkpoint whose (valid) spec is one 2^20 x 2^20 linear layer, without its tensors.
pub fn checkpoint_claiming_2_pow_40() -> Vec<u8> {
    let spec = NetworkSpec::from_json_str(
        r#"{"format": "seernet-network", "version": 1, "name": "big", "input": "1x1x1048576",
            "num_classes": 1048576, "layers": [{"name": "fc", "op": "linear", "out_features": 1048576}]}"#,
        "big",
    )
    .unwrap();
    let meta = HashMap::from([
        ("format".to_string(), "seernet-model".to_string()),
        ("version".to_string(), "1".to_string()),
        ("arch".to_string(), "big".to_string()),
        ("spec".to_string(), serde_json::to_string(&spec).unwrap()),
        ("comp".to_string(), "[{}]".to_string()),
        ("residual_pruning".to_string(), "tied".to_string()),
        ("slim".to_string(), "false".to_string()),
    ]);
    safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), Some(meta)).unwrap()
}

/// An integer model whose only node is a conv of 2^20 x 2^20 weights, with 1 weight byte.
pub fn int_model_claiming_2_pow_40() -> Vec<u8> {
    let meta = serde_json::json!({
        "format": "seernet-int-model", "version": 1, "arch": "big",
        "input": {"channels": 1048576, "height": 1, "width": 1, "mean": [], "std": 1.0},
        "num_classes": 1048576,
        "nodes": [{"name": "c", "input": "input", "op": "conv", "c_in": 1048576,
                   "c_out": 1048576, "kernel": 1, "stride": 1, "pad": 0, "w_bits": 4,
                   "out": null}]
    });
    let w = [0u8; 1];
    let s = 1f32.to_le_bytes();
    let views = vec![
        (
            "c.weight".to_string(),
            TensorView::new(Dtype::U8, vec![1, 1], &w).unwrap(),
        ),
        (
            "c.scale".to_string(),
            TensorView::new(Dtype::F32, vec![1], &s).unwrap(),
        ),
    ];
    let m = HashMap::from([("seernet_int_model".to_string(), meta.to_string())]);
    safetensors::serialize(views, Some(m)).unwrap()
}

/// A label store whose one record claims 2^40 as its gene index and its MACs.
pub fn store_claiming_2_pow_40() -> Vec<u8> {
    let space = lenet_space();
    let proto = protocol(&space);
    let td = tempfile::tempdir().unwrap();
    let path = td.path().join("labels.jsonl");
    drop(LabelStore::open(&path, &proto).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let mut rec = record(&space, &proto, 0);
    rec.indices = vec![1 << 40];
    rec.macs = 1 << 40;
    bytes.extend_from_slice(rec.to_line().as_bytes());
    bytes
}

/// A manifest whose one entry has id 2^40.
pub fn manifest_claiming_2_pow_40() -> Vec<u8> {
    let space = lenet_space();
    let m = Manifest {
        protocol: protocol(&space),
        entries: vec![ManifestEntry::new(1 << 40, nth_policy(&space, 2))],
    };
    m.to_jsonl().into_bytes()
}

/// A shard result with id and MACs 2^40.
pub fn result_claiming_2_pow_40() -> Vec<u8> {
    let space = lenet_space();
    let proto = protocol(&space);
    let mut record = record(&space, &proto, 0);
    record.macs = 1 << 40;
    let r = LabelResult {
        format: RESULT_FORMAT.into(),
        version: RESULT_VERSION,
        writer: "x".into(),
        id: 1 << 40,
        protocol: proto,
        record,
    };
    r.to_json().into_bytes()
}

/// A predictor header claiming 2^40 members of 2^40 hidden units, without tensors.
pub fn predictor_claiming_2_pow_40() -> Vec<u8> {
    let config = Config {
        members: 1 << 40,
        ..Config::default()
    };
    let header = serde_json::json!({
        "format": "seernet-predictor", "version": 2, "config": config,
        "feature_names": ["a", "b"], "target_name": "top1", "sizes": [2, 1u64 << 40, 1],
    });
    let meta = HashMap::from([("seernet_predictor".to_string(), header.to_string())]);
    safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), Some(meta)).unwrap()
}
