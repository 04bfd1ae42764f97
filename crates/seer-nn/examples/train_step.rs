//! Profiling aid for the training step (issue 14 part 2): images per second of the ResNet-20
//! f32 and QAT (w8a8 full width) training steps at batch 128 on Fashion-MNIST, by wall time
//! and by process CPU time divided by the threads (steadier when other processes share the
//! cores). `cargo run --release -p seer-nn --example train_step -- [--steps N] [--rounds R]
//! [--f32|--qat]`; also times `prepare_quantized` (calibration) of the QAT model. Needs `cargo xtask fetch-data fashion-mnist`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use seer_nn::checkpoint;
use seer_nn::data::{self, Augment, DatasetName};
use seer_nn::model::Model;
use seer_nn::train::{self, TrainConfig};
use seer_policy::{SearchSpace, SpaceConfig};

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `(wall img/s, cpu img/s)` of `steps` steps of batch 128.
fn rate(model: &Model, splits: &data::Splits, qat: bool, steps: usize) -> R<(f64, f64)> {
    let norm = splits.normalize();
    let cfg = TrainConfig {
        steps: Some(steps),
        batch_size: 128,
        lr: 0.01,
        seed: 3,
        augment: Some(Augment {
            pad: 2,
            hflip: true,
        }),
        train_alpha: qat,
        clip_norm: qat.then_some(train::QAT_CLIP_NORM),
        ..TrainConfig::default()
    };
    let threads = seer_bench::threads() as f64;
    let (t0, c0) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
    let r = train::train(model, &splits.train, &norm, &cfg, &mut |_| {})?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (seer_bench::cpu_seconds_or_zero() - c0) / threads;
    Ok((r.images as f64 / wall, r.images as f64 / cpu))
}

fn main() -> R<()> {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { seer_nn::candle_elementwise_on_caller() };
    seer_nn::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let steps = arg(&args, "--steps", 5);
    let rounds = arg(&args, "--rounds", 3);
    let only_f32 = args.iter().any(|a| a == "--f32");
    let only_qat = args.iter().any(|a| a == "--qat");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ckpt = root.join("assets/baselines/resnet20-fashion-mnist.safetensors");
    let splits = data::load(DatasetName::parse("fashion-mnist")?)?;
    let norm = splits.normalize();
    let (base, _) = checkpoint::load(&ckpt, Some("resnet20"), &Device::Cpu)?;
    let mut q = base.try_clone()?;
    let space = SearchSpace::new(q.spec().clone(), SpaceConfig::default())?;
    q.apply_policy(&space, &space.uniform(8, 8, 0.0)?)?;
    let threads = seer_bench::threads() as f64;
    for r in 0..rounds {
        let (t0, c0) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        train::prepare_quantized(&q, &splits.train, &norm, 5)?;
        let cpu = (seer_bench::cpu_seconds_or_zero() - c0) / threads;
        println!(
            "round {r} prepare_quantized (BN re-estimation, 2 calibrations): {:.2} s wall, {cpu:.2} s cpu/threads (load {:?})",
            t0.elapsed().as_secs_f64(),
            seer_bench::load_average()
        );
    }
    rate(&base, &splits, false, 1)?;
    rate(&q, &splits, true, 1)?;
    for r in 0..rounds {
        let l = seer_bench::load_average();
        if !only_qat {
            let (w, c) = rate(&base, &splits, false, steps)?;
            println!("round {r} f32 step: {w:.1} img/s wall, {c:.1} img/s cpu (load {l:?})");
        }
        if !only_f32 {
            let (w, c) = rate(&q, &splits, true, steps)?;
            println!("round {r} QAT step: {w:.1} img/s wall, {c:.1} img/s cpu (load {l:?})");
        }
    }
    Ok(())
}
