//! `cargo xtask cuda-check`: installs NVIDIA's CUDA 13.0 compiler from PyPI into a cache,
//! compiles every `crates/seer-kernels-cuda/kernels/*.cu` to PTX for `sm_90`, checks (or with
//! `--write` updates) the committed PTX, runs the kernels on a host emulation of CUDA
//! (`kernels/emu/`), then builds and tests seer-kernels-cuda with `cuda`.
//!
//! CUDA 13.0.x is pinned because the project's GPU test machine (H200, driver 580) can JIT
//! PTX only up to ISA 9.0; newer compilers emit newer PTX that driver rejects.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The PyPI wheels of the pinned CUDA 13.0 compiler (versions checked with `pip index versions`).
const PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];
/// What `nvcc --version` must report.
const NVCC_RELEASE: &str = "V13.0.88";
/// The GPU architecture the PTX targets (Hopper; the driver JITs it for newer GPUs too).
const ARCH: &str = "sm_90";
const CRATE: &str = "crates/seer-kernels-cuda";

/// The compiler cache: `$SEERNET_CUDA_CACHE`, else `~/.cache/seernet/cuda-13.0`.
fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SEERNET_CUDA_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("HOME is not set (or set SEERNET_CUDA_CACHE)")?;
    Ok(PathBuf::from(home).join(".cache/seernet/cuda-13.0"))
}

/// Finds `bin/nvcc` below `dir` (the wheels put it under `nvidia/cu13/bin`).
fn find_nvcc(dir: &Path) -> Option<PathBuf> {
    let direct = dir.join("nvidia/cu13/bin/nvcc");
    if direct.is_file() {
        return Some(direct);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "nvcc")
                && p.parent()
                    .and_then(|b| b.file_name())
                    .is_some_and(|b| b == "bin")
            {
                return Some(p);
            }
        }
    }
    None
}

fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the pinned wheels into `dir` with `python3 -m pip install --target`.
fn install(dir: &Path) -> Result<()> {
    let pip_ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        bail!(
            "cuda-check installs NVIDIA's compiler from PyPI and needs python3 with pip: install \
             them first (Debian/Ubuntu: `apt-get install python3 python3-pip`), then rerun"
        );
    }
    eprintln!("installing {} into {}", PACKAGES.join(" "), dir.display());
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--upgrade",
            "--target",
        ])
        .arg(dir)
        .args(PACKAGES)
        .status()
        .context("running python3 -m pip install")?;
    if !status.success() {
        bail!(
            "pip install of the CUDA compiler wheels into {} failed ({status})",
            dir.display()
        );
    }
    Ok(())
}

/// The pinned nvcc, installed on first use.
fn nvcc() -> Result<PathBuf> {
    let dir = cache_dir()?;
    let ok = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(NVCC_RELEASE))
            .unwrap_or(false)
    };
    if let Some(p) = find_nvcc(&dir).filter(|p| ok(p)) {
        return Ok(p);
    }
    install(&dir)?;
    match find_nvcc(&dir) {
        Some(p) if ok(&p) => Ok(p),
        Some(p) => bail!("{} does not report CUDA {NVCC_RELEASE}", p.display()),
        None => bail!("no bin/nvcc below {} after pip install", dir.display()),
    }
}

/// Compiles `kernels/emu/emu_check.cpp` (the unmodified kernels on a host emulation of CUDA's
/// threads, barriers and shared memory) with the host C++ compiler and runs it: checks kernel
/// logic (indexing, tiling, reductions, bit decoding) on machines without a GPU.
fn emulate(kdir: &Path, tmp: &Path) -> Result<()> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let exe = tmp.join("emu_check");
    output(
        Command::new(&cxx)
            .args([
                "-std=c++20",
                "-O1",
                "-ffp-contract=off",
                "-pthread",
                "-Wall",
                "-Werror",
                "-Wno-unknown-pragmas",
                "-o",
            ])
            .arg(&exe)
            .arg(kdir.join("emu/emu_check.cpp")),
        &format!("{cxx} emu_check.cpp (needs a C++20 compiler: Debian `apt-get install g++`)"),
    )?;
    let out = output(
        &mut Command::new(&exe),
        "emu_check (kernels on the host emulation)",
    )?;
    eprintln!("  host emulation: {}", out.trim());
    Ok(())
}

/// Runs the task. `write`: update the committed PTX instead of failing when it differs.
pub fn cuda_check(root: &Path, write: bool) -> Result<()> {
    let nvcc = nvcc()?;
    let version = output(Command::new(&nvcc).arg("--version"), "nvcc --version")?;
    let release = version
        .lines()
        .find(|l| l.contains("release"))
        .unwrap_or("?")
        .trim()
        .to_string();
    eprintln!("nvcc: {} ({release})", nvcc.display());
    let ptxas = nvcc.with_file_name("ptxas");
    let kdir = root.join(CRATE).join("kernels");
    let pdir = root.join(CRATE).join("ptx");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .with_context(|| format!("reading {}", kdir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    if sources.is_empty() {
        bail!("no .cu files in {}", kdir.display());
    }
    let tmp = std::env::temp_dir().join(format!("seernet-cuda-check-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut stale = Vec::new();
    for src in &sources {
        let stem = src
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let fresh = tmp.join(format!("{stem}.ptx"));
        output(
            Command::new(&nvcc)
                .args([
                    "-ptx",
                    &format!("-arch={ARCH}"),
                    "-Werror",
                    "all-warnings",
                    "-o",
                ])
                .arg(&fresh)
                .arg(src),
            &format!(
                "nvcc -ptx {} (nvcc needs a host C++ compiler: Debian `apt-get install g++`)",
                src.display()
            ),
        )?;
        // Assemble it too, so a PTX the driver's JIT would reject fails here.
        let info = Command::new(&ptxas)
            .args([&format!("-arch={ARCH}"), "-v", "-o"])
            .arg(tmp.join(format!("{stem}.cubin")))
            .arg(&fresh)
            .output()
            .with_context(|| format!("running {}", ptxas.display()))?;
        if !info.status.success() {
            bail!(
                "ptxas rejected {stem}.ptx:\n{}",
                String::from_utf8_lossy(&info.stderr)
            );
        }
        // Per kernel: registers and spills, from `ptxas -v`.
        let mut regs: Vec<String> = Vec::new();
        let mut spills = String::new();
        for l in String::from_utf8_lossy(&info.stderr).lines() {
            let l = l.trim();
            if let Some(name) = l
                .strip_prefix("ptxas info    : Compiling entry function '")
                .and_then(|r| r.split('\'').next())
            {
                regs.push(name.to_string());
            } else if l.contains("spill stores")
                && !l.starts_with("0 bytes stack frame, 0 bytes spill stores")
            {
                spills = format!(" [{l}]");
            } else if let Some(u) = l.strip_prefix("ptxas info    : Used ")
                && let Some(last) = regs.last_mut()
            {
                let n = u.split(' ').next().unwrap_or("?");
                *last = format!("{last}: {n} regs{spills}");
                spills.clear();
            }
        }
        let new = std::fs::read(&fresh)?;
        let committed = pdir.join(format!("{stem}.ptx"));
        let same = std::fs::read(&committed).is_ok_and(|old| old == new);
        eprintln!(
            "  {stem}.cu -> {stem}.ptx ({} bytes, {}){}",
            new.len(),
            if same { "up to date" } else { "CHANGED" },
            if regs.is_empty() {
                String::new()
            } else {
                format!("\n      {}", regs.join(", "))
            }
        );
        if !same {
            if write {
                std::fs::create_dir_all(&pdir)?;
                std::fs::write(&committed, &new)
                    .with_context(|| format!("writing {}", committed.display()))?;
            } else {
                stale.push(committed.display().to_string());
            }
        }
    }
    emulate(&kdir, &tmp)?;
    let _ = std::fs::remove_dir_all(&tmp);
    if !stale.is_empty() {
        bail!(
            "committed PTX differs from the kernels ({}): run `cargo xtask cuda-check --write` \
             and commit the result",
            stale.join(", ")
        );
    }
    // A GPU is present when the driver exposes a device node; without one the `_cuda` tests
    // (generated per device by `test_device!`) would fail by design, so they are left out and
    // the run says so.
    let gpu = Path::new("/dev/nvidia0").exists();
    for sub in ["build", "test"] {
        let mut extra: Vec<&str> = Vec::new();
        if sub == "test" {
            extra.push("--");
            if !gpu {
                extra.extend(["--skip", "_cuda"]);
            }
        }
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root)
            .args([sub, "-p", "seer-kernels-cuda", "--features", "cuda"])
            .args(&extra)
            .status()
            .with_context(|| format!("running cargo {sub}"))?;
        if !status.success() {
            bail!("`cargo {sub} -p seer-kernels-cuda --features cuda` failed ({status})");
        }
    }
    eprintln!(
        "cuda-check: {} kernel file(s) compiled to {ARCH} PTX with {release}; crate built and \
         tested with `cuda` ({})",
        sources.len(),
        if gpu {
            "every `_cuda` test ran on the GPU"
        } else {
            "no GPU here (/dev/nvidia0 absent): the `_cuda` tests were not run"
        }
    );
    Ok(())
}
