//! Helpers shared by the cross-crate integration tests in `tests/it/`.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `../shared/peer-data/<rel>` beside the checkout, if it exists.
///
/// Peer data is never copied into the project (see `../shared/peer-data/README.md`);
/// tests that need it print a clear skip message when it is absent.
pub fn peer_data(rel: &str) -> Option<PathBuf> {
    let p = workspace_root()
        .join("..")
        .join("shared")
        .join("peer-data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipping: peer data {} not found (expected ../shared beside the checkout)",
            p.display()
        );
        None
    }
}
