//! `cargo xtask bench int [--json] [--quick]`: packed-integer GEMM throughput against the
//! best f32 GEMMs in the same build (the `gemm` crate and candle's matmul), measured in the
//! same process, on 1024³ and on the im2col GEMM shapes of ResNet-20 at 28×28×1, batch 128.
//!
//! Every timing is the best of several repetitions (robust to other jobs on the machine);
//! GOP/s counts 2 operations per multiply-accumulate for both integer and f32 GEMMs.

use std::time::Instant;

use candle_core::{Device, Tensor};
use seer_kernels::int::Isa;
use seer_kernels::int::gemm::{Kernel, WeightPanel, gemm_u8i8_with};
use seer_kernels::int::pack::PackedWeights;

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
    });
    if opts.json {
        println!("{report}");
    }
}
