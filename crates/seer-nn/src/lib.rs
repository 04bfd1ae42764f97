//! seer-nn: datasets, quantizable layers, the CNN model zoo, training with quantization-aware
//! fine-tuning, and physical channel pruning (docs/method.md §3, §7).
//!
//! ```
//! use seer_nn::data::{DatasetName, split_indices};
//! let name = DatasetName::parse("fashion-mnist").unwrap();
//! assert_eq!(name.shape(), [1, 28, 28]);
//! let [train, val, test] = split_indices(1000, 100, 200, 0).unwrap();
//! assert_eq!((train.len(), val.len(), test.len()), (700, 100, 200));
//! ```
#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
mod error;
pub mod eval;
pub mod export;
pub mod labeler;
pub mod model;
pub mod ops;
pub mod sensitivity;
pub mod train;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};

/// Keeps freed memory in the process instead of returning it to the kernel (glibc only; a no-op
/// elsewhere): blocks up to 32 MiB (glibc's maximum `M_MMAP_THRESHOLD`) come from the heap
/// rather than their own `mmap`, and the heap is not trimmed below 1 GiB. A training step
/// allocates and frees the same multi-megabyte tensors (activations, gradients, im2col
/// tiles) again and again; with glibc's defaults each such block is a fresh `mmap` whose pages
/// fault in zero-filled every time, which showed up as system time (22 s of a 30 s
/// evaluation in issue 14) and as ~40% of candle's gradient accumulation in a conv profile
/// (docs/benchmarks.md, "Idle figures, session 7"). Results are unchanged: only where memory
/// comes from differs.
///
/// Each malloc arena keeps its own freed memory, and glibc gives a process up to eight arenas
/// per core, one per thread that allocates while the others are busy. So the heap is also held
/// to one arena per core (`std::thread::available_parallelism`), unless the user set
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES=glibc.malloc.arena_max=N`, which glibc has then
/// already applied: the label bench's peak RSS went
/// from 1.75 to 1.34 GB with two arenas on two cores, at the same speed (docs/benchmarks.md,
/// "Main job", session 28).
///
/// Returns whether every setting took effect. Call it once, early in `main`, before other
/// threads start (settings apply to later allocations and arenas).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
        let user_arenas = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| sets_arena_max(&t));
        // SAFETY: mallopt only changes allocator parameters; every value is in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
                && (user_arenas || libc::mallopt(libc::M_ARENA_MAX, arenas) == 1)
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Whether a `GLIBC_TUNABLES` value (`name=value` pairs separated by `:`) sets
/// `glibc.malloc.arena_max`.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn sets_arena_max(tunables: &str) -> bool {
    tunables.split(':').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, _)| k.trim() == "glibc.malloc.arena_max")
    })
}

/// Runs candle's element-wise operations on the calling thread (sets `CANDLE_NUM_THREADS=1`
/// unless it is already set), for programs whose heavy work is seer-kernels' rayon-parallel
/// ops. candle 0.11 runs element-wise ops (the SGD update, gradient accumulation, bias and
/// mask broadcasts) on its own pool of spin-waiting threads, separate from rayon's; on a
/// 2-core machine the two pools contend, and under load a descheduled worker leaves the
/// caller spinning. Measured (docs/benchmarks.md, `cargo xtask bench label`): a ResNet-20
/// label's fine-tune 2.3× faster with it at load average ~14. Results are unchanged (each
/// element is computed alike). Matrix products keep rayon's thread count.
///
/// # Safety
/// It sets an environment variable: call it first thing in `main`, before any other thread
/// exists (and before candle's pool starts, which reads the variable once).
pub unsafe fn candle_elementwise_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
