//! `cargo xtask bench predictor [--json]`: ensemble fit time on 320 peer samples with the
//! default config (acceptance: ≤ 10 s), predict/grad throughput, and one MLP training step
//! (forward + backward + AdamW, batch 32) on our f32 kernels vs the same step in candle,
//! measured in the same process.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use seer_predictor::{Config, Samples, fit};

/// The authors' ResNet-20 samples, committed under `assets/peer-data/` (see its README).
fn peer_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/peer-data/seernet-resnet20-cifar10/samples.csv")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per training step of one default-sized member in candle (same shapes, AdamW).
fn candle_step_seconds(
    d: usize,
    hidden: &[usize],
    batch: usize,
    steps: usize,
) -> candle_core::Result<f64> {
    let dev = Device::Cpu;
    let mut sizes = vec![d];
    sizes.extend(hidden);
    sizes.push(1);
    let mut vars = Vec::new();
    for w in sizes.windows(2) {
        let a = (6.0 / w[0] as f32).sqrt();
        vars.push(Var::rand(-a, a, (w[1], w[0]), &dev)?);
        vars.push(Var::zeros(w[1], DType::F32, &dev)?);
    }
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 1e-2,
            ..Default::default()
        },
    )?;
    let x = Tensor::rand(-1f32, 1f32, (batch, d), &dev)?;
    let y = Tensor::rand(-1f32, 1f32, (batch, 1), &dev)?;
    let step = |opt: &mut AdamW| -> candle_core::Result<()> {
        let mut h = x.clone();
        let nl = vars.len() / 2;
        for l in 0..nl {
            h = h
                .matmul(&vars[2 * l].as_tensor().t()?)?
                .broadcast_add(vars[2 * l + 1].as_tensor())?;
            if l + 1 < nl {
                h = candle_nn::ops::silu(&h)?;
            }
        }
        let loss = (h - &y)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)
    };
    for _ in 0..20 {
        step(&mut opt)?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        step(&mut opt)?;
    }
    Ok(t.elapsed().as_secs_f64() / steps as f64)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let path = peer_file();
    if !path.is_file() {
        eprintln!(
            "predictor bench: peer data {} is missing (it is committed with the repository: \
             see assets/peer-data/README.md)",
            path.display()
        );
        std::process::exit(1);
    }
    let all = Samples::from_csv(&path, "top1").expect("peer data parses");
    let mut idx: Vec<usize> = (0..all.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(0));
    let train = all.subset(&idx[..320]);
    let cfg = Config::default();
    let threads = rayon::current_num_threads();

    // Fit time with defaults (acceptance ≤ 10 s), median of 3.
    let mut fits = Vec::new();
    let mut cpu = Vec::new();
    let mut epochs = 0.0;
    let mut predictor = None;
    let load_before = seer_bench::load_average();
    for r in 0..3 {
        let t = Instant::now();
        let c0 = seer_bench::cpu_seconds();
        let p = fit(
            &train,
            &Config {
                seed: r,
                ..cfg.clone()
            },
        )
        .expect("fit");
        fits.push(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c0, seer_bench::cpu_seconds()) {
            cpu.push(b - a);
        }
        epochs = p
            .member_stats()
            .iter()
            .map(|s| s.epochs as f64)
            .sum::<f64>()
            / p.member_stats().len() as f64;
        predictor = Some(p);
    }
    let p = predictor.unwrap();
    let fit_s = median(fits.clone());
    let fit_cpu = (!cpu.is_empty()).then(|| median(cpu.clone()));

    // Our training step in isolation: a 1-member, fixed-epoch fit, divided by its steps.
    let one = Config {
        members: 1,
        max_epochs: 200,
        patience: 10_000,
        ..cfg.clone()
    };
    let steps_per_epoch = (320.0 - (cfg.val_frac * 320.0f64).round()) / cfg.batch_size as f64;
    let steps = (steps_per_epoch.ceil() * 200.0) as usize;
    let t = Instant::now();
    fit(&train, &one).expect("fit");
    let ours_step = t.elapsed().as_secs_f64() / steps as f64; // includes validation passes: conservative
    let candle_step = candle_step_seconds(all.n_features(), &cfg.hidden, cfg.batch_size, 2000)
        .expect("candle step");

    // Batched inference throughput.
    let rows: Vec<Vec<f64>> = (0..4096).map(|i| all.x()[i % all.len()].clone()).collect();
    let t = Instant::now();
    let _ = p.predict(&rows).unwrap();
    let predict_rows_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = p.grad(&rows).unwrap();
    let grad_rows_s = rows.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for r in &rows[..1000] {
        let _ = p.predict_grad(&[r]).unwrap();
    }
    let single_grad_us = t.elapsed().as_secs_f64() / 1000.0 * 1e6;

    let speedup = candle_step / ours_step;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "fit_seconds_320": fit_s,
                "fit_seconds_320_all": fits,
                "fit_within_10s": fit_s <= 10.0,
                "fit_cpu_seconds_320": fit_cpu,
                "load_average_1m": load_before,
                "members": cfg.members,
                "mean_epochs": epochs,
                "threads": threads,
                "step_us_ours": ours_step * 1e6,
                "step_us_candle": candle_step * 1e6,
                "speedup_vs_candle": speedup,
                "predict_rows_per_s": predict_rows_s,
                "grad_rows_per_s": grad_rows_s,
                "single_row_predict_grad_us": single_grad_us,
            })
        );
    } else {
        println!(
            "predictor bench ({} threads, default config: {} members, hidden {:?})",
            threads, cfg.members, cfg.hidden
        );
        println!(
            "  fit on 320 samples      {fit_s:8.2} s  (median of {:?}; limit 10 s; mean {epochs:.0} epochs/member)",
            fits
        );
        if let Some(c) = fit_cpu {
            println!(
                "{:26}{c:8.2} CPU-s over all threads (load average before: {load_before:?})",
                ""
            );
        }
        println!(
            "  training step (batch {}) ours {:8.1} µs   candle {:8.1} µs   speedup ×{speedup:.1}",
            cfg.batch_size,
            ours_step * 1e6,
            candle_step * 1e6
        );
        println!("  predict                 {predict_rows_s:10.0} rows/s (batch 4096)");
        println!("  grad                    {grad_rows_s:10.0} rows/s (batch 4096)");
        println!("  predict_grad, 1 row     {single_grad_us:8.1} µs/call");
    }
}
