//! `cargo xtask bench kernels [--json]`: seer-kernels' training ops against candle's
//! built-ins in the same process: (a) every ResNet-20 conv shape at batch 128 on 28×28×1
//! input, forward and forward+backward; (b) a full ResNet-20 training step (conv + BN +
//! ReLU + option-A shortcuts + avgpool + linear + cross-entropy, backward, SGD update);
//! (c) candle's f32 matmul GFLOP/s on 1024³ as the roofline reference.
//!
//! Options: `--json` (one JSON object), `--quick` (fewer repetitions), `--steps N`
//! (timed training steps for our ops; candle gets fewer, it is much slower).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use seer_kernels::{
    Conv2dParams, add_relu, batch_norm_relu_train, batch_norm_train, conv2d, shortcut_a,
};

type R<T> = candle_core::Result<T>;

fn err(e: seer_kernels::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// Median over `rounds` of the per-round ratio `time(b) / time(a)`, `a` and `b` timed back to
/// back in each round so that a changing machine load affects both alike. Also returns the
/// ratio of total CPU times (robust when other processes share the cores).
fn interleaved_ratio<A: FnMut() -> R<()>, B: FnMut() -> R<()>>(
    rounds: usize,
    mut a: A,
    mut b: B,
) -> R<(f64, f64)> {
    a()?;
    b()?;
    let (mut ratios, mut ca, mut cb) = (Vec::new(), 0.0, 0.0);
    for _ in 0..rounds.max(1) {
        let (s, c) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        a()?;
        let (ta, c2) = (s.elapsed().as_secs_f64(), seer_bench::cpu_seconds_or_zero());
        let s = Instant::now();
        b()?;
        let (tb, c3) = (s.elapsed().as_secs_f64(), seer_bench::cpu_seconds_or_zero());
        ratios.push(tb / ta);
        ca += c2 - c;
        cb += c3 - c2;
    }
    ratios.sort_by(f64::total_cmp);
    Ok((
        ratios[ratios.len() / 2],
        if ca > 0.0 { cb / ca } else { f64::NAN },
    ))
}

/// Median wall time in seconds of `reps` runs of `f` after one warm-up run.
fn time<F: FnMut() -> R<()>>(reps: usize, mut f: F) -> R<f64> {
    f()?;
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64())
        })
        .collect::<R<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

struct ConvShape {
    name: &'static str,
    cin: usize,
    cout: usize,
    hw: usize,
    stride: usize,
}

const SHAPES: &[ConvShape] = &[
    ConvShape {
        name: "stem 1->16 28x28",
        cin: 1,
        cout: 16,
        hw: 28,
        stride: 1,
    },
    ConvShape {
        name: "16->16 28x28",
        cin: 16,
        cout: 16,
        hw: 28,
        stride: 1,
    },
    ConvShape {
        name: "16->32 s2 28->14",
        cin: 16,
        cout: 32,
        hw: 28,
        stride: 2,
    },
    ConvShape {
        name: "32->32 14x14",
        cin: 32,
        cout: 32,
        hw: 14,
        stride: 1,
    },
    ConvShape {
        name: "32->64 s2 14->7",
        cin: 32,
        cout: 64,
        hw: 14,
        stride: 2,
    },
    ConvShape {
        name: "64->64 7x7",
        cin: 64,
        cout: 64,
        hw: 7,
        stride: 1,
    },
];

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Ours,
    Candle,
}

fn conv(imp: Impl, x: &Tensor, w: &Tensor, stride: usize) -> R<Tensor> {
    match imp {
        Impl::Ours => conv2d(x, w, &Conv2dParams::new(stride, 1)).map_err(err),
        Impl::Candle => x.conv2d(w, 1, stride, 1, 1),
    }
}

struct ConvRow {
    name: &'static str,
    gflop: f64,
    fwd: [f64; 2],
    fwd_bwd: [f64; 2],
}

fn bench_convs(n: usize, reps: usize) -> R<Vec<ConvRow>> {
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    for s in SHAPES {
        let x = Var::randn(0f32, 1., (n, s.cin, s.hw, s.hw), &dev)?;
        let w = Var::randn(0f32, 0.1, (s.cout, s.cin, 3, 3), &dev)?;
        let oh = (s.hw + 2 - 3) / s.stride + 1;
        let gflop = 2.0 * (n * s.cout * oh * oh * s.cin * 9) as f64 / 1e9;
        let mut fwd = [0.0; 2];
        let mut fwd_bwd = [0.0; 2];
        for (i, imp) in [Impl::Ours, Impl::Candle].into_iter().enumerate() {
            fwd[i] = time(reps, || {
                conv(imp, x.as_tensor(), w.as_tensor(), s.stride).map(drop)
            })?;
            fwd_bwd[i] = time(reps, || {
                // backward() seeds dy = 1: no extra element-wise ops around the conv.
                conv(imp, x.as_tensor(), w.as_tensor(), s.stride)?
                    .backward()
                    .map(drop)
            })?;
        }
        rows.push(ConvRow {
            name: s.name,
            gflop,
            fwd,
            fwd_bwd,
        });
    }
    Ok(rows)
}

/// CIFAR-style ResNet-20 (3 stages × 3 basic blocks, 16/32/64 channels, option-A shortcuts).
struct ResNet20 {
    convs: Vec<Var>,
    bn: Vec<(Var, Var)>,
    fc_w: Var,
    fc_b: Var,
}

impl ResNet20 {
    fn new(cin: usize, classes: usize) -> R<Self> {
        let dev = Device::Cpu;
        let mut convs = Vec::new();
        let mut bn = Vec::new();
        let mut add = |ci: usize, co: usize| -> R<()> {
            let std = (2.0 / (ci * 9) as f64).sqrt();
            convs.push(Var::randn(0f32, std as f32, (co, ci, 3, 3), &dev)?);
            bn.push((
                Var::ones(co, DType::F32, &dev)?,
                Var::zeros(co, DType::F32, &dev)?,
            ));
            Ok(())
        };
        add(cin, 16)?;
        let mut c = 16;
        for stage in 0..3 {
            let co = 16 << stage;
            for _ in 0..3 {
                add(c, co)?;
                add(co, co)?;
                c = co;
            }
        }
        Ok(Self {
            convs,
            bn,
            fc_w: Var::randn(0f32, 0.1, (classes, 64), &dev)?,
            fc_b: Var::zeros(classes, DType::F32, &dev)?,
        })
    }

    fn vars(&self) -> Vec<&Var> {
        let mut v: Vec<&Var> = self.convs.iter().collect();
        for (g, b) in &self.bn {
            v.push(g);
            v.push(b);
        }
        v.push(&self.fc_w);
        v.push(&self.fc_b);
        v
    }

    /// conv → BN (train mode) → optional ReLU.
    fn cbr(&self, imp: Impl, i: usize, x: &Tensor, stride: usize, act: bool) -> R<Tensor> {
        let y = conv(imp, x, self.convs[i].as_tensor(), stride)?;
        let (g, b) = (self.bn[i].0.as_tensor(), self.bn[i].1.as_tensor());
        match imp {
            Impl::Ours if act => Ok(batch_norm_relu_train(&y, g, b, 1e-5).map_err(err)?.y),
            Impl::Ours => Ok(batch_norm_train(&y, g, b, 1e-5).map_err(err)?.y),
            Impl::Candle => {
                let y = candle_bn(&y, g, b)?;
                if act { y.relu() } else { Ok(y) }
            }
        }
    }

    fn forward(&self, imp: Impl, x: &Tensor) -> R<Tensor> {
        let mut h = self.cbr(imp, 0, x, 1, true)?;
        let mut i = 1;
        for stage in 0..3 {
            for block in 0..3 {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let a = self.cbr(imp, i, &h, stride, true)?;
                let b = self.cbr(imp, i + 1, &a, 1, false)?;
                h = match imp {
                    Impl::Ours => {
                        let short = if stride == 2 {
                            shortcut_a(&h, 16 << stage).map_err(err)?
                        } else {
                            h.clone()
                        };
                        add_relu(&b, &short).map_err(err)?
                    }
                    Impl::Candle => {
                        let short = if stride == 2 {
                            candle_shortcut_a(&h, 16 << stage)?
                        } else {
                            h.clone()
                        };
                        (b + short)?.relu()?
                    }
                };
                i += 2;
            }
        }
        let pooled = h.mean((2, 3))?;
        pooled
            .matmul(&self.fc_w.t()?)?
            .broadcast_add(self.fc_b.as_tensor())
    }

    /// One SGD training step; returns the loss.
    fn step(&self, imp: Impl, x: &Tensor, labels: &Tensor, lr: f64) -> R<f32> {
        let logits = self.forward(imp, x)?;
        let loss = candle_nn::loss::cross_entropy(&logits, labels)?;
        let grads = loss.backward()?;
        for v in self.vars() {
            if let Some(g) = grads.get(v.as_tensor()) {
                v.set(&(v.as_tensor() - (g * lr)?)?)?;
            }
        }
        loss.to_scalar::<f32>()
    }
}

/// Train-mode BatchNorm from candle's built-in element-wise ops (what a candle user writes).
fn candle_bn(x: &Tensor, g: &Tensor, b: &Tensor) -> R<Tensor> {
    let c = x.dim(1)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let xhat = xc.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    xhat.broadcast_mul(&g.reshape((1, c, 1, 1))?)?
        .broadcast_add(&b.reshape((1, c, 1, 1))?)
}

/// Option-A shortcut: every other pixel, channels zero-padded to `cout` (half each side).
fn candle_shortcut_a(x: &Tensor, cout: usize) -> R<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let sub = x
        .reshape((n, c, h / 2, 2, w / 2, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, h / 2, w / 2))?;
    let p = (cout - c) / 2;
    let z = Tensor::zeros((n, p, h / 2, w / 2), DType::F32, x.device())?;
    Tensor::cat(&[&z, &sub, &z], 1)
}

fn matmul_gflops(reps: usize) -> R<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let b = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let t = time(reps, || a.matmul(&b).map(drop))?;
    Ok(2.0 * 1024f64.powi(3) / t / 1e9)
}

fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 2 } else { 5 });
    let reps = if quick { 3 } else { 7 };
    let n = 128;
    let threads = rayon::current_num_threads();

    if args.iter().any(|a| a == "--ours-only") {
        // Profiling aid: only our training steps (e.g. under `perf record`).
        let net = ResNet20::new(1, 10)?;
        let x = Tensor::randn(0f32, 1., (n, 1, 28, 28), &Device::Cpu)?;
        let labels = Tensor::from_vec(
            (0..n as u32).map(|i| i % 10).collect::<Vec<u32>>(),
            n,
            &Device::Cpu,
        )?;
        let t = time(steps, || net.step(Impl::Ours, &x, &labels, 1e-3).map(drop))?;
        println!("ours: {:.1} ms/step, {:.1} img/s", t * 1e3, n as f64 / t);
        return Ok(());
    }
    let mm = matmul_gflops(reps)?;
    let rows = bench_convs(n, reps)?;

    let net = ResNet20::new(1, 10)?;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (n, 1, 28, 28), &dev)?;
    let labels = Tensor::from_vec((0..n as u32).map(|i| i % 10).collect::<Vec<u32>>(), n, &dev)?;
    // Our ops are much faster: time more steps for them (medians of single steps).
    let t_ours = time(steps, || net.step(Impl::Ours, &x, &labels, 1e-3).map(drop))?;
    let t_candle = time(steps.div_ceil(2).max(1), || {
        net.step(Impl::Candle, &x, &labels, 1e-3).map(drop)
    })?;
    // Same-run ratios measured back to back (robust to the load drifting during the run).
    let (speedup_interleaved, speedup_cpu) = interleaved_ratio(
        if quick { 1 } else { 3 },
        || net.step(Impl::Ours, &x, &labels, 1e-3).map(drop),
        || net.step(Impl::Candle, &x, &labels, 1e-3).map(drop),
    )?;
    let ks = &SHAPES[1];
    let kx = Var::randn(0f32, 1., (n, ks.cin, ks.hw, ks.hw), &dev)?;
    let kw = Var::randn(0f32, 0.1, (ks.cout, ks.cin, 3, 3), &dev)?;
    let ma = Tensor::randn(0f32, 1., (1024, 1024), &dev)?;
    let key_flop = 3.0 * rows[1].gflop * 1e9;
    let mm_flop = 2.0 * 1024f64.powi(3);
    // time(conv fwd+bwd) / time(matmul) → fraction = (conv flop / mm flop) / that ratio
    let (t_ratio, cpu_ratio) = interleaved_ratio(
        reps,
        || ma.matmul(&ma).map(drop),
        || {
            conv(Impl::Ours, kx.as_tensor(), kw.as_tensor(), 1)?
                .backward()
                .map(drop)
        },
    )?;
    let frac_interleaved = key_flop / mm_flop / t_ratio;
    let frac_cpu = key_flop / mm_flop / cpu_ratio;
    let ips_ours = n as f64 / t_ours;
    let ips_candle = n as f64 / t_candle;

    let key = &rows[1];
    let key_gflops = 3.0 * key.gflop / key.fwd_bwd[0];
    if json {
        let layers: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "layer": r.name,
                    "fwd_ms_ours": r.fwd[0] * 1e3, "fwd_ms_candle": r.fwd[1] * 1e3,
                    "fwd_bwd_ms_ours": r.fwd_bwd[0] * 1e3, "fwd_bwd_ms_candle": r.fwd_bwd[1] * 1e3,
                    "fwd_gflops_ours": r.gflop / r.fwd[0], "fwd_bwd_gflops_ours": 3.0 * r.gflop / r.fwd_bwd[0],
                    "fwd_speedup": r.fwd[1] / r.fwd[0], "fwd_bwd_speedup": r.fwd_bwd[1] / r.fwd_bwd[0],
                })
            })
            .collect();
        let obj = serde_json::json!({
            "threads": threads,
            "batch": n,
            "matmul_gflops": mm,
            "conv_fwd_bwd_gflops_ours": key_gflops,
            "conv_fwd_bwd_fraction_of_matmul": key_gflops / mm,
            "train_img_per_s_ours": ips_ours,
            "train_img_per_s_candle": ips_candle,
            "train_speedup": ips_ours / ips_candle,
            "train_step_ms_ours": t_ours * 1e3,
            "train_step_ms_candle": t_candle * 1e3,
            "train_speedup_interleaved": speedup_interleaved,
            "train_speedup_cpu_time": speedup_cpu,
            "conv_fwd_bwd_fraction_of_matmul_interleaved": frac_interleaved,
            "conv_fwd_bwd_fraction_of_matmul_cpu_time": frac_cpu,
            "layers": layers,
        });
        println!("{obj}");
    } else {
        println!(
            "seer-kernels benchmark: batch {n}, {threads} rayon threads, 28x28x1 ResNet-20 shapes"
        );
        println!("roofline: candle f32 matmul 1024^3: {mm:.1} GFLOP/s");
        println!(
            "{:<18} {:>9} {:>9} {:>7} {:>10} {:>10} {:>7} {:>12}",
            "conv 3x3", "fwd ours", "candle", "x", "f+b ours", "candle", "x", "f+b GFLOP/s"
        );
        for r in &rows {
            println!(
                "{:<18} {:>7.2}ms {:>7.2}ms {:>6.1}x {:>8.2}ms {:>8.2}ms {:>6.1}x {:>12.1}",
                r.name,
                r.fwd[0] * 1e3,
                r.fwd[1] * 1e3,
                r.fwd[1] / r.fwd[0],
                r.fwd_bwd[0] * 1e3,
                r.fwd_bwd[1] * 1e3,
                r.fwd_bwd[1] / r.fwd_bwd[0],
                3.0 * r.gflop / r.fwd_bwd[0]
            );
        }
        println!(
            "16->16 28x28 fwd+bwd: {key_gflops:.1} GFLOP/s = {:.0}% of matmul",
            100.0 * key_gflops / mm
        );
        println!(
            "  interleaved with matmul: {:.0}% (wall), {:.0}% (process CPU time)",
            100.0 * frac_interleaved,
            100.0 * frac_cpu
        );
        println!(
            "ResNet-20 train step (batch {n}): ours {:.1} ms ({ips_ours:.1} img/s), candle {:.1} ms ({ips_candle:.1} img/s): {:.2}x",
            t_ours * 1e3,
            t_candle * 1e3,
            ips_ours / ips_candle
        );
    }
    if !json {
        println!(
            "  interleaved ours/candle steps: {speedup_interleaved:.2}x (wall), {speedup_cpu:.2}x (process CPU time)"
        );
    }
    Ok(())
}
