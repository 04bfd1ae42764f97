//! Held-out quality of the ensemble with and without the linear skip, against ridge on the
//! same splits: `cargo run --release -p seer-predictor --example skip_cv -- FILE.csv [SEEDS]`
//! (FILE: feature columns, then `top1`). Prints one line per (skip, split seed) and the means
//! (docs/benchmarks.md, "seer-predictor").

use seer_predictor::{Config, CvOptions, Samples, cross_validate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: skip_cv FILE.csv [SEEDS]")?;
    let seeds: u64 = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let samples = Samples::from_csv(std::path::Path::new(path), "top1")?;
    for skip in [false, true] {
        let (mut ours, mut ridge) = (Vec::new(), Vec::new());
        for seed in 0..seeds {
            let cfg = Config {
                skip,
                ..Config::default()
            };
            let opts = CvOptions {
                seed,
                ..CvOptions::default()
            };
            let r = cross_validate(&samples, &cfg, &opts)?;
            let t = r.summary(|s| s.kendall_tau).mean;
            let rt = r.summary(|s| s.ridge_kendall_tau).mean;
            let rmse = r.summary(|s| s.rmse).mean;
            println!(
                "skip {skip} seed {seed}: tau {t:.4} ridge {rt:.4} (diff {:+.4}) rmse {rmse:.3}",
                t - rt
            );
            ours.push(t);
            ridge.push(rt);
        }
        let m = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "skip {skip}: mean tau {:.4} ridge {:.4} diff {:+.4} over {} samples",
            m(&ours),
            m(&ridge),
            m(&ours) - m(&ridge),
            samples.len()
        );
    }
    Ok(())
}
