//! `seernet import`: an ONNX CNN (opset 13 or later) becomes a seer-nn checkpoint that
//! `seernet compress --baseline`, `eval`, `finetune` and the rest accept (seer-onnx).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `seernet import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The ONNX file (e.g. from `torch.onnx.export` in eval mode).
    model: PathBuf,
    /// Output checkpoint (.safetensors); default: the ONNX file's name with `.safetensors`.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    norm: NormArgs,
    /// Dataset to record in the checkpoint (a built-in name or an image folder).
    #[arg(long)]
    dataset: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The input normalisation of an imported network (torchvision convention).
#[derive(Args, Debug, Clone, Default)]
pub struct NormArgs {
    /// Per-channel mean subtracted from pixels scaled to [0, 1] (comma-separated; one value
    /// for all channels) [default: 0].
    #[arg(long, value_delimiter = ',', value_name = "M")]
    pub input_mean: Option<Vec<f64>>,
    /// Per-channel standard deviation the centred pixels are divided by [default: 1].
    #[arg(long, value_delimiter = ',', value_name = "S")]
    pub input_std: Option<Vec<f64>>,
}

/// Imports `onnx` into `out` with `norm`; returns the imported network.
pub fn import(
    onnx: &Path,
    out: &Path,
    norm: &NormArgs,
    dataset: Option<&str>,
) -> Result<seernet::onnx::Imported> {
    seernet::onnx::import_to_checkpoint(
        onnx,
        out,
        norm.input_mean.as_deref(),
        norm.input_std.as_deref(),
        dataset,
    )
    .with_context(|| format!("importing {}", onnx.display()))
}

/// Warns on stderr when neither `--input-mean` nor `--input-std` is given: an ONNX file does
/// not say how its network's inputs were normalised, and feeding `p/255` to a network trained
/// on standardised pixels silently costs most of its accuracy.
pub fn warn_default_norm(norm: &NormArgs) {
    if norm.input_mean.is_none() && norm.input_std.is_none() {
        eprintln!(
            "warning: no --input-mean/--input-std given: the network is fed pixels scaled to \
             [0, 1] (mean 0, std 1); pass the normalisation it was trained with"
        );
    }
}

/// Whether `checkpoint` was imported from `onnx` as it is now (same content hash) with the
/// normalisation `norm` asks for.
pub fn is_current(checkpoint: &Path, onnx: &Path, norm: &NormArgs) -> bool {
    let Ok((model, info)) = seer_nn::checkpoint::load(checkpoint, None, &candle_core::Device::Cpu)
    else {
        return false;
    };
    let c = model.spec().input.c;
    let per = |v: &Option<Vec<f64>>, d: f64| match v.as_deref() {
        None => vec![d; c],
        Some([x]) => vec![*x; c],
        Some(v) => v.to_vec(),
    };
    let hash = seer_nn::labeler::file_hash(onnx).ok();
    hash.is_some()
        && info.info["onnx_hash"].as_str() == hash.as_deref()
        && seer_nn::checkpoint::input_norm(&info)
            == Some((per(&norm.input_mean, 0.0), per(&norm.input_std, 1.0)))
}

/// Runs `seernet import`.
pub fn run(a: ImportArgs) -> Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.model.with_extension("safetensors"));
    let dataset = match &a.dataset {
        Some(d) => Some(seer_nn::data::DataSource::parse(d)?.id()),
        None => None,
    };
    warn_default_norm(&a.norm);
    let imp = import(&a.model, &out, &a.norm, dataset.as_deref())?;
    let s = &imp.spec;
    let weighted = s.weighted_layers().len();
    let v = serde_json::json!({
        "out": out.display().to_string(), "layers": s.layers.len(), "weighted_layers": weighted,
        "weights": s.weight_count(), "tie_groups": s.tie_groups().len(), "input": s.input.to_string(),
        "num_classes": s.num_classes, "opset": imp.opset, "producer": imp.producer,
    });
    super::emit_result(a.json, &v, || {
        format!(
            "imported {} (opset {}, {}): {} layers, {} with weights ({} weights), {} residual tie \
             groups, input {}, {} classes -> {}\n",
            a.model.display(),
            imp.opset,
            imp.producer,
            s.layers.len(),
            weighted,
            s.weight_count(),
            s.tie_groups().len(),
            s.input,
            s.num_classes,
            out.display()
        )
    })
}
