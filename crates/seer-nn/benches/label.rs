//! `cargo xtask bench label [--json]`: what one ResNet-20 label costs under issue 14's
//! protocol (100 QAT steps of batch 64, top-1 on the 5,000-image validation split of
//! Fashion-MNIST, the committed baseline; the main job's labels since issue 15 are
//! `--label-steps 50 --val-images 2000`), for 5 fixed policies spread over 6–25% of the
//! w8a8 BOPs, split into preparation (load, policy, slimming, BatchNorm re-estimation,
//! calibration), fine-tune and validation; then the training and evaluation throughputs of
//! ResNet-20 at batch 128 (f32 and 8-bit fake-quantized, the PyTorch anchor's shapes; see
//! `tools/torch_anchor.py`) and conv forward+backward against candle's f32 GEMM in the same
//! run. docs/benchmarks.md records the figures.
//!
//! Options: `--json` (one JSON object), `--masked` (labels on the masked full-width network,
//! the protocol before issue 14), `--no-labels` (throughputs only), `--policies N` (the first
//! N of the 5), `--steps N` (timed training steps per throughput, default 10),
//! `--label-steps N` (fine-tune steps per label, default the protocol's 100; experiments only),
//! `--val-images N` (score labels on a seeded sample of N validation images, as the ResNet-20
//! main job's protocol does; default all 5,000), `--workers N` (then label the same policies
//! again N at a time, each on 1/N of the cores, as `seernet compress --workers` does, and
//! report the wall seconds per label; the labels must equal the one-at-a-time ones; default
//! one per core, 1: skip).
//! Needs the prepared dataset (`cargo xtask fetch-data fashion-mnist`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use seer_kernels::{Conv2dParams, conv2d};
use seer_nn::checkpoint;
use seer_nn::data::{self, Augment, DatasetName};
use seer_nn::labeler::{LabelSettings, LabelTimes, Labeler};
use seer_nn::model::Model;
use seer_nn::train::{self, FinetuneNetwork, TrainConfig};
use seer_policy::{Policy, SearchSpace, SpaceConfig};

use seer_bench::median;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// The 5 fixed policies: uniform (weight bits, activation bits, prune ratio) over the
/// searchable units (first and last layers stay at 8 bits).
const POLICIES: &[(u32, u32, f64)] = &[
    (4, 3, 0.0),
    (5, 4, 0.25),
    (4, 4, 0.25),
    (6, 4, 0.5),
    (4, 4, 0.5),
];

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
}

/// Training images per second of `steps` steps of batch 128 (after 2 warm-up steps).
fn train_rate(model: &Model, splits: &data::Splits, alpha: bool, steps: usize) -> R<f64> {
    let norm = splits.normalize();
    let cfg = |steps| TrainConfig {
        steps: Some(steps),
        batch_size: 128,
        lr: 0.01,
        seed: 3,
        augment: Some(Augment {
            pad: 2,
            hflip: true,
        }),
        train_alpha: alpha,
        clip_norm: alpha.then_some(train::QAT_CLIP_NORM),
        ..TrainConfig::default()
    };
    train::train(model, &splits.train, &norm, &cfg(2), &mut |_| {})?;
    let r = train::train(model, &splits.train, &norm, &cfg(steps), &mut |_| {})?;
    Ok(r.images as f64 / r.seconds)
}

/// Conv 16→16 28×28 batch 128, forward + backward, against the f32 1024³ matmul, timed back
/// to back in 5 rounds (each figure the mean of 3 calls; medians over the rounds):
/// `[GFLOP/s, fraction of the matmul rate]` three times: the convolution's kernels alone
/// ([`conv2d`], then [`seer_kernels::conv2d_backward`] on a given output gradient of ones,
/// as PyTorch's `aten::convolution_backward`); the same through candle's autograd
/// (`y.backward()`, which seeds the root with ones and adds each input's gradient into zeros
/// on the calling thread); and through a `sum_all` loss, whose backward also adds the
/// broadcast gradient into zeros first.
fn conv_fraction() -> R<[f64; 6]> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (128, 16, 28, 28), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (16, 16, 3, 3), &dev)?)?;
    let p = Conv2dParams::new(1, 1);
    let dy = Tensor::ones((128, 16, 28, 28), candle_core::DType::F32, &dev)?;
    let conv_flop = 3.0 * 2.0 * (128 * 16 * 28 * 28 * 16 * 9) as f64;
    let a = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let b = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let mm_flop = 2.0 * 1024f64.powi(3);
    // Each figure is the mean of 3 back-to-back calls, as the matmul's.
    let conv = |how: usize| -> R<f64> {
        let t = Instant::now();
        for _ in 0..3 {
            let y = conv2d(x.as_tensor(), w.as_tensor(), &p)?;
            match how {
                0 => drop(seer_kernels::conv2d_backward(
                    x.as_tensor(),
                    w.as_tensor(),
                    &dy,
                    &p,
                )?),
                1 => drop(y.backward()?),
                _ => drop(y.sum_all()?.backward()?),
            }
        }
        Ok(t.elapsed().as_secs_f64() / 3.0)
    };
    let mm = || -> R<f64> {
        let t = Instant::now();
        for _ in 0..3 {
            a.matmul(&b)?;
        }
        Ok(t.elapsed().as_secs_f64() / 3.0)
    };
    for how in 0..3 {
        conv(how)?;
    }
    mm()?;
    let mut cols: [Vec<f64>; 6] = Default::default();
    for _ in 0..5 {
        let ts = [conv(0)?, conv(1)?, conv(2)?];
        let tm = mm()?;
        for (i, t) in ts.into_iter().enumerate() {
            cols[2 * i].push(conv_flop / t / 1e9);
            cols[2 * i + 1].push((conv_flop / t) / (mm_flop / tm));
        }
    }
    Ok(cols.map(median))
}

/// Wall seconds per label of the first `n` policies labelled `workers` at a time (each worker
/// its own rayon pool of cores / workers threads, as `seernet compress --workers`); Err when a
/// label differs from the one-at-a-time label in `rows` (the kernels give the same bits on any
/// thread count).
fn label_side_by_side(
    labeler: &Labeler,
    n: usize,
    workers: usize,
    rows: &[(String, f64, f64, LabelTimes)],
) -> R<f64> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / workers).max(1);
    let space = labeler.space();
    let pols: Vec<Policy> = POLICIES[..n]
        .iter()
        .map(|&(wb, ab, p)| space.uniform(wb, ab, p))
        .collect::<Result<_, _>>()?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    let tops: Vec<(usize, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, f64)>, String> {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .map_err(|e| e.to_string())?;
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(p) = pols.get(i) else { break };
                        let m = pool
                            .install(|| labeler.label(p, 1, &mut |_, _| {}))
                            .map_err(|e| e.to_string())?;
                        out.push((i, m.top1));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| "a worker panicked".to_string())??);
        }
        Ok::<_, String>(all)
    })?;
    let per_label = t.elapsed().as_secs_f64() / n as f64;
    for (i, top1) in tops {
        if top1 != rows[i].2 {
            return Err(format!(
                "{}: top-1 {top1} on {workers} workers vs {} alone",
                rows[i].0, rows[i].2
            )
            .into());
        }
    }
    Ok(per_label)
}

fn main() -> R<()> {
    // SAFETY: first statement of main, no other thread exists yet.
    unsafe { seer_nn::candle_elementwise_on_caller() };
    seer_nn::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let masked = args.iter().any(|a| a == "--masked");
    let no_labels = args.iter().any(|a| a == "--no-labels");
    let n_pol = arg::<usize>(&args, "--policies")
        .unwrap_or(POLICIES.len())
        .min(POLICIES.len());
    let steps = arg::<usize>(&args, "--steps").unwrap_or(10).max(1);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let workers = arg::<usize>(&args, "--workers").unwrap_or(cores).max(1);
    let mut parallel: Option<f64> = None;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ckpt = root.join("assets/baselines/resnet20-fashion-mnist.safetensors");
    let load_start = seer_bench::load_average();
    // (`--label-steps N`: shorter labels for experiments; the bench's figures use 100.)
    let settings = LabelSettings {
        steps: arg::<u64>(&args, "--label-steps").unwrap_or(100),
        batch_size: 64,
        lr: 0.01,
        seed: 0,
        val_images: arg::<usize>(&args, "--val-images"),
        weight_quant: Default::default(),
    };

    // Labels.
    let mut rows: Vec<(String, f64, f64, LabelTimes)> = Vec::new();
    if !no_labels {
        let mut protocol = Labeler::protocol(
            &ckpt,
            Some("fashion-mnist"),
            SpaceConfig::default(),
            settings,
        )?;
        if masked {
            protocol.network = FinetuneNetwork::Masked;
        }
        let labeler = Labeler::new(&protocol, &ckpt)?;
        let space: &SearchSpace = labeler.space();
        let w8a8 = space.w8a8_bops()? as f64;
        for &(wb, ab, p) in &POLICIES[..n_pol] {
            let pol: Policy = space.uniform(wb, ab, p)?;
            let frac = space.cost(&pol)?.total_bops as f64 / w8a8;
            if !(0.06..=0.25).contains(&frac) {
                return Err(format!("policy w{wb}a{ab} p{p} is at {frac:.3} of w8a8").into());
            }
            let name = format!("w{wb}a{ab} prune {p}");
            let (m, t) = labeler.label_timed(&pol, 1, &mut |_, _| {})?;
            if !json {
                println!(
                    "{name:<18} {:5.1}% of w8a8: {:6.1} s (prepare {:5.1}, fine-tune {:5.1}, validate {:5.1}) top-1 {:.2}%",
                    100.0 * frac,
                    t.total_s(),
                    t.prepare_s,
                    t.finetune_s,
                    t.validate_s,
                    m.top1
                );
            }
            rows.push((name, frac, m.top1, t));
        }
        if workers > 1 && n_pol > 1 {
            parallel = Some(label_side_by_side(&labeler, n_pol, workers, &rows)?);
        }
    }

    // Throughputs at batch 128: the baseline in f32, and 8-bit fake-quantized full width.
    let name = DatasetName::parse("fashion-mnist")?;
    let splits = data::load(name)?;
    let norm = splits.normalize();
    let (base, _) = checkpoint::load(&ckpt, Some("resnet20"), &Device::Cpu)?;
    let f32_eval = train::evaluate(&base, &splits.val, &norm, 256)?;
    let f32_eval_ref = train::evaluate_reference(&base, &splits.val, &norm, 256)?;
    if f32_eval.top1 != f32_eval_ref.top1 {
        return Err(format!(
            "evaluation paths disagree: {} vs {}",
            f32_eval.top1, f32_eval_ref.top1
        )
        .into());
    }
    let f32_train = train_rate(&base.try_clone()?, &splits, false, steps)?;
    let mut q = base.try_clone()?;
    let space = SearchSpace::new(q.spec().clone(), SpaceConfig::default())?;
    q.apply_policy(&space, &space.uniform(8, 8, 0.0)?)?;
    train::prepare_quantized(&q, &splits.train, &norm, 5)?;
    let fq_eval = train::evaluate(&q, &splits.val, &norm, 256)?;
    let qat_train = train_rate(&q, &splits, true, steps)?;
    let [
        conv_gflops,
        conv_frac,
        conv_ag_gflops,
        conv_ag_frac,
        conv_sum_gflops,
        conv_sum_frac,
    ] = conv_fraction()?;
    let load_end = seer_bench::load_average();

    let med = |f: &dyn Fn(&LabelTimes) -> f64| median(rows.iter().map(|r| f(&r.3)).collect());
    let obj = serde_json::json!({
        "network": if masked { "masked" } else { "slim" },
        "label_seconds_median": med(&|t| t.total_s()),
        "label_prepare_seconds_median": med(&|t| t.prepare_s),
        "label_finetune_seconds_median": med(&|t| t.finetune_s),
        "label_validate_seconds_median": med(&|t| t.validate_s),
        "labels": rows.iter().map(|(n, f, top1, t)| serde_json::json!({
            "policy": n, "w8a8_fraction": f, "top1": top1, "seconds": t.total_s(),
            "prepare_s": t.prepare_s, "finetune_s": t.finetune_s, "validate_s": t.validate_s,
        })).collect::<Vec<_>>(),
        "label_seconds_mean": rows.iter().map(|r| r.3.total_s()).sum::<f64>() / rows.len().max(1) as f64,
        "label_workers": if parallel.is_some() { workers } else { 1 },
        "label_workers_seconds_per_label": parallel,
        "qat_train_img_per_s": qat_train,
        "f32_train_img_per_s": f32_train,
        "f32_eval_img_per_s": f32_eval.images_per_s,
        "fq_eval_img_per_s": fq_eval.images_per_s,
        "f32_eval_reference_img_per_s": f32_eval_ref.images_per_s,
        "conv_fwd_bwd_gflops": conv_gflops,
        "conv_fwd_bwd_fraction_of_gemm": conv_frac,
        "conv_fwd_bwd_autograd_gflops": conv_ag_gflops,
        "conv_fwd_bwd_autograd_fraction_of_gemm": conv_ag_frac,
        "conv_fwd_bwd_sum_all_gflops": conv_sum_gflops,
        "conv_fwd_bwd_sum_all_fraction_of_gemm": conv_sum_frac,
        "threads": seer_bench::threads(),
        "load_average_start": load_start,
        "load_average_end": load_end,
    });
    if json {
        println!("{obj}");
    } else {
        println!(
            "label median {:.1} s (prepare {:.1}, fine-tune {:.1}, validate {:.1}) on the {} network",
            obj["label_seconds_median"].as_f64().unwrap_or(f64::NAN),
            obj["label_prepare_seconds_median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            obj["label_finetune_seconds_median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            obj["label_validate_seconds_median"]
                .as_f64()
                .unwrap_or(f64::NAN),
            obj["network"].as_str().unwrap_or("?")
        );
        if let Some(p) = parallel {
            println!(
                "labels {workers} at a time: {p:.1} s per label (one at a time: {:.1} s mean)",
                rows.iter().map(|r| r.3.total_s()).sum::<f64>() / rows.len().max(1) as f64
            );
        }
        println!(
            "ResNet-20 batch 128: QAT train {qat_train:.1} img/s, f32 train {f32_train:.1} img/s, \
             f32 eval {:.1} img/s, fake-quant eval {:.1} img/s",
            f32_eval.images_per_s, fq_eval.images_per_s
        );
        println!(
            "f32 eval on the forward pass (slow reference): {:.1} img/s",
            f32_eval_ref.images_per_s
        );
        println!(
            "conv 16->16 28x28 fwd+bwd {conv_gflops:.1} GFLOP/s = {conv_frac:.2} of the f32 GEMM rate \
             (through candle's autograd: {conv_ag_gflops:.1} GFLOP/s = {conv_ag_frac:.2}; with a sum_all \
             loss: {conv_sum_gflops:.1} GFLOP/s = {conv_sum_frac:.2})"
        );
        println!(
            "threads {}, load average {load_start:?} -> {load_end:?}",
            seer_bench::threads()
        );
    }
    Ok(())
}
