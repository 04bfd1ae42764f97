//! Model checkpoints: safetensors files with the network, dataset, compression state and
//! policy in the metadata (format `seernet-model`, version 1).
//!
//! Metadata keys: `format`, `version`, `arch`, `input` (`HxWxC`), `num_classes`, `dataset`,
//! `spec` (the network spec JSON, reduced channel counts for slimmed models), `comp` (per
//! layer kept channels, bit-widths, gathers), `residual_pruning`, `slim`, optional `policy`
//! (seer-policy JSON) and `info` (free-form JSON, e.g. training figures).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use seer_policy::{NetworkSpec, Policy, ResidualPruning};

use crate::model::{LayerComp, Model};
use crate::{Error, Result};

/// Format name in the metadata.
pub const MODEL_FORMAT: &str = "seernet-model";
/// Current checkpoint version; a newer one is refused.
pub const MODEL_VERSION: u32 = 1;

/// Metadata of a checkpoint, besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// Dataset the model was trained on (e.g. `fashion-mnist`).
    pub dataset: Option<String>,
    /// Free-form JSON (training figures, provenance).
    pub info: serde_json::Value,
}

/// The input normalisation a checkpoint carries (an imported network's `--input-mean` /
/// `--input-std`, in its `info` as `input_mean` / `input_std`: per channel, of pixels scaled
/// to [0, 1]), which then replaces the dataset's own. None when it records none.
pub fn input_norm(info: &CheckpointInfo) -> Option<(Vec<f64>, Vec<f64>)> {
    let get = |k: &str| -> Option<Vec<f64>> {
        info.info
            .get(k)?
            .as_array()?
            .iter()
            .map(|v| v.as_f64())
            .collect()
    };
    Some((get("input_mean")?, get("input_std")?))
}

/// Writes `model` to `path` (atomically: temporary file + rename).
pub fn save(
    model: &Model,
    path: &Path,
    dataset: Option<&str>,
    info: &serde_json::Value,
) -> Result<()> {
    let spec = model.spec();
    let named = model.named_tensors();
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(named.len());
    for (name, t) in named {
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((name, t.dims().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let js = |v: &dyn erased::Ser| v.json();
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), MODEL_FORMAT.into());
    meta.insert("version".into(), MODEL_VERSION.to_string());
    meta.insert("arch".into(), spec.name.clone());
    meta.insert("input".into(), spec.input.to_string());
    meta.insert("num_classes".into(), spec.num_classes.to_string());
    if let Some(d) = dataset {
        meta.insert("dataset".into(), d.into());
    }
    meta.insert("spec".into(), js(spec)?);
    meta.insert("comp".into(), js(&model.comp().to_vec())?);
    meta.insert(
        "residual_pruning".into(),
        model.residual_pruning().to_string(),
    );
    meta.insert("slim".into(), model.is_slim().to_string());
    if let Some(p) = model.policy() {
        meta.insert("policy".into(), p.to_json());
    }
    meta.insert("info".into(), info.to_string());
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Invalid(format!("serialising {}: {e}", path.display())))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::data::idx::write_atomic(path, &bytes)
}

mod erased {
    //! Tiny helper to serialise heterogeneous metadata values to JSON strings.
    pub trait Ser {
        fn json(&self) -> crate::Result<String>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> crate::Result<String> {
            serde_json::to_string(self).map_err(|e| crate::Error::Invalid(format!("metadata: {e}")))
        }
    }
}

/// `"JSON"` or `"text"` when `bytes` look like a text file rather than a safetensors file
/// (which starts with an 8-byte little-endian header length, whose high bytes are zero for any
/// real header); None otherwise.
fn text_kind(bytes: &[u8]) -> Option<&'static str> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
    let looks_text = bytes.len() >= 8 && bytes[..8].iter().all(|b| b.is_ascii() && *b != 0);
    match first {
        b'{' | b'[' if looks_text => Some("JSON"),
        _ if looks_text => Some("text"),
        _ => None,
    }
}

/// Reads a checkpoint. `expect_arch`: when given, a checkpoint of another architecture is an
/// error (so `--arch resnet20` never silently loads a LeNet).
///
/// Errors ([`Error::Checkpoint`], naming the file): not a safetensors file or truncated;
/// not a `seernet-model`; a newer version; missing/ill-shaped tensors; wrong architecture.
pub fn load(
    path: &Path,
    expect_arch: Option<&str>,
    device: &Device,
) -> Result<(Model, CheckpointInfo)> {
    let bad = |m: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: m,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Some(kind) = text_kind(&bytes) {
        return Err(bad(format!(
            "is a {kind} file, not a model checkpoint (a safetensors file written by `seernet \
             train`, `finetune` or `compress`); pass a policy with --policy and a network with \
             --network"
        )));
    }
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file ({e}); it is corrupt or truncated"
        ))
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file ({e}); it is corrupt or truncated"
        ))
    })?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.contains_key(seer_int::format::META_KEY) {
        return Err(bad(
            "is an exported integer model (seer-int format), not a float checkpoint: run it \
             with `seernet infer --model …`; its float twin is the `final/*.float.safetensors` \
             file named in its provenance"
                .into(),
        ));
    }
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata key {k:?} is missing")))
    };
    if get("format")? != MODEL_FORMAT {
        return Err(bad(format!(
            "format {:?} is not {MODEL_FORMAT}",
            meta["format"]
        )));
    }
    let version: u32 = get("version")?
        .parse()
        .map_err(|_| bad("version is not a number".into()))?;
    if version > MODEL_VERSION {
        return Err(bad(format!(
            "version {version} is newer than this build understands ({MODEL_VERSION})"
        )));
    }
    let arch = get("arch")?;
    if let Some(want) = expect_arch
        && want != arch
    {
        return Err(bad(format!("holds a {arch} model, not {want}")));
    }
    let spec: NetworkSpec =
        serde_json::from_str(get("spec")?).map_err(|e| bad(format!("spec: {e}")))?;
    let comp: Vec<LayerComp> =
        serde_json::from_str(get("comp")?).map_err(|e| bad(format!("comp: {e}")))?;
    let residual: ResidualPruning = get("residual_pruning")?
        .parse()
        .map_err(|e| bad(format!("residual_pruning: {e}")))?;
    let slim = get("slim")? == "true";
    let policy = match meta.get("policy") {
        Some(p) => Some(
            Policy::from_json_str(p, &path.display().to_string())
                .map_err(|e| bad(format!("policy: {e}")))?,
        ),
        None => None,
    };
    let mut model = Model::skeleton(spec, device)?;
    let mut err = None;
    model.load_named(
        |name| match st.tensor(name) {
            Ok(v) => {
                if v.dtype() != Dtype::F32
                    || v.data().len() != 4 * v.shape().iter().product::<usize>()
                {
                    err = Some(format!("tensor {name}: not f32 or wrong byte length"));
                    return None;
                }
                let data: Vec<f32> = v
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                Tensor::from_vec(data, v.shape(), device).ok()
            }
            Err(_) => None,
        },
        path,
    )?;
    if let Some(e) = err {
        return Err(bad(e));
    }
    model
        .set_state(comp, residual, slim, policy)
        .map_err(|e| bad(e.to_string()))?;
    let info = meta
        .get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((
        model,
        CheckpointInfo {
            dataset: meta.get("dataset").cloned(),
            info,
        },
    ))
}
