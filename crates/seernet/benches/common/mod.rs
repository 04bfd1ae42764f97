//! Helpers shared by the seernet benches (`search`, `active`): flag parsing and paths.

use std::path::{Path, PathBuf};

/// The value after flag `name` in `args`, parsed; `default` when the flag is absent or its
/// value does not parse.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The workspace root (two levels above this crate's manifest).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
