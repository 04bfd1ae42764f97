//! Hostile input for every file loader (issue 21), as its own test binary because it counts
//! allocations with its own global allocator:
//! - a 1 KiB hostile file per loader (headers claiming 2^40 elements, a gzip bomb, ...) is
//!   refused or loaded with a peak of live heap under 64 MiB;
//! - every committed fuzz seed (`fuzz/seeds/<target>/`) is a real file its loader accepts,
//!   with its round trip; `SEERNET_WRITE_SEEDS=1` writes them again from the code that makes
//!   such files;
//! - every input a fuzz run found crashing (`tests/fuzz-regressions/<target>/`) now passes
//!   its target's check, under the same memory bound.
//!
//! The checks are the fuzz targets' own (`fuzz/src/checks.rs`, included below).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

mod seeds;

/// Peak live heap allowed to a loader on a 1 KiB file (bytes).
const PEAK_LIMIT: usize = 64 << 20;

thread_local! {
    /// Live bytes allocated by this thread (deallocations by another thread would skew it;
    /// the loaders measured here never hand memory across threads).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Highest `LIVE` since the last [`measure`] started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting live bytes per thread.
struct Counting;

fn account(delta: isize) {
    // `try_with`: during thread teardown the counters may be gone; nothing to count then.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain thread-local
// cells with constant initialisers (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the peak of live heap it added on this thread (bytes).
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - base).max(0) as usize)
}

/// The check of fuzz target `name`.
fn check_of(name: &str) -> checks::Check {
    checks::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

fn root() -> PathBuf {
    seernet_tests::workspace_root()
}

/// `bytes` padded with spaces (or cut) to exactly 1 KiB.
fn kib(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.resize(1024, b' ');
    bytes
}

/// One hostile file per loader, of at most 1 KiB: `(target, what it claims, bytes)`. Text
/// formats and IDX are padded to exactly 1 KiB; safetensors files are left as written (at
/// most 1 KiB: padding after the tensors would make them unreadable before the check that
/// each one is about, which the crates' unit tests assert by its message).
fn hostile_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut v = Vec::new();
    // IDX: [2^20, 2^20] = 2^40 bytes promised.
    let mut b = vec![0, 0, 0x08, 2];
    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
    b.extend_from_slice(&(1u32 << 20).to_be_bytes());
    v.push(("idx", "IDX header [2^20, 2^20]", kib(b)));
    // IDX behind gzip: a 1 KiB deflate stream of zeros (about 1 MB once inflated) whose
    // content is an IDX header claiming 2^40 bytes.
    let mut raw = vec![0, 0, 0x08, 2];
    raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
    raw.extend_from_slice(&(1u32 << 20).to_be_bytes());
    raw.resize(1_000_000, 0);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&raw).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() <= 1024, "gzip bomb is {} bytes", gz.len());
    v.push(("idx", "gzip bomb (1 KiB -> 1 MB)", gz));
    // CIFAR-10 batches have no header: the record count is the length over 3,073.
    v.push((
        "cifar10",
        "1 KiB of 0xff (no whole record)",
        vec![0xff; 1024],
    ));
    v.push((
        "checkpoint",
        "spec with a 2^20 x 2^20 linear layer",
        seeds::checkpoint_claiming_2_pow_40(),
    ));
    v.push((
        "int_model",
        "conv of 2^20 x 2^20 weights",
        seeds::int_model_claiming_2_pow_40(),
    ));
    v.push((
        "policy",
        "input of 2^60 pixels, unit fields at 2^40",
        kib(br#"{"format": "seernet-policy", "version": 1, "arch": "x", "input": "1048576x1048576x1048576",
            "units": [{"prune": 0.5, "wbits": 1099511627776, "abits": 4}]}"#
            .to_vec()),
    ));
    v.push((
        "network_spec",
        "flatten to 2^40 features",
        kib(br#"{"format": "seernet-network", "version": 1, "name": "x", "input": "1048576x1048576x1",
            "num_classes": 2, "layers": [{"name": "f", "op": "flatten"},
            {"name": "fc", "op": "linear", "out_features": 2}]}"#
            .to_vec()),
    ));
    v.push((
        "label_store",
        "record claiming 2^40 indices and MACs",
        kib(seeds::store_claiming_2_pow_40()),
    ));
    v.push((
        "shard_manifest",
        "entry id 2^40",
        kib(seeds::manifest_claiming_2_pow_40()),
    ));
    v.push((
        "shard_result",
        "id and MACs 2^40",
        kib(seeds::result_claiming_2_pow_40()),
    ));
    v.push((
        "predictor",
        "2^40 members of 2^40 hidden units",
        seeds::predictor_claiming_2_pow_40(),
    ));
    v
}

#[test]
fn every_loader_on_a_1_kib_hostile_file_stays_under_64_mib() {
    let files = hostile_files();
    let mut covered: Vec<&str> = files.iter().map(|f| f.0).collect();
    covered.dedup();
    let all: Vec<&str> = checks::TARGETS.iter().map(|t| t.0).collect();
    assert_eq!(covered, all, "one hostile file per loader, in target order");
    for (target, what, bytes) in &files {
        assert!(bytes.len() <= 1024, "{target}: {} bytes", bytes.len());
        let (_, peak) = measure(|| check_of(target)(bytes));
        eprintln!("{target:>14}: {what:<42} peak {peak:>9} bytes");
        assert!(
            peak < PEAK_LIMIT,
            "{target} ({what}): peak {peak} bytes on a 1 KiB file"
        );
    }
}

/// Files of `dir`, sorted (none when it does not exist).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn every_fuzz_seed_is_a_file_its_loader_accepts() {
    let dir = root().join("fuzz/seeds");
    if std::env::var_os("SEERNET_WRITE_SEEDS").is_some() {
        seeds::write_all(&dir);
    }
    let mut counts = HashMap::new();
    for (target, check) in checks::TARGETS {
        for f in files_in(&dir.join(target)) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(check(&bytes), "seed {} does not load", f.display());
            *counts.entry(*target).or_insert(0) += 1;
        }
        assert!(
            counts.contains_key(target),
            "no seed for fuzz target {target}: run this test with SEERNET_WRITE_SEEDS=1"
        );
    }
}

#[test]
fn every_fuzz_crash_found_is_fixed() {
    let dir = root().join("tests/fuzz-regressions");
    for (target, check) in checks::TARGETS {
        for f in files_in(&dir.join(target)) {
            let bytes = std::fs::read(&f).unwrap();
            let (_, peak) = measure(|| check(&bytes));
            assert!(peak < PEAK_LIMIT, "{}: peak {peak} bytes", f.display());
        }
    }
    // Nothing else lives there: a crash file under an unknown target name would never run.
    for d in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        assert!(
            name == "README.md" || checks::TARGETS.iter().any(|t| t.0 == name),
            "tests/fuzz-regressions/{name} is not a fuzz target"
        );
    }
}
