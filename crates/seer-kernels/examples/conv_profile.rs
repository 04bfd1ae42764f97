//! Profiling helper: GFLOP/s of each conv phase on the ResNet-20 shapes, by wall time and
//! by process CPU time / threads (robust when other processes share the cores).
use std::time::Instant;

fn main() {
    let threads = rayon::current_num_threads() as f64;
    let mut timer = |f: &mut dyn FnMut()| -> f64 {
        f();
        let (w0, c0) = (Instant::now(), seer_bench::cpu_seconds_or_zero());
        let mut n = 0;
        while w0.elapsed().as_secs_f64() < 0.5 {
            f();
            n += 1;
        }
        let wall = w0.elapsed().as_secs_f64() / n as f64;
        let cpu = (seer_bench::cpu_seconds_or_zero() - c0) / n as f64 / threads;
        println!(
            "    wall {:.2} ms, cpu/threads {:.2} ms",
            wall * 1e3,
            cpu * 1e3
        );
        cpu
    };
    let a = candle_core::Tensor::randn(0f32, 1., (1024, 1024), &candle_core::Device::Cpu).unwrap();
    let t = timer(&mut || drop(a.matmul(&a).unwrap()));
    println!(
        "matmul 1024^3: {:.1} GFLOP/s (cpu time)",
        2.0 * 1024f64.powi(3) / t / 1e9
    );
    // Conv 16->16 28x28 forward + backward three ways, as the label bench's three conv
    // fractions: through candle with a `sum_all` loss (its broadcast gradient added into
    // zeros first), the kernels alone (`conv2d_backward` on a given gradient), and through
    // candle's autograd with the gradient of ones given (a non-scalar root's seed).
    let dev = candle_core::Device::Cpu;
    let x = candle_core::Var::randn(0f32, 1., (128, 16, 28, 28), &dev).unwrap();
    let w = candle_core::Var::randn(0f32, 0.1, (16, 16, 3, 3), &dev).unwrap();
    let p = seer_kernels::Conv2dParams::new(1, 1);
    let dy = candle_core::Tensor::ones((128, 16, 28, 28), candle_core::DType::F32, &dev).unwrap();
    for (how, name) in [
        (2, "through candle with a sum_all loss"),
        (0, "kernels alone (conv2d, conv2d_backward)"),
        (1, "through candle, gradient of ones given"),
    ] {
        let t = timer(&mut || {
            let y = seer_kernels::conv2d(x.as_tensor(), w.as_tensor(), &p).unwrap();
            match how {
                0 => drop(
                    seer_kernels::conv2d_backward(x.as_tensor(), w.as_tensor(), &dy, &p).unwrap(),
                ),
                1 => drop(y.backward().unwrap()),
                _ => drop(y.sum_all().unwrap().backward().unwrap()),
            }
        });
        println!(
            "conv 16->16 28x28 fwd+bwd, {name}: {:.1} GFLOP/s",
            3.0 * 2.0 * (128 * 16 * 28 * 28 * 16 * 9) as f64 / t / 1e9
        );
    }
    let y = seer_kernels::conv2d(
        x.as_tensor(),
        w.as_tensor(),
        &seer_kernels::Conv2dParams::new(1, 1),
    )
    .unwrap();
    println!("  of which: forward op alone");
    timer(&mut || {
        drop(
            seer_kernels::conv2d(
                x.as_tensor(),
                w.as_tensor(),
                &seer_kernels::Conv2dParams::new(1, 1),
            )
            .unwrap(),
        )
    });
    println!("  sum_all");
    timer(&mut || drop(y.sum_all().unwrap()));
    println!("  broadcast gradient made contiguous (1.6 M floats)");
    let ones = candle_core::Tensor::ones((), candle_core::DType::F32, &dev).unwrap();
    timer(&mut || drop(ones.broadcast_as(y.shape()).unwrap().contiguous().unwrap()));
    println!("  zeros_like + add (candle's gradient accumulation of one 1.6 M-float tensor)");
    timer(&mut || drop(y.zeros_like().unwrap().add(&y).unwrap()));
    let p1 = seer_kernels::Conv2dParams::new(1, 1);
    let p2 = seer_kernels::Conv2dParams::new(2, 1);
    for (x, w, p) in [
        ([128, 16, 28, 28], [16, 16, 3, 3], p1),
        ([128, 16, 28, 28], [32, 16, 3, 3], p2),
        ([128, 32, 14, 14], [32, 32, 3, 3], p1),
        ([128, 32, 14, 14], [64, 32, 3, 3], p2),
        ([128, 64, 7, 7], [64, 64, 3, 3], p1),
        (
            [128, 16, 28, 28],
            [32, 16, 1, 1],
            seer_kernels::Conv2dParams::new(2, 0),
        ),
        (
            [128, 32, 14, 14],
            [64, 32, 1, 1],
            seer_kernels::Conv2dParams::new(2, 0),
        ),
    ] {
        println!("{x:?} {w:?}");
        for (k, t, gf) in seer_kernels::__profile(&x, &w, &p, &mut timer).unwrap() {
            println!("  {k}: {:.1} GFLOP/s", gf / t);
        }
    }
}
