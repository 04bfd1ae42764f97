//! Held-out quality of the ensemble's variants against ridge on the same splits:
//! `cargo run --release -p seer-predictor --example variants_cv -- FILE.csv [SEEDS] [VARIANTS]`
//! (FILE: feature columns, then `top1`; VARIANTS: comma-separated among `default`, `no-noise`,
//! `skip`, `ridge-noise`; all four when omitted). `ridge-noise` gives the ridge baseline the
//! ensemble's noise inputs too (its "ridge" column is then ridge on raw + noise columns). Prints one line per (variant, split seed) and the means
//! (docs/benchmarks.md, "seer-predictor").

use seer_predictor::{Config, CvOptions, Samples, cross_validate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: variants_cv FILE.csv [SEEDS] [VARIANTS]")?;
    let seeds: u64 = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let variants = args
        .get(3)
        .map_or("default,no-noise,skip,ridge-noise", String::as_str);
    let samples = Samples::from_csv(std::path::Path::new(path), "top1")?;
    for variant in variants.split(',') {
        let mut data = samples.clone();
        let cfg = match variant {
            "default" => Config::default(),
            "ridge-noise" => {
                data = with_noise_columns(&samples)?;
                Config {
                    noise_features: false,
                    ..Config::default()
                }
            }
            "no-noise" => Config {
                noise_features: false,
                ..Config::default()
            },
            "skip" => Config {
                skip: true,
                ..Config::default()
            },
            other => return Err(format!("unknown variant {other:?}").into()),
        };
        let (mut ours, mut ridge) = (Vec::new(), Vec::new());
        for seed in 0..seeds {
            let opts = CvOptions {
                seed,
                ..CvOptions::default()
            };
            let r = cross_validate(&data, &cfg, &opts)?;
            let t = r.summary(|s| s.kendall_tau).mean;
            let rt = r.summary(|s| s.ridge_kendall_tau).mean;
            let rmse = r.summary(|s| s.rmse).mean;
            println!(
                "{variant} seed {seed}: tau {t:.4} ridge {rt:.4} (diff {:+.4}) rmse {rmse:.3}",
                t - rt
            );
            ours.push(t);
            ridge.push(rt);
        }
        let m = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{variant}: mean tau {:.4} ridge {:.4} diff {:+.4} over {} samples",
            m(&ours),
            m(&ridge),
            m(&ours) - m(&ridge),
            samples.len()
        );
    }
    Ok(())
}

/// `samples` with one more column `noise_<name>` = 2^(-2b) per bit-width column `<name>`.
fn with_noise_columns(samples: &Samples) -> Result<Samples, seer_predictor::Error> {
    let names = samples.feature_names();
    let cols: Vec<usize> = (0..names.len())
        .filter(|&j| seer_predictor::is_bit_width_name(&names[j]))
        .collect();
    let mut all = names.to_vec();
    all.extend(cols.iter().map(|&j| format!("noise_{}", names[j])));
    let x = samples
        .x()
        .iter()
        .map(|r| {
            let mut v = r.clone();
            v.extend(cols.iter().map(|&j| seer_predictor::noise_power(r[j])));
            v
        })
        .collect();
    Samples::new(all, samples.target_name().into(), x, samples.y().to_vec())
}
