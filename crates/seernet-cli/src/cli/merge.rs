//! `seernet merge`: fold per-policy label results (written by `seernet label` shards) into a
//! label store, skipping policies already labelled and refusing results of another protocol.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use seernet::manifest::{load_results, merge_results};
use seernet::store::{LabelStore, read_store};

/// Arguments of `seernet merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The label store (JSON lines, e.g. RUN/labels.jsonl). When missing it is created with
    /// the protocol of the results.
    #[arg(long, value_name = "FILE")]
    store: PathBuf,
    /// Result directories written by `seernet label --out DIR`.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
}

/// Runs `seernet merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    let protocol = if args.store.exists() {
        read_store(&args.store)?.protocol
    } else {
        let results = load_results(&args.dirs)?;
        let Some((_, first)) = results.first() else {
            bail!(
                "no result files (*.json) in {} and no store at {} to merge into",
                show(&args.dirs),
                args.store.display()
            );
        };
        first.protocol.clone()
    };
    let (mut store, opened) = LabelStore::open(&args.store, &protocol)?;
    if let Some(t) = &opened.dropped_tail {
        eprintln!(
            "warning: {}: dropped a torn last record at line {} ({} bytes: {})",
            args.store.display(),
            t.line,
            t.bytes,
            t.reason
        );
    }
    let rep = merge_results(&mut store, &args.dirs)
        .with_context(|| format!("merging into {}", args.store.display()))?;
    if args.json {
        let v = serde_json::json!({
            "store": args.store.display().to_string(),
            "created": opened.created,
            "files": rep.files,
            "added": rep.added,
            "skipped_present": rep.skipped_present,
            "records": store.len(),
            "dropped_tail": opened.dropped_tail,
        });
        println!("{v}");
    } else {
        println!(
            "{}: {} result file(s), {} added, {} already present; the store now holds {} label(s){}",
            args.store.display(),
            rep.files,
            rep.added,
            rep.skipped_present,
            store.len(),
            if opened.created { " (new store)" } else { "" }
        );
    }
    Ok(())
}

fn show(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
