//! Benchmark of the CUDA kernels against their CPU counterparts in the same process:
//! dequantising GEMM (int8 and int4 weights, f32 activations) at 1024³ and on a ResNet-20
//! im2col shape, and activation fake quantization (forward + backward) on 2^22 values.
//!
//! `cargo bench -p seer-kernels-cuda --features cuda --bench cuda [-- --json]`. GPU timings use
//! device buffers (no host copies) and synchronise the stream; without the `cuda` feature or a
//! GPU only the CPU figures are printed (GPU fields are null in the JSON).

use std::time::Instant;

use seer_kernels_cuda::{
    Device, PackedWeights, dequant_gemm, fake_quant_act, fake_quant_act_backward,
};

/// Median seconds of `reps` runs of `f` (after one warm-up run).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[cfg(feature = "cuda")]
fn gpu_gemm(x: &[f32], m: usize, w: &PackedWeights) -> Option<f64> {
    let k = seer_kernels_cuda::cuda::CudaKernels::shared(0).ok()?;
    let xd = k.upload(x).ok()?;
    let wd = k.upload_packed(w).ok()?;
    Some(time(20, || {
        let y = k.dequant_gemm(&xd, m, &wd).unwrap();
        k.stream().synchronize().unwrap();
        drop(y);
    }))
}

#[cfg(not(feature = "cuda"))]
fn gpu_gemm(_: &[f32], _: usize, _: &PackedWeights) -> Option<f64> {
    None
}

#[cfg(feature = "cuda")]
fn gpu_act(x: &[f32], dy: &[f32]) -> Option<f64> {
    let k = seer_kernels_cuda::cuda::CudaKernels::shared(0).ok()?;
    let (xd, dyd) = (k.upload(x).ok()?, k.upload(dy).ok()?);
    Some(time(20, || {
        let y = k.fake_quant_act(&xd, 2.0, 4).unwrap();
        let (dx, _) = k.fake_quant_act_backward(&xd, &dyd, 2.0, 4).unwrap();
        drop((y, dx));
    }))
}

#[cfg(not(feature = "cuda"))]
fn gpu_act(_: &[f32], _: &[f32]) -> Option<f64> {
    None
}

fn opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |v| format!("{v:.2}"))
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let gpu = Device::Cuda(0).check_available();
    if let Err(e) = &gpu {
        eprintln!("note: GPU figures skipped: {e}");
    }
    let mut fields = vec![format!("\"gpu\": {}", gpu.is_ok())];
    // (name, m, n, k): 1024³ and ResNet-20's 3×3 conv of stage 3 at batch 128 (m = 128·8·8).
    for (name, m, n, k) in [("1024", 1024, 1024, 1024), ("r20_s3", 8192, 64, 576)] {
        let x = values(m * k, 1);
        let wf = values(n * k, 2);
        for bits in [8u32, 4] {
            let w = PackedWeights::quantize(&wf, n, k, bits).unwrap();
            let flop = 2.0 * (m * n * k) as f64;
            let cpu = time(3, || {
                dequant_gemm(&Device::Cpu, &x, m, &w).unwrap();
            });
            let gpu = gpu_gemm(&x, m, &w);
            let (cg, gg) = (flop / cpu / 1e9, gpu.map(|t| flop / t / 1e9));
            if !json {
                println!(
                    "dequant GEMM {name} int{bits}: CPU (dequantize + candle f32) {cg:.1} GFLOP/s, GPU {} GFLOP/s, GPU/CPU {}",
                    opt(gg),
                    opt(gg.map(|g| g / cg))
                );
            }
            fields.push(format!("\"gemm_{name}_i{bits}_cpu_gflops\": {cg:.2}"));
            fields.push(format!("\"gemm_{name}_i{bits}_gpu_gflops\": {}", opt(gg)));
            fields.push(format!(
                "\"gemm_{name}_i{bits}_gpu_vs_cpu_ratio\": {}",
                opt(gg.map(|g| g / cg))
            ));
        }
    }
    let n = 1 << 22;
    let (x, dy) = (values(n, 3), values(n, 4));
    let cpu = time(3, || {
        fake_quant_act(&Device::Cpu, &x, 2.0, 4).unwrap();
        fake_quant_act_backward(&Device::Cpu, &x, 2.0, 4, &dy).unwrap();
    });
    let gpu = gpu_act(&x, &dy);
    let (ce, ge) = (n as f64 / cpu / 1e6, gpu.map(|t| n as f64 / t / 1e6));
    if !json {
        println!(
            "fake_quant_act fwd+bwd on 2^22 values: CPU {ce:.1} M values/s, GPU {} M values/s",
            opt(ge)
        );
    }
    fields.push(format!("\"act_fq_cpu_mvalues_per_s\": {ce:.2}"));
    fields.push(format!("\"act_fq_gpu_mvalues_per_s\": {}", opt(ge)));
    if json {
        println!("{{{}}}", fields.join(", "));
    }
}
