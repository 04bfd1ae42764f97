//! The durable sample store: every finished label (policy → validation top-1) appended to a
//! JSON-lines file, so a run killed at any point (`kill -9` included) resumes without losing or
//! recomputing a label (docs/method.md §3, §5).
//!
//! # Format (`seernet-labels`, version 1)
//! One JSON object per line. Line 1 is the header,
//! `{"format":"seernet-labels","version":1,"writer":"seernet 0.0.0","protocol":{..},"protocol_hash":".."}`,
//! recording the labelling [`Protocol`]. Every other line is one [`LabelRecord`] whose last
//! field is `"check":"<16 hex digits>"`: the first 64 bits of SHA-256 of the line's bytes with
//! that field removed, i.e. of `line[..len - 28] + "}"`.
//!
//! # Durability
//! The file is created atomically (header written to a temporary file, fsynced, renamed, the
//! directory fsynced). [`LabelStore::append`] writes a whole line with one `write` and fsyncs
//! before returning, so a label is *finished* exactly when `append` returned `Ok`. A crash
//! during `append` can only leave a torn **last** line (no newline, bad JSON or bad checksum):
//! [`LabelStore::open`] drops it (truncates the file to the last good byte) and reports it in
//! [`OpenReport::dropped_tail`]. A bad line anywhere else is corruption that no crash produces,
//! and is an error naming the line. An exclusive advisory lock keeps two processes from
//! appending to one store.
//!
//! A store is bound to one protocol: opening it with another is an error listing the fields
//! that differ, so labels from different protocols are never mixed.
//!
//! ```
//! use seer_label::store::{LabelStore, Protocol, LabelRecord};
//! use seer_policy::{builtin, SearchSpace, SpaceConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let space = SearchSpace::new(builtin("lenet5", None, None).unwrap(), SpaceConfig::default()).unwrap();
//! let protocol = Protocol::for_space(&space, "fashion-mnist", "split0", "baseline0", 100, 64, 0.01, 0);
//! let (mut store, report) = LabelStore::open(dir.path().join("labels.jsonl"), &protocol).unwrap();
//! assert!(report.created);
//! let policy = space.uniform(4, 4, 0.25).unwrap();
//! let rec = LabelRecord::new(&space, &protocol, policy, 88.5, 12.0).unwrap();
//! assert!(store.append(rec).unwrap().is_written());
//! assert_eq!(store.len(), 1);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use seer_policy::{InputShape, Policy, SearchSpace, SpaceConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Format tag of the store's header line.
pub const STORE_FORMAT: &str = "seernet-labels";
/// Store format version written and read by this build.
pub const STORE_VERSION: u64 = 1;
/// Name of this writer (`seernet` and the workspace version), recorded in headers and result
/// files.
pub const WRITER: &str = concat!("seernet ", env!("CARGO_PKG_VERSION"));

/// Everything that determines a label's value besides the policy (docs/method.md §3). Two labels are
/// comparable only under equal protocols.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Network name (as in the spec).
    pub arch: String,
    /// Input shape `HxWxC`.
    pub input: InputShape,
    /// The search space the policies belong to.
    pub space: SpaceConfig,
    /// Dataset name, e.g. `fashion-mnist`.
    pub dataset: String,
    /// Hash identifying the train/validation/test split (as recorded by the data loader).
    pub split_hash: String,
    /// Hash identifying the trained full-precision network the policies are applied to.
    pub baseline_hash: String,
    /// Fine-tune steps per label.
    pub finetune_steps: u64,
    /// Batch size of the fine-tune.
    pub batch_size: usize,
    /// Learning rate of the fine-tune.
    pub lr: f64,
    /// Base seed; each label's seed is [`label_seed`]`(seed, policy_hash)`.
    pub seed: u64,
    /// Any other setting that changes labels (momentum, weight decay, calibration batches,
    /// augmentation, ...), compared like the named fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Which network the fine-tune and validation ran on. Absent in the JSON (and so in the
    /// hash) when [`FinetuneNetwork::Masked`]: protocols, stores and manifests written before
    /// the field existed load unchanged, keep their hash, and say `masked`.
    #[serde(default, skip_serializing_if = "FinetuneNetwork::is_masked")]
    pub network: FinetuneNetwork,
}

/// The network a label's calibration, fine-tune and validation run on (docs/method.md §3).
/// Both compute the same function up to float rounding (the slimmed network's layers sum
/// over fewer, all real, channels); the slimmed one is cheaper by about the pruned fraction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneNetwork {
    /// The full-width network with pruned channels zeroed by masks (every store written
    /// before this field existed).
    #[default]
    Masked,
    /// The physically pruned network: pruned channels removed before calibration.
    Slim,
}

impl FinetuneNetwork {
    /// Whether this is [`FinetuneNetwork::Masked`] (the value a protocol without the field has).
    pub fn is_masked(&self) -> bool {
        *self == FinetuneNetwork::Masked
    }

    /// `masked` or `slim`, as in the protocol's JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinetuneNetwork::Masked => "masked",
            FinetuneNetwork::Slim => "slim",
        }
    }
}

impl Protocol {
    /// A protocol for `space` (its arch, input and config) with no `extra` settings, fine-tuning
    /// on the masked network (set [`Protocol::network`] for the slimmed one).
    #[allow(clippy::too_many_arguments)]
    pub fn for_space(
        space: &SearchSpace,
        dataset: &str,
        split_hash: &str,
        baseline_hash: &str,
        finetune_steps: u64,
        batch_size: usize,
        lr: f64,
        seed: u64,
    ) -> Self {
        Protocol {
            arch: space.spec().name.clone(),
            input: space.spec().input,
            space: space.config().clone(),
            dataset: dataset.to_string(),
            split_hash: split_hash.to_string(),
            baseline_hash: baseline_hash.to_string(),
            finetune_steps,
            batch_size,
            lr,
            seed,
            extra: BTreeMap::new(),
            network: FinetuneNetwork::Masked,
        }
    }

    /// Stable identifier: the first 16 hex digits of SHA-256 of the protocol's JSON.
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).expect("a protocol always serializes");
        short_digest(json.as_bytes())
    }

    /// Err(Protocol) unless `space` has this protocol's arch, input and config.
    pub fn check_space(&self, space: &SearchSpace) -> Result<()> {
        let spec = space.spec();
        if spec.name != self.arch || spec.input != self.input || *space.config() != self.space {
            return Err(Error::Protocol {
                what: "search space".into(),
                diff: format!(
                    "protocol is for {} {} {:?}, the space is {} {} {:?}",
                    self.arch,
                    self.input,
                    self.space,
                    spec.name,
                    spec.input,
                    space.config()
                ),
            });
        }
        Ok(())
    }

    /// Human list of the fields that differ, `name: a (here) vs b (there)`; empty when equal.
    pub fn diff(&self, other: &Protocol) -> Vec<String> {
        let a = serde_json::to_value(self).expect("serializes");
        let b = serde_json::to_value(other).expect("serializes");
        let (a, b) = (
            a.as_object().expect("object"),
            b.as_object().expect("object"),
        );
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        let show = |v: Option<&serde_json::Value>| {
            v.map_or_else(|| "(absent)".to_string(), |v| v.to_string())
        };
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} vs {}", show(a.get(k)), show(b.get(k))))
            .collect()
    }
}

/// Stable policy identifier: the first 32 hex digits of SHA-256 of
/// `seernet-policy-v1;<arch>;<HxWxC>;<prune>:<wbits>:<abits>,...` (prune written by Rust's
/// shortest round-trip `f64` formatting). Independent of JSON layout and of the writer.
pub fn policy_hash(p: &Policy) -> String {
    let mut s = format!("seernet-policy-v1;{};{};", p.arch, p.input);
    for (i, u) in p.units.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{}:{}:{}", u.prune, u.wbits, u.abits));
    }
    hex(&Sha256::digest(s.as_bytes())[..16])
}

/// The seed of one label: the first 8 bytes (little-endian) of SHA-256 of the base seed and the
/// policy hash. Independent of labelling order, shard and thread, so re-running gives the same.
pub fn label_seed(base_seed: u64, policy_hash: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(base_seed.to_le_bytes());
    h.update(policy_hash.as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// First 16 hex digits (64 bits) of SHA-256 of `bytes`: the short identifiers of a protocol
/// ([`Protocol::hash`]), a baseline checkpoint ([`file_hash`]), a dataset split, and the
/// checksum of a store line.
pub fn short_digest(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes)[..8])
}

/// First 16 hex digits of SHA-256 of a file's bytes (a protocol's `baseline_hash` is this of
/// the baseline checkpoint). Err(Io) naming the file.
pub fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    Ok(short_digest(&bytes))
}

/// Checksum of a record line: first 16 hex digits (64 bits) of SHA-256 of `body`.
fn line_check(body: &str) -> String {
    short_digest(body.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One finished label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRecord {
    /// [`policy_hash`] of `policy`.
    pub hash: String,
    /// The labelled policy.
    pub policy: Policy,
    /// Candidate index per gene ([`SearchSpace::to_indices`]).
    pub indices: Vec<usize>,
    /// Total MACs of the policy (docs/method.md §2).
    pub macs: u64,
    /// Total BOPs (docs/method.md §2).
    pub bops: u64,
    /// Model size in bits (docs/method.md §2).
    pub size_bits: u64,
    /// [`Protocol::hash`] of the protocol it was labelled under.
    pub protocol: String,
    /// Seed used for this label ([`label_seed`]).
    pub seed: u64,
    /// Validation top-1 after the fine-tune, in percent (0–100).
    pub top1: f64,
    /// Wall-clock seconds the label took.
    pub seconds: f64,
}

impl LabelRecord {
    /// A record for `policy` labelled under `protocol` with validation `top1` (percent) in
    /// `seconds`: computes hash, indices, costs and seed. Err(Policy) when the policy does not
    /// belong to `space`; Err(Record) for a non-finite or out-of-range top-1 or seconds.
    pub fn new(
        space: &SearchSpace,
        protocol: &Protocol,
        policy: Policy,
        top1: f64,
        seconds: f64,
    ) -> Result<Self> {
        space.validate(&policy)?;
        let indices = space.to_indices(&policy)?;
        let c = space.cost(&policy)?;
        let hash = policy_hash(&policy);
        let rec = LabelRecord {
            seed: label_seed(protocol.seed, &hash),
            hash,
            policy,
            indices,
            macs: c.total_macs,
            bops: c.total_bops,
            size_bits: c.total_size_bits,
            protocol: protocol.hash(),
            top1,
            seconds,
        };
        rec.check()?;
        Ok(rec)
    }

    /// Internal consistency: hash matches the policy, top-1 in [0, 100], seconds ≥ 0, finite.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: String| Error::Record {
            hash: self.hash.clone(),
            msg,
        };
        if policy_hash(&self.policy) != self.hash {
            return Err(bad(format!(
                "hash does not match its policy (expected {})",
                policy_hash(&self.policy)
            )));
        }
        if !(self.top1.is_finite() && (0.0..=100.0).contains(&self.top1)) {
            return Err(bad(format!(
                "top-1 {} is not a percentage in [0, 100]",
                self.top1
            )));
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.0) {
            return Err(bad(format!(
                "seconds {} is not a finite non-negative number",
                self.seconds
            )));
        }
        Ok(())
    }

    /// The record as one store line: JSON with a trailing `"check"` field, plus `\n`.
    pub fn to_line(&self) -> String {
        let body = serde_json::to_string(self).expect("a record always serializes");
        format!(
            "{},\"check\":\"{}\"}}\n",
            &body[..body.len() - 1],
            line_check(&body)
        )
    }

    /// Parses one store line (without its `\n`), verifying the checksum. Err(String) says why.
    pub fn from_line(line: &[u8]) -> std::result::Result<Self, String> {
        const TAIL: usize = ",\"check\":\"0000000000000000\"}".len();
        let s = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
        if s.len() < TAIL + 1
            || !s.ends_with("\"}")
            || !s.is_char_boundary(s.len() - TAIL)
            || !s[s.len() - TAIL..].starts_with(",\"check\":\"")
        {
            return Err("no trailing \"check\" field (truncated or not a record)".into());
        }
        let want = &s[s.len() - 18..s.len() - 2];
        let body = format!("{}}}", &s[..s.len() - TAIL]);
        let got = line_check(&body);
        if got != want {
            return Err(format!("checksum mismatch (stored {want}, computed {got})"));
        }
        let rec: LabelRecord =
            serde_json::from_str(&body).map_err(|e| format!("bad record JSON: {e}"))?;
        rec.check().map_err(|e| e.to_string())?;
        Ok(rec)
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u64,
    #[serde(default)]
    writer: String,
    protocol: serde_json::Value,
    #[serde(default)]
    protocol_hash: String,
}

/// The torn last record that [`LabelStore::open`] dropped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DroppedTail {
    /// 1-based line number of the dropped record in the file.
    pub line: usize,
    /// Byte offset where it started (the file's new length).
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes: u64,
    /// Why: no newline, bad JSON, bad checksum, ...
    pub reason: String,
}

/// What [`LabelStore::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OpenReport {
    /// The file did not exist and was created.
    pub created: bool,
    /// Records loaded.
    pub records: usize,
    /// Later records whose policy hash was already present (the first is kept).
    pub duplicates_ignored: usize,
    /// A torn last record that was dropped, if any.
    pub dropped_tail: Option<DroppedTail>,
}

impl std::fmt::Display for OpenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} label(s){}",
            self.records,
            if self.created { " (new store)" } else { "" }
        )?;
        if self.duplicates_ignored > 0 {
            write!(f, ", {} duplicate(s) ignored", self.duplicates_ignored)?;
        }
        if let Some(t) = &self.dropped_tail {
            write!(
                f,
                "; dropped a torn last record at line {} ({} bytes: {})",
                t.line, t.bytes, t.reason
            )?;
        }
        Ok(())
    }
}

/// Outcome of [`LabelStore::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// The record was written and fsynced.
    Written,
    /// A record with the same policy hash was already stored; nothing was written.
    Duplicate,
}

impl Appended {
    /// True for [`Appended::Written`].
    pub fn is_written(self) -> bool {
        self == Appended::Written
    }
}

/// Contents of a store file, read without modifying it ([`read_store`]).
#[derive(Clone, Debug)]
pub struct StoreContents {
    /// The header's protocol.
    pub protocol: Protocol,
    /// Records in file order, first of each policy hash only.
    pub records: Vec<LabelRecord>,
    /// As [`OpenReport`], with `dropped_tail` = the torn tail that `open` would drop.
    pub report: OpenReport,
    /// Byte length of the good prefix (header and good records).
    good_len: u64,
}

impl StoreContents {
    /// Err([`Error::Protocol`]) naming the store at `path` and every differing field when
    /// its protocol is not `protocol`.
    pub fn require_protocol(&self, path: &Path, protocol: &Protocol) -> Result<()> {
        let diff = self.protocol.diff(protocol);
        if diff.is_empty() {
            return Ok(());
        }
        Err(Error::Protocol {
            what: format!("label store {} (store vs this run)", path.display()),
            diff: diff.join("; "),
        })
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        err: e,
    }
}

/// Fsyncs the directory holding `path` (makes a create/rename durable). No-op where directories
/// cannot be opened (non-Unix).
fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (`.NAME.tmpPID`), fsync,
/// rename, fsync of the directory. Readers see the old file or the whole new one, never a
/// part. Err(Io) naming `path` (the temporary file is removed).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    sync_parent(path)
}

/// Reads and validates a store file without changing it. Err(Io) when unreadable;
/// Err(StoreVersion) for another format version; Err(Store) naming the line for a bad header, a
/// corrupt record before the last line, or a record of another protocol.
pub fn read_store(path: impl AsRef<Path>) -> Result<StoreContents> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, e))?;
    parse_store(path, &bytes)
}

/// [`read_store`] on a store file's bytes; `path` only names the source in errors. A torn or
/// corrupt last line is reported in `report.dropped_tail`, never an error.
pub fn parse_store(path: &Path, bytes: &[u8]) -> Result<StoreContents> {
    let serr = |line: usize, msg: String| Error::Store {
        path: path.display().to_string(),
        line,
        msg,
    };
    let Some(hdr_end) = bytes.iter().position(|&b| b == b'\n') else {
        return Err(serr(1, "no complete header line (empty or not a label store); move it away to start a new store".into()));
    };
    let hv: serde_json::Value = serde_json::from_slice(&bytes[..hdr_end])
        .map_err(|e| serr(1, format!("bad header JSON: {e}")))?;
    let header: Header =
        serde_json::from_value(hv).map_err(|e| serr(1, format!("bad header: {e}")))?;
    if header.format != STORE_FORMAT {
        return Err(serr(
            1,
            format!("format is '{}', expected '{STORE_FORMAT}'", header.format),
        ));
    }
    if header.version != STORE_VERSION {
        return Err(Error::StoreVersion {
            path: path.display().to_string(),
            found: header.version,
            writer: if header.writer.is_empty() {
                "an unknown writer".into()
            } else {
                header.writer.clone()
            },
            supported: STORE_VERSION,
        });
    }
    let protocol: Protocol = serde_json::from_value(header.protocol)
        .map_err(|e| serr(1, format!("bad protocol in header: {e}")))?;
    let phash = protocol.hash();
    if !header.protocol_hash.is_empty() && header.protocol_hash != phash {
        return Err(serr(
            1,
            format!(
                "header protocol_hash {} does not match its protocol ({phash})",
                header.protocol_hash
            ),
        ));
    }

    let mut records = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut report = OpenReport::default();
    let mut pos = hdr_end + 1;
    let mut good_len = pos as u64;
    let mut line_no = 1;
    while pos < bytes.len() {
        line_no += 1;
        let (line, next, complete) = match bytes[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => (&bytes[pos..pos + i], pos + i + 1, true),
            None => (&bytes[pos..], bytes.len(), false),
        };
        let is_last = next == bytes.len();
        let parsed = if complete {
            LabelRecord::from_line(line)
        } else {
            Err("no newline at the end (torn write)".into())
        };
        match parsed {
            Ok(rec) => {
                if rec.protocol != phash {
                    return Err(serr(
                        line_no,
                        format!(
                            "record {} was labelled under protocol {}, the header's is {phash}",
                            rec.hash, rec.protocol
                        ),
                    ));
                }
                if seen.contains_key(&rec.hash) {
                    report.duplicates_ignored += 1;
                } else {
                    seen.insert(rec.hash.clone(), records.len());
                    records.push(rec);
                }
                good_len = next as u64;
            }
            Err(reason) if is_last => {
                report.dropped_tail = Some(DroppedTail {
                    line: line_no,
                    offset: pos as u64,
                    bytes: (bytes.len() - pos) as u64,
                    reason,
                });
            }
            Err(reason) => {
                return Err(serr(
                    line_no,
                    format!(
                        "corrupt record in the middle of the store ({reason}); not a torn write: repair or move the file"
                    ),
                ));
            }
        }
        pos = next;
    }
    report.records = records.len();
    Ok(StoreContents {
        protocol,
        records,
        report,
        good_len,
    })
}

/// An open, locked, append-only label store. See the [module docs](self).
#[derive(Debug)]
pub struct LabelStore {
    path: PathBuf,
    file: File,
    protocol: Protocol,
    protocol_hash: String,
    records: Vec<LabelRecord>,
    index: HashMap<String, usize>,
    len: u64,
}

impl LabelStore {
    /// Opens the store at `path` for `protocol`, creating it (atomically) when missing; drops and
    /// reports a torn last record. Err(Protocol) listing the differing fields when the store
    /// was written under another protocol; Err(Locked) when another process has it open;
    /// otherwise as [`read_store`].
    pub fn open(path: impl AsRef<Path>, protocol: &Protocol) -> Result<(Self, OpenReport)> {
        let path = path.as_ref().to_path_buf();
        let mut created = false;
        if !path.exists() {
            let header = Header {
                format: STORE_FORMAT.into(),
                version: STORE_VERSION,
                writer: WRITER.into(),
                protocol: serde_json::to_value(protocol).expect("serializes"),
                protocol_hash: protocol.hash(),
            };
            let line = serde_json::to_string(&header).expect("serializes") + "\n";
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
            }
            write_atomic(&path, line.as_bytes())?;
            created = true;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io_err(&path, e))?;
        let contents = parse_store(&path, &bytes)?;
        contents.require_protocol(&path, protocol)?;
        if let Some(t) = &contents.report.dropped_tail {
            tracing::debug!(
                store = %path.display(),
                line = t.line,
                bytes = t.bytes,
                reason = %t.reason,
                "dropping a torn last record"
            );
            file.set_len(contents.good_len)
                .map_err(|e| io_err(&path, e))?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
        }
        let mut report = contents.report;
        report.created = created;
        let index = contents
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.hash.clone(), i))
            .collect();
        let store = LabelStore {
            path,
            file,
            protocol_hash: protocol.hash(),
            protocol: contents.protocol,
            records: contents.records,
            index,
            len: contents.good_len,
        };
        Ok((store, report))
    }

    /// Appends `rec` durably (one write of the whole line, then fsync) unless its policy hash is
    /// already stored ([`Appended::Duplicate`]: the first label is kept, never recomputed).
    /// Err(Record) when it was made under another protocol or is inconsistent; Err(Io) when the
    /// write fails (the file is cut back to its last good byte).
    pub fn append(&mut self, rec: LabelRecord) -> Result<Appended> {
        if self.index.contains_key(&rec.hash) {
            return Ok(Appended::Duplicate);
        }
        rec.check()?;
        if rec.protocol != self.protocol_hash {
            return Err(Error::Record {
                hash: rec.hash.clone(),
                msg: format!(
                    "labelled under protocol {}, this store's is {}",
                    rec.protocol, self.protocol_hash
                ),
            });
        }
        let line = rec.to_line();
        let res = (|| -> std::io::Result<()> {
            use std::io::{Seek, SeekFrom};
            self.file.seek(SeekFrom::Start(self.len))?;
            self.file.write_all(line.as_bytes())?;
            self.file.sync_data()
        })();
        if let Err(e) = res {
            let _ = self.file.set_len(self.len);
            return Err(io_err(&self.path, e));
        }
        self.len += line.len() as u64;
        self.index.insert(rec.hash.clone(), self.records.len());
        self.records.push(rec);
        Ok(Appended::Written)
    }

    /// The store's protocol.
    pub fn protocol(&self) -> &Protocol {
        &self.protocol
    }
    /// [`Protocol::hash`] of the store's protocol.
    pub fn protocol_hash(&self) -> &str {
        &self.protocol_hash
    }
    /// All records in file order (first of each policy hash).
    pub fn records(&self) -> &[LabelRecord] {
        &self.records
    }
    /// Number of distinct labelled policies.
    pub fn len(&self) -> usize {
        self.records.len()
    }
    /// True when nothing is labelled yet.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// Whether a policy hash is labelled.
    pub fn contains(&self, hash: &str) -> bool {
        self.index.contains_key(hash)
    }
    /// The record of a policy hash.
    pub fn get(&self, hash: &str) -> Option<&LabelRecord> {
        self.index.get(hash).map(|&i| &self.records[i])
    }
    /// The store's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a labelling function returns for one policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    /// Validation top-1 in percent (0–100).
    pub top1: f64,
}

/// What [`label_missing`] did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LabelReport {
    /// Policies labelled and appended now.
    pub labelled: usize,
    /// Policies already in the store (not recomputed).
    pub already: usize,
}

/// A policy [`pending_labels`] found missing from a store: what labelling it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingLabel {
    /// The policy (validated against the space).
    pub policy: Policy,
    /// Its [`policy_hash`].
    pub hash: String,
    /// Its label seed under the store's protocol ([`label_seed`]).
    pub seed: u64,
}

/// The policies of `policies` that `store` does not hold yet, in order, each once, with their
/// hashes and seeds; and how many were found in the store (a repeat within `policies`
/// counts as found). Err(Protocol) when `space` is not
/// the store's; Err(Policy) for a policy outside `space`.
pub fn pending_labels(
    store: &LabelStore,
    space: &SearchSpace,
    policies: &[Policy],
) -> Result<(Vec<PendingLabel>, usize)> {
    store.protocol().check_space(space)?;
    let seed = store.protocol().seed;
    let (mut out, mut already) = (Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    for p in policies {
        let hash = policy_hash(p);
        if store.contains(&hash) {
            already += 1;
            continue;
        }
        if !seen.insert(hash.clone()) {
            // Labelled once, by its first occurrence: counted as found, as a second
            // occurrence is after a sequential label.
            already += 1;
            continue;
        }
        space.validate(p)?;
        out.push(PendingLabel {
            policy: p.clone(),
            seed: label_seed(seed, &hash),
            hash,
        });
    }
    Ok((out, already))
}

/// The resumable labelling loop: labels every policy of `policies` that `store` does not hold
/// yet (in order, duplicates within `policies` labelled once, [`pending_labels`]) and appends
/// each durably as soon as it is finished, so a killed run loses at most the label in progress.
/// `label` gets the policy and its seed ([`label_seed`]); its wall time is recorded.
/// Err(Protocol) when `space` is not the store's; Err(Labeller) wrapping the labeller's error
/// (labels already appended stay).
pub fn label_missing<E>(
    store: &mut LabelStore,
    space: &SearchSpace,
    policies: &[Policy],
    mut label: impl FnMut(&Policy, u64) -> std::result::Result<Measured, E>,
) -> Result<LabelReport>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (pending, already) = pending_labels(store, space, policies)?;
    let protocol = store.protocol().clone();
    let mut rep = LabelReport {
        labelled: 0,
        already,
    };
    for p in pending {
        let _span = tracing::info_span!("label", hash = %p.hash, seed = p.seed).entered();
        let t0 = std::time::Instant::now();
        let m = label(&p.policy, p.seed).map_err(|e| Error::Labeller {
            hash: p.hash.clone(),
            err: e.into(),
        })?;
        let seconds = t0.elapsed().as_secs_f64();
        let rec = LabelRecord::new(space, &protocol, p.policy, m.top1, seconds)?;
        store.append(rec)?;
        tracing::debug!(top1 = m.top1, seconds, "label stored");
        rep.labelled += 1;
    }
    Ok(rep)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use seer_policy::builtin;

    pub(crate) fn space() -> SearchSpace {
        SearchSpace::new(
            builtin("lenet5", None, None).unwrap(),
            SpaceConfig::default(),
        )
        .unwrap()
    }
    pub(crate) fn protocol(space: &SearchSpace) -> Protocol {
        Protocol::for_space(
            space,
            "fashion-mnist",
            "split-abc",
            "base-123",
            100,
            64,
            0.01,
            0,
        )
    }
    pub(crate) fn record(space: &SearchSpace, p: &Protocol, i: usize) -> LabelRecord {
        let bits = [2, 3, 4, 5, 6, 8][i % 6];
        let prune = [0.0, 0.25, 0.5, 0.75][(i / 6) % 4];
        LabelRecord::new(
            space,
            p,
            space.uniform(bits, bits, prune).unwrap(),
            50.0 + i as f64,
            1.5,
        )
        .unwrap()
    }

    #[test]
    fn line_roundtrip_and_checksum() {
        let s = space();
        let p = protocol(&s);
        let r = record(&s, &p, 3);
        let line = r.to_line();
        assert!(line.ends_with("\"}\n") && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("check").is_some() && v.get("policy").is_some());
        assert_eq!(
            LabelRecord::from_line(line.trim_end().as_bytes()).unwrap(),
            r
        );
        // Flip one digit of top-1: the checksum catches it.
        let bad = line.replacen("\"top1\":53", "\"top1\":63", 1);
        assert_ne!(bad, line);
        assert!(
            LabelRecord::from_line(bad.trim_end().as_bytes())
                .unwrap_err()
                .contains("checksum")
        );
    }

    #[test]
    fn hashes_are_stable_and_distinct() {
        let s = space();
        let a = s.uniform(4, 4, 0.25).unwrap();
        let b = s.uniform(4, 5, 0.25).unwrap();
        assert_eq!(policy_hash(&a), policy_hash(&a.clone()));
        assert_ne!(policy_hash(&a), policy_hash(&b));
        assert_eq!(policy_hash(&a).len(), 32);
        let p = protocol(&s);
        let mut q = p.clone();
        assert_eq!(p.hash(), q.hash());
        q.lr = 0.02;
        assert_ne!(p.hash(), q.hash());
        assert_eq!(p.diff(&q), vec!["lr: 0.01 vs 0.02".to_string()]);
        assert_ne!(
            label_seed(0, &policy_hash(&a)),
            label_seed(1, &policy_hash(&a))
        );
        assert_ne!(
            label_seed(0, &policy_hash(&a)),
            label_seed(0, &policy_hash(&b))
        );
    }

    #[test]
    fn network_field_is_absent_for_masked_and_keeps_old_hashes() {
        let s = space();
        let p = protocol(&s);
        // A protocol written before the field existed: no `network` key.
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("network"), "{json}");
        let old: Protocol = serde_json::from_str(&json).unwrap();
        assert_eq!(old.network, FinetuneNetwork::Masked);
        assert_eq!(old.hash(), p.hash());
        let mut q = p.clone();
        q.network = FinetuneNetwork::Slim;
        assert_ne!(q.hash(), p.hash());
        assert_eq!(
            p.diff(&q),
            vec![r#"network: (absent) vs "slim""#.to_string()]
        );
        let back: Protocol = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        // A store of masked labels refuses slim ones and the reverse.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.jsonl");
        let (mut st, _) = LabelStore::open(&path, &p).unwrap();
        st.append(record(&s, &p, 0)).unwrap();
        drop(st);
        let e = LabelStore::open(&path, &q).unwrap_err().to_string();
        assert!(e.contains("network"), "{e}");
        let (st, _) = LabelStore::open(&path, &p).unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st.protocol().network.as_str(), "masked");
    }

    /// A store with `n` records; returns its path, the protocol and the records.
    fn filled(dir: &Path, n: usize) -> (PathBuf, Protocol, Vec<LabelRecord>) {
        let s = space();
        let p = protocol(&s);
        let path = dir.join("labels.jsonl");
        let (mut st, rep) = LabelStore::open(&path, &p).unwrap();
        assert!(rep.created);
        let recs: Vec<LabelRecord> = (0..n).map(|i| record(&s, &p, i)).collect();
        for r in &recs {
            assert_eq!(st.append(r.clone()).unwrap(), Appended::Written);
        }
        (path, p, recs)
    }

    #[test]
    fn reopen_keeps_everything_and_duplicates_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p, recs) = filled(dir.path(), 3);
        let before = std::fs::read(&path).unwrap();
        let (mut st, rep) = LabelStore::open(&path, &p).unwrap();
        assert_eq!(
            (rep.created, rep.records, rep.dropped_tail.clone()),
            (false, 3, None)
        );
        assert_eq!(st.records(), &recs[..]);
        // Same policy, other top-1: the first label is kept, nothing is written.
        let mut again = recs[1].clone();
        again.top1 = 1.0;
        assert_eq!(st.append(again).unwrap(), Appended::Duplicate);
        assert_eq!(st.get(&recs[1].hash).unwrap().top1, recs[1].top1);
        drop(st);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // A duplicate line in the file (e.g. two merges racing by hand) keeps the first.
        let mut dup = before.clone();
        dup.extend_from_slice(recs[0].to_line().as_bytes());
        std::fs::write(&path, &dup).unwrap();
        let (st, rep) = LabelStore::open(&path, &p).unwrap();
        assert_eq!((rep.records, rep.duplicates_ignored), (3, 1));
        assert_eq!(st.len(), 3);
    }

    #[test]
    fn torn_last_record_is_dropped_at_every_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p, recs) = filled(dir.path(), 3);
        let full = std::fs::read(&path).unwrap();
        let last_len = recs[2].to_line().len();
        let start = full.len() - last_len;
        // A kill -9 during the last append leaves any prefix of its line: every prefix parses to
        // the first two records plus a reported torn tail.
        for cut in start..full.len() {
            let c = parse_store(&path, &full[..cut]).unwrap();
            assert_eq!(c.records, &recs[..2], "cut at {cut}");
            assert_eq!(c.good_len, start as u64);
            if cut == start {
                assert_eq!(c.report.dropped_tail, None);
            } else {
                let t = c
                    .report
                    .dropped_tail
                    .clone()
                    .unwrap_or_else(|| panic!("cut at {cut}: nothing reported"));
                assert_eq!(
                    (t.line, t.offset, t.bytes),
                    (4, start as u64, (cut - start) as u64)
                );
            }
        }
        // Opening the file truncates it to the last good byte (fsyncs: a sample of offsets).
        for cut in (start + 1..full.len()).step_by(37).chain([full.len() - 1]) {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (st, rep) = LabelStore::open(&path, &p).unwrap();
            assert_eq!(st.records(), &recs[..2], "cut at {cut}");
            assert!(
                rep.to_string()
                    .contains("dropped a torn last record at line 4"),
                "{rep}"
            );
            drop(st);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                start as u64,
                "truncated to the last good byte"
            );
        }
        // A complete last line with a flipped byte (out-of-order page flush) is dropped too.
        let mut bad = full.clone();
        bad[start + 20] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let (mut st, rep) = LabelStore::open(&path, &p).unwrap();
        assert!(rep.dropped_tail.unwrap().reason.contains("checksum"));
        assert_eq!(st.len(), 2);
        // After the drop, appending works and the file is whole again.
        st.append(recs[2].clone()).unwrap();
        drop(st);
        assert_eq!(std::fs::read(&path).unwrap(), full);
    }

    #[test]
    fn corruption_in_the_middle_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p, recs) = filled(dir.path(), 3);
        let full = std::fs::read(&path).unwrap();
        let hdr = full.iter().position(|&b| b == b'\n').unwrap() + 1;
        let second = hdr + recs[0].to_line().len();
        for (i, at) in [(2, hdr + 30), (3, second + 5)] {
            let mut bad = full.clone();
            bad[at] ^= 0x04;
            std::fs::write(&path, &bad).unwrap();
            let e = LabelStore::open(&path, &p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("line {i}")) && e.contains("middle"),
                "{e}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bad,
                "nothing truncated on error"
            );
        }
    }

    #[test]
    fn other_version_or_protocol_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p, _) = filled(dir.path(), 1);
        let mut q = p.clone();
        q.finetune_steps = 500;
        q.extra.insert("momentum".into(), serde_json::json!(0.9));
        let e = LabelStore::open(&path, &q).unwrap_err().to_string();
        assert!(e.contains("another labelling protocol"), "{e}");
        assert!(
            e.contains("finetune_steps: 100 vs 500") && e.contains("extra"),
            "{e}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let future = text.replacen(
            "\"version\":1,\"writer\":\"seernet 0.0.0\"",
            "\"version\":2,\"writer\":\"seernet 9.1.0\"",
            1,
        );
        assert_ne!(future, text);
        std::fs::write(&path, future).unwrap();
        let e = LabelStore::open(&path, &p).unwrap_err().to_string();
        assert!(
            e.contains("version 2")
                && e.contains("written by seernet 9.1.0")
                && e.contains("reads version 1"),
            "{e}"
        );
        std::fs::write(&path, "").unwrap();
        let e = LabelStore::open(&path, &p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("header"), "{e}");
    }

    #[test]
    fn second_opener_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let (path, p, _) = filled(dir.path(), 1);
        let (st, _) = LabelStore::open(&path, &p).unwrap();
        assert!(matches!(
            LabelStore::open(&path, &p),
            Err(Error::Locked { .. })
        ));
        drop(st);
        LabelStore::open(&path, &p).unwrap();
        // read_store does not need the lock and never modifies the file.
        let c = read_store(&path).unwrap();
        assert_eq!(c.records.len(), 1);
    }

    #[test]
    fn label_missing_resumes_without_recomputing() {
        let dir = tempfile::tempdir().unwrap();
        let s = space();
        let p = protocol(&s);
        let path = dir.path().join("labels.jsonl");
        let pols: Vec<Policy> = (0..8).map(|i| record(&s, &p, i).policy).collect();
        let mut calls = Vec::new();
        {
            let (mut st, _) = LabelStore::open(&path, &p).unwrap();
            // The "run" dies on its 4th label.
            let e = label_missing(&mut st, &s, &pols, |pol, _| {
                calls.push(policy_hash(pol));
                if calls.len() == 4 {
                    Err("killed")
                } else {
                    Ok(Measured { top1: 70.0 })
                }
            })
            .unwrap_err();
            // The labeller's error is the source of the store's error.
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            assert_eq!(cause.as_deref(), Some("killed"), "{e}");
        }
        let (mut st, _) = LabelStore::open(&path, &p).unwrap();
        assert_eq!(st.len(), 3);
        let mut again = Vec::new();
        let rep = label_missing(&mut st, &s, &pols, |pol, seed| {
            assert_eq!(seed, label_seed(p.seed, &policy_hash(pol)));
            again.push(policy_hash(pol));
            Ok::<_, String>(Measured { top1: 71.0 })
        })
        .unwrap();
        assert_eq!((rep.labelled, rep.already), (5, 3));
        assert_eq!(
            again,
            calls[3..]
                .iter()
                .cloned()
                .chain(pols[4..].iter().map(policy_hash))
                .collect::<Vec<_>>()
        );
        assert_eq!(st.len(), 8);
    }

    #[test]
    fn record_checks() {
        let s = space();
        let p = protocol(&s);
        let pol = s.uniform(4, 4, 0.0).unwrap();
        for top1 in [f64::NAN, -1.0, 100.5] {
            assert!(LabelRecord::new(&s, &p, pol.clone(), top1, 1.0).is_err());
        }
        let mut r = record(&s, &p, 0);
        r.hash = "0".repeat(32);
        assert!(
            r.check()
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
    }
}
