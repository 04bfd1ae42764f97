//! Profiling aid: where a ResNet-20 label's preparation goes (load, policy and slimming,
//! calibration, BatchNorm re-estimation, calibration again; docs/method.md §3), per policy,
//! and the time of `best_clip` alone on 19 layers' worth of samples.
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use seer_nn::checkpoint;
use seer_nn::data::{self, DatasetName};
use seer_nn::labeler::{LabelSettings, Labeler};
use seer_nn::model::best_clip;
use seer_nn::train::{self, CALIBRATION_BATCH, CALIBRATION_BATCHES};
use seer_policy::SpaceConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { seer_nn::candle_elementwise_on_caller() };
    seer_nn::keep_freed_memory();
    // 19 calibrated layers × 4 batches × ≈ 50,000 samples, as ResNet-20's calibration.
    let v: Vec<f32> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(7_919) % 1_000) as f32 / 300.0 - 0.5)
        .collect();
    let t = Instant::now();
    let alphas: Vec<f32> = (0..19).map(|_| best_clip(&v, 4)).collect();
    println!(
        "best_clip, 19 × 200,000 samples: {:.3} s (α {})",
        t.elapsed().as_secs_f64(),
        alphas[0]
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ckpt = root.join("assets/baselines/resnet20-fashion-mnist.safetensors");
    let settings = LabelSettings {
        steps: 100,
        batch_size: 64,
        lr: 0.01,
        seed: 0,
        val_images: None,
        weight_quant: Default::default(),
    };
    let protocol = Labeler::protocol(
        &ckpt,
        Some("fashion-mnist"),
        SpaceConfig::default(),
        settings,
    )?;
    let labeler = Labeler::new(&protocol, &ckpt)?;
    let space = labeler.space();
    let splits = data::load(DatasetName::parse("fashion-mnist")?)?;
    let norm = splits.normalize();
    for &(wb, ab, p) in &[(4u32, 3u32, 0.0f64), (4, 4, 0.25), (4, 4, 0.5)] {
        let pol = space.uniform(wb, ab, p)?;
        for _ in 0..2 {
            let mut t = Instant::now();
            let mut lap = || {
                let s = t.elapsed().as_secs_f64();
                t = Instant::now();
                s
            };
            let (mut model, _) = checkpoint::load(&ckpt, Some("resnet20"), &Device::Cpu)?;
            let load = lap();
            model.apply_policy(space, &pol)?;
            model = model.slim()?;
            let batches = train::sample_batches(
                &model,
                &splits.train,
                &norm,
                CALIBRATION_BATCHES,
                CALIBRATION_BATCH,
                1,
            )?;
            let slim = lap();
            model.calibrate(batches.iter())?;
            let c1 = lap();
            model.reestimate_bn(batches.iter())?;
            let bn = lap();
            model.calibrate(batches.iter())?;
            let c2 = lap();
            println!(
                "w{wb}a{ab} prune {p}: load {load:.3} s, policy + slim + batches {slim:.3}, \
                 calibrate {c1:.3}, BatchNorm {bn:.3}, calibrate {c2:.3}"
            );
        }
    }
    Ok(())
}
