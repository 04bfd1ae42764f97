//! seer-bench: the measurement helpers our benchmarks and `seernet infer --bench` share, so
//! that every figure in docs/benchmarks.md is taken the same way.
//!
//! Wall time alone misleads on a shared 2-core machine; the process's CPU time barely moves
//! when other jobs share the cores, so the benches report both, plus the load average.
//!
//! ```
//! let before = seer_bench::cpu_seconds();
//! let mut x = 0u64;
//! for i in 0..1_000_000u64 {
//!     x = x.wrapping_mul(31).wrapping_add(i);
//! }
//! assert!(x != 1);
//! // On Linux both readings exist and CPU time never runs backwards.
//! if let (Some(a), Some(b)) = (before, seer_bench::cpu_seconds()) {
//!     assert!(b >= a);
//! }
//! assert!(seer_bench::threads() >= 1);
//! ```

/// This process's CPU time (user + system, all threads) in seconds, from `/proc/self/stat`
/// (Linux; `None` elsewhere or when the file cannot be read). Resolution: one clock tick
/// (USER_HZ = 100 on Linux, i.e. 10 ms).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_seconds(&stat)
}

/// [`cpu_seconds`], or 0 where it cannot be read (for differences of readings taken where
/// a missing figure should read as zero, not stop a benchmark).
pub fn cpu_seconds_or_zero() -> f64 {
    cpu_seconds().unwrap_or(0.0)
}

/// CPU seconds from the text of a `/proc/<pid>/stat` file: utime + stime (fields 14 and 15,
/// counted after the parenthesised command name, which may itself hold spaces or `)`).
fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The 1-minute load average from `/proc/loadavg` (Linux; `None` elsewhere).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Hardware threads available to this process (at least 1).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The median of `v` (the mean of the two middle values for an even count; NaN when empty),
/// the figure the benches report over repeated measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "42 (a b) c)) R 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0";
        assert_eq!(parse_cpu_seconds(stat), Some(4.0));
        assert_eq!(parse_cpu_seconds("42 (x) R 1 2"), None);
        assert_eq!(parse_cpu_seconds("no parenthesis"), None);
    }
}
