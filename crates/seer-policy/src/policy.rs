//! Compression policies and their versioned JSON format (`seernet-policy`, version 1).
//!
//! ```json
//! {"format": "seernet-policy", "version": 1, "arch": "resnet20", "input": "32x32x3",
//!  "units": [{"prune": 0.25, "wbits": 4, "abits": 4}, ...]}
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::InputShape;

/// Format tag of policy files.
pub const POLICY_FORMAT: &str = "seernet-policy";
/// Version written and read by this build.
pub const POLICY_VERSION: u64 = 1;

/// The choice for one searchable unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitPolicy {
    /// Pruning ratio in `[0, 1)`: the fraction of output channels removed.
    pub prune: f64,
    /// Weight bit-width.
    pub wbits: u32,
    /// Bit-width of the activation entering the unit's layers.
    pub abits: u32,
}

/// A compression policy: one [`UnitPolicy`] per searchable unit of a network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Network name (must match the spec's name).
    pub arch: String,
    /// Input shape the policy was made for.
    pub input: InputShape,
    /// Per unit, in [`SearchSpace::units`](crate::SearchSpace::units) order.
    pub units: Vec<UnitPolicy>,
}

#[derive(Serialize)]
struct PolicyFileOut<'a> {
    format: &'static str,
    version: u64,
    arch: &'a str,
    input: InputShape,
    units: &'a [UnitPolicy],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFileIn {
    #[allow(dead_code)]
    format: String,
    #[allow(dead_code)]
    version: u64,
    arch: String,
    input: InputShape,
    units: Vec<UnitPolicy>,
}

/// Checks the `format` tag and `version` of a parsed JSON document.
fn check_header(v: &serde_json::Value, format: &str, version: u64, source: &str) -> Result<()> {
    let jerr = |msg: String| Error::Json {
        source_name: source.to_string(),
        msg,
    };
    let obj = v
        .as_object()
        .ok_or_else(|| jerr("expected a JSON object".into()))?;
    match obj.get("format").and_then(|f| f.as_str()) {
        Some(f) if f == format => {}
        Some(f) => return Err(jerr(format!("format is '{f}', expected '{format}'"))),
        None => return Err(jerr(format!("missing \"format\": \"{format}\""))),
    }
    let found = obj
        .get("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| jerr("missing or non-integer \"version\"".into()))?;
    if found != version {
        return Err(Error::UnsupportedVersion {
            source_name: source.to_string(),
            format: format.to_string(),
            found,
            supported: version,
        });
    }
    Ok(())
}

/// Parses the versioned JSON document `s` (named `source` in errors): checks its `format`
/// tag and `version`, then reads it as a `T`. Err(Json) for malformed JSON, a wrong tag or a
/// document `T` rejects; Err(UnsupportedVersion) for another version.
pub(crate) fn parse_versioned<T: serde::de::DeserializeOwned>(
    s: &str,
    format: &str,
    version: u64,
    source: &str,
) -> Result<T> {
    let jerr = |e: serde_json::Error| Error::Json {
        source_name: source.to_string(),
        msg: e.to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(s).map_err(jerr)?;
    check_header(&v, format, version, source)?;
    serde_json::from_value(v).map_err(jerr)
}

/// The text of the file at `path`. Err(Io) naming the path.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        err: e,
    })
}

impl Policy {
    /// Pretty JSON with format tag and version.
    pub fn to_json(&self) -> String {
        let out = PolicyFileOut {
            format: POLICY_FORMAT,
            version: POLICY_VERSION,
            arch: &self.arch,
            input: self.input,
            units: &self.units,
        };
        serde_json::to_string_pretty(&out).expect("a policy always serializes")
    }

    /// Parses a policy document; `source` names it in errors (e.g. the file path).
    /// Err(Json) for malformed JSON or a wrong format tag, Err(UnsupportedVersion) for
    /// another version. Values are checked against a space by
    /// [`SearchSpace::validate_named`](crate::SearchSpace::validate_named).
    pub fn from_json_str(s: &str, source: &str) -> Result<Self> {
        let f: PolicyFileIn = parse_versioned(s, POLICY_FORMAT, POLICY_VERSION, source)?;
        Ok(Policy {
            arch: f.arch,
            input: f.input,
            units: f.units,
        })
    }

    /// Reads a policy file. Err(Io) naming the path, or as [`from_json_str`](Self::from_json_str).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_json_str(&read_text(path)?, &path.display().to_string())
    }

    /// Writes the policy as JSON. Err(Io) naming the path.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json() + "\n").map_err(|e| Error::Io {
            path: path.display().to_string(),
            err: e,
        })
    }
}
