//! The exported compressed model (`model-<budget>.safetensors`, method.md §7): the physically
//! pruned network with every quantized weight packed to its bit-width.
//!
//! # Format (`seernet-packed-model`, version 1)
//! A safetensors file. For a conv/linear layer `L` whose weights are quantized to `b` bits,
//! the f32 `L.weight` is replaced by
//! - `L.weight.packed`: U8 `[C_out, row_bytes]`, the signed `b`-bit codes of each output
//!   channel's row (`C_in/g·K_h·K_w` codes, OIHW order) in the dense little-endian bit stream
//!   of `seer_kernels::int::pack` (`row_bytes = ⌈cols·b/8⌉`);
//! - `L.weight.scales`: F32 `[C_out]`, the per-output-channel scale (`w = q · scale`);
//! - `L.weight.shape`: I64 `[4]` or `[2]`, the original weight shape.
//!
//! Every other tensor (biases, BatchNorm parameters and running statistics, activation clip
//! ranges `L.act_alpha`, and weights of layers left in full precision) is stored as F32 under
//! the checkpoint names of `seer_nn::checkpoint`. Metadata: `format`, `version`, `arch`,
//! `input`, `num_classes`, `spec`, `comp` (per-layer kept channels, weight bits `wbits`,
//! activation bits `abits`, channel gathers of the slimmed graph), `policy`, `provenance`
//! (JSON: baseline hash, protocol, seed, measured top-1, ...).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, tensor::TensorView};
use seer_kernels::int::pack::PackedWeights;
use seer_nn::model::Model;

use crate::error::{Error, Result};

/// Format tag of exported models.
pub const PACKED_FORMAT: &str = "seernet-packed-model";
/// Version of the exported-model format written by this build.
pub const PACKED_VERSION: u32 = 1;

/// What [`export_packed`] wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    /// File size in bytes.
    pub file_bytes: u64,
    /// Bytes of packed weight codes plus their scales.
    pub packed_weight_bytes: u64,
    /// Bytes of the same weights as f32 before packing (after physical pruning).
    pub f32_weight_bytes: u64,
    /// Number of weight tensors packed.
    pub packed_layers: usize,
    /// Parameters of the slimmed model (all tensors).
    pub params: usize,
}

fn fmt_err(path: &Path, msg: String) -> Error {
    Error::Format {
        path: path.display().to_string(),
        line: 0,
        msg,
    }
}

/// Physically prunes `model` (a fine-tuned model with a policy applied; `Model::slim`) and writes
/// it to `path` in the packed format above, with `provenance` in the metadata. Err(Nn) when
/// slimming fails, Err(Format) when a weight cannot be packed.
pub fn export_packed(
    model: &Model,
    path: &Path,
    provenance: &serde_json::Value,
) -> Result<ExportSummary> {
    let slim = model.slim()?;
    let spec = slim.spec();
    let comp = slim.comp();
    if comp.len() != spec.layers.len() {
        return Err(fmt_err(
            path,
            format!(
                "{} layers but {} compression entries",
                spec.layers.len(),
                comp.len()
            ),
        ));
    }
    let wbits: HashMap<String, Option<u32>> = spec
        .layers
        .iter()
        .zip(comp)
        .map(|(l, c)| (format!("{}.weight", l.name), c.wbits))
        .collect();
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut sum = ExportSummary {
        file_bytes: 0,
        packed_weight_bytes: 0,
        f32_weight_bytes: 0,
        packed_layers: 0,
        params: 0,
    };
    for (name, t) in slim.named_tensors() {
        let dims = t.dims().to_vec();
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(seer_nn::Error::from)?;
        sum.params += v.len();
        match wbits.get(&name).copied().flatten() {
            Some(bits) if dims.len() >= 2 => {
                let rows = dims[0];
                let cols = v.len() / rows.max(1);
                let p = PackedWeights::quantize(&v, rows, cols, bits)
                    .map_err(|e| fmt_err(path, format!("packing {name} at {bits} bits: {e}")))?;
                sum.packed_layers += 1;
                sum.f32_weight_bytes += 4 * v.len() as u64;
                sum.packed_weight_bytes += (p.data().len() + 4 * p.scales().len()) as u64;
                bufs.push((
                    format!("{name}.packed"),
                    Dtype::U8,
                    vec![rows, p.row_bytes()],
                    p.data().to_vec(),
                ));
                bufs.push((
                    format!("{name}.scales"),
                    Dtype::F32,
                    vec![rows],
                    p.scales().iter().flat_map(|x| x.to_le_bytes()).collect(),
                ));
                bufs.push((
                    format!("{name}.shape"),
                    Dtype::I64,
                    vec![dims.len()],
                    dims.iter()
                        .flat_map(|&d| (d as i64).to_le_bytes())
                        .collect(),
                ));
            }
            _ => bufs.push((
                name,
                Dtype::F32,
                dims,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )),
        }
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| fmt_err(path, format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let js = |v: serde_json::Result<String>| v.map_err(|e| fmt_err(path, format!("metadata: {e}")));
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), PACKED_FORMAT.into());
    meta.insert("version".into(), PACKED_VERSION.to_string());
    meta.insert("arch".into(), spec.name.clone());
    meta.insert("input".into(), spec.input.to_string());
    meta.insert("num_classes".into(), spec.num_classes.to_string());
    meta.insert("spec".into(), js(serde_json::to_string(spec))?);
    meta.insert("comp".into(), js(serde_json::to_string(comp))?);
    if let Some(p) = model.policy() {
        meta.insert("policy".into(), p.to_json());
    }
    meta.insert("provenance".into(), provenance.to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| fmt_err(path, format!("serialising: {e}")))?;
    sum.file_bytes = bytes.len() as u64;
    crate::store::write_atomic(path, &bytes)?;
    Ok(sum)
}
