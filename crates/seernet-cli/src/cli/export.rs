//! `seernet export`: writes a fine-tuned compressed checkpoint (`seernet finetune`) as an
//! integer-engine model (the main job's `model-<budget>.safetensors` format,
//! `seernet::pipeline::export`), runnable with `seernet infer`, and with `--onnx FILE` also
//! in ONNX QDQ form (`seernet::onnx::qdq`, docs/export.md) as the main job writes beside
//! each export.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seer_nn::checkpoint;
use seer_nn::data::DataSource;

use super::nn_util::device;

/// Arguments of `seernet export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Fine-tuned checkpoint carrying a policy (`seernet finetune --out`).
    #[arg(long)]
    model: PathBuf,
    /// Output model file (`.safetensors`).
    #[arg(long)]
    out: PathBuf,
    /// Dataset whose normalisation the model was trained with (defaults to the checkpoint's).
    #[arg(long)]
    dataset: Option<String>,
    /// Also write the ONNX QDQ form of the exported model to this file (`.onnx`).
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `seernet export`.
pub fn run(a: ExportArgs) -> Result<()> {
    let (model, info) = checkpoint::load(&a.model, None, &device())
        .with_context(|| format!("loading {}", a.model.display()))?;
    if model.policy().is_none() {
        bail!(
            "{} carries no compression policy: fine-tune it with `seernet finetune` first",
            a.model.display()
        );
    }
    let name = match (&a.dataset, &info.dataset) {
        (Some(d), _) => super::eval::given(d, &model, false)?,
        (None, Some(d)) => DataSource::parse(d)?,
        (None, None) => bail!("{} records no dataset: pass --dataset", a.model.display()),
    };
    let mut splits = name
        .load()
        .with_context(|| format!("loading dataset {name}"))?;
    if let Some((m, s)) = checkpoint::input_norm(&info) {
        splits.use_norm(&m, &s)?;
    }
    let float = std::fs::canonicalize(&a.model)
        .with_context(|| format!("resolving {}", a.model.display()))?;
    let prov = serde_json::json!({
        "dataset": name.id(),
        "float_model": float.display().to_string(),
        "exported_by": "seernet export",
        "info": info.info,
    });
    let m = &splits.manifest;
    let s = seernet::pipeline::export::export_int(&model, &m.mean, &m.std, &a.out, &prov)?;
    let onnx = match &a.onnx {
        Some(p) => {
            let im = seernet::int::format::IntModel::load(&a.out)?;
            Some(
                seernet::onnx::write_qdq(&im, p)
                    .with_context(|| format!("writing the ONNX QDQ form {}", p.display()))?,
            )
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        v["onnx"] = serde_json::to_value(&onnx)?;
        super::emit(&format!("{v}\n"))?;
    } else {
        if let (Some(o), Some(p)) = (&onnx, &a.onnx) {
            super::emit(&format!(
                "exported {}: {} bytes (ONNX QDQ: {} nodes, {} QuantizeLinear)\n",
                p.display(),
                o.file_bytes,
                o.nodes,
                o.quantize_nodes
            ))?;
        }
        super::emit(&format!(
            "exported {}: {} bytes ({} nodes, {} packed weight tensors: {} bytes vs {} bytes f32)\n",
            a.out.display(),
            s.file_bytes,
            s.nodes,
            s.packed_layers,
            s.packed_weight_bytes,
            s.f32_weight_bytes
        ))?;
    }
    Ok(())
}
