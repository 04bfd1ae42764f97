//! Subcommands of the `seernet` binary, one module per area.

pub mod budget_args;
pub mod complexity;
pub mod compress;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod import;
pub mod infer;
pub mod k8s_job;
pub mod label;
pub mod manifest;
pub mod merge;
pub mod net;
pub mod nn_util;
pub mod predict;
pub mod predictor;
pub mod progress;
pub mod search;
pub mod space;
pub mod train;

/// Writes `text` to stdout; a closed pipe (e.g. `| head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Prints `value` as one JSON line under `--json`, else the human summary `text()` (which
/// ends in a newline), through [`emit`].
pub fn emit_result(
    json: bool,
    value: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        emit(&format!("{value}\n"))
    } else {
        emit(&text())
    }
}
