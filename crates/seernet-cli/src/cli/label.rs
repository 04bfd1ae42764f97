//! `seernet label`: label one shard of a manifest (docs/method.md §3), one atomic result file per
//! policy in `--out`; re-running a shard skips finished policies. Fold the results into a
//! store with `seernet merge`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use seernet::labeler::Labeler;
use seernet::manifest::{Manifest, ShardSpec, run_shard_with};

/// Arguments of `seernet label`.
#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Manifest of policies to label (`seernet-manifest` JSON lines; it carries the protocol).
    #[arg(long, value_name = "M.jsonl")]
    manifest: PathBuf,
    /// Shard `I/N` (0-based I); `/N` reads I from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long, default_value = "0/1", value_name = "I/N")]
    shard: String,
    /// Directory for the per-policy result files (`<policy hash>.json`).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The trained baseline checkpoint the manifest's protocol was made for.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Runs `seernet label`.
pub fn run(a: LabelArgs) -> Result<()> {
    let shard = ShardSpec::parse(&a.shard)?;
    let manifest = Manifest::load(&a.manifest)?;
    let labeler = Labeler::new(&manifest.protocol, &a.model).with_context(|| {
        format!(
            "checking {} against the protocol of {}",
            a.model.display(),
            a.manifest.display()
        )
    })?;
    manifest.validate(labeler.space())?;
    let mine = manifest.shard(shard).len();
    eprintln!(
        "shard {}/{}: {} of {} policies, {} fine-tune steps each, results in {}",
        shard.index,
        shard.count,
        mine,
        manifest.entries.len(),
        manifest.protocol.finetune_steps,
        a.out.display()
    );
    let t0 = std::time::Instant::now();
    let mut done = 0usize;
    // The line is printed once the result file is in place: a task killed before that has no
    // line, and its label is made again by the resubmitted task (tests/slurm counts the lines).
    let rep = run_shard_with(
        &manifest,
        labeler.space(),
        shard,
        &a.out,
        |e, seed| labeler.label(&e.policy, seed, &mut |_, _| {}),
        |e, r| {
            done += 1;
            eprintln!(
                "  [{done}] policy {} (id {}): val top-1 {:.2}% in {:.1} s",
                e.hash, e.id, r.top1, r.seconds
            );
        },
    )?;
    if a.json {
        let v = serde_json::json!({
            "shard": format!("{}/{}", shard.index, shard.count),
            "assigned": rep.assigned,
            "labelled": rep.labelled,
            "skipped_existing": rep.skipped_existing,
            "replaced_invalid": rep.replaced_invalid,
            "seconds": t0.elapsed().as_secs_f64(),
            "out": a.out.display().to_string(),
        });
        println!("{v}");
    } else {
        println!(
            "shard {}/{}: {} labelled, {} already done{} in {:.1} s -> {}",
            shard.index,
            shard.count,
            rep.labelled,
            rep.skipped_existing,
            if rep.replaced_invalid > 0 {
                format!(", {} unreadable result(s) redone", rep.replaced_invalid)
            } else {
                String::new()
            },
            t0.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
}
