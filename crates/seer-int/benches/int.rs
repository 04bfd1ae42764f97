//! `cargo xtask bench int [--json] [--quick]`: packed-integer GEMM throughput against the
//! best f32 GEMMs in the same build (the `gemm` crate and candle's matmul), measured in the
//! same process, on 1024³ and on the im2col GEMM shapes of ResNet-20 at 28×28×1, batch 128.
//!
//! Every timing is the best of several repetitions (robust to other jobs on the machine);
//! GOP/s counts 2 operations per multiply-accumulate for both integer and f32 GEMMs.

use std::time::Instant;

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

use seer_int::Isa;
use seer_int::format::{InputSpec, IntModel, LayerWeights, ModelMeta, Node, NodeOp, QuantOut};
use seer_int::gemm::{Kernel, WeightPanel, gemm_u8i8_with};
use seer_int::pack::PackedWeights;

struct Opts {
    json: bool,
    quick: bool,
}

/// Best seconds per call of `f` over repetitions lasting at least `min_s` (≥ 3 calls).
fn best_time(mut f: impl FnMut(), min_s: f64) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 3 || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

/// Random activation codes `[m, k]` with `abits` bits and weight codes `[n, k]` with `wbits`.
fn operands(m: usize, n: usize, k: usize, abits: u32, wbits: u32) -> (Vec<u8>, PackedWeights) {
    let mut r = lcg(42 + m as u64 * 31 + k as u64);
    let amax = (1u64 << abits) - 1;
    let a: Vec<u8> = (0..m * k).map(|_| (r() % (amax + 1)) as u8).collect();
    let q = (1i64 << (wbits - 1)) - 1;
    let mut w: Vec<i8> = (0..n * k)
        .map(|_| ((r() % (2 * q as u64 + 1)) as i64 - q) as i8)
        .collect();
    // Make sure the extreme codes occur (they decide the AVX2 kernel).
    w[0] = q as i8;
    w[1] = -q as i8;
    let mut a = a;
    a[0] = amax as u8;
    let w = PackedWeights::from_codes(&w, n, k, wbits, vec![1.0; n]).expect("codes in range");
    (a, w)
}

struct IntResult {
    gops: f64,
    kernel: Kernel,
    unpack_share: f64,
}

fn bench_int(m: usize, n: usize, k: usize, abits: u32, wbits: u32, min_s: f64) -> IntResult {
    let (a, w) = operands(m, n, k, abits, wbits);
    let panel = WeightPanel::from_packed(&w);
    let mut c = vec![0i32; m * n];
    let isa = Isa::detect();
    let kernel = gemm_u8i8_with(isa, &a, m, &panel, &mut c).expect("gemm");
    let t = best_time(
        || _ = gemm_u8i8_with(isa, &a, m, &panel, &mut c).expect("gemm"),
        min_s,
    );
    let t_unpack = best_time(
        || drop(std::hint::black_box(WeightPanel::from_packed(&w))),
        min_s / 4.0,
    );
    IntResult {
        gops: 2.0 * (m * n * k) as f64 / t / 1e9,
        kernel,
        unpack_share: t_unpack / (t + t_unpack),
    }
}

fn bench_f32_gemm(m: usize, n: usize, k: usize, min_s: f64) -> f64 {
    let mut r = lcg(7);
    let a: Vec<f32> = (0..m * k).map(|_| (r() % 1000) as f32 / 1000.0).collect();
    let b: Vec<f32> = (0..n * k)
        .map(|_| (r() % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut c = vec![0f32; m * n];
    let threads = rayon::current_num_threads();
    let t = best_time(
        || {
            // SAFETY: A is [m, k], B is [n, k] (read as its transpose [k, n]), C is [m, n],
            // all row-major and alive for the call.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            }
        },
        min_s,
    );
    2.0 * (m * n * k) as f64 / t / 1e9
}

fn bench_candle(m: usize, n: usize, k: usize, min_s: f64) -> f64 {
    let dev = Device::Cpu;
    let a = Tensor::rand(0f32, 1.0, (m, k), &dev).expect("tensor");
    let b = Tensor::rand(-0.5f32, 0.5, (k, n), &dev).expect("tensor");
    let t = best_time(|| drop(a.matmul(&b).expect("matmul")), min_s);
    2.0 * (m * n * k) as f64 / t / 1e9
}

/// Gaussian-ish weights (sum of uniforms) with He scaling, `[rows, cols]`.
fn he_weights(r: &mut impl FnMut() -> u64, rows: usize, cols: usize) -> Vec<f32> {
    let std = (2.0 / cols as f32).sqrt();
    (0..rows * cols)
        .map(|_| {
            let u: f32 = (0..4)
                .map(|_| (r() % 10_000) as f32 / 10_000.0)
                .sum::<f32>()
                - 2.0;
            u * std * 1.7
        })
        .collect()
}

/// f32 weights of one conv: values, OIHW shape, stride.
type F32Conv = (Vec<f32>, [usize; 4], usize);

/// CIFAR-style ResNet-20 (option-A shortcuts) on `hw`×`hw`×1 inputs, uniform bit-widths,
/// random He-initialised weights: as the integer engine's graph, plus the f32 weights.
fn resnet20(hw: usize, wbits: u32, abits: u32) -> (IntModel, Vec<F32Conv>) {
    let mut r = lcg(11);
    let mut nodes = Vec::new();
    let mut weights = BTreeMap::new();
    let mut f32w = Vec::new();
    let out = |bits| Some(QuantOut { alpha: 3.0, bits });
    let mut conv = |name: String,
                    input: &str,
                    c_in,
                    c_out,
                    stride,
                    wb: u32,
                    residual: Option<String>,
                    nodes: &mut Vec<Node>| {
        let w = he_weights(&mut r, c_out, c_in * 9);
        let packed =
            seer_int::pack::PackedWeights::quantize(&w, c_out, c_in * 9, wb).expect("quantize");
        weights.insert(
            name.clone(),
            LayerWeights {
                packed,
                mul: None,
                bias: Some(vec![0.05; c_out]),
            },
        );
        f32w.push((w, [c_out, c_in, 3, 3], stride));
        nodes.push(Node {
            name: name.clone(),
            input: input.into(),
            op: NodeOp::Conv {
                c_in,
                c_out,
                kernel: 3,
                stride,
                pad: 1,
                w_bits: wb,
                residual,
                relu: false,
            },
            out: out(abits),
        });
        name
    };
    let mut x = conv("conv1".into(), "input", 1, 16, 1, 8, None, &mut nodes);
    let mut c_in = 16;
    for (s, c) in [16usize, 32, 64].into_iter().enumerate() {
        for b in 0..3 {
            let stride = if s > 0 && b == 0 { 2 } else { 1 };
            let shortcut = if stride == 2 {
                let pad = (c - c_in) / 2;
                let gather = (0..c)
                    .map(|j| {
                        if j >= pad && j < pad + c_in {
                            Some(j - pad)
                        } else {
                            None
                        }
                    })
                    .collect();
                let name = format!("s{s}b{b}.sc");
                nodes.push(Node {
                    name: name.clone(),
                    input: x.clone(),
                    op: NodeOp::ShortcutA { stride: 2, gather },
                    out: out(abits),
                });
                name
            } else {
                x.clone()
            };
            let a = conv(
                format!("s{s}b{b}.a"),
                &x,
                c_in,
                c,
                stride,
                wbits,
                None,
                &mut nodes,
            );
            x = conv(
                format!("s{s}b{b}.b"),
                &a,
                c,
                c,
                1,
                wbits,
                Some(shortcut),
                &mut nodes,
            );
            c_in = c;
        }
    }
    nodes.push(Node {
        name: "gap".into(),
        input: x,
        op: NodeOp::GlobalAvgPool,
        out: Some(QuantOut {
            alpha: 3.0,
            bits: 8,
        }),
    });
    let fc = he_weights(&mut r, 10, 64);
    let packed = seer_int::pack::PackedWeights::quantize(&fc, 10, 64, 8).expect("quantize");
    weights.insert(
        "fc".into(),
        LayerWeights {
            packed,
            mul: None,
            bias: None,
        },
    );
    f32w.push((fc, [10, 64, 1, 1], 1));
    nodes.push(Node {
        name: "fc".into(),
        input: "gap".into(),
        op: NodeOp::Linear {
            in_features: 64,
            out_features: 10,
            w_bits: 8,
        },
        out: None,
    });
    let meta = ModelMeta {
        format: seer_int::format::FORMAT.into(),
        version: seer_int::format::VERSION,
        arch: "resnet20".into(),
        input: InputSpec {
            channels: 1,
            height: hw,
            width: hw,
            mean: vec![0.286],
            std: 0.353,
            std_per_channel: Vec::new(),
        },
        num_classes: 10,
        policy: serde_json::json!({ "uniform": { "w_bits": wbits, "a_bits": abits } }),
        provenance: serde_json::Value::Null,
        nodes,
    };
    (IntModel::new(meta, weights).expect("valid model"), f32w)
}

/// The same ResNet-20 in f32 (conv, BN as affine, ReLU, option-A shortcut, GAP, linear),
/// with candle's conv2d or our own (`seer_kernels::conv2d`).
fn resnet20_f32(x: &Tensor, w: &[(Tensor, usize)], own: bool) -> Tensor {
    let conv = |x: &Tensor, i: usize| -> Tensor {
        let (wt, stride) = &w[i];
        let y = if own {
            seer_kernels::conv2d(x, wt, &seer_kernels::Conv2dParams::new(*stride, 1)).expect("conv")
        } else {
            x.conv2d(wt, 1, *stride, 1, 1).expect("conv")
        };
        // Folded BatchNorm as a per-channel affine map.
        let c = y.dim(1).expect("dim");
        let mul = Tensor::ones((1, c, 1, 1), candle_core::DType::F32, x.device()).expect("t");
        y.broadcast_mul(&mul)
            .expect("bn")
            .broadcast_add(&(mul * 0.05).expect("t"))
            .expect("bn")
    };
    let mut x = conv(x, 0).relu().expect("relu");
    let mut i = 1;
    for s in 0..3 {
        for b in 0..3 {
            let y = conv(&x, i).relu().expect("relu");
            let y = conv(&y, i + 1);
            let sc = if s > 0 && b == 0 {
                let (n, c, h, wd) = x.dims4().expect("dims");
                let sub = x
                    .reshape((n, c, h / 2, 2, wd / 2, 2))
                    .and_then(|t| t.narrow(3, 0, 1))
                    .and_then(|t| t.narrow(5, 0, 1))
                    .and_then(|t| t.reshape((n, c, h / 2, wd / 2)))
                    .expect("subsample");
                let z = Tensor::zeros(
                    (n, c / 2, h / 2, wd / 2),
                    candle_core::DType::F32,
                    x.device(),
                )
                .expect("zeros");
                Tensor::cat(&[&z, &sub, &z], 1).expect("cat")
            } else {
                x.clone()
            };
            x = (y + sc).expect("add").relu().expect("relu");
            i += 2;
        }
    }
    let g = x.mean((2, 3)).expect("gap");
    g.matmul(&w[i].0.reshape((10, 64)).expect("fc").t().expect("t"))
        .expect("fc")
}

struct ModelResult {
    int_ips: f64,
    size_ratio: f64,
}

fn bench_model(hw: usize, batch: usize, wbits: u32, abits: u32, min_s: f64) -> ModelResult {
    let (model, _) = resnet20(hw, wbits, abits);
    let mut r = lcg(3);
    let pixels: Vec<u8> = (0..batch * hw * hw).map(|_| (r() % 256) as u8).collect();
    let isa = Isa::detect();
    let t = best_time(
        || _ = model.forward(&pixels, batch, isa).expect("forward"),
        min_s,
    );
    // Weights plus, per output channel, a scale and a bias (conv) or a bias (linear).
    let params: usize = model
        .meta()
        .nodes
        .iter()
        .filter_map(|n| {
            let (rows, cols, _) = n.op.weight_dims()?;
            let per_out = if matches!(n.op, NodeOp::Conv { .. }) {
                2
            } else {
                1
            };
            Some(rows * cols + per_out * rows)
        })
        .sum();
    ModelResult {
        int_ips: batch as f64 / t,
        size_ratio: (4 * params) as f64 / model.storage_bytes() as f64,
    }
}

fn bench_f32_model(hw: usize, batch: usize, own: bool, min_s: f64) -> f64 {
    let (_, f32w) = resnet20(hw, 8, 8);
    let dev = Device::Cpu;
    let w: Vec<(Tensor, usize)> = f32w
        .into_iter()
        .map(|(w, shape, stride)| (Tensor::from_vec(w, &shape, &dev).expect("tensor"), stride))
        .collect();
    let x = Tensor::rand(-1f32, 1.0, (batch, 1, hw, hw), &dev).expect("tensor");
    let t = best_time(
        || _ = resnet20_f32(&x, &w, own).to_vec2::<f32>().expect("forward"),
        min_s,
    );
    batch as f64 / t
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opts = Opts {
        json: args.iter().any(|a| a == "--json"),
        quick: args.iter().any(|a| a == "--quick"),
    };
    let min_s = if opts.quick { 0.2 } else { 1.0 };
    let say = |s: String| {
        if opts.json {
            eprintln!("{s}")
        } else {
            println!("{s}")
        }
    };
    let isa = Isa::detect();
    let threads = rayon::current_num_threads();
    say(format!(
        "int bench: isa {}, {threads} threads, best-of timing (min {min_s} s per case)",
        isa.name()
    ));

    // 1024³.
    let s = 1024;
    let f32_gemm = bench_f32_gemm(s, s, s, min_s);
    let f32_candle = bench_candle(s, s, s, min_s);
    let f32_best = f32_gemm.max(f32_candle);
    let int8 = bench_int(s, s, s, 8, 8, min_s);
    let int8_rr = bench_int(s, s, s, 7, 8, min_s);
    let int4 = bench_int(s, s, s, 4, 4, min_s);
    let int2 = bench_int(s, s, s, 2, 2, min_s);
    say(format!(
        "1024³  f32 gemm crate {f32_gemm:7.1} GFLOP/s   candle matmul {f32_candle:7.1} GFLOP/s"
    ));
    for (name, r) in [
        ("u8×i8 (8/8 bits)", &int8),
        ("u7×i8 (7/8 bits)", &int8_rr),
        ("u4×i4 (4/4 bits)", &int4),
        ("u2×i2 (2/2 bits)", &int2),
    ] {
        say(format!(
            "1024³  {name:18} {:7.1} GOP/s  ×{:.2} vs best f32  kernel {:?}  unpack share {:.2}%",
            r.gops,
            r.gops / f32_best,
            r.kernel,
            100.0 * r.unpack_share
        ));
    }

    // ResNet-20 (CIFAR-style, 3 stages of 3 basic blocks) on 28×28×1 inputs, batch 128:
    // (name, m, n, k, how many convolutions of that shape).
    let b = 128;
    let shapes = [
        ("conv1 28²  1→16", b * 28 * 28, 16, 9, 1),
        ("s1 28²   16→16", b * 28 * 28, 16, 144, 6),
        ("s2 14²   16→32", b * 14 * 14, 32, 144, 1),
        ("s2 14²   32→32", b * 14 * 14, 32, 288, 5),
        ("s3 7²    32→64", b * 7 * 7, 64, 288, 1),
        ("s3 7²    64→64", b * 7 * 7, 64, 576, 5),
    ];
    let shape_min = min_s / 3.0;
    let (mut t_f32, mut t_i8, mut t_i4) = (0.0, 0.0, 0.0);
    let mut rows = Vec::new();
    for &(name, m, n, k, count) in &shapes {
        let f = bench_f32_gemm(m, n, k, shape_min).max(bench_candle(m, n, k, shape_min));
        let i8r = bench_int(m, n, k, 8, 8, shape_min);
        let i4r = bench_int(m, n, k, 4, 4, shape_min);
        let ops = 2.0 * (m * n * k) as f64 * count as f64 / 1e9;
        t_f32 += ops / f;
        t_i8 += ops / i8r.gops;
        t_i4 += ops / i4r.gops;
        say(format!(
            "{name}  m={m:6} n={n:2} k={k:3} ×{count}  f32 {f:6.1}  int8 {:6.1} (×{:.2})  int4 {:6.1} (×{:.2}, {:?})  unpack {:.2}%",
            i8r.gops,
            i8r.gops / f,
            i4r.gops,
            i4r.gops / f,
            i4r.kernel,
            100.0 * i4r.unpack_share
        ));
        rows.push(serde_json::json!({
            "shape": name, "m": m, "n": n, "k": k, "count": count,
            "f32_best_gflops": f, "int8_gops": i8r.gops, "int4_gops": i4r.gops,
            "int8_kernel": format!("{:?}", i8r.kernel), "int4_kernel": format!("{:?}", i4r.kernel),
            "int4_unpack_share": i4r.unpack_share,
        }));
    }
    say(format!(
        "ResNet-20 conv GEMMs (weighted by time): int8 ×{:.2}, int4 ×{:.2} vs best f32",
        t_f32 / t_i8,
        t_f32 / t_i4
    ));

    // Whole ResNet-20 (28×28×1, batch 128) on the integer engine vs the f32 network.
    let (hw, batch) = (28, 128);
    let candle_ips = bench_f32_model(hw, batch, false, min_s);
    let own_ips = bench_f32_model(hw, batch, true, min_s);
    let m8 = bench_model(hw, batch, 8, 8, min_s);
    let m4 = bench_model(hw, batch, 4, 4, min_s);
    say(format!(
        "ResNet-20 28×28×1 batch {batch}: f32 candle {candle_ips:7.0} img/s, f32 own kernels {own_ips:7.0} img/s"
    ));
    for (name, m) in [("int 8/8", &m8), ("int 4/4", &m4)] {
        say(format!(
            "ResNet-20 {name}: {:7.0} img/s  ×{:.2} vs candle, ×{:.2} vs own f32; {:.2}× smaller",
            m.int_ips,
            m.int_ips / candle_ips,
            m.int_ips / own_ips,
            m.size_ratio
        ));
    }

    let report = serde_json::json!({
        "bench": "int",
        "isa": isa.name(),
        "threads": threads,
        "f32_gemm_gflops_1024": f32_gemm,
        "f32_candle_gflops_1024": f32_candle,
        "int8_gops_1024": int8.gops,
        "int8_kernel_1024": format!("{:?}", int8.kernel),
        "int8_gemm_vs_f32_ratio": int8.gops / f32_best,
        "int8_reduce_range_vs_f32_ratio": int8_rr.gops / f32_best,
        "int4_gemm_vs_f32_ratio": int4.gops / f32_best,
        "int2_gemm_vs_f32_ratio": int2.gops / f32_best,
        "resnet20_int8_gemm_vs_f32_ratio": t_f32 / t_i8,
        "resnet20_int4_gemm_vs_f32_ratio": t_f32 / t_i4,
        "resnet20_shapes": rows,
        "model": "ResNet-20 (option A), 28x28x1, batch 128, random He weights, uniform 4/4 bits, unpruned",
        "f32_candle_images_per_s": candle_ips,
        "f32_own_images_per_s": own_ips,
        "int8_images_per_s": m8.int_ips,
        "int4_images_per_s": m4.int_ips,
        "model_speedup": m4.int_ips / candle_ips,
        "model_speedup_vs_own_f32": m4.int_ips / own_ips,
        "size_ratio": m4.size_ratio,
        "int8_model_speedup": m8.int_ips / candle_ips,
        "int8_model_speedup_vs_own_f32": m8.int_ips / own_ips,
        "int8_size_ratio": m8.size_ratio,
    });
    if opts.json {
        println!("{report}");
    }
}
