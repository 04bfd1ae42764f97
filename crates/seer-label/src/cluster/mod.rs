//! Labelling batches on a cluster scheduler (`seernet compress --executor slurm`): a batch of
//! policies becomes a [manifest](crate::manifest), submitted as one job array whose task `i`
//! runs `seernet label --manifest M --shard /N` (index from the scheduler); the driver waits,
//! resubmits only the tasks that left a policy without a result (bounded retries), and merges
//! the results into the store in manifest order, i.e. in the order a local run appends them.
//!
//! # Files (`<run>/cluster/<batch>/`)
//! `manifest.jsonl` (the batch's unlabelled policies), `task.sh` (the array task: one
//! `exec` of the label command), `results/<hash>.json` (one per policy,
//! [`LabelResult`]), `logs/<job>_<task>.out` (each task's output). The run directory must be on
//! a filesystem every node sees at the same path.
//!
//! # Restarts
//! Nothing is kept in the driver's memory that the files do not hold: a driver killed at any
//! point and started again first waits for the arrays of its batch still known to the
//! scheduler (found by job name, [`job_name`]), reuses the batch's manifest, and submits only
//! the tasks whose policies have no result yet, so no policy is labelled twice. A second
//! driver on the same run directory is refused by the [driver lock](lock).
//!
//! ```
//! use seer_label::cluster::shard_indices;
//! // 7 policies, 2 per task: 4 tasks; policies 1 and 6 unfinished: tasks 1 and 2 again.
//! assert_eq!(shard_indices(7, 2, &[1, 6]), (4, vec![1, 2]));
//! ```

pub mod k8s;
pub mod lock;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use seer_policy::{Policy, SearchSpace};

use crate::error::{Error, Result};
use crate::manifest::{LabelResult, Manifest};
use crate::store::{LabelRecord, LabelStore, policy_hash, short_digest, write_atomic};

pub use lock::{LockInfo, RunLock};
pub use slurm::{Slurm, SlurmSettings};

/// One job array to submit.
#[derive(Clone, Debug)]
pub struct ArrayRequest<'a> {
    /// Job name (unique per run directory and batch: [`job_name`]).
    pub name: &'a str,
    /// Array task indices (sorted, distinct).
    pub indices: &'a [usize],
    /// The task script; it reads its index from the scheduler's environment.
    pub script: &'a Path,
    /// Directory of the per-task output files.
    pub log_dir: &'a Path,
    /// Working directory of the tasks.
    pub workdir: &'a Path,
}

/// A batch scheduler: submits job arrays and says which of a name are still queued or running.
pub trait Scheduler {
    /// Submits `req`; returns the job id. Err(Cluster) with the scheduler's message.
    fn submit(&mut self, req: &ArrayRequest<'_>) -> Result<String>;
    /// Ids of the jobs named `name` that are pending or running (empty: all finished).
    fn active(&mut self, name: &str) -> Result<Vec<String>>;
    /// Time between two [`active`](Self::active) polls.
    fn poll_interval(&self) -> Duration;
}

/// Consecutive failed polls tolerated while waiting (the controller may restart or be busy).
const POLL_FAILURES: usize = 5;

/// Blocks until no job named `name` is pending or running. Err(Cluster) after
/// 5 polls in a row failed (the controller may restart or be busy meanwhile).
pub fn wait(sched: &mut dyn Scheduler, name: &str, log: &mut dyn FnMut(&str)) -> Result<()> {
    let mut failures = 0;
    loop {
        match sched.active(name) {
            Ok(ids) if ids.is_empty() => return Ok(()),
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures >= POLL_FAILURES {
                    return Err(e);
                }
                log(&format!(
                    "batch {name}: polling the scheduler failed ({e}); retrying"
                ));
            }
        }
        std::thread::sleep(sched.poll_interval());
    }
}

/// A labelling batch: where its files go, what its tasks run, how it is split.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Short name (`initial`, `active-1`, ...), for the log and the job name.
    pub label: String,
    /// Its directory (`<run>/cluster/<label>`), absolute.
    pub dir: PathBuf,
    /// Job name ([`job_name`]).
    pub job_name: String,
    /// The label command before `--manifest`, e.g. `[/opt/seernet, label, --model, /run/b.safetensors]`.
    pub command: Vec<String>,
    /// Working directory of the tasks (the run directory).
    pub workdir: PathBuf,
    /// Labels per array task, ≥ 1.
    pub labels_per_task: usize,
    /// Resubmissions of unfinished tasks before giving up.
    pub retries: usize,
}

/// The job name of batch `label` of the run in `run_dir`: `seernet-<8 hex of the absolute run
/// directory>-<label>`, so arrays of different runs never mix.
pub fn job_name(run_dir: &Path, label: &str) -> String {
    let abs = std::path::absolute(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    let h = short_digest(abs.display().to_string().as_bytes());
    format!("seernet-{}-{label}", &h[..8])
}

/// Shards of `n` policies at `per_task` per task, and the task indices holding the positions
/// `pending` (sorted, distinct): `(⌈n / per_task⌉, indices)`. Task `i` of `N` labels the
/// positions `p` with `p mod N = i` ([`ShardSpec`](crate::manifest::ShardSpec)).
pub fn shard_indices(n: usize, per_task: usize, pending: &[usize]) -> (usize, Vec<usize>) {
    let count = n.div_ceil(per_task.max(1)).max(1);
    let mut idx: Vec<usize> = pending.iter().map(|p| p % count).collect();
    idx.sort_unstable();
    idx.dedup();
    (count, idx)
}

/// `s` quoted for a POSIX shell (single quotes; `'` as `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The array task script: `exec <command> --manifest M --shard /N --out R`.
pub fn task_script(command: &[String], manifest: &Path, shards: usize, results: &Path) -> String {
    let mut argv: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    for a in [
        "--manifest".to_string(),
        manifest.display().to_string(),
        "--shard".to_string(),
        format!("/{shards}"),
        "--out".to_string(),
        results.display().to_string(),
    ] {
        argv.push(shell_quote(&a));
    }
    format!(
        "#!/bin/sh\n# seernet: one array task labels shard $SLURM_ARRAY_TASK_ID (or \
         $JOB_COMPLETION_INDEX) of {shards}.\nexec {}\n",
        argv.join(" ")
    )
}

/// `1 policy`, `2 policies`.
fn policies_n(n: usize) -> String {
    format!("{n} polic{}", if n == 1 { "y" } else { "ies" })
}

/// What [`label_batch`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReport {
    /// Policies of the batch already in the store (nothing submitted for them).
    pub already: usize,
    /// Arrays submitted by this call.
    pub submissions: usize,
    /// Arrays of an earlier driver this call waited for.
    pub waited_for_earlier: usize,
    /// Records appended to the store, in manifest order.
    pub merged: Vec<LabelRecord>,
}

/// Whether `dir` holds a valid result for entry `hash` under the store's protocol.
fn has_result(dir: &Path, hash: &str, store: &LabelStore) -> bool {
    LabelResult::load(&LabelResult::path_in(dir, hash))
        .is_ok_and(|r| r.protocol == *store.protocol() && r.record.hash == hash)
}

/// Labels the policies of `policies` that `store` lacks on `sched`, as described in the
/// [module docs](self): manifest, job array, wait, resubmission of unfinished tasks (at most
/// `batch.retries` times, each logged through `log`), then the results appended to the store in
/// manifest order (= the order of `policies`). Nothing is submitted when every policy is
/// stored. Err(Cluster) when the scheduler refuses a submission or tasks still leave policies
/// without a result after the retries (naming them and the log directory); Err(Io),
/// Err(Protocol) and the store's errors as they come.
pub fn label_batch(
    store: &mut LabelStore,
    space: &SearchSpace,
    policies: &[Policy],
    batch: &Batch,
    sched: &mut dyn Scheduler,
    log: &mut dyn FnMut(&str),
) -> Result<BatchReport> {
    store.protocol().check_space(space)?;
    let mut rep = BatchReport::default();
    let mut missing: Vec<Policy> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in policies {
        let h = policy_hash(p);
        if store.contains(&h) {
            rep.already += 1;
        } else if seen.insert(h) {
            space.validate(p)?;
            missing.push(p.clone());
        }
    }
    if missing.is_empty() {
        return Ok(rep);
    }
    let name = batch.label.as_str();
    let io = |p: &Path, e: std::io::Error| Error::Io {
        path: p.display().to_string(),
        err: e,
    };
    let results = batch.dir.join("results");
    let logs = batch.dir.join("logs");
    for d in [&batch.dir, &results, &logs] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    // Arrays of a driver that was killed: wait for them before touching the batch's files.
    let earlier = sched.active(&batch.job_name)?;
    if !earlier.is_empty() {
        log(&format!(
            "batch {name}: waiting for job(s) {} submitted by an earlier driver",
            earlier.join(", ")
        ));
        rep.waited_for_earlier = earlier.len();
        wait(sched, &batch.job_name, log)?;
    }
    // The batch's manifest: the one already written when it covers every missing policy.
    let mpath = batch.dir.join("manifest.jsonl");
    let manifest = match Manifest::load(&mpath) {
        Ok(m)
            if m.protocol == *store.protocol()
                && missing.iter().all(|p| {
                    let h = policy_hash(p);
                    m.entries.iter().any(|e| e.hash == h)
                }) =>
        {
            m
        }
        _ => {
            let m = Manifest::new(store.protocol().clone(), missing)?;
            m.save(&mpath)?;
            m
        }
    };
    let n = manifest.entries.len();
    let script = batch.dir.join("task.sh");
    for attempt in 0..=batch.retries + 1 {
        let pending: Vec<usize> = manifest
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                seen.contains(&e.hash)
                    && !store.contains(&e.hash)
                    && !has_result(&results, &e.hash, store)
            })
            .map(|(p, _)| p)
            .collect();
        if pending.is_empty() {
            break;
        }
        let (shards, indices) = shard_indices(n, batch.labels_per_task, &pending);
        if attempt > batch.retries {
            let hashes: Vec<&str> = pending
                .iter()
                .map(|&p| manifest.entries[p].hash.as_str())
                .collect();
            return Err(Error::Cluster {
                batch: name.into(),
                msg: format!(
                    "{} of {n} still without a result after {} submission(s) (tasks {:?} \
                     of {shards}; policies {}); see the task logs in {}",
                    policies_n(pending.len()),
                    attempt,
                    indices,
                    hashes.join(", "),
                    logs.display()
                ),
            });
        }
        write_atomic(
            &script,
            task_script(&batch.command, &mpath, shards, &results).as_bytes(),
        )?;
        let req = ArrayRequest {
            name: &batch.job_name,
            indices: &indices,
            script: &script,
            log_dir: &logs,
            workdir: &batch.workdir,
        };
        let id = sched.submit(&req)?;
        rep.submissions += 1;
        if attempt == 0 {
            log(&format!(
                "batch {name}: job {id} submitted: {} task(s) of {shards} for {} ({} per task)",
                indices.len(),
                policies_n(pending.len()),
                batch.labels_per_task
            ));
        } else {
            log(&format!(
                "batch {name}: {} task(s) left {} without a result (tasks {}): \
                 resubmitted as job {id} (retry {attempt} of {})",
                indices.len(),
                policies_n(pending.len()),
                slurm::array_spec(&indices, None),
                batch.retries
            ));
        }
        wait(sched, &batch.job_name, log)?;
    }
    // Merge in manifest order: the store gets the records in the order a local run appends them.
    for e in &manifest.entries {
        if !seen.contains(&e.hash) || store.contains(&e.hash) {
            continue;
        }
        let path = LabelResult::path_in(&results, &e.hash);
        let r = LabelResult::load(&path)?;
        if r.protocol != *store.protocol() || r.record.hash != e.hash {
            return Err(Error::Protocol {
                what: format!("result {} (store vs file)", path.display()),
                diff: store.protocol().diff(&r.protocol).join("; "),
            });
        }
        store.append(r.record.clone())?;
        rep.merged.push(r.record);
    }
    Ok(rep)
}

#[cfg(test)]
mod tests;
