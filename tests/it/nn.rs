//! seer-nn end to end on synthetic data: IDX files -> prepared dataset -> training ->
//! checkpoint -> a seer-policy policy file -> QAT fine-tune -> physical pruning whose outputs
//! and MACs match the masked model and seer-policy's count.

use candle_core::{Device, Tensor};
use seer_nn::data::{self, DatasetName, idx};
use seer_nn::{checkpoint, model::Model, train};
use seer_policy::{Policy, SearchSpace, SpaceConfig, builtin};

/// Writes `n` synthetic 28×28 digits-like images (class = position of a bright bar) as IDX.
fn synthetic_idx(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 4) as u8;
        for y in 0..28 {
            for x in 0..28 {
                let noise = (seer_nn::data::batch::mix(i as u64, y as u64, x as u64) % 61) as u8;
                let bar = (y / 7) as u8 == label && (4..24).contains(&x);
                images.push(if bar { 190 + noise } else { noise });
            }
        }
        labels.push(label);
    }
    let ip = dir.join("imgs-idx3-ubyte");
    let lp = dir.join("labs-idx1-ubyte");
    idx::write_idx_u8(&ip, &[n, 28, 28], &images).unwrap();
    idx::write_idx_u8(&lp, &[n], &labels).unwrap();
    (ip, lp)
}

#[test]
fn train_checkpoint_finetune_slim() {
    let td = tempfile::tempdir().unwrap();
    let (ip, lp) = synthetic_idx(td.path(), 600);
    let dir = td.path().join("mnist");
    let manifest = data::prepare_from_idx(&dir, DatasetName::Mnist, &[(ip, lp)]).unwrap();
    assert_eq!(
        manifest.counts.train + manifest.counts.val + manifest.counts.test,
        manifest.dedup.kept
    );
    let splits = data::load_dir(&dir, DatasetName::Mnist).unwrap();
    let norm = splits.normalize();

    let spec = builtin("lenet5", None, None).unwrap();
    let model = Model::new(spec.clone(), 0, &Device::Cpu).unwrap();
    let cfg = train::TrainConfig {
        steps: Some(30),
        batch_size: 32,
        lr: 0.05,
        ..Default::default()
    };
    train::train(&model, &splits.train, &norm, &cfg, &mut |_| {}).unwrap();
    let val = train::evaluate(&model, &splits.val, &norm, 64).unwrap();
    assert!(val.top1 > 90.0, "val top-1 {}", val.top1);

    let ck = td.path().join("lenet.safetensors");
    checkpoint::save(&model, &ck, Some("mnist"), &serde_json::json!({})).unwrap();
    let e = checkpoint::load(&ck, Some("resnet20"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lenet5"), "{e}");
    let (mut m, _) = checkpoint::load(&ck, Some("lenet5"), &Device::Cpu).unwrap();

    // A policy written and read back through seer-policy's JSON format: w4a4 QAT learns.
    let space = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let pfile = td.path().join("p.json");
    space.uniform(4, 4, 0.0).unwrap().save(&pfile).unwrap();
    let pol = Policy::load(&pfile).unwrap();
    let qcfg = train::TrainConfig {
        steps: Some(20),
        batch_size: 32,
        lr: 0.02,
        ..Default::default()
    };
    train::finetune_policy(
        &mut m,
        &space,
        &pol,
        &splits.train,
        &norm,
        &qcfg,
        &mut |_| {},
    )
    .unwrap();
    let q = train::evaluate(&m, &splits.val, &norm, 64).unwrap();
    assert!(q.top1 > 90.0, "w4a4 val top-1 {}", q.top1);

    // Half the channels pruned: the physically slimmed model predicts exactly like the masked
    // one and its real MACs are seer-policy's count.
    let pruned = space.uniform(4, 4, 0.5).unwrap();
    m.apply_policy(&space, &pruned).unwrap();
    train::prepare_quantized(&m, &splits.train, &norm, 1).unwrap();
    let masked = train::evaluate(&m, &splits.val, &norm, 64).unwrap();
    let slim = m.slim().unwrap();
    assert_eq!(
        train::evaluate(&slim, &splits.val, &norm, 64).unwrap().top1,
        masked.top1
    );
    let x = Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    let macs: u64 = slim.measured_macs(&x).unwrap().iter().map(|m| m.1).sum();
    assert_eq!(macs, space.cost(&pruned).unwrap().total_macs);
    assert!(slim.num_params() * 2 < m.num_params() + 2000);
}
