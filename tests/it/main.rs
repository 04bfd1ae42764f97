//! The single integration-test binary: cross-crate tests, one module per area.

mod nn;
mod pipeline;
mod policy;
mod predictor;
mod pruning;
mod search;
mod store;
mod tidy;

#[test]
fn workspace_root_is_found() {
    assert!(seernet_tests::workspace_root().join("Cargo.toml").exists());
}
