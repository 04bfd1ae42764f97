//! Tests of the batch driver against an in-process scheduler that runs the task script's shards
//! with a fake labeller, and can cancel tasks or lose the driver.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::manifest::{Measured, ShardSpec, run_shard};
use crate::store::label_missing;
use crate::store::tests::{protocol, space};

/// The fake label: a function of the seed only, like a real label of a fixed protocol.
fn fake_top1(seed: u64) -> f64 {
    50.0 + (seed % 4000) as f64 / 100.0
}

/// The single-quoted words of a task script's `exec` line.
fn script_argv(script: &str) -> Vec<String> {
    let line = script.lines().find(|l| l.starts_with("exec ")).unwrap();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line["exec ".len()..].chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) => quoted = false,
            ('\\', false) if chars.peek() == Some(&'\'') => cur.push(chars.next().unwrap()),
            (' ', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Runs submitted arrays in-process at the next poll (the array is "active" at that poll, done
/// at the one after). Tasks in `cancel` are dropped the first time they are submitted.
struct Fake {
    space: SearchSpace,
    queued: Vec<(String, Vec<usize>, PathBuf)>,
    next_id: usize,
    cancel: HashSet<usize>,
    cancel_always: HashSet<usize>,
    /// Finished labels per policy hash (a policy labelled twice shows as 2).
    labelled: HashMap<String, usize>,
    submitted: Vec<Vec<usize>>,
    fail_polls_after_submit: bool,
}

impl Fake {
    fn new(space: SearchSpace) -> Self {
        Fake {
            space,
            queued: Vec::new(),
            next_id: 100,
            cancel: HashSet::new(),
            cancel_always: HashSet::new(),
            labelled: HashMap::new(),
            submitted: Vec::new(),
            fail_polls_after_submit: false,
        }
    }

    fn run_queued(&mut self) {
        for (_, indices, script) in std::mem::take(&mut self.queued) {
            let argv = script_argv(&std::fs::read_to_string(&script).unwrap());
            let arg = |k: &str| argv[argv.iter().position(|a| a == k).unwrap() + 1].clone();
            assert_eq!(argv[..2], ["/opt/seernet", "label"]);
            let m = Manifest::load(arg("--manifest")).unwrap();
            let out = PathBuf::from(arg("--out"));
            for i in indices {
                if self.cancel.remove(&i) || self.cancel_always.contains(&i) {
                    continue;
                }
                let env = |k: &str| (k == "SLURM_ARRAY_TASK_ID").then(|| i.to_string());
                let shard = ShardSpec::parse_with_env(&arg("--shard"), env).unwrap();
                let labelled = &mut self.labelled;
                run_shard(&m, &self.space, shard, &out, |e, seed| {
                    *labelled.entry(e.hash.clone()).or_default() += 1;
                    Ok::<_, String>(Measured {
                        top1: fake_top1(seed),
                    })
                })
                .unwrap();
            }
        }
    }
}

impl Scheduler for Fake {
    fn submit(&mut self, req: &ArrayRequest<'_>) -> Result<String> {
        self.next_id += 1;
        let id = self.next_id.to_string();
        self.submitted.push(req.indices.to_vec());
        self.queued
            .push((id.clone(), req.indices.to_vec(), req.script.to_path_buf()));
        Ok(id)
    }

    fn active(&mut self, _name: &str) -> Result<Vec<String>> {
        if self.fail_polls_after_submit && !self.queued.is_empty() {
            return Err(Error::Cluster {
                batch: "fake".into(),
                msg: "the driver was killed".into(),
            });
        }
        let ids: Vec<String> = self.queued.iter().map(|q| q.0.clone()).collect();
        self.run_queued();
        Ok(ids)
    }

    fn poll_interval(&self) -> Duration {
        Duration::ZERO
    }
}

fn batch(dir: &Path, per_task: usize) -> Batch {
    Batch {
        label: "initial".into(),
        dir: dir.join("cluster/initial"),
        job_name: job_name(dir, "initial"),
        command: [
            "/opt/seernet",
            "label",
            "--model",
            "/run/it's base.safetensors",
        ]
        .map(String::from)
        .to_vec(),
        workdir: dir.to_path_buf(),
        labels_per_task: per_task,
        retries: 2,
    }
}

/// 9 distinct policies, then the first again (a duplicate within the batch).
fn policies(s: &SearchSpace) -> Vec<Policy> {
    let mut v: Vec<Policy> = [2, 3, 4]
        .iter()
        .flat_map(|&b| [0.0, 0.25, 0.5].map(|p| s.uniform(b, b, p).unwrap()))
        .collect();
    v.push(v[0].clone());
    v
}

/// The store's records without their wall times.
fn records(store: &LabelStore) -> Vec<LabelRecord> {
    store
        .records()
        .iter()
        .map(|r| LabelRecord {
            seconds: 0.0,
            ..r.clone()
        })
        .collect()
}

#[test]
fn shard_indices_and_scripts() {
    assert_eq!(shard_indices(8, 1, &[0, 3, 7]), (8, vec![0, 3, 7]));
    assert_eq!(shard_indices(7, 2, &[1, 6]), (4, vec![1, 2]));
    assert_eq!(shard_indices(5, 10, &[4]), (1, vec![0]));
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    let s = task_script(
        &["/opt/seernet".into(), "label".into()],
        Path::new("/r/M.jsonl"),
        4,
        Path::new("/r/res"),
    );
    assert!(s.starts_with("#!/bin/sh\n"));
    assert_eq!(
        script_argv(&s),
        [
            "/opt/seernet",
            "label",
            "--manifest",
            "/r/M.jsonl",
            "--shard",
            "/4",
            "--out",
            "/r/res"
        ]
    );
    let a = job_name(Path::new("/runs/a"), "initial");
    assert!(a.starts_with("seernet-") && a.ends_with("-initial") && a.len() == 8 + 8 + 8);
    assert_ne!(a, job_name(Path::new("/runs/b"), "initial"));
}

/// A cancelled task is resubmitted alone; each policy is labelled once; the store ends up with
/// the records a local run writes, in the same order (timings aside).
#[test]
fn cancelled_task_is_resubmitted_and_the_store_equals_a_local_run() {
    let s = space();
    let p = protocol(&s);
    let pols = policies(&s);
    let dir = tempfile::tempdir().unwrap();

    let (mut local, _) = LabelStore::open(dir.path().join("local.jsonl"), &p).unwrap();
    // One policy already labelled before the batch (by an earlier round).
    let first = vec![pols[4].clone()];
    label_missing(&mut local, &s, &first, |_, seed| {
        Ok::<_, String>(Measured {
            top1: fake_top1(seed),
        })
    })
    .unwrap();
    let (mut remote, _) = LabelStore::open(dir.path().join("remote.jsonl"), &p).unwrap();
    let mut f0 = Fake::new(s.clone());
    let b = batch(dir.path(), 1);
    let mut lines = Vec::new();
    label_batch(&mut remote, &s, &first, &b, &mut f0, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();

    label_missing(&mut local, &s, &pols, |_, seed| {
        Ok::<_, String>(Measured {
            top1: fake_top1(seed),
        })
    })
    .unwrap();
    let mut f = Fake::new(s.clone());
    f.cancel.insert(3);
    let b = Batch {
        label: "active-1".into(),
        dir: dir.path().join("cluster/active-1"),
        job_name: job_name(dir.path(), "active-1"),
        labels_per_task: 2,
        ..b
    };
    let rep = label_batch(&mut remote, &s, &pols, &b, &mut f, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    // 8 missing policies, 2 per task: tasks 0..3; task 3 cancelled, then resubmitted alone.
    assert_eq!(f.submitted, [vec![0, 1, 2, 3], vec![3]]);
    assert_eq!((rep.already, rep.submissions, rep.merged.len()), (1, 2, 8));
    assert!(f.labelled.values().all(|&n| n == 1), "{:?}", f.labelled);
    assert_eq!(f.labelled.len(), 8);
    assert!(
        lines.iter().any(|l| l.contains("resubmitted")
            && l.contains("tasks 3")
            && l.contains("retry 1 of 2")),
        "{lines:?}"
    );
    assert_eq!(records(&remote), records(&local));
    // Running the batch again submits nothing.
    let mut f2 = Fake::new(s.clone());
    let rep = label_batch(&mut remote, &s, &pols, &b, &mut f2, &mut |_| {}).unwrap();
    assert_eq!((rep.already, rep.submissions), (10, 0));
}

/// A driver lost after submitting: the next one waits for the earlier array, labels nothing
/// again and submits nothing.
#[test]
fn a_restarted_driver_waits_for_the_earlier_array_and_relabels_nothing() {
    let s = space();
    let p = protocol(&s);
    let pols = policies(&s);
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = LabelStore::open(dir.path().join("labels.jsonl"), &p).unwrap();
    let b = batch(dir.path(), 3);
    let mut f = Fake::new(s.clone());
    f.fail_polls_after_submit = true;
    let e = label_batch(&mut store, &s, &pols, &b, &mut f, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("the driver was killed"), "{e}");
    assert_eq!((f.submitted.len(), store.len()), (1, 0));
    // The array is still queued at the scheduler when the new driver starts.
    f.fail_polls_after_submit = false;
    let mut lines = Vec::new();
    let rep = label_batch(&mut store, &s, &pols, &b, &mut f, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!((rep.waited_for_earlier, rep.submissions), (1, 0));
    assert_eq!(f.submitted.len(), 1);
    assert_eq!(store.len(), 9);
    assert!(f.labelled.values().all(|&n| n == 1), "{:?}", f.labelled);
    assert!(lines[0].contains("earlier driver"), "{lines:?}");
}

#[test]
fn retries_are_bounded_and_nothing_submitted_when_all_is_stored() {
    let s = space();
    let p = protocol(&s);
    let pols = policies(&s);
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = LabelStore::open(dir.path().join("labels.jsonl"), &p).unwrap();
    let b = batch(dir.path(), 1);
    let mut f = Fake::new(s.clone());
    f.cancel_always.insert(5);
    let e = label_batch(&mut store, &s, &pols, &b, &mut f, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 policy of 9 still without a result after 3 submission(s)")
            && e.contains("tasks [5]")
            && e.contains("logs"),
        "{e}"
    );
    assert_eq!(f.submitted, [(0..9).collect::<Vec<_>>(), vec![5], vec![5]]);
    assert_eq!(store.len(), 0, "nothing merged from an unfinished batch");

    // Once stored, a batch writes no files and submits nothing.
    let dir2 = tempfile::tempdir().unwrap();
    let b2 = batch(dir2.path(), 1);
    label_missing(&mut store, &s, &pols, |_, seed| {
        Ok::<_, String>(Measured {
            top1: fake_top1(seed),
        })
    })
    .unwrap();
    let mut f2 = Fake::new(s.clone());
    let rep = label_batch(&mut store, &s, &pols, &b2, &mut f2, &mut |_| {}).unwrap();
    assert_eq!((rep.already, rep.submissions), (10, 0));
    assert!(!b2.dir.exists());
}
