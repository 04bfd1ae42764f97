//! Label store durability across a real `kill -9`, and shard → merge round trips through files.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use seernet::manifest::{Manifest, Measured, ShardSpec, merge_results, run_shard};
use seernet::policy::{Policy, SearchSpace, SpaceConfig, builtin};
use seernet::store::{LabelRecord, LabelStore, Protocol, read_store};

const CHILD_ENV: &str = "SEERNET_IT_STORE_CHILD";

fn space() -> SearchSpace {
    SearchSpace::new(
        builtin("lenet5", None, None).unwrap(),
        SpaceConfig::default(),
    )
    .unwrap()
}

fn protocol(space: &SearchSpace) -> Protocol {
    Protocol::for_space(
        space,
        "fashion-mnist",
        "split-it",
        "baseline-it",
        50,
        32,
        0.05,
        3,
    )
}

/// The `k`-th distinct policy of the space (mixed-radix counter over the genes' candidates).
fn nth_policy(space: &SearchSpace, mut k: usize) -> Policy {
    let idx: Vec<usize> = space
        .genes()
        .iter()
        .map(|g| {
            let n = g.candidates.len();
            let i = k % n;
            k /= n;
            i
        })
        .collect();
    space.from_indices(&idx).unwrap()
}

/// Child side: append labels forever, printing `acked <hash>` after each append returned.
fn child_appender(path: &Path) -> ! {
    let s = space();
    let p = protocol(&s);
    let (mut store, _) = LabelStore::open(path, &p).unwrap();
    let mut k = store.len();
    loop {
        let rec =
            LabelRecord::new(&s, &p, nth_policy(&s, k), 10.0 + (k % 80) as f64, 0.01).unwrap();
        let hash = rec.hash.clone();
        store.append(rec).unwrap();
        println!("acked {hash}");
        k += 1;
    }
}

#[test]
fn kill_9_while_appending_loses_no_acknowledged_label() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child_appender(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jsonl");
    let s = space();
    let p = protocol(&s);
    let mut acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "store::kill_9_while_appending_loses_no_acknowledged_label",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let target = acked.len() + 15 + 7 * round;
        for line in out.lines() {
            let line = line.unwrap();
            if let Some(h) = line.strip_prefix("acked ") {
                acked.push(h.to_string());
                if acked.len() >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush.
        child.wait().unwrap();

        let (store, report) = LabelStore::open(&path, &p).unwrap();
        for h in &acked {
            assert!(
                store.contains(h),
                "round {round}: acknowledged label {h} lost ({report})"
            );
        }
        // At most the labels written after the last one we read (the pipe may lag).
        assert!(
            store.len() >= acked.len() && store.len() <= acked.len() + 64,
            "{} vs {}",
            store.len(),
            acked.len()
        );
        assert_eq!(report.duplicates_ignored, 0);
        acked = store.records().iter().map(|r| r.hash.clone()).collect();
        drop(store);
        // Re-opening a store that was just repaired finds nothing more to repair.
        let again = read_store(&path).unwrap();
        assert_eq!(again.report.dropped_tail, None);
        assert_eq!(again.records.len(), acked.len());
    }
}

#[test]
fn sharded_labelling_then_merge_equals_labelling_in_one_go() {
    let s = space();
    let p = protocol(&s);
    let dir = tempfile::tempdir().unwrap();
    let m = Manifest::new(p.clone(), (0..10).map(|k| nth_policy(&s, 7919 * k + 11))).unwrap();
    let mpath = dir.path().join("M.jsonl");
    m.save(&mpath).unwrap();
    let m = Manifest::load(&mpath).unwrap();
    m.validate(&s).unwrap();
    // Deterministic stand-in labeller: a function of the policy only.
    let label = |e: &seernet::manifest::ManifestEntry, _seed: u64| -> Result<Measured, String> {
        Ok(Measured {
            top1: e
                .policy
                .units
                .iter()
                .map(|u| u.wbits as f64 * (1.0 - u.prune))
                .sum::<f64>(),
        })
    };
    let dirs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("shard{i}")))
        .collect();
    for (i, d) in dirs.iter().enumerate() {
        let spec = ShardSpec::parse_with_env("/3", |k| {
            (k == "JOB_COMPLETION_INDEX").then(|| i.to_string())
        })
        .unwrap();
        let rep = run_shard(&m, &s, spec, d, label).unwrap();
        assert_eq!(rep.labelled, rep.assigned);
    }
    let (mut store, _) = LabelStore::open(dir.path().join("labels.jsonl"), &p).unwrap();
    let rep = merge_results(&mut store, &dirs).unwrap();
    assert_eq!((rep.added, store.len()), (10, 10));
    for e in &m.entries {
        let r = store.get(&e.hash).unwrap();
        assert_eq!(r.top1, label(e, 0).unwrap().top1);
        assert_eq!(r.policy, e.policy);
    }
    // Records come in manifest order regardless of the shard that made them.
    let order: Vec<&str> = store.records().iter().map(|r| r.hash.as_str()).collect();
    let want: Vec<&str> = m.entries.iter().map(|e| e.hash.as_str()).collect();
    assert_eq!(order, want);
}
