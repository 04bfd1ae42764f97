//! Saving and loading a trained [`Predictor`]: the one module that knows the file format.
//!
//! Format (safetensors, readable from Python with `safetensors.safe_open`):
//! - tensors `member{m}.layer{l}.weight` f32 `[out, in]` and `member{m}.layer{l}.bias` f32
//!   `[out]`; `scaler.x_mean`, `scaler.x_std` f64 `[d]`; `scaler.y` f64 `[2]` (mean, std);
//!   `member_stats` f64 `[M, 3]` (epochs, best epoch, best validation MSE); since version 2
//!   also `range.x` f64 `[2, d]` (per-feature minimum, then maximum, of the training rows) and
//!   `range.y` f64 `[2]` (lowest, highest training label);
//! - the members read `d + k` inputs: the `d` raw features, then the quantization-noise power
//!   of the `k` raw columns listed in the header's `noise_columns` (since version 3; empty,
//!   and absent in older files, when `config.noise_features` is off), so `sizes[0]`, the
//!   scaler and a skip term have `d + k` entries while `feature_names` and `range.x` have `d`;
//! - metadata key `seernet_predictor`: JSON `{"format": "seernet-predictor", "version": 3,
//!   "config": {...}, "feature_names": [...], "noise_columns": [...], "target_name": "...",
//!   "sizes": [...]}`; the
//!   config carries the output map (`"output": {"kind": "logistic", "lo": 0, "hi": 100}`).
//!   `scaler.y` holds the affine map of a member's output (`u = y[0] + y[1]·o`, in the output
//!   map's space).
//!
//! Versions 1 and 2 have no noise inputs (their configs read `noise_features: false`).
//! Version 1 (before bounded outputs) still loads: its config has no output map and reads as
//! `Output::Linear` (as it was trained, so its predictions are unchanged and unbounded), and it
//! has no training range, so its predictions carry `extrapolation: None`.
//! A file of another format or a newer version is a clear error, never a guess.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::ensemble::{Config, MemberStats, Predictor, Scaler};
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::output::{Output, TrainingRange};

/// Value of the `format` field.
pub const FORMAT: &str = "seernet-predictor";
/// The format version this build writes (and the newest it reads; version 1 is read too).
pub const VERSION: u32 = 3;
const META_KEY: &str = "seernet_predictor";

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    #[serde(default)]
    config: Option<Config>,
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    noise_columns: Vec<usize>,
    #[serde(default)]
    target_name: String,
    #[serde(default)]
    sizes: Vec<usize>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Predictor {
    /// Serialises to bytes in the format described in the module docs.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        // Every predictor this build fits has a range; one read from a version-1 file has none
        // and is written back as version 1 (its config says `Linear`, as it was trained).
        let header = Header {
            format: FORMAT.into(),
            version: if self.range.is_some() { VERSION } else { 1 },
            config: Some(self.config.clone()),
            feature_names: self.feature_names.clone(),
            noise_columns: self.noise_cols.clone(),
            target_name: self.target_name.clone(),
            sizes: self.members[0].sizes.clone(),
        };
        let meta = serde_json::to_string(&header)
            .map_err(|e| Error::Shape(format!("encoding header: {e}")))?;
        let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (m, net) in self.members.iter().enumerate() {
            let mut off = 0;
            for (l, w) in net.sizes.windows(2).enumerate() {
                let (i, o) = (w[0], w[1]);
                blobs.push((
                    format!("member{m}.layer{l}.weight"),
                    Dtype::F32,
                    vec![o, i],
                    f32_bytes(&net.params[off..off + i * o]),
                ));
                off += i * o;
                blobs.push((
                    format!("member{m}.layer{l}.bias"),
                    Dtype::F32,
                    vec![o],
                    f32_bytes(&net.params[off..off + o]),
                ));
                off += o;
            }
            if net.skip {
                blobs.push((
                    format!("member{m}.skip"),
                    Dtype::F32,
                    vec![net.input_dim()],
                    f32_bytes(&net.params[off..off + net.input_dim()]),
                ));
            }
        }
        let d = self.x_scaler.mean.len();
        blobs.push((
            "scaler.x_mean".into(),
            Dtype::F64,
            vec![d],
            f64_bytes(&self.x_scaler.mean),
        ));
        blobs.push((
            "scaler.x_std".into(),
            Dtype::F64,
            vec![d],
            f64_bytes(&self.x_scaler.std),
        ));
        blobs.push((
            "scaler.y".into(),
            Dtype::F64,
            vec![2],
            f64_bytes(&[self.y_mean, self.y_std]),
        ));
        let stats: Vec<f64> = self
            .member_stats
            .iter()
            .flat_map(|s| [s.epochs as f64, s.best_epoch as f64, s.best_val_mse])
            .collect();
        blobs.push((
            "member_stats".into(),
            Dtype::F64,
            vec![self.member_stats.len(), 3],
            f64_bytes(&stats),
        ));
        if let Some(r) = &self.range {
            let x: Vec<f64> = r.x_min.iter().chain(&r.x_max).copied().collect();
            let d_raw = self.n_features();
            blobs.push(("range.x".into(), Dtype::F64, vec![2, d_raw], f64_bytes(&x)));
            blobs.push((
                "range.y".into(),
                Dtype::F64,
                vec![2],
                f64_bytes(&[r.y_min, r.y_max]),
            ));
        }
        let views = blobs
            .iter()
            .map(|(name, dt, shape, data)| {
                Ok((name.clone(), TensorView::new(*dt, shape.clone(), data)?))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| Error::Shape(format!("building tensors: {e}")))?;
        let info = HashMap::from([(META_KEY.to_string(), meta)]);
        safetensors::serialize(views, Some(info))
            .map_err(|e| Error::Shape(format!("serialising: {e}")))
    }

    /// Writes the predictor to `path` (see the module docs for the format).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Reads a predictor written by [`Self::save`]. Errors: [`Error::Io`]; [`Error::Format`] for
    /// a file that is not a seernet predictor, of a newer version, or inconsistent.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses bytes written by [`Self::to_bytes`]; `path` only names the source in errors.
    /// The header's counts and sizes only select and check tensors present in the file: a
    /// header claiming 2^40 members or weights fails at the first missing tensor, having
    /// allocated nothing for it.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Format {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                bad(format!(
                    "safetensors file without a {META_KEY:?} header: not a seernet predictor"
                ))
            })?;
        let header: Header =
            serde_json::from_str(json).map_err(|e| bad(format!("malformed header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT:?}",
                header.format
            )));
        }
        if header.version > VERSION {
            return Err(bad(format!(
                "format version {} is newer than this build supports ({VERSION}); upgrade seernet",
                header.version
            )));
        }
        if header.version == 0 {
            return Err(bad("format version 0 is not valid".into()));
        }
        let config = header
            .config
            .ok_or_else(|| bad("header has no config".into()))?;
        if header.version == 1 && config.output != Output::Linear {
            return Err(bad(format!(
                "a version-1 file with output {:?}: version 1 predates bounded outputs",
                config.output
            )));
        }
        config
            .output
            .validate()
            .map_err(|e| bad(format!("config: {e}")))?;
        config.validate().map_err(|e| bad(format!("config: {e}")))?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| bad(format!("reading tensors: {e}")))?;
        let get = |name: &str, dt: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor {name:?}")))?;
            if t.dtype() != dt || t.shape() != shape {
                return Err(bad(format!(
                    "tensor {name:?} is {:?} {:?}, expected {dt:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data().to_vec())
        };
        let f32s = |b: Vec<u8>| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let f64s = |b: Vec<u8>| -> Vec<f64> {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let sizes = header.sizes;
        if sizes.len() < 2 || sizes.contains(&0) || *sizes.last().unwrap() != 1 {
            return Err(bad(format!("invalid layer sizes {sizes:?}")));
        }
        let d = sizes[0];
        let noise_cols = header.noise_columns;
        let d_raw = header.feature_names.len();
        if header.version < 3 && !noise_cols.is_empty() {
            return Err(bad(format!(
                "noise_columns in a version-{} file (noise inputs came with version 3)",
                header.version
            )));
        }
        if !config.noise_features && !noise_cols.is_empty() {
            return Err(bad(
                "noise_columns listed but config.noise_features is false".into(),
            ));
        }
        if noise_cols.windows(2).any(|w| w[0] >= w[1]) || noise_cols.iter().any(|&j| j >= d_raw) {
            return Err(bad(format!(
                "noise_columns {noise_cols:?} must be ascending indices below {d_raw} features"
            )));
        }
        if d_raw + noise_cols.len() != d {
            return Err(bad(format!(
                "{d_raw} feature names and {} noise columns for {d} inputs",
                noise_cols.len()
            )));
        }
        // Grows with the members actually found: `config.members` is a number from the file.
        let mut members = Vec::new();
        for m in 0..config.members {
            let mut params = Vec::new();
            for (l, w) in sizes.windows(2).enumerate() {
                params.extend(f32s(get(
                    &format!("member{m}.layer{l}.weight"),
                    Dtype::F32,
                    &[w[1], w[0]],
                )?));
                params.extend(f32s(get(
                    &format!("member{m}.layer{l}.bias"),
                    Dtype::F32,
                    &[w[1]],
                )?));
            }
            if config.skip {
                params.extend(f32s(get(&format!("member{m}.skip"), Dtype::F32, &[d])?));
            }
            if params.iter().any(|p| !p.is_finite()) {
                return Err(bad(format!("member {m} has non-finite weights")));
            }
            members.push(Mlp {
                sizes: sizes.clone(),
                params,
                skip: config.skip,
            });
        }
        let x_mean = f64s(get("scaler.x_mean", Dtype::F64, &[d])?);
        let x_std = f64s(get("scaler.x_std", Dtype::F64, &[d])?);
        let y = f64s(get("scaler.y", Dtype::F64, &[2])?);
        if x_std
            .iter()
            .chain(&y[1..])
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(bad(
                "scaler standard deviations must be finite and > 0".into()
            ));
        }
        if x_mean.iter().chain(&y[..1]).any(|m| !m.is_finite()) {
            return Err(bad("scaler means must be finite".into()));
        }
        let stats = f64s(get("member_stats", Dtype::F64, &[config.members, 3])?);
        let member_stats = stats
            .chunks(3)
            .map(|s| MemberStats {
                epochs: s[0] as usize,
                best_epoch: s[1] as usize,
                best_val_mse: s[2],
            })
            .collect();
        let range = if header.version >= 2 {
            let x = f64s(get("range.x", Dtype::F64, &[2, d_raw])?);
            let y = f64s(get("range.y", Dtype::F64, &[2])?);
            if x.iter().chain(&y).any(|v| !v.is_finite())
                || x[..d_raw].iter().zip(&x[d_raw..]).any(|(lo, hi)| lo > hi)
                || y[0] > y[1]
            {
                return Err(bad(
                    "training range must be finite with minimum ≤ maximum".into()
                ));
            }
            Some(TrainingRange {
                x_min: x[..d_raw].to_vec(),
                x_max: x[d_raw..].to_vec(),
                y_min: y[0],
                y_max: y[1],
            })
        } else {
            None
        };
        Ok(Predictor {
            range,
            config,
            feature_names: header.feature_names,
            noise_cols,
            target_name: header.target_name,
            x_scaler: Scaler {
                mean: x_mean,
                std: x_std,
            },
            y_mean: y[0],
            y_std: y[1],
            members,
            member_stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::tests::fitted;

    #[test]
    fn round_trip_is_exact() {
        let (_, p) = fitted(50, 11, 10);
        let bytes = p.to_bytes().unwrap();
        let q = Predictor::from_bytes(&bytes, Path::new("mem")).unwrap();
        assert_eq!(p, q);
    }

    /// A version-1 file written by the code before bounded outputs (commit bbb49f8:
    /// `fit` with `Config { members: 2, hidden: vec![4], max_epochs: 30, ..Config::default() }`
    /// on `bits_0 = 2 + i % 4`, `prune_0 = 0.25·(i / 4)`, `top1 = 80 + 3·bits_0 − 4·prune_0`,
    /// `i` in 0..24), and what that code predicted at two rows.
    const V1_FILE: &[u8] = include_bytes!("../testdata/predictor-v1.safetensors");
    const V1_ROWS: [[f64; 2]; 2] = [[3.0, 0.5], [8.0, 0.0]];
    const V1_MEAN: [f64; 2] = [87.51236506022288, 97.84823663979083];
    const V1_STD: [f64; 2] = [1.1338888067651993, 8.652874116822794];

    #[test]
    fn version_1_files_load_unchanged_and_unflagged() {
        let p = Predictor::from_bytes(V1_FILE, Path::new("v1.st")).unwrap();
        assert_eq!(p.output(), Output::Linear);
        assert_eq!(p.training_range(), None);
        let q = p.predict(&V1_ROWS).unwrap();
        for r in 0..2 {
            assert!((q.mean[r] - V1_MEAN[r]).abs() < 1e-9, "{:?}", q.mean);
            assert!((q.std[r] - V1_STD[r]).abs() < 1e-9, "{:?}", q.std);
        }
        // No recorded range: the prediction cannot tell, and says so.
        assert_eq!(q.extrapolation, None);
        assert!(!q.extrapolates(1));
        // Written back, it stays a version-1 file and reads the same.
        let bytes = p.to_bytes().unwrap();
        assert!(bytes.windows(13).any(|w| w == b"\\\"version\\\":1"));
        assert_eq!(
            Predictor::from_bytes(&bytes, Path::new("again")).unwrap(),
            p
        );
    }

    #[test]
    fn version_2_records_output_and_range() {
        let (s, p) = fitted(50, 13, 5);
        assert_eq!(p.output(), Output::PERCENT);
        let q = Predictor::from_bytes(&p.to_bytes().unwrap(), Path::new("mem")).unwrap();
        let r = q.training_range().unwrap();
        assert_eq!(r, p.training_range().unwrap());
        let ymax = s.y().iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(r.y_max, ymax);
        assert_eq!(r.x_min.len(), s.n_features());
        // A version-2 file without its range tensors is an error, not a silent "unknown".
        let mut bare = p.clone();
        bare.range = None;
        let mut b = bare.to_bytes().unwrap();
        let pat = b"\\\"version\\\":1";
        let at = b.windows(pat.len()).position(|w| w == pat).unwrap();
        b[at + pat.len() - 1] = b'2';
        let e = Predictor::from_bytes(&b, Path::new("p.st"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing tensor \"range.x\""), "{e}");
    }

    #[test]
    fn version_3_records_noise_columns_and_older_versions_have_none() {
        let s = crate::ensemble::tests::bit_width_samples(40, 31);
        let cfg = crate::ensemble::tests::small_with_epochs(10);
        let p = crate::fit(&s, &cfg).unwrap();
        assert_eq!(p.noise_columns(), &[1, 2, 4]);
        let bytes = p.to_bytes().unwrap();
        let q = Predictor::from_bytes(&bytes, Path::new("mem")).unwrap();
        assert_eq!(p, q);
        // The same file claiming version 2 (which had no noise inputs) is refused.
        let pat = b"\\\"version\\\":3";
        let at = bytes.windows(pat.len()).position(|w| w == pat).unwrap();
        let mut old = bytes.clone();
        old[at + pat.len() - 1] = b'2';
        let e = Predictor::from_bytes(&old, Path::new("p.st"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("noise_columns in a version-2 file"), "{e}");
        // A version-2 file (no noise inputs) still loads and predicts as written.
        let plain = crate::fit(
            &s,
            &Config {
                noise_features: false,
                ..cfg
            },
        )
        .unwrap();
        let mut v2 = plain.to_bytes().unwrap();
        let at = v2.windows(pat.len()).position(|w| w == pat).unwrap();
        v2[at + pat.len() - 1] = b'2';
        assert_eq!(Predictor::from_bytes(&v2, Path::new("v2")).unwrap(), plain);
    }

    #[test]
    fn header_claiming_2_pow_40_members_and_weights_is_refused_before_allocating() {
        let config = Config {
            members: 1 << 40,
            ..Config::default()
        };
        let header = serde_json::json!({
            "format": FORMAT, "version": 2, "config": config,
            "feature_names": ["a", "b"], "target_name": "top1",
            "sizes": [2, 1u64 << 40, 1],
        });
        let meta = HashMap::from([(META_KEY.to_string(), header.to_string())]);
        let bytes = safetensors::serialize(Vec::<(String, TensorView)>::new(), Some(meta)).unwrap();
        let e = Predictor::from_bytes(&bytes, Path::new("big.st"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("big.st") && e.contains("missing tensor \"member0.layer0.weight\""),
            "{e}"
        );
        // A header with no member at all is refused (writing it back would have nothing to
        // take the layer sizes from).
        let header = serde_json::json!({
            "format": FORMAT, "version": 2,
            "config": Config { members: 0, ..Config::default() },
            "feature_names": ["a"], "target_name": "top1", "sizes": [1, 1],
        });
        let meta = HashMap::from([(META_KEY.to_string(), header.to_string())]);
        let bytes = safetensors::serialize(Vec::<(String, TensorView)>::new(), Some(meta)).unwrap();
        let e = Predictor::from_bytes(&bytes, Path::new("none.st"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("members must be ≥ 1"), "{e}");
    }

    #[test]
    fn future_version_and_foreign_files_are_errors() {
        let (_, p) = fitted(50, 12, 5);
        let bytes = p.to_bytes().unwrap();
        // Rewrite the header's version byte in place (same length keeps the file consistent).
        let pat = b"\\\"version\\\":3";
        let at = bytes
            .windows(pat.len())
            .position(|w| w == pat)
            .expect("version field in header");
        let mut future = bytes.clone();
        future[at + pat.len() - 1] = b'9';
        let e = Predictor::from_bytes(&future, Path::new("p.st"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.st") && e.contains("version 9 is newer"),
            "{e}"
        );
        let e = Predictor::from_bytes(b"not a model", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a safetensors file"), "{e}");
        let other = safetensors::serialize(Vec::<(String, TensorView)>::new(), None).unwrap();
        let e = Predictor::from_bytes(&other, Path::new("y"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a seernet predictor"), "{e}");
    }
}
