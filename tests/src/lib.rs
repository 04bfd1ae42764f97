//! Helpers shared by the cross-crate integration tests in `tests/it/`.

use std::path::PathBuf;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `<root>/assets/peer-data/<rel>`: real measurements published by others, committed with the
/// repository (sources and licences in `assets/peer-data/README.md`).
///
/// Panics, naming the path, when the file is absent: a test that needs peer data fails rather
/// than passing without having run.
pub fn peer_data(rel: &str) -> PathBuf {
    let p = workspace_root().join("assets").join("peer-data").join(rel);
    assert!(
        p.is_file(),
        "peer data {} is missing: it is committed with the repository \
         (see assets/peer-data/README.md); restore it with `git checkout -- assets/peer-data`",
        p.display()
    );
    p
}
