//! Best-of-many single-thread timing of the fused conv + requantisation on every ResNet-20
//! (28×28×1) layer shape at batch 2 on the AVX2 path (forced, also on AVX-512 machines), for
//! 8/8-bit codes (the `avx2-wide` kernel) and 4/4-bit codes (activations 0..=15, weights
//! −7..=7: the `avx2-i16` kernel); short calls, the two bit-widths interleaved round by round,
//! so the figures are robust to a loaded machine.
use seer_int::Isa;
use seer_int::fused::conv2d_requant;
use seer_int::gemm::{Kernel, WeightPanel};
use seer_int::layers::{ConvGeom, Requant, conv_panel};
use seer_int::pack::PackedWeights;
use std::time::Instant;

/// One layer's operands at one bit-width.
struct Case {
    g: ConvGeom,
    x: Vec<u8>,
    panel: WeightPanel,
    rq: Requant,
    out: Vec<u8>,
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // (hw, c_in, c_out, stride, count in ResNet-20)
    let shapes = [
        (28, 1, 16, 1, 1),
        (28, 16, 16, 1, 6),
        (28, 16, 32, 2, 1),
        (14, 32, 32, 1, 5),
        (14, 32, 64, 2, 1),
        (7, 64, 64, 1, 5),
    ];
    let mut s = 7u64;
    let mut r = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bits = [8u32, 4];
    let mut totals = [0.0f64; 2];
    println!("layer (batch 2, 1 thread, AVX2)     8/8 µs    4/4 µs   ratio");
    for (hw, c_in, c_out, stride, count) in shapes {
        let g = ConvGeom {
            batch: 2,
            h: hw,
            w: hw,
            c_in,
            c_out,
            kh: 3,
            kw: 3,
            stride,
            pad: 1,
            pad_end: 1,
        };
        let mut cases: Vec<Case> = bits
            .iter()
            .map(|&b| {
                let amax = (1u64 << b) - 1;
                let q = (1i64 << (b - 1)) - 1;
                let x: Vec<u8> = (0..g.input_len())
                    .map(|_| (r() % (amax + 1)) as u8)
                    .collect();
                let mut codes: Vec<i8> = (0..c_out * g.k())
                    .map(|_| ((r() % (2 * q as u64 + 1)) as i64 - q) as i8)
                    .collect();
                codes[0] = q as i8;
                let wp =
                    PackedWeights::from_codes(&codes, c_out, g.k(), b, vec![1.0; c_out]).unwrap();
                Case {
                    g,
                    x,
                    panel: conv_panel(&wp, &g).unwrap(),
                    rq: Requant::new(vec![1e-3; c_out], vec![0.05; c_out], 3.0, b).unwrap(),
                    out: vec![0u8; g.rows() * c_out],
                }
            })
            .collect();
        let mut best = [f64::INFINITY; 2];
        let mut kern = [Kernel::Portable; 2];
        pool.install(|| {
            for _ in 0..rounds {
                for (i, c) in cases.iter_mut().enumerate() {
                    for _ in 0..20 {
                        let t = Instant::now();
                        kern[i] = conv2d_requant(
                            &c.x,
                            &c.g,
                            &c.panel,
                            Isa::Avx2,
                            &c.rq,
                            None,
                            &mut c.out,
                        )
                        .unwrap();
                        best[i] = best[i].min(t.elapsed().as_secs_f64());
                    }
                }
            }
        });
        println!(
            "{hw:>2}² {c_in:>2}->{c_out:<2} s{stride} ×{count}            {:>8.1}  {:>8.1}   {:.2}  ({:?} / {:?})",
            best[0] * 1e6,
            best[1] * 1e6,
            best[0] / best[1],
            kern[0],
            kern[1]
        );
        for (t, b) in totals.iter_mut().zip(best) {
            *t += b * count as f64;
        }
    }
    println!(
        "network convs per image (1 thread): 8/8 {:.1} µs, 4/4 {:.1} µs, ratio {:.3}",
        totals[0] * 1e6 / 2.0,
        totals[1] * 1e6 / 2.0,
        totals[0] / totals[1]
    );
    // The unfused GEMM (`gemm_u8i8_with`, A read in place or packed per strip): 8/8 and 4/4 bits.
    let (m, n, k) = (48, 256, 1024);
    for bits in [8u32, 4] {
        let amax = (1u64 << bits) - 1;
        let q = (1i64 << (bits - 1)) - 1;
        let a: Vec<u8> = (0..m * k).map(|_| (r() % (amax + 1)) as u8).collect();
        let mut codes: Vec<i8> = (0..n * k)
            .map(|_| ((r() % (2 * q as u64 + 1)) as i64 - q) as i8)
            .collect();
        codes[0] = q as i8;
        let panel = seer_int::gemm::WeightPanel::from_codes(&codes, n, k).unwrap();
        let mut c = vec![0i32; m * n];
        let mut best = f64::INFINITY;
        pool.install(|| {
            for _ in 0..200 {
                let t = Instant::now();
                seer_int::gemm::gemm_u8i8_with(Isa::Avx2, &a, m, &panel, &mut c).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
        });
        println!(
            "gemm {m}x{n}x{k} {bits}/{bits} bits: {:.1} µs ({:.1} GOP/s, 1 thread)",
            best * 1e6,
            2.0 * (m * n * k) as f64 / best / 1e9
        );
    }
}
