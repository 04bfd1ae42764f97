//! seer-onnx: imports a CNN from an ONNX file (opset 13 or later) as a seer-policy
//! [`NetworkSpec`](seer_policy::NetworkSpec) with its weights, and from those a trainable
//! seer-nn [`Model`](seer_nn::model::Model) (`seernet import model.onnx`).
//!
//! The protobuf is decoded with `prost` types generated once from `onnx.proto` ([`proto`];
//! regenerate with `tools/onnx-proto-gen`); the conversion is ours ([`convert`]). Supported
//! operators and attributes are listed in [`convert::SUPPORTED`]; anything else is one
//! [`Error::Unsupported`] naming the node, its op and what is supported.
//!
//! The other direction, [`qdq`]: a compressed model of the integer engine
//! (`seer_int::format::IntModel`) written as an ONNX graph with `QuantizeLinear` /
//! `DequantizeLinear` pairs (`model-<budget>.onnx`, docs/export.md): physically pruned,
//! BatchNorm folded, int8 weights per output channel (bit-widths below 8 in a restricted
//! int8 range), uint8 activations per tensor.
//!
//! ```
//! // A file that is not an ONNX model is one clear error, not a panic.
//! let e = seer_onnx::import_bytes(b"not a model", "x.onnx").unwrap_err();
//! assert!(e.to_string().contains("x.onnx"));
//! ```
#![warn(missing_docs)]

pub mod convert;
#[allow(missing_docs)]
pub mod proto;
pub mod qdq;
mod tensor;

use std::path::{Path, PathBuf};

pub use convert::{Imported, import_bytes};
pub use qdq::{QdqSummary, to_qdq, write_qdq};

/// Everything that can go wrong when importing an ONNX file. Messages name the file and,
/// where one is at fault, the node (its name, or `#index` when unnamed) and its op.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bytes are not a valid ONNX protobuf (truncated, not ONNX at all).
    #[error("{file}: not a readable ONNX model ({msg})")]
    Decode {
        /// The file.
        file: String,
        /// The protobuf decoder's message.
        msg: String,
    },
    /// The model as a whole cannot be imported (no graph, opset below 13, several inputs,
    /// a cycle, a value produced twice, ...).
    #[error("{file}: {msg}")]
    Model {
        /// The file.
        file: String,
        /// What is wrong.
        msg: String,
    },
    /// A node that is malformed (missing input, missing initializer, wrong shape).
    #[error("{file}: node {node} ({op}): {msg}")]
    Node {
        /// The file.
        file: String,
        /// Node name, or `#index` for an unnamed node.
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        msg: String,
    },
    /// An operator or attribute value this importer does not support.
    #[error("{file}: node {node} ({op}): {msg}; supported: {supported}")]
    Unsupported {
        /// The file.
        file: String,
        /// Node name, or `#index` for an unnamed node.
        node: String,
        /// Its op type.
        op: String,
        /// What is not supported.
        msg: String,
        /// What is.
        supported: String,
    },
    /// The graph maps onto a network our spec cannot describe (seer-policy's check).
    #[error("{file}: the imported network is invalid")]
    Spec {
        /// The file.
        file: String,
        /// The spec error.
        source: seer_policy::Error,
    },
    /// An integer-engine model that cannot be written as an ONNX QDQ graph ([`qdq`]).
    #[error("ONNX QDQ export: node {what}: {msg}")]
    Export {
        /// The engine node at fault (or `model`).
        what: String,
        /// What is wrong.
        msg: String,
    },
    /// Building or saving the seer-nn model failed.
    #[error("{file}: building the model")]
    Nn {
        /// The file.
        file: String,
        /// The seer-nn error.
        source: seer_nn::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Imports `onnx` and writes it as a seer-nn checkpoint `out` (safetensors, format
/// `seernet-model`) that every command taking a checkpoint accepts. `mean`/`std` are the
/// input normalisation the network was trained with, per channel of pixels scaled to [0, 1]
/// (torchvision's `Normalize`; one value is used for every channel; none: mean 0, std 1);
/// they are stored in the checkpoint's info (`input_mean`, `input_std`) and replace a
/// dataset's own normalisation wherever the checkpoint is used. `dataset` is recorded as
/// the checkpoint's dataset when given.
///
/// Errors: those of [`import_file`]; [`Error::Model`] for a normalisation that does not fit
/// the input channels or a std ≤ 0; [`Error::Nn`] when building or writing the model fails.
pub fn import_to_checkpoint(
    onnx: &Path,
    out: &Path,
    mean: Option<&[f64]>,
    std: Option<&[f64]>,
    dataset: Option<&str>,
) -> Result<Imported> {
    let imp = import_file(onnx)?;
    let file = onnx.display().to_string();
    let c = imp.spec.input.c;
    let per_channel = |v: Option<&[f64]>, default: f64, what: &str| -> Result<Vec<f64>> {
        let v = match v {
            None => vec![default; c],
            Some([x]) => vec![*x; c],
            Some(v) if v.len() == c => v.to_vec(),
            Some(v) => {
                return Err(Error::Model {
                    file: file.clone(),
                    msg: format!(
                        "--input-{what} has {} values for {c} input channels",
                        v.len()
                    ),
                });
            }
        };
        if v.iter().any(|x| !x.is_finite()) || (what == "std" && v.iter().any(|x| *x <= 0.0)) {
            return Err(Error::Model {
                file: file.clone(),
                msg: format!("--input-{what} {v:?}: finite values (std > 0) expected"),
            });
        }
        Ok(v)
    };
    let mean = per_channel(mean, 0.0, "mean")?;
    let std = per_channel(std, 1.0, "std")?;
    let nn = |e| Error::Nn {
        file: file.clone(),
        source: e,
    };
    let model = imp.model(onnx).map_err(nn)?;
    let abs = std::fs::canonicalize(onnx).unwrap_or_else(|_| onnx.to_path_buf());
    let hash = seer_nn::labeler::file_hash(onnx).map_err(|e| nn(e.into()))?;
    let info = serde_json::json!({
        "imported_from": abs.display().to_string(),
        "onnx_hash": hash,
        "onnx_opset": imp.opset,
        "onnx_producer": imp.producer,
        "input_mean": mean,
        "input_std": std,
        "trained_by": "imported from ONNX",
    });
    seer_nn::checkpoint::save(&model, out, dataset, &info).map_err(nn)?;
    Ok(imp)
}

/// Reads and imports the ONNX file at `path` (see [`import_bytes`]), with initializers kept
/// in external data files beside it (what `torch.onnx.export` writes by default since
/// PyTorch 2.5: `net.onnx` + `net.onnx.data`).
/// The network is named after the file's stem (`vgg.onnx` → `vgg`).
pub fn import_file(path: &Path) -> Result<Imported> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut imp = convert::import_in(&bytes, &path.display().to_string(), Some(dir))?;
    if let Some(stem) = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
    {
        imp.spec.name = stem.to_string();
    }
    Ok(imp)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_concat;
#[cfg(test)]
mod tests_exporters;
#[cfg(test)]
mod tests_pads;
#[cfg(test)]
mod tests_qdq;
