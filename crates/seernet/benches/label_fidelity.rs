//! `cargo xtask bench label-fidelity [--json]`: does the short labelling fine-tune rank
//! policies the way the final fine-tune does (issue 15, item 4)? A predictor trained on labels
//! can only be as good as that ranking.
//!
//! Setting: the ResNet-20 preset of the main job (`seernet compress --arch resnet20`: the
//! committed ResNet-20 baseline, Fashion-MNIST, the default search space, first and last layers
//! at 8 bits). `--policies N` (default 24) policies stratified over log-BOPs from 0.5 × the
//! BOPs of uniform w2a2 to those of uniform w4a4 (the preset's budgets), seed `--seed`.
//! Each policy gets
//! - the **reference**: the main job's final fine-tune (`--final-steps`, default 300 steps of
//!   batch 64, lr 0.01, the slimmed network), then top-1 on the 5,000-image validation split;
//! - one label per **protocol**: `S` fine-tune steps (0 = only calibration and BatchNorm
//!   re-estimation) at learning rate `lr`, top-1 on 1,000, 2,000 and all 5,000 validation
//!   images (fixed seeded subsets, the same for every policy; one fine-tune serves the three).
//!
//! The table gives, per protocol and validation subset, Kendall's τ-b between label and
//! reference over the policies done, and the median seconds of one label (fine-tune +
//! validation on that subset; load and calibration included). The adopted protocol is the
//! cheapest with τ ≥ 0.8 (docs/benchmarks.md, "Label fidelity").
//!
//! Every fine-tune's result is appended to `--store DIR/results.jsonl` (default
//! `target/bench-label-fidelity`) as soon as it finishes: an interrupted run resumes where it
//! stopped, and a run with more policies reuses the earlier ones. Policies are done one at a
//! time, every protocol of a policy before the next, so partial runs give τ over the policies
//! finished.
//!
//! Flags: `--json`, `--policies 24`, `--final-steps 300`, `--protocols 0:0.01,25:0.01,...`
//! (steps:lr pairs), `--seed 0`, `--store DIR`, `--report-only` (the table from the store,
//! nothing computed). Needs `cargo xtask fetch-data fashion-mnist`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use seer_policy::{Policy, SearchSpace};
use seer_predictor::kendall_tau_b;
use seernet::budget::Budget;
use seernet::nn::checkpoint;
use seernet::nn::data::{DataSource, Dataset, Normalize, Splits};
use seernet::nn::labeler::finetune_augment;
use seernet::nn::train::{self, FinetuneNetwork, TrainConfig};
use seernet::pipeline::{Config, sampling};
use seernet::store::{label_seed, policy_hash};
use serde::{Deserialize, Serialize};
use serde_json::json;

use seer_bench::median;

mod common;
use common::{arg, root};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Validation subsets (first N images of the validation split) every label is scored on.
const SUBSETS: [usize; 3] = [1000, 2000, 5000];

/// Default protocols: (steps, lr).
const PROTOCOLS: &str = "0:0.01,25:0.01,50:0.01,100:0.01,50:0.02";

/// One finished fine-tune (a line of `results.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Row {
    /// Policy hash.
    hash: String,
    /// `final` or `label`.
    kind: String,
    steps: usize,
    lr: f64,
    /// Top-1 (%) on N validation images (a fixed seeded subset), per N of [`SUBSETS`]
    /// (`final`: 5,000 only).
    top1: Vec<(usize, f64)>,
    /// Seconds of load + calibration + fine-tune.
    train_s: f64,
    /// Seconds of validation per subset (same order as `top1`).
    val_s: Vec<f64>,
    /// BOPs of the policy (share of the w8a8 BOPs).
    bops_frac_w8a8: f64,
}

/// `n` images of `d`: the labels' validation sample (`Dataset::sample` with the labeller's
/// `VAL_SAMPLE_SEED`, the same for every policy; the split itself is ordered, so its first
/// images would not be a fair sample).
fn head(d: &Dataset, n: usize) -> Dataset {
    d.sample(n, seernet::nn::labeler::VAL_SAMPLE_SEED)
}

struct Bench {
    ckpt: PathBuf,
    space: SearchSpace,
    splits: Splits,
    norm: Normalize,
    augment: Option<seernet::nn::data::Augment>,
    w8a8: u64,
}

impl Bench {
    /// Fine-tunes `policy` for `steps` at `lr` (the labelling protocol's settings otherwise)
    /// and scores it on each validation subset in `subsets`.
    fn run(
        &self,
        policy: &Policy,
        steps: usize,
        lr: f64,
        seed: u64,
        subsets: &[usize],
    ) -> Res<Row> {
        let t0 = Instant::now();
        let (mut model, _) = checkpoint::load(&self.ckpt, None, &candle_core::Device::Cpu)?;
        let cfg = TrainConfig {
            steps: Some(steps),
            batch_size: 64,
            lr,
            seed,
            augment: self.augment,
            network: FinetuneNetwork::Slim,
            ..TrainConfig::default()
        };
        train::finetune_policy(
            &mut model,
            &self.space,
            policy,
            &self.splits.train,
            &self.norm,
            &cfg,
            &mut |_| {},
        )?;
        let train_s = t0.elapsed().as_secs_f64();
        let (mut top1, mut val_s) = (Vec::new(), Vec::new());
        for &n in subsets {
            let t = Instant::now();
            let r = train::evaluate(&model, &head(&self.splits.val, n), &self.norm, 256)?;
            val_s.push(t.elapsed().as_secs_f64());
            top1.push((n, r.top1));
        }
        let bops = self.space.cost(policy)?.total_bops;
        Ok(Row {
            hash: policy_hash(policy),
            kind: String::new(),
            steps,
            lr,
            top1,
            train_s,
            val_s,
            bops_frac_w8a8: bops as f64 / self.w8a8 as f64,
        })
    }
}

fn main() -> Res<()> {
    // SAFETY: first thing in main, no other thread exists yet.
    unsafe { seernet::nn::candle_elementwise_on_caller() };
    seernet::nn::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let json_out = args.iter().any(|a| a == "--json");
    let report_only = args.iter().any(|a| a == "--report-only");
    let n_policies: usize = arg(&args, "--policies", 24);
    let final_steps: usize = arg(&args, "--final-steps", 300);
    let seed: u64 = arg(&args, "--seed", 0);
    let store: PathBuf = arg(&args, "--store", root().join("target/bench-label-fidelity"));
    let protocols: Vec<(usize, f64)> = arg(&args, "--protocols", PROTOCOLS.to_string())
        .split(',')
        .map(|p| {
            let (s, l) = p.split_once(':').ok_or("--protocols: steps:lr pairs")?;
            Ok((s.trim().parse()?, l.trim().parse()?))
        })
        .collect::<Res<_>>()?;

    let preset = Config::resnet20(store.clone());
    let ckpt = root().join("assets/baselines/resnet20-fashion-mnist.safetensors");
    let (model, info) = checkpoint::load(&ckpt, None, &candle_core::Device::Cpu)?;
    let space = SearchSpace::new(model.spec().clone(), preset.space.clone())?;
    let source = DataSource::parse("fashion-mnist")?;
    let splits = source.load()?;
    let norm = splits.normalize();
    let w8a8 = space.w8a8_bops()?;
    let lo = Budget::parse_bops_uniform("w2a2")?
        .resolve(&space)?
        .max_bops
        .unwrap_or(0);
    let hi = Budget::parse_bops_uniform("w4a4")?
        .resolve(&space)?
        .max_bops
        .unwrap_or(0);
    let cheapest = space.totals_indices(&space.cheapest())?.bops as f64;
    let band = ((0.5 * lo as f64).max(cheapest), hi as f64);
    let rows = sampling::stratified(&space, band, n_policies, seed, &Default::default())?;
    let policies = sampling::policies(&space, &rows)?;
    let bench = Bench {
        ckpt,
        space,
        splits,
        norm,
        augment: finetune_augment(&info.info, &source),
        w8a8,
    };

    std::fs::create_dir_all(&store)?;
    let path = store.join("results.jsonl");
    let mut done: HashMap<(String, String, usize, u64), Row> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(&path) {
        // A torn last line (interrupted write) is dropped and redone.
        for r in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Row>(l).ok())
        {
            done.insert((r.hash.clone(), r.kind.clone(), r.steps, r.lr.to_bits()), r);
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    if !report_only {
        for (i, p) in policies.iter().enumerate() {
            let hash = policy_hash(p);
            let pseed = label_seed(seed, &hash);
            let mut jobs: Vec<(&str, usize, f64, Vec<usize>)> =
                vec![("final", final_steps, 0.01, vec![5000])];
            jobs.extend(
                protocols
                    .iter()
                    .map(|&(s, l)| ("label", s, l, SUBSETS.to_vec())),
            );
            for (kind, steps, lr, subsets) in jobs {
                let key = (hash.clone(), kind.to_string(), steps, lr.to_bits());
                if done.contains_key(&key) {
                    continue;
                }
                let mut r = bench.run(p, steps, lr, pseed, &subsets)?;
                r.kind = kind.into();
                eprintln!(
                    "policy {}/{} ({:.1}% of w8a8) {kind} {steps} steps lr {lr}: top-1 {:?} in {:.1} s",
                    i + 1,
                    policies.len(),
                    100.0 * r.bops_frac_w8a8,
                    r.top1,
                    r.train_s + r.val_s.iter().sum::<f64>()
                );
                writeln!(file, "{}", serde_json::to_string(&r)?)?;
                file.flush()?;
                done.insert(key, r);
            }
        }
    }

    // The table: per protocol and subset, τ against the final fine-tune's validation top-1.
    let hashes: Vec<String> = policies.iter().map(policy_hash).collect();
    let finals: HashMap<&str, f64> = hashes
        .iter()
        .filter_map(|h| {
            let r = done.get(&(h.clone(), "final".into(), final_steps, 0.01f64.to_bits()))?;
            Some((h.as_str(), r.top1.last()?.1))
        })
        .collect();
    let mut table = Vec::new();
    for &(steps, lr) in &protocols {
        for (si, &n) in SUBSETS.iter().enumerate() {
            let (mut a, mut b, mut secs) = (Vec::new(), Vec::new(), Vec::new());
            for h in &hashes {
                let (Some(f), Some(r)) = (
                    finals.get(h.as_str()),
                    done.get(&(h.clone(), "label".into(), steps, lr.to_bits())),
                ) else {
                    continue;
                };
                a.push(r.top1[si].1);
                b.push(*f);
                secs.push(r.train_s + r.val_s[si]);
            }
            let tau = if a.len() >= 3 {
                kendall_tau_b(&a, &b).ok()
            } else {
                None
            };
            table.push(json!({
                "steps": steps, "lr": lr, "val_images": n, "policies": a.len(),
                "kendall_tau": tau, "label_seconds_median": median(secs),
                "label_top1_mean": a.iter().sum::<f64>() / a.len().max(1) as f64,
            }));
        }
    }
    let final_secs: Vec<f64> = hashes
        .iter()
        .filter_map(|h| done.get(&(h.clone(), "final".into(), final_steps, 0.01f64.to_bits())))
        .map(|r| r.train_s + r.val_s.iter().sum::<f64>())
        .collect();
    let out = json!({
        "policies": policies.len(),
        "finals_done": finals.len(),
        "final_steps": final_steps,
        "final_seconds_median": median(final_secs),
        "final_top1_range": [
            finals.values().copied().fold(f64::INFINITY, f64::min),
            finals.values().copied().fold(f64::NEG_INFINITY, f64::max)
        ],
        "band_bops_frac_w8a8": [band.0 / w8a8 as f64, band.1 / w8a8 as f64],
        "protocols": table,
    });
    if json_out {
        println!("{out}");
    } else {
        println!(
            "label fidelity: {} of {} policies have their final fine-tune ({final_steps} steps; \
             median {:.1} s)",
            finals.len(),
            policies.len(),
            out["final_seconds_median"].as_f64().unwrap_or(f64::NAN)
        );
        println!("| steps | lr | validation images | policies | Kendall τ-b | label s (median) |");
        println!("|---|---|---|---|---|---|");
        for t in out["protocols"].as_array().into_iter().flatten() {
            println!(
                "| {} | {} | {} | {} | {} | {:.1} |",
                t["steps"],
                t["lr"],
                t["val_images"],
                t["policies"],
                t["kendall_tau"]
                    .as_f64()
                    .map_or("—".into(), |v| format!("{v:.3}")),
                t["label_seconds_median"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
