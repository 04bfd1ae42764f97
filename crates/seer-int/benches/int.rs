//! `cargo xtask bench int [--json] [--quick]
//! [--models-only | --engine-only | --exported-only | --gemm-only] [--isa NAME]
//! [--exported PATH]…`:
//! packed-integer GEMM throughput against the best f32 GEMMs in the same build (the `gemm`
//! crate and candle's matmul), measured in the same process, on 1024³ and on the im2col GEMM
//! shapes of ResNet-20 at 28×28×1, batch 128; whole-network images/s of ResNet-20 in f32
//! (candle, our own conv), int8 and int4 on the integer engine (on the detected instruction
//! set and, where that is AVX-512 VNNI, on AVX2 too), with resident and on-disk bytes; and
//! images/s of exported models (`--exported FILE|DIR`, repeatable, relative to the workspace
//! root; by default the main job's `runs/compress/model-*.safetensors` when present).
//!
//! `--isa avx2|avx512vnni|portable` runs every integer figure on that path; `--models-only`
//! skips the GEMM sections, `--engine-only` also the f32 networks, `--exported-only` all but
//! the exported models (for profiling), `--gemm-only` all but the GEMM sections. Every timing
//! is the best of several repetitions (robust to other jobs on the machine); GOP/s counts 2
//! operations per multiply-accumulate for both integer and f32 GEMMs. The PyTorch side (f32
//! and int8 PTQ of the same networks) is printed by `tools/torch_int8.py`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

#[path = "common/resnet20.rs"]
mod net;
use net::{lcg, resnet20};
use seer_int::Isa;
use seer_int::format::{IntModel, NodeOp};
use seer_int::gemm::{Kernel, WeightPanel, gemm_u8i8_with};
use seer_int::pack::PackedWeights;

struct Opts {
    json: bool,
    quick: bool,
    models_only: bool,
    /// `--gemm-only`: the GEMM sections and nothing else.
    gemm_only: bool,
    /// Only the integer engine's models (no f32 networks, no GEMM sections; for profiling).
    engine_only: bool,
    /// Only the exported models.
    exported_only: bool,
    /// The integer engine's path (detected unless `--isa`).
    isa: Isa,
    /// Exported model files to time.
    exported: Vec<PathBuf>,
}

/// The model files `p` names: itself, or the `model-*.safetensors` in a directory (sorted).
fn model_files(p: &Path) -> Vec<PathBuf> {
    if p.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("model-") && n.ends_with(".safetensors"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![p.to_path_buf()]
    }
}

/// The budget label of an exported model file: `frac-0.08` for `model-frac-0.08.safetensors`.
fn budget_label(p: &Path) -> String {
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    stem.strip_prefix("model-").unwrap_or(stem).to_string()
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

/// [`best_time`] plus the process CPU seconds per call over the same repetitions (all
/// threads; less sensitive to other jobs on the machine than wall time).
fn best_time_cpu(mut f: impl FnMut(), min_s: f64) -> (f64, f64) {
    f();
    let start = Instant::now();
    let cpu0 = seer_bench::cpu_seconds_or_zero();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 3 || start.elapsed().as_secs_f64() < min_s {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    (
        best,
        (seer_bench::cpu_seconds_or_zero() - cpu0) / reps as f64,
    )
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

#[allow(clippy::too_many_arguments)]
fn bench_int(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    abits: u32,
    wbits: u32,
    min_s: f64,
) -> IntResult {
    let (a, w) = operands(m, n, k, abits, wbits);
    let panel = WeightPanel::from_packed(&w);
    let mut c = vec![0i32; m * n];
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
    /// Images per CPU-second (all threads): `threads ×` this projects an idle machine.
    cpu_ips: f64,
    size_ratio: f64,
    /// Bytes of the exported file (packed weights, scales, biases, JSON graph).
    file_bytes: usize,
    /// Bytes held in memory after a forward call: packed weights plus the cached panels.
    resident_bytes: usize,
    /// Bytes of the same parameters in f32.
    f32_bytes: usize,
}

/// Images/s of `model` on random pixels of its input shape, batch `batch`, path `isa`; its
/// sizes.
fn time_model(model: &IntModel, batch: usize, isa: Isa, min_s: f64) -> ModelResult {
    let inp = &model.meta().input;
    let mut r = lcg(3);
    let pixels: Vec<u8> = (0..batch * inp.height * inp.width * inp.channels)
        .map(|_| (r() % 256) as u8)
        .collect();
    let (t, cpu) = best_time_cpu(
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
        cpu_ips: batch as f64 / cpu.max(1e-9),
        size_ratio: (4 * params) as f64 / model.storage_bytes() as f64,
        file_bytes: model.to_bytes().expect("serialise").len(),
        resident_bytes: model.resident_bytes(),
        f32_bytes: 4 * params,
    }
}

/// Wall and CPU images/s of `model` on the unfused layer functions (the engine before the
/// fused paths; same logits, asserted).
fn time_unfused(model: &IntModel, batch: usize, isa: Isa, min_s: f64) -> (f64, f64) {
    let inp = &model.meta().input;
    let mut r = lcg(3);
    let pixels: Vec<u8> = (0..batch * inp.height * inp.width * inp.channels)
        .map(|_| (r() % 256) as u8)
        .collect();
    let fused = model.forward(&pixels, batch, isa).expect("forward");
    let unfused = model.forward_unfused(&pixels, batch, isa).expect("forward");
    assert_eq!(fused, unfused, "fused and unfused logits differ");
    let (t, cpu) = best_time_cpu(
        || _ = model.forward_unfused(&pixels, batch, isa).expect("forward"),
        min_s,
    );
    (batch as f64 / t, batch as f64 / cpu.max(1e-9))
}

fn bench_model(
    hw: usize,
    batch: usize,
    wbits: u32,
    abits: u32,
    isa: Isa,
    min_s: f64,
) -> ModelResult {
    let (model, _) = resnet20(hw, wbits, abits);
    time_model(&model, batch, isa, min_s)
}

/// Wall and CPU images/s of the f32 ResNet-20.
fn bench_f32_model(hw: usize, batch: usize, own: bool, min_s: f64) -> (f64, f64) {
    let (_, f32w) = resnet20(hw, 8, 8);
    let dev = Device::Cpu;
    let w: Vec<(Tensor, usize)> = f32w
        .into_iter()
        .map(|(w, shape, stride)| (Tensor::from_vec(w, &shape, &dev).expect("tensor"), stride))
        .collect();
    let x = Tensor::rand(-1f32, 1.0, (batch, 1, hw, hw), &dev).expect("tensor");
    let (t, cpu) = best_time_cpu(
        || _ = resnet20_f32(&x, &w, own).to_vec2::<f32>().expect("forward"),
        min_s,
    );
    (batch as f64 / t, batch as f64 / cpu.max(1e-9))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    let isa = match value_of("--isa").last().map(String::as_str) {
        None => Isa::detect(),
        Some(name) => {
            let names: Vec<&str> = Isa::ALL.iter().map(|i| i.name()).collect();
            let Some(isa) = Isa::ALL.into_iter().find(|i| i.name() == name) else {
                eprintln!("error: unknown --isa {name} (one of {})", names.join(", "));
                std::process::exit(2);
            };
            if !isa.is_available() {
                eprintln!("error: --isa {name} is not available on this CPU");
                std::process::exit(2);
            }
            isa
        }
    };
    // `cargo bench` runs this in the crate's directory: a relative `--exported` path that does
    // not exist there is taken from the workspace root, where `cargo xtask` is run.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut exported: Vec<PathBuf> = value_of("--exported")
        .iter()
        .map(|p| {
            let p = PathBuf::from(p);
            if p.is_relative() && !p.exists() && root.join(&p).exists() {
                root.join(p)
            } else {
                p
            }
        })
        .collect();
    if exported.is_empty() {
        // The main job's default output directory (`cargo xtask compress`), when present.
        let default = root.join("runs/compress");
        if default.is_dir() {
            exported.push(default);
        }
    }
    let opts = Opts {
        json: args.iter().any(|a| a == "--json"),
        quick: args.iter().any(|a| a == "--quick"),
        models_only: args
            .iter()
            .any(|a| a == "--models-only" || a == "--engine-only" || a == "--exported-only"),
        engine_only: args.iter().any(|a| a == "--engine-only"),
        exported_only: args.iter().any(|a| a == "--exported-only"),
        gemm_only: args.iter().any(|a| a == "--gemm-only"),
        isa,
        exported: exported.iter().flat_map(|p| model_files(p)).collect(),
    };
    let min_s = if opts.quick { 0.2 } else { 1.0 };
    let say = |s: String| {
        if opts.json {
            eprintln!("{s}")
        } else {
            println!("{s}")
        }
    };
    let threads = rayon::current_num_threads();
    let load = |i: usize| {
        std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
            s.split_whitespace()
                .nth(i)
                .and_then(|v| v.parse::<f64>().ok())
        })
    };
    let load_start = load(0);
    say(format!(
        "int bench: isa {} (detected {}), {threads} threads, best-of timing (min {min_s} s per case), load average {}",
        isa.name(),
        Isa::detect().name(),
        load_start.map_or("?".into(), |l| format!("{l:.2}"))
    ));
    let mut report = serde_json::json!({
        "bench": "int",
        "isa": isa.name(),
        "isa_detected": Isa::detect().name(),
        "threads": threads,
        "load_average_start": load_start,
    });
    let put = |report: &mut serde_json::Value, key: &str, v: serde_json::Value| {
        report[key] = v;
    };

    if !opts.models_only {
        gemm_sections(&opts, min_s, &say, &mut report);
    }
    if opts.gemm_only {
        if opts.json {
            println!("{report}");
        }
        return;
    }

    if !opts.exported_only {
        // Whole ResNet-20 (28×28×1, batch 128) on the integer engine vs the f32 network.
        let (hw, batch) = (28, 128);
        let (candle_ips, candle_cpu) = if opts.engine_only {
            (f64::NAN, f64::NAN)
        } else {
            bench_f32_model(hw, batch, false, min_s)
        };
        let (own_ips, own_cpu) = if opts.engine_only {
            (f64::NAN, f64::NAN)
        } else {
            bench_f32_model(hw, batch, true, min_s)
        };
        let m8 = bench_model(hw, batch, 8, 8, isa, min_s);
        let m4 = bench_model(hw, batch, 4, 4, isa, min_s);
        say(format!(
            "ResNet-20 28×28×1 batch {batch}: f32 candle {candle_ips:7.0} img/s ({candle_cpu:.0} per CPU-s), \
             f32 own kernels {own_ips:7.0} img/s ({own_cpu:.0} per CPU-s)"
        ));
        let show = |name: &str, m: &ModelResult| {
            say(format!(
                "ResNet-20 {name}: {:7.0} img/s ({:.0} per CPU-s)  ×{:.2} vs candle, ×{:.2} vs own f32; \
                 {:.2}× smaller; file {} B, resident {} B (f32 {} B)",
                m.int_ips,
                m.cpu_ips,
                m.int_ips / candle_ips,
                m.int_ips / own_ips,
                m.size_ratio,
                m.file_bytes,
                m.resident_bytes,
                m.f32_bytes
            ))
        };
        show(&format!("int 8/8 ({})", isa.name()), &m8);
        show(&format!("int 4/4 ({})", isa.name()), &m4);
        say(format!(
            "ResNet-20 int 4/4 vs int 8/8: ×{:.2}",
            m4.int_ips / m8.int_ips
        ));
        // Before/after in the same run: the unfused layer functions on the same model.
        let (u8_ips, u8_cpu) = time_unfused(&resnet20(hw, 8, 8).0, batch, isa, min_s);
        say(format!(
            "ResNet-20 int 8/8 unfused (the engine before issue 18): {u8_ips:7.0} img/s \
             ({u8_cpu:.0} per CPU-s); fused ×{:.2} (CPU ×{:.2})",
            m8.int_ips / u8_ips,
            m8.cpu_ips / u8_cpu
        ));
        put(
            &mut report,
            "int8_unfused_images_per_s",
            serde_json::json!(u8_ips),
        );
        put(
            &mut report,
            "int8_unfused_images_per_cpu_s",
            serde_json::json!(u8_cpu),
        );
        put(
            &mut report,
            "int8_fused_vs_unfused_ratio",
            serde_json::json!(m8.int_ips / u8_ips),
        );
        put(
            &mut report,
            "model",
            serde_json::json!(
                "ResNet-20 (option A), 28x28x1, batch 128, random He weights, uniform 4/4 bits, unpruned"
            ),
        );
        for (k, v) in [
            ("f32_candle_images_per_s", candle_ips),
            ("f32_own_images_per_s", own_ips),
            ("int8_images_per_s", m8.int_ips),
            ("int4_images_per_s", m4.int_ips),
            ("int4_vs_int8_ratio", m4.int_ips / m8.int_ips),
            ("model_speedup", m4.int_ips / candle_ips),
            ("model_speedup_vs_own_f32", m4.int_ips / own_ips),
            ("size_ratio", m4.size_ratio),
            ("int8_model_speedup", m8.int_ips / candle_ips),
            ("int8_model_speedup_vs_own_f32", m8.int_ips / own_ips),
            ("int8_size_ratio", m8.size_ratio),
            ("f32_own_images_per_cpu_s", own_cpu),
            ("f32_candle_images_per_cpu_s", candle_cpu),
            ("int8_images_per_cpu_s", m8.cpu_ips),
            ("int4_images_per_cpu_s", m4.cpu_ips),
        ] {
            put(&mut report, k, serde_json::json!(v));
        }
        for (k, m) in [("int8", &m8), ("int4", &m4)] {
            put(
                &mut report,
                &format!("{k}_file_bytes"),
                serde_json::json!(m.file_bytes),
            );
            put(
                &mut report,
                &format!("{k}_resident_bytes"),
                serde_json::json!(m.resident_bytes),
            );
        }
        put(&mut report, "f32_bytes", serde_json::json!(m8.f32_bytes));
        // On a VNNI machine, the AVX2 path too (the targets are for AVX2 machines).
        if isa == Isa::Avx512Vnni && Isa::Avx2.is_available() {
            let a8 = bench_model(hw, batch, 8, 8, Isa::Avx2, min_s);
            let a4 = bench_model(hw, batch, 4, 4, Isa::Avx2, min_s);
            show("int 8/8 (avx2)", &a8);
            show("int 4/4 (avx2)", &a4);
            say(format!(
                "ResNet-20 avx2 int 4/4 vs int 8/8: ×{:.2}",
                a4.int_ips / a8.int_ips
            ));
            let (u_ips, u_cpu) = time_unfused(&resnet20(hw, 8, 8).0, batch, Isa::Avx2, min_s);
            say(format!(
                "ResNet-20 int 8/8 unfused (avx2): {u_ips:7.0} img/s ({u_cpu:.0} per CPU-s); \
                 fused ×{:.2} (CPU ×{:.2})",
                a8.int_ips / u_ips,
                a8.cpu_ips / u_cpu
            ));
            put(
                &mut report,
                "int8_fused_vs_unfused_ratio_avx2",
                serde_json::json!(a8.int_ips / u_ips),
            );
            put(
                &mut report,
                "int8_images_per_s_avx2",
                serde_json::json!(a8.int_ips),
            );
            put(
                &mut report,
                "int4_images_per_s_avx2",
                serde_json::json!(a4.int_ips),
            );
        }
    }

    // Exported models (the main job's budgets), batch 128 of random pixels.
    let batch = 128;
    let mut exported = serde_json::Map::new();
    let mut exported_bytes = serde_json::Map::new();
    let mut exported_cpu = serde_json::Map::new();
    for path in &opts.exported {
        let model = match IntModel::load(path) {
            Ok(m) => m,
            Err(e) => {
                say(format!("exported {}: not loaded ({e})", path.display()));
                continue;
            }
        };
        let m = time_model(&model, batch, isa, min_s);
        let label = budget_label(path);
        say(format!(
            "exported {label} ({}, {}): {:8.0} img/s ({:.0} per CPU-s); file {} B, resident {} B, \
             {:.1}× smaller than f32",
            model.meta().arch,
            path.display(),
            m.int_ips,
            m.cpu_ips,
            m.file_bytes,
            m.resident_bytes,
            m.size_ratio
        ));
        exported.insert(label.clone(), serde_json::json!(m.int_ips));
        exported_cpu.insert(label.clone(), serde_json::json!(m.cpu_ips));
        exported_bytes.insert(
            label,
            serde_json::json!({ "file": m.file_bytes, "resident": m.resident_bytes, "f32": m.f32_bytes }),
        );
    }
    if !exported.is_empty() {
        put(
            &mut report,
            "exported_images_per_s",
            serde_json::Value::Object(exported),
        );
        put(
            &mut report,
            "exported_bytes",
            serde_json::Value::Object(exported_bytes),
        );
    }
    let load_end = load(0);
    say(format!(
        "load average at the end: {}",
        load_end.map_or("?".into(), |l| format!("{l:.2}"))
    ));
    put(&mut report, "load_average_end", serde_json::json!(load_end));
    if opts.json {
        println!("{report}");
    }
}

/// The GEMM sections: 1024³ and ResNet-20's im2col shapes, integer vs the best f32 GEMM.
fn gemm_sections(opts: &Opts, min_s: f64, say: &impl Fn(String), report: &mut serde_json::Value) {
    let isa = opts.isa;
    // 1024³.
    let s = 1024;
    let f32_gemm = bench_f32_gemm(s, s, s, min_s);
    let f32_candle = bench_candle(s, s, s, min_s);
    let f32_best = f32_gemm.max(f32_candle);
    let int8 = bench_int(isa, s, s, s, 8, 8, min_s);
    let int8_rr = bench_int(isa, s, s, s, 7, 8, min_s);
    let int4 = bench_int(isa, s, s, s, 4, 4, min_s);
    let int2 = bench_int(isa, s, s, s, 2, 2, min_s);
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
    let mut avx2_ratio = None;
    if isa == Isa::Avx512Vnni && Isa::Avx2.is_available() {
        let a8 = bench_int(Isa::Avx2, s, s, s, 8, 8, min_s);
        say(format!(
            "1024³  u8×i8 (8/8 bits) on avx2 {:7.1} GOP/s  ×{:.2} vs best f32  kernel {:?}",
            a8.gops,
            a8.gops / f32_best,
            a8.kernel
        ));
        avx2_ratio = Some(a8.gops / f32_best);
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
        let i8r = bench_int(isa, m, n, k, 8, 8, shape_min);
        let i4r = bench_int(isa, m, n, k, 4, 4, shape_min);
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
    for (k, v) in [
        ("f32_gemm_gflops_1024", serde_json::json!(f32_gemm)),
        ("f32_candle_gflops_1024", serde_json::json!(f32_candle)),
        ("int8_gops_1024", serde_json::json!(int8.gops)),
        (
            "int8_kernel_1024",
            serde_json::json!(format!("{:?}", int8.kernel)),
        ),
        (
            "int8_gemm_vs_f32_ratio",
            serde_json::json!(int8.gops / f32_best),
        ),
        ("int8_gemm_vs_f32_ratio_avx2", serde_json::json!(avx2_ratio)),
        (
            "int8_reduce_range_vs_f32_ratio",
            serde_json::json!(int8_rr.gops / f32_best),
        ),
        (
            "int4_gemm_vs_f32_ratio",
            serde_json::json!(int4.gops / f32_best),
        ),
        (
            "int2_gemm_vs_f32_ratio",
            serde_json::json!(int2.gops / f32_best),
        ),
        (
            "resnet20_int8_gemm_vs_f32_ratio",
            serde_json::json!(t_f32 / t_i8),
        ),
        (
            "resnet20_int4_gemm_vs_f32_ratio",
            serde_json::json!(t_f32 / t_i4),
        ),
        ("resnet20_shapes", serde_json::json!(rows)),
    ] {
        report[k] = v;
    }
}
