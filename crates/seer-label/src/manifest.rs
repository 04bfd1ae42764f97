//! Sharded labelling for when one machine is not enough: a manifest of policies to label
//! (`M.jsonl`), `--shard I/N` slicing, one result file per policy, and `merge` into the store.
//!
//! # Manifest (`seernet-manifest`, version 1)
//! JSON lines. Line 1: `{"format":"seernet-manifest","version":1,"protocol":{..}}` (the
//! labelling [`Protocol`] every shard must use). Then one [`ManifestEntry`] per line:
//! `{"id":0,"hash":"<policy hash>","policy":{..}}`; ids and hashes are unique.
//!
//! # Shards
//! Shard `I` of `N` (0-based, `0 ≤ I < N`) takes the entries at positions `p` with
//! `p mod N = I` (round-robin, so a manifest sorted by cost spreads cost evenly). When `I` is
//! omitted (`--shard /N`) it is read from `SLURM_ARRAY_TASK_ID` (use `--array=0-(N-1)`), then
//! `JOB_COMPLETION_INDEX` (Kubernetes indexed jobs).
//!
//! # Results (`seernet-label-result`, version 1)
//! One file per policy, `DIR/<hash>.json`, written atomically (temporary file, fsync, rename):
//! `{"format":"seernet-label-result","version":1,"writer":..,"id":0,"protocol":{..},"record":{..}}`.
//! A shard skips policies whose result already exists with the same protocol, so re-running it
//! (after a kill, or twice) is idempotent. [`merge_results`] folds result directories into a
//! [`LabelStore`], skipping hashes it already has and refusing other protocols.
//!
//! ```
//! use seer_label::manifest::ShardSpec;
//! let s = ShardSpec::parse_with_env("/4", |k| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string())).unwrap();
//! assert_eq!((s.index, s.count), (2, 4));
//! assert_eq!(s.select(10), vec![2, 6]);
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use seer_policy::{Policy, SearchSpace};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::store::Measured;
use crate::store::{
    Appended, LabelRecord, LabelStore, Protocol, WRITER, label_seed, policy_hash, write_atomic,
};

/// Format tag of manifests.
pub const MANIFEST_FORMAT: &str = "seernet-manifest";
/// Manifest version written and read by this build.
pub const MANIFEST_VERSION: u64 = 1;
/// Format tag of per-policy result files.
pub const RESULT_FORMAT: &str = "seernet-label-result";
/// Result-file version written and read by this build.
pub const RESULT_VERSION: u64 = 1;
/// Environment variables read, in order, when `--shard` omits the index.
pub const SHARD_ENV: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// One policy to label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Unique id within the manifest.
    pub id: u64,
    /// [`policy_hash`] of `policy`.
    pub hash: String,
    /// The policy.
    pub policy: Policy,
}

impl ManifestEntry {
    /// An entry for `policy` with its hash.
    pub fn new(id: u64, policy: Policy) -> Self {
        ManifestEntry {
            id,
            hash: policy_hash(&policy),
            policy,
        }
    }
}

/// A list of policies to label under one protocol.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The labelling protocol.
    pub protocol: Protocol,
    /// Entries in file order.
    pub entries: Vec<ManifestEntry>,
}

#[derive(Serialize, Deserialize)]
struct ManifestHeader {
    format: String,
    version: u64,
    protocol: serde_json::Value,
}

fn ferr(path: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        line,
        msg: msg.into(),
    }
}

fn check_tag(
    path: &Path,
    line: usize,
    v: &serde_json::Value,
    format: &str,
    version: u64,
) -> Result<()> {
    match v.get("format").and_then(|f| f.as_str()) {
        Some(f) if f == format => {}
        Some(f) => {
            return Err(ferr(
                path,
                line,
                format!("format is '{f}', expected '{format}'"),
            ));
        }
        None => {
            return Err(ferr(
                path,
                line,
                format!("missing \"format\": \"{format}\""),
            ));
        }
    }
    match v.get("version").and_then(|v| v.as_u64()) {
        Some(x) if x == version => Ok(()),
        Some(x) => {
            let by = v
                .get("writer")
                .and_then(|w| w.as_str())
                .map(|w| format!(" (written by {w})"))
                .unwrap_or_default();
            Err(ferr(
                path,
                line,
                format!("{format} version {x}{by}; this build reads version {version}"),
            ))
        }
        None => Err(ferr(path, line, "missing or non-integer \"version\"")),
    }
}

impl Manifest {
    /// A manifest of `policies` with ids 0, 1, ... Err(Format) when a policy appears twice.
    pub fn new(protocol: Protocol, policies: impl IntoIterator<Item = Policy>) -> Result<Self> {
        let entries = policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| ManifestEntry::new(i as u64, p))
            .collect();
        let m = Manifest { protocol, entries };
        m.check(Path::new("<manifest>"))?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            let line = i + 2;
            if policy_hash(&e.policy) != e.hash {
                return Err(ferr(
                    path,
                    line,
                    format!(
                        "hash {} does not match its policy ({})",
                        e.hash,
                        policy_hash(&e.policy)
                    ),
                ));
            }
            if !ids.insert(e.id) {
                return Err(ferr(path, line, format!("id {} appears twice", e.id)));
            }
            if !hashes.insert(e.hash.clone()) {
                return Err(ferr(path, line, format!("policy {} appears twice", e.hash)));
            }
        }
        Ok(())
    }

    /// Err(Policy) naming the entry when a policy does not belong to `space`; Err(Protocol)
    /// when the space is not the protocol's.
    pub fn validate(&self, space: &SearchSpace) -> Result<()> {
        self.protocol.check_space(space)?;
        for e in &self.entries {
            space.validate_named(&e.policy, &format!("manifest entry {}", e.id))?;
        }
        Ok(())
    }

    /// The manifest as JSON lines.
    pub fn to_jsonl(&self) -> String {
        let header = ManifestHeader {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            protocol: serde_json::to_value(&self.protocol).expect("serializes"),
        };
        let mut s = serde_json::to_string(&header).expect("serializes") + "\n";
        for e in &self.entries {
            s += &(serde_json::to_string(e).expect("serializes") + "\n");
        }
        s
    }

    /// Writes the manifest atomically. Err(Io) naming the path.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_jsonl().as_bytes())
    }

    /// Reads a manifest. Err(Io), or Err(Format) naming the line for bad JSON, another format
    /// or version, a hash that does not match its policy, or a duplicate id or policy.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            err: e,
        })?;
        Self::from_jsonl(&text, path)
    }

    /// Parses a manifest's text (what [`to_jsonl`](Self::to_jsonl) writes); `path` only names
    /// the source in errors, which are those of [`load`](Self::load) but Io.
    pub fn from_jsonl(text: &str, path: &Path) -> Result<Self> {
        let mut lines = text.lines().enumerate();
        let (_, first) = lines
            .next()
            .ok_or_else(|| ferr(path, 1, "empty file, expected a manifest header"))?;
        let hv: serde_json::Value = serde_json::from_str(first)
            .map_err(|e| ferr(path, 1, format!("bad header JSON: {e}")))?;
        check_tag(path, 1, &hv, MANIFEST_FORMAT, MANIFEST_VERSION)?;
        let header: ManifestHeader =
            serde_json::from_value(hv).map_err(|e| ferr(path, 1, e.to_string()))?;
        let protocol: Protocol = serde_json::from_value(header.protocol)
            .map_err(|e| ferr(path, 1, format!("bad protocol: {e}")))?;
        let mut entries = Vec::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let e: ManifestEntry = serde_json::from_str(line)
                .map_err(|e| ferr(path, i + 1, format!("bad entry: {e}")))?;
            entries.push(e);
        }
        let m = Manifest { protocol, entries };
        m.check(path)?;
        Ok(m)
    }

    /// The entries of one shard, in manifest order.
    pub fn shard(&self, shard: ShardSpec) -> Vec<&ManifestEntry> {
        shard
            .select(self.entries.len())
            .into_iter()
            .map(|i| &self.entries[i])
            .collect()
    }
}

/// Shard `index` of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// 0-based shard index, `< count`.
    pub index: usize,
    /// Number of shards, ≥ 1.
    pub count: usize,
}

impl ShardSpec {
    /// Parses `I/N`, or `/N` with `I` from the environment ([`SHARD_ENV`]). Err(Shard) for a
    /// malformed value, `N = 0`, `I ≥ N`, or a missing/invalid environment index.
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_with_env(s, |k| std::env::var(k).ok())
    }

    /// [`parse`](Self::parse) with the environment given as a function (for tests).
    pub fn parse_with_env(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let bad = |msg: String| Error::Shard {
            value: s.to_string(),
            msg,
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(|| {
            bad("expected I/N (e.g. 3/8), or /N to read I from the environment".into())
        })?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| bad(format!("shard count '{n}' is not a positive integer")))?;
        if count == 0 {
            return Err(bad("shard count must be at least 1".into()));
        }
        let index: usize = if i.trim().is_empty() {
            let (var, val) = SHARD_ENV
                .iter()
                .find_map(|k| env(k).map(|v| (*k, v)))
                .ok_or_else(|| {
                    bad(format!(
                        "no shard index given and neither {} is set",
                        SHARD_ENV.join(" nor ")
                    ))
                })?;
            val.trim()
                .parse()
                .map_err(|_| bad(format!("{var}='{val}' is not a non-negative integer")))?
        } else {
            i.trim()
                .parse()
                .map_err(|_| bad(format!("shard index '{i}' is not a non-negative integer")))?
        };
        if index >= count {
            return Err(bad(format!(
                "shard index {index} is not below the shard count {count} (indices are 0-based)"
            )));
        }
        Ok(ShardSpec { index, count })
    }

    /// Positions `p < n` with `p mod count = index`.
    pub fn select(&self, n: usize) -> Vec<usize> {
        (self.index..n).step_by(self.count).collect()
    }
}

/// One per-policy result file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelResult {
    /// `seernet-label-result`.
    pub format: String,
    /// [`RESULT_VERSION`].
    pub version: u64,
    /// Who wrote it.
    pub writer: String,
    /// Manifest id of the policy.
    pub id: u64,
    /// The full protocol it was labelled under.
    pub protocol: Protocol,
    /// The label.
    pub record: LabelRecord,
}

impl LabelResult {
    /// The file's text (pretty JSON and a newline), as [`run_shard`] writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a result always serializes") + "\n"
    }

    /// Path of the result file for `hash` in `dir`.
    pub fn path_in(dir: &Path, hash: &str) -> PathBuf {
        dir.join(format!("{hash}.json"))
    }

    /// Reads and checks a result file. Err(Io) or Err(Format) naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            err: e,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses and checks a result file's text; `path` only names the source in errors
    /// (Err(Format)).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ferr(path, 0, format!("bad JSON: {e}")))?;
        check_tag(path, 0, &v, RESULT_FORMAT, RESULT_VERSION)?;
        let r: LabelResult = serde_json::from_value(v).map_err(|e| ferr(path, 0, e.to_string()))?;
        r.record.check().map_err(|e| ferr(path, 0, e.to_string()))?;
        if r.record.protocol != r.protocol.hash() {
            return Err(ferr(
                path,
                0,
                "record's protocol hash does not match the file's protocol",
            ));
        }
        Ok(r)
    }
}

/// What [`run_shard`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShardReport {
    /// Entries in this shard.
    pub assigned: usize,
    /// Labelled now.
    pub labelled: usize,
    /// Skipped: a valid result with this protocol already existed.
    pub skipped_existing: usize,
    /// Existing result files that were unreadable and were replaced.
    pub replaced_invalid: usize,
}

/// Labels one shard of `manifest` into `out_dir` (created if needed), one atomic result file per
/// policy, skipping policies that already have a result under the same protocol. `label` gets
/// the entry and its seed ([`label_seed`]) and returns the validation top-1; its wall time is
/// recorded. Err(Protocol) when `space` is not the manifest's or `out_dir` holds a result of
/// another protocol for one of this shard's policies; Err(Labeller) wrapping the labeller's error
/// (results already written stay, so a re-run resumes).
pub fn run_shard<E>(
    manifest: &Manifest,
    space: &SearchSpace,
    shard: ShardSpec,
    out_dir: &Path,
    label: impl FnMut(&ManifestEntry, u64) -> std::result::Result<Measured, E>,
) -> Result<ShardReport>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    run_shard_with(manifest, space, shard, out_dir, label, |_, _| {})
}

/// [`run_shard`], calling `saved(entry, record)` once each new result file is written (renamed
/// into place), so that a log line saying a label is done is never printed for a result that a
/// kill at that moment would lose. Same errors as [`run_shard`].
pub fn run_shard_with<E>(
    manifest: &Manifest,
    space: &SearchSpace,
    shard: ShardSpec,
    out_dir: &Path,
    mut label: impl FnMut(&ManifestEntry, u64) -> std::result::Result<Measured, E>,
    mut saved: impl FnMut(&ManifestEntry, &LabelRecord),
) -> Result<ShardReport>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    manifest.protocol.check_space(space)?;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::Io {
        path: out_dir.display().to_string(),
        err: e,
    })?;
    let entries = manifest.shard(shard);
    let mut rep = ShardReport {
        assigned: entries.len(),
        ..Default::default()
    };
    for e in entries {
        let path = LabelResult::path_in(out_dir, &e.hash);
        if path.exists() {
            match LabelResult::load(&path) {
                Ok(r) if r.protocol == manifest.protocol && r.record.hash == e.hash => {
                    rep.skipped_existing += 1;
                    continue;
                }
                Ok(r) => {
                    return Err(Error::Protocol {
                        what: format!("existing result {}", path.display()),
                        diff: manifest.protocol.diff(&r.protocol).join("; "),
                    });
                }
                Err(_) => rep.replaced_invalid += 1,
            }
        }
        let seed = label_seed(manifest.protocol.seed, &e.hash);
        let _span = tracing::info_span!("label", id = e.id, hash = %e.hash, seed).entered();
        let t0 = Instant::now();
        let m = label(e, seed).map_err(|err| Error::Labeller {
            hash: e.hash.clone(),
            err: err.into(),
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let record =
            LabelRecord::new(space, &manifest.protocol, e.policy.clone(), m.top1, seconds)?;
        let result = LabelResult {
            format: RESULT_FORMAT.into(),
            version: RESULT_VERSION,
            writer: WRITER.into(),
            id: e.id,
            protocol: manifest.protocol.clone(),
            record,
        };
        let json = result.to_json();
        write_atomic(&path, json.as_bytes())?;
        saved(e, &result.record);
        rep.labelled += 1;
    }
    Ok(rep)
}

/// What [`merge_results`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MergeReport {
    /// Result files read.
    pub files: usize,
    /// Records appended to the store.
    pub added: usize,
    /// Records whose policy was already in the store (or earlier in the merge): skipped.
    pub skipped_present: usize,
}

/// Reads every `*.json` result file of `dirs` (files starting with `.` are an interrupted
/// writer's temporaries and are skipped), with their paths, sorted by manifest id, then policy hash.
/// Err(Io) for an unreadable directory or file, Err(Format) naming an invalid file.
pub fn load_results(dirs: &[PathBuf]) -> Result<Vec<(PathBuf, LabelResult)>> {
    let mut results = Vec::new();
    for dir in dirs {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            err: e,
        })?;
        for ent in rd {
            let ent = ent.map_err(|e| Error::Io {
                path: dir.display().to_string(),
                err: e,
            })?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = ent.path();
            let r = LabelResult::load(&path)?;
            results.push((path, r));
        }
    }
    results.sort_by(|(_, a), (_, b)| (a.id, &a.record.hash).cmp(&(b.id, &b.record.hash)));
    Ok(results)
}

/// Folds every result file of `dirs` ([`load_results`]) into `store`, in manifest-id order.
/// All files are read and checked first: a file of another protocol is an error naming it and
/// the differing fields, and then nothing is appended. Hashes already in the store are skipped
/// (the first label is kept).
pub fn merge_results(store: &mut LabelStore, dirs: &[PathBuf]) -> Result<MergeReport> {
    let results = load_results(dirs)?;
    if let Some((path, r)) = results
        .iter()
        .find(|(_, r)| r.protocol != *store.protocol())
    {
        return Err(Error::Protocol {
            what: format!("result {} (store vs file)", path.display()),
            diff: store.protocol().diff(&r.protocol).join("; "),
        });
    }
    let mut rep = MergeReport {
        files: results.len(),
        ..Default::default()
    };
    for (_, r) in results {
        match store.append(r.record)? {
            Appended::Written => rep.added += 1,
            Appended::Duplicate => rep.skipped_present += 1,
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{protocol, space};

    fn env_none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn shard_parsing() {
        assert_eq!(
            ShardSpec::parse_with_env("3/8", env_none).unwrap(),
            ShardSpec { index: 3, count: 8 }
        );
        let slurm = |k: &str| (k == "SLURM_ARRAY_TASK_ID").then(|| "5".to_string());
        assert_eq!(ShardSpec::parse_with_env("/8", slurm).unwrap().index, 5);
        let both = |k: &str| Some(if k == "SLURM_ARRAY_TASK_ID" { "1" } else { "2" }.to_string());
        assert_eq!(ShardSpec::parse_with_env("/8", both).unwrap().index, 1);
        assert_eq!(ShardSpec::parse_with_env("0/8", both).unwrap().index, 0);
        for (s, needle) in [
            ("8/8", "0-based"),
            ("3", "expected I/N"),
            ("1/0", "at least 1"),
            ("a/2", "not a non-negative integer"),
            ("/2", "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
        ] {
            let e = ShardSpec::parse_with_env(s, env_none)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{s}: {e}");
        }
        let junk = |_: &str| Some("x".to_string());
        assert!(
            ShardSpec::parse_with_env("/2", junk)
                .unwrap_err()
                .to_string()
                .contains("SLURM_ARRAY_TASK_ID='x'")
        );
    }

    #[test]
    fn shards_partition_the_manifest() {
        for n in 1..6 {
            let mut all: Vec<usize> = (0..n)
                .flat_map(|i| ShardSpec { index: i, count: n }.select(13))
                .collect();
            all.sort();
            assert_eq!(all, (0..13).collect::<Vec<_>>());
        }
    }

    fn manifest() -> (SearchSpace, Manifest) {
        let s = space();
        let p = protocol(&s);
        let pols: Vec<Policy> = [2, 3, 4, 5, 6, 8]
            .iter()
            .flat_map(|&b| [0.0, 0.5].map(|pr| s.uniform(b, b, pr).unwrap()))
            .collect();
        let m = Manifest::new(p, pols).unwrap();
        (s, m)
    }

    #[test]
    fn manifest_roundtrip_and_errors() {
        let (s, m) = manifest();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("M.jsonl");
        m.save(&path).unwrap();
        let back = Manifest::load(&path).unwrap();
        assert_eq!(back, m);
        back.validate(&s).unwrap();
        // A hash that does not match, a duplicate, a future version: errors naming the line.
        let text = m.to_jsonl();
        let h = &m.entries[1].hash;
        std::fs::write(&path, text.replacen(h.as_str(), &"f".repeat(32), 1)).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("does not match"), "{e}");
        let mut lines: Vec<&str> = text.lines().collect();
        let dup = lines[2];
        lines.push(dup);
        std::fs::write(&path, lines.join("\n")).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 14") && e.contains("twice"), "{e}");
        std::fs::write(&path, text.replacen("\"version\":1", "\"version\":2", 1)).unwrap();
        let e = Manifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("version 2"), "{e}");
    }

    #[test]
    fn shards_are_idempotent_and_merge_into_the_store() {
        let (s, m) = manifest();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let fake = |e: &ManifestEntry, _seed: u64| -> std::result::Result<Measured, String> {
            Ok(Measured {
                top1: 40.0 + e.policy.units[1].wbits as f64,
            })
        };
        let mut calls = 0;
        let r0 = run_shard(&m, &s, ShardSpec { index: 0, count: 2 }, &out, |e, sd| {
            calls += 1;
            fake(e, sd)
        })
        .unwrap();
        assert_eq!((r0.assigned, r0.labelled, r0.skipped_existing), (6, 6, 0));
        assert_eq!(calls, 6);
        // `saved` sees each new result once, after its file is in place; skipped ones not.
        let (out2, shard0) = (dir.path().join("out2"), ShardSpec { index: 0, count: 2 });
        let mut seen = Vec::new();
        let r = run_shard_with(&m, &s, shard0, &out2, fake, |e, r| {
            assert!(LabelResult::path_in(&out2, &e.hash).exists());
            let want = 40.0 + e.policy.units[1].wbits as f64;
            assert_eq!((r.hash.as_str(), r.top1), (e.hash.as_str(), want));
            seen.push(e.id);
        })
        .unwrap();
        assert_eq!(seen.len(), r.labelled);
        let ids: Vec<_> = m.shard(shard0).iter().map(|e| e.id).collect();
        assert_eq!(seen, ids);
        let r = run_shard_with(&m, &s, shard0, &out2, fake, |_, _| {
            panic!("nothing new was saved")
        })
        .unwrap();
        assert_eq!(r.skipped_existing, 6);
        // Re-running the same shard labels nothing.
        let r0b = run_shard(
            &m,
            &s,
            ShardSpec { index: 0, count: 2 },
            &out,
            |_, _| -> std::result::Result<Measured, String> { panic!("must not relabel") },
        )
        .unwrap();
        assert_eq!((r0b.labelled, r0b.skipped_existing), (0, 6));
        // Shard 1 fails on its third policy: the first two results stay; the re-run finishes.
        let mut n = 0;
        let err = run_shard(&m, &s, ShardSpec { index: 1, count: 2 }, &out, |e, sd| {
            n += 1;
            if n == 3 {
                Err("boom".to_string())
            } else {
                fake(e, sd)
            }
        })
        .unwrap_err();
        let cause = std::error::Error::source(&err).map(|c| c.to_string());
        assert_eq!(cause.as_deref(), Some("boom"), "{err}");
        let r1 = run_shard(&m, &s, ShardSpec { index: 1, count: 2 }, &out, fake).unwrap();
        assert_eq!((r1.labelled, r1.skipped_existing), (4, 2));

        // Merge: everything lands once; merging again adds nothing.
        let (mut store, _) =
            LabelStore::open(dir.path().join("labels.jsonl"), &m.protocol).unwrap();
        let pre =
            LabelRecord::new(&s, &m.protocol, m.entries[0].policy.clone(), 99.0, 1.0).unwrap();
        store.append(pre).unwrap();
        let rep = merge_results(&mut store, std::slice::from_ref(&out)).unwrap();
        assert_eq!((rep.files, rep.added, rep.skipped_present), (12, 11, 1));
        assert_eq!(store.len(), 12);
        assert_eq!(
            store.get(&m.entries[0].hash).unwrap().top1,
            99.0,
            "the first label is kept"
        );
        let rep = merge_results(&mut store, std::slice::from_ref(&out)).unwrap();
        assert_eq!(rep.added, 0);
        // Labels carry the manifest protocol's seed derivation.
        let r = store.get(&m.entries[3].hash).unwrap();
        assert_eq!(r.seed, label_seed(m.protocol.seed, &r.hash));

        // A store of another protocol refuses the results and appends nothing.
        let mut other = m.protocol.clone();
        other.finetune_steps = 7;
        let (mut store2, _) = LabelStore::open(dir.path().join("other.jsonl"), &other).unwrap();
        let e = merge_results(&mut store2, std::slice::from_ref(&out))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("another labelling protocol") && e.contains("finetune_steps: 7 vs 100"),
            "{e}"
        );
        assert_eq!(store2.len(), 0);
        // A shard with another protocol refuses an out dir holding this protocol's results.
        let m2 = Manifest {
            protocol: other,
            entries: m.entries.clone(),
        };
        let e = run_shard(&m2, &s, ShardSpec { index: 0, count: 1 }, &out, fake)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another labelling protocol"), "{e}");
    }
}
