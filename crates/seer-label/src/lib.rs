//! seer-label: the label store, the labelling protocol and shard manifests. No tensors: the
//! labelling function itself (a fine-tune and a validation pass) is supplied by the caller
//! (`seer_nn::labeler::Labeler`, or a closure in tests).
//!
//! - [`store`]: the **label store**, a durable, append-only JSON-lines file of labelled policies
//!   (policy → validation top-1 in percent, costs, seed, seconds), keyed by [`policy_hash`]
//!   and bound to one labelling [`Protocol`] (network, space, dataset split, baseline
//!   checkpoint, fine-tune settings). Every append is fsynced before it returns, so a run
//!   killed at any point (`kill -9` included) resumes without losing or recomputing a label
//!   ([`label_missing`]); labels of different protocols are never mixed.
//! - [`manifest`]: **shard manifests** for labelling on a cluster: a list of policies under one
//!   protocol, `--shard I/N` slicing ([`ShardSpec`], index from Slurm or Kubernetes), one
//!   atomic result file per policy ([`run_shard`]) and [`merge_results`] into a store.
//! - [`cluster`]: **cluster batches**: a batch of policies labelled as one Slurm job array
//!   (submit, wait, resubmit unfinished tasks, merge in order), the run directory's driver
//!   lock, and Kubernetes Indexed Job rendering.
//!
//! Errors are one enum, [`Error`]. Long steps (each label) run inside `tracing` spans.
//!
//! ```
//! use seer_label::{LabelRecord, LabelStore, Protocol, read_store};
//! use seer_policy::{builtin, SearchSpace, SpaceConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("labels.jsonl");
//! let space = SearchSpace::new(builtin("lenet5", None, None)?, SpaceConfig::default())?;
//! // Dataset, split hash, baseline hash, fine-tune steps, batch size, learning rate, base seed.
//! let protocol = Protocol::for_space(&space, "fashion-mnist", "split0", "baseline0", 100, 64, 0.01, 0);
//!
//! let policy = space.uniform(4, 4, 0.25)?;
//! {
//!     let (mut store, report) = LabelStore::open(&path, &protocol)?;
//!     assert!(report.created);
//!     // Validation top-1 88.5 % after a 12-second fine-tune.
//!     let rec = LabelRecord::new(&space, &protocol, policy.clone(), 88.5, 12.0)?;
//!     assert!(store.append(rec)?.is_written());
//! } // closing releases the store's lock
//!
//! let (store, report) = LabelStore::open(&path, &protocol)?;
//! assert_eq!((report.created, report.records), (false, 1));
//! let rec = store.get(&seer_label::policy_hash(&policy)).expect("stored");
//! assert_eq!((rec.top1, rec.policy.clone()), (88.5, policy));
//! // Read-only access (no lock): e.g. to inspect a store another process is appending to.
//! assert_eq!(read_store(&path)?.records.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod cluster;
mod error;
pub mod manifest;
pub mod store;

pub use error::{Error, Result};
pub use manifest::{
    LabelResult, Manifest, ManifestEntry, MergeReport, ShardReport, ShardSpec, load_results,
    merge_results, run_shard, run_shard_with,
};
pub use store::{
    Appended, FinetuneNetwork, LabelRecord, LabelReport, LabelStore, Measured, OpenReport,
    PendingLabel, Protocol, file_hash, label_missing, label_seed, pending_labels, policy_hash,
    read_store, short_digest, write_atomic,
};
