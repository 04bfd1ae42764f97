//! `cargo xtask fuzz`: builds the cargo-fuzz targets of `fuzz/` once, then runs each for a
//! fixed time and prints executions and time per target.
//!
//! cargo-fuzz passes nightly-only `-Z` flags to cargo and rustc (coverage instrumentation
//! options, `-Zsanitizer` when a sanitizer is asked for). CI has only a stable toolchain, so
//! we set `RUSTC_BOOTSTRAP=1` for those two commands alone: it lets a stable compiler accept
//! `-Z` flags. Nothing else of the project is built that way, and the fuzz crate is its own
//! workspace with its own `target/` (`fuzz/target`), so no normal build ever sees them.
//!
//! Build flags: `--sanitizer none` (the loaders are safe Rust: AddressSanitizer would find
//! nothing more and run several times slower) and `--debug-assertions` (overflow checks on,
//! as in our debug builds: an unchecked size that overflows is then a crash, not a silently
//! wrapped number). The targets install an allocator that refuses any allocation above
//! 64 MiB (`fuzz/src/lib.rs`), so a size taken unchecked from a file is a crash too.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Every fuzz target (`fuzz/fuzz_targets/NAME.rs`), in the order they run.
pub const TARGETS: &[&str] = &[
    "idx",
    "cifar10",
    "checkpoint",
    "int_model",
    "policy",
    "network_spec",
    "label_store",
    "shard_manifest",
    "shard_result",
    "predictor",
];

/// The cargo-fuzz build options, identical for `build` and `run` (so `run` rebuilds nothing).
const BUILD: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

fn cargo_fuzz(root: &Path) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(root).env("RUSTC_BOOTSTRAP", "1").arg("fuzz");
    c
}

/// One target's figures, from libFuzzer's final statistics.
struct Figures {
    target: String,
    runs: u64,
    seconds: u64,
}

/// Runs `targets` (all when `None`) for `seconds` each (and at most `runs` executions).
pub fn fuzz(root: &Path, seconds: u64, runs: Option<u64>, target: Option<&str>) -> Result<()> {
    let ok = cargo_fuzz(root)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked`");
    }
    let status = cargo_fuzz(root)
        .arg("build")
        .args(BUILD)
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("`cargo fuzz build` failed ({status})");
    }
    let targets: Vec<&str> = match target {
        Some(t) => vec![t],
        None => TARGETS.to_vec(),
    };
    let mut figures = Vec::new();
    for t in targets {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = cargo_fuzz(root);
        cmd.arg("run").args(BUILD).arg(t).arg(&corpus);
        cmd.arg(root.join("fuzz/seeds").join(t));
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A hang is an input that takes over 10 s; libFuzzer's own memory cap as a
            // backstop to the allocator's per-allocation one.
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        if let Some(r) = runs {
            cmd.arg(format!("-runs={r}"));
        }
        eprintln!("== fuzz {t} ({seconds} s)");
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running cargo fuzz run {t}"))?;
        let (mut execs, mut secs) = (None, None);
        for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
            let line = line.context("reading libFuzzer's output")?;
            // Progress lines repeat every doubling and the recommended dictionary runs to
            // pages: keep the console to the essentials.
            let noise = (line.starts_with('#') && !line.contains("DONE"))
                || line.starts_with('"')
                || line.starts_with("###");
            if !noise {
                eprintln!("{line}");
            }
            if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
                execs = v.trim().parse().ok();
            }
            if let Some(rest) = line.strip_prefix("Done ") {
                // "Done 123456 runs in 20 second(s)"
                let w: Vec<&str> = rest.split_whitespace().collect();
                if w.len() >= 4 {
                    execs = execs.or(w[0].parse().ok());
                    secs = w[3].parse().ok();
                }
            }
        }
        let status = child.wait().context("waiting for cargo fuzz run")?;
        if !status.success() {
            bail!(
                "fuzz target {t} failed ({status}): the input is under fuzz/artifacts/{t}/; \
                 fix the loader and copy the input to tests/fuzz-regressions/{t}/"
            );
        }
        figures.push(Figures {
            target: t.to_string(),
            runs: execs.unwrap_or(0),
            seconds: secs.unwrap_or(seconds),
        });
    }
    println!("| target | executions | seconds | executions/s |");
    println!("|---|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {} | {} | {} |",
            f.target,
            f.runs,
            f.seconds,
            f.runs / f.seconds.max(1)
        );
    }
    Ok(())
}
