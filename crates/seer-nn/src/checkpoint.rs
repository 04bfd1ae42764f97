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
    let bytes = to_bytes(model, dataset, info)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::data::idx::write_atomic(path, &bytes)
}

/// The checkpoint file's bytes (what [`save`] writes; [`load_bytes`] reads them back).
pub fn to_bytes(model: &Model, dataset: Option<&str>, info: &serde_json::Value) -> Result<Vec<u8>> {
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
        .map_err(|e| Error::Invalid(format!("serialising a checkpoint: {e}")))?;
    canonical_header(bytes)
}

/// `bytes` (a safetensors file) with the keys of its JSON header, and of the header's
/// `__metadata__`, in sorted order, so that one model always gives the same bytes: safetensors
/// writes the metadata map in hash order, which differs from call to call, and label stores
/// pin a baseline by its file's SHA-256 (an ONNX model imported twice must match its label
/// cache). The header keeps its length (same keys and values, compact JSON, padded with
/// spaces as before), so the tensor offsets are unchanged. Errors: `Invalid` for a header
/// that is not a JSON object (never for what `safetensors::serialize` wrote).
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |m: &str| Error::Invalid(format!("serialising a checkpoint: {m}"));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .filter(|&n| bytes.len() >= 8 + n)
        .ok_or_else(|| bad("header length out of range"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(&e.to_string()))?;
    let sorted = |v: &serde_json::Map<String, serde_json::Value>| {
        let mut keys: Vec<&String> = v.keys().collect();
        keys.sort();
        keys.into_iter()
            .map(|k| (k.clone(), v[k].clone()))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut top = sorted(
        header
            .as_object()
            .ok_or_else(|| bad("header is not an object"))?,
    );
    if let Some(serde_json::Value::Object(m)) = top.get("__metadata__") {
        let m = sorted(m);
        top.insert("__metadata__".into(), m.into());
    }
    let json = serde_json::to_vec(&top).map_err(|e| bad(&e.to_string()))?;
    if json.len() > n {
        return Err(bad("sorted header is longer than the original"));
    }
    bytes[8..8 + json.len()].copy_from_slice(&json);
    bytes[8 + json.len()..8 + n].fill(b' ');
    Ok(bytes)
}

/// The checks of [`load_bytes`] before a model is built: layer names are unique (they name
/// the tensors; saving a model with two layers of one name would fail); every layer reads
/// earlier layers; an unslimmed spec passes [`NetworkSpec::check`] (a slimmed one holds
/// reduced channel counts that only its gathers reconcile); every parameter tensor of the
/// spec is in `st` as f32 with exactly the spec's shape. Err(message).
fn check_spec_against_tensors(
    spec: &NetworkSpec,
    slim: bool,
    st: &SafeTensors<'_>,
) -> std::result::Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for (i, l) in spec.layers.iter().enumerate() {
        if !names.insert(l.name.as_str()) {
            return Err(format!("spec: two layers are named {:?}", l.name));
        }
        if let Some(p) = l.inputs.iter().find(|&&p| p >= i) {
            return Err(format!(
                "spec: layer {} reads layer #{p}, which is not an earlier layer",
                l.name
            ));
        }
    }
    if !slim {
        spec.check().map_err(|e| format!("spec: {e}"))?;
    }
    for l in &spec.layers {
        for (suffix, shape) in crate::model::param_shapes(&l.kind, l.out_shape) {
            let name = format!("{}.{suffix}", l.name);
            match st.tensor(&name) {
                Ok(v) if v.dtype() == Dtype::F32 && v.shape() == shape.as_slice() => {}
                Ok(v) => {
                    return Err(format!(
                        "tensor {name} is {:?} {:?}, the network needs F32 {shape:?}",
                        v.dtype(),
                        v.shape()
                    ));
                }
                Err(_) => return Err(format!("tensor {name} is missing")),
            }
        }
    }
    Ok(())
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
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(&bytes, path, expect_arch, device)
}

/// [`load`] from the file's bytes; `path` only names the source in errors.
///
/// Nothing is allocated from the metadata's sizes alone: the spec is checked (producers
/// earlier than their layer; for an unslimmed model every shape re-derived by
/// [`NetworkSpec::check`]) and every parameter tensor the spec implies must be present in
/// the file with exactly its shape before the model is built, so the model is never larger
/// than the file's tensor data.
pub fn load_bytes(
    bytes: &[u8],
    path: &Path,
    expect_arch: Option<&str>,
    device: &Device,
) -> Result<(Model, CheckpointInfo)> {
    let bad = |m: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg: m,
    };
    if let Some(kind) = text_kind(bytes) {
        return Err(bad(format!(
            "is a {kind} file, not a model checkpoint (a safetensors file written by `seernet \
             train`, `finetune` or `compress`); pass a policy with --policy and a network with \
             --network"
        )));
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        bad(format!(
            "not a readable safetensors file ({e}); it is corrupt or truncated"
        ))
    })?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
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
    check_spec_against_tensors(&spec, slim, &st).map_err(bad)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use seer_policy::{InputShape, LayerKind, SpecBuilder};

    /// A checkpoint holding only metadata: `spec`, no tensors.
    fn metadata_only(spec: &NetworkSpec, slim: bool, comp: &str) -> Vec<u8> {
        let meta = HashMap::from([
            ("format".to_string(), MODEL_FORMAT.to_string()),
            ("version".to_string(), "1".to_string()),
            ("arch".to_string(), spec.name.clone()),
            ("spec".to_string(), serde_json::to_string(spec).unwrap()),
            ("comp".to_string(), comp.to_string()),
            ("residual_pruning".to_string(), "tied".to_string()),
            ("slim".to_string(), slim.to_string()),
        ]);
        safetensors::serialize(Vec::<(String, TensorView<'_>)>::new(), Some(meta)).unwrap()
    }

    #[test]
    fn spec_claiming_2_pow_40_weights_is_refused_before_building_the_model() {
        // A valid spec: one 2^20 x 2^20 linear layer (2^40 weights, 4 TiB as f32).
        let mut b = SpecBuilder::new("big", InputShape::new(1, 1, 1 << 20), 1 << 20);
        b.push(
            "fc",
            LayerKind::Linear {
                in_features: 1 << 20,
                out_features: 1 << 20,
                bias: false,
            },
            &[],
        )
        .unwrap();
        let spec = b.finish().unwrap();
        for slim in [false, true] {
            let bytes = metadata_only(&spec, slim, "[{}]");
            let e = load_bytes(&bytes, Path::new("big.safetensors"), None, &Device::Cpu)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("big.safetensors") && e.contains("tensor fc.weight is missing"),
                "{e}"
            );
        }
    }

    #[test]
    fn unchecked_spec_shapes_and_producers_are_refused() {
        let mut b = SpecBuilder::new("t", InputShape::new(1, 1, 4), 3);
        b.push(
            "fc",
            LayerKind::Linear {
                in_features: 4,
                out_features: 3,
                bias: false,
            },
            &[],
        )
        .unwrap();
        let good = b.finish().unwrap();
        // A BatchNorm claiming 2^40 channels through its out_shape (not re-derived when slim:
        // its tensors must still be present with that shape).
        let mut spec = good.clone();
        spec.layers.insert(
            0,
            seer_policy::Layer {
                name: "bn".into(),
                kind: LayerKind::BatchNorm,
                inputs: vec![],
                out_shape: [1 << 40, 1, 1],
            },
        );
        for slim in [false, true] {
            let e = load_bytes(
                &metadata_only(&spec, slim, "[{},{}]"),
                Path::new("m"),
                None,
                &Device::Cpu,
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("spec:") || e.contains("bn.weight is missing"),
                "{e}"
            );
        }
        // Two layers of one name in a slimmed spec (not re-derived by `check`): the tensors
        // they share would be written twice (fuzz target checkpoint,
        // tests/fuzz-regressions/checkpoint/).
        let mut spec = good.clone();
        spec.layers.insert(0, spec.layers[0].clone());
        spec.layers[1].inputs = vec![0];
        let e = load_bytes(
            &metadata_only(&spec, true, "[{},{}]"),
            Path::new("m"),
            None,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two layers are named \"fc\""), "{e}");
        // A layer reading a later layer.
        let mut spec = good;
        spec.layers[0].inputs = vec![5];
        let e = load_bytes(
            &metadata_only(&spec, true, "[{}]"),
            Path::new("m"),
            None,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an earlier layer"), "{e}");
    }

    /// `bytes` with metadata `key` set to `value`, tensors unchanged.
    fn with_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
        let (_, h) = SafeTensors::read_metadata(bytes).unwrap();
        let mut meta = h.metadata().clone().unwrap();
        meta.insert(key.into(), value.into());
        let st = SafeTensors::deserialize(bytes).unwrap();
        safetensors::serialize(st.tensors(), Some(meta)).unwrap()
    }

    /// A network of one linear layer (4 → 3, with bias).
    fn one_linear() -> Model {
        let mut b = SpecBuilder::new("t", InputShape::new(1, 1, 4), 3);
        b.push(
            "fc",
            LayerKind::Linear {
                in_features: 4,
                out_features: 3,
                bias: true,
            },
            &[],
        )
        .unwrap();
        Model::new(b.finish().unwrap(), 1, &Device::Cpu).unwrap()
    }

    #[test]
    fn hostile_compression_state_is_an_error_not_a_panic() {
        let model = one_linear();
        let bytes = to_bytes(&model, None, &serde_json::Value::Null).unwrap();
        assert!(load_bytes(&bytes, Path::new("m"), None, &Device::Cpu).is_ok());
        for (comp, want) in [
            (r#"[{"keep":[0,7]}]"#, "below its 3 channels"),
            (r#"[{"keep":[2,1]}]"#, "ascending"),
            (r#"[{"keep":[1,1]}]"#, "ascending"),
            (r#"[{"wbits":99}]"#, "bit-width 99"),
            (r#"[{"abits":0}]"#, "bit-width 0"),
        ] {
            let e = load_bytes(
                &with_meta(&bytes, "comp", comp),
                Path::new("m"),
                None,
                &Device::Cpu,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(want), "{comp}: {e}");
        }
    }

    #[test]
    fn one_model_always_gives_the_same_bytes() {
        let model = one_linear();
        let info = serde_json::json!({"z": 1, "a": [2, 3], "onnx_hash": "ab"});
        let first = to_bytes(&model, Some("fashion-mnist"), &info).unwrap();
        // Every call builds a new metadata map, hashed with a new random state.
        for _ in 0..8 {
            assert_eq!(
                to_bytes(&model, Some("fashion-mnist"), &info).unwrap(),
                first
            );
        }
        let (_, h) = SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(h.metadata().as_ref().unwrap().len(), 11);
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let text = std::str::from_utf8(&first[8..8 + n]).unwrap();
        let at = |k: &str| text.find(&format!("\"{k}\":")).unwrap();
        let keys = [
            "arch",
            "comp",
            "dataset",
            "format",
            "info",
            "input",
            "num_classes",
        ];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
        let (m, loaded) = load_bytes(&first, Path::new("m"), None, &Device::Cpu).unwrap();
        assert_eq!(m.named_tensors().len(), model.named_tensors().len());
        assert_eq!(loaded.dataset.as_deref(), Some("fashion-mnist"));
    }
}
