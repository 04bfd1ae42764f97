//! The main job (`seernet::pipeline`) end to end on a tiny configuration (LeNet-5, a small
//! synthetic IDX dataset, a few labels of a few steps): a real `kill -9` in the middle of the
//! labels followed by a rerun loses and recomputes nothing, the resumed run writes the same
//! `policy-*.json` as an uninterrupted run with the same seed, and bad input (infeasible
//! budget, missing dataset, corrupt store) is a clear error.
//!
//! Each run is a child process (this test binary re-executed with `CHILD_ENV` set) so that it
//! can be killed and so that `SEERNET_DATA` is set for it alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use seer_nn::data::{self, DatasetName, idx};
use seernet::budget::Budget;
use seernet::pipeline::{Config, Summary, run};
use seernet::store::read_store;

const CHILD_ENV: &str = "SEERNET_IT_PIPELINE_CHILD";
const TEST: &str = "pipeline::kill_resume_determinism_and_errors";

/// Writes `n` synthetic 28×28 images (class = which horizontal band holds a bright bar).
fn synthetic_data(root: &Path, n: usize) {
    let mut images = Vec::with_capacity(n * 784);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % 4) as u8;
        for y in 0..28 {
            for x in 0..28 {
                let noise = (data::batch::mix(i as u64, y as u64, x as u64) % 61) as u8;
                let bar = (y / 7) as u8 == label && (4..24).contains(&x);
                images.push(if bar { 190 + noise } else { noise });
            }
        }
        labels.push(label);
    }
    std::fs::create_dir_all(root).unwrap();
    let ip = root.join("imgs-idx3-ubyte");
    let lp = root.join("labs-idx1-ubyte");
    idx::write_idx_u8(&ip, &[n, 28, 28], &images).unwrap();
    idx::write_idx_u8(&lp, &[n], &labels).unwrap();
    data::prepare_from_idx(&root.join("mnist"), DatasetName::Mnist, &[(ip, lp)]).unwrap();
}

/// The tiny configuration (child side), from environment variables.
fn child_config() -> Config {
    let out = PathBuf::from(std::env::var_os(CHILD_ENV).unwrap());
    let mut c = Config::quick(out);
    c.dataset = std::env::var("IT_DATASET").unwrap_or_else(|_| "mnist".into());
    c.baseline = std::env::var_os("IT_BASELINE").map(PathBuf::from);
    c.baseline_steps = 30;
    c.n0 = 4;
    c.rounds = 1;
    c.k = 2;
    // A BOPs budget and a size budget (the exported file must fit the latter).
    c.budgets = vec![
        Budget::parse_bops_frac("0.1").unwrap(),
        Budget::parse_max_size("16KB").unwrap(),
    ];
    c.sampler_generations = 4;
    c.label_steps = 3;
    // Labels scored on a seeded sample of the validation split, as the ResNet-20 run does.
    c.label_val_images = Some(std::env::var("IT_VAL_IMAGES").map_or(40, |v| v.parse().unwrap()));
    c.verify_rounds = 1;
    c.kappas = vec![0.0, 1.0];
    c.final_steps = 3;
    c.batch_size = 16;
    c.progress = false;
    if let Ok(m) = std::env::var("IT_METHOD") {
        c.method = m.parse().unwrap();
    }
    if let Ok(w) = std::env::var("IT_WORKERS") {
        c.workers = w.parse().unwrap();
    }
    if let Ok(f) = std::env::var("IT_LABEL_CACHE") {
        c.label_cache = Some(f.into());
    }
    if let Ok(d) = std::env::var("IT_FINAL_CACHE") {
        c.final_cache = Some(d.into());
    }
    if let Ok(f) = std::env::var("IT_HELDOUT") {
        c.heldout_labels = Some(f.into());
    }
    if let Ok(a) = std::env::var("IT_ACQ") {
        c.acquisition = a.parse().unwrap();
    }
    if let Ok(b) = std::env::var("IT_MAX_BOPS") {
        c.budgets = vec![Budget::parse_max_bops(&b).unwrap()];
    }
    if let Ok(p) = std::env::var("IT_MAX_DROP") {
        c.max_drop = Some(p.parse().unwrap());
        c.budgets.clear();
    }
    c
}

fn child(data_root: &Path, out: &Path, extra: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, out)
        .env("SEERNET_DATA", data_root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

fn run_child(data_root: &Path, out: &Path, extra: &[(&str, String)]) -> Output {
    child(data_root, out, extra).output().unwrap()
}

fn policies(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("policy-") && n.ends_with(".json")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Runs the pipeline child on `out` with `extra` settings, asserts that it succeeded (`name`
/// in the failure, with its stderr) and returns its summary.
fn run_ok(data_root: &Path, out: &Path, extra: &[(&str, String)], name: &str) -> Summary {
    let o = run_child(data_root, out, extra);
    assert!(
        o.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// The policy hashes in the label store file `p`, in file order (none when it is missing; the
/// header and a torn last line skipped): read while a run writes it.
fn file_hashes(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["hash"].as_str().map(str::to_string))
        .collect()
}

/// Kills `proc` (`name` in failures) with SIGKILL as soon as `ready()` holds, polling every
/// 5 ms; fails if the run ends first or nothing happens in 10 minutes.
fn kill_when(mut proc: std::process::Child, name: &str, ready: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{name}: nothing to kill for"
        );
        assert!(
            proc.try_wait().unwrap().is_none(),
            "{name} ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    proc.kill().unwrap(); // SIGKILL
    proc.wait().unwrap();
}

#[test]
fn kill_resume_determinism_and_errors() {
    if std::env::var_os(CHILD_ENV).is_some() {
        match run(&child_config()) {
            Ok(_) => std::process::exit(0),
            Err(e) => {
                // The whole chain, as the CLI prints it (`{:#}`).
                eprintln!("error: {}", seernet::error::chain(&e));
                std::process::exit(3);
            }
        }
    }
    let td = tempfile::tempdir().unwrap();
    let data_root = td.path().join("data");
    synthetic_data(&data_root, 800);

    // Run A, uninterrupted (trains its own baseline), two labels and two final fine-tunes at
    // a time (`--workers 2`; run B below works one after another), sharing its labels and
    // final fine-tunes through a label cache and a final cache (run C below reads them).
    let a = td.path().join("a");
    let cache = td.path().join("shared");
    let caches = [
        (
            "IT_LABEL_CACHE",
            cache.join("labels.jsonl").display().to_string(),
        ),
        ("IT_FINAL_CACHE", cache.join("final").display().to_string()),
    ];
    let o = run_child(
        &data_root,
        &a,
        &[
            ("IT_WORKERS", "2".into()),
            caches[0].clone(),
            caches[1].clone(),
        ],
    );
    assert!(
        o.status.success(),
        "run A failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sa: Summary =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    // 4 initial + 1–2 uniform anchors per budget + up to 1 fit-ilp anchor per budget + 2
    // active + up to 2 verification labels per budget + up to 1 fill label per budget (two
    // budgets).
    assert!(
        (4 + 1 + 2..=4 + 4 + 2 + 2 + 4 + 2).contains(&sa.labels),
        "{} labels",
        sa.labels
    );
    assert_eq!(sa.labels_computed, sa.labels);
    // The fit-ilp optimum of each budget was computed and labelled as an anchor.
    let log_a = std::fs::read_to_string(a.join("run.log")).unwrap();
    assert_eq!(log_a.matches(": fit-ilp optimum").count(), 2, "{log_a}");
    assert!(log_a.contains("fit-ilp anchors: "), "{log_a}");
    // Labels and final fine-tunes ran on the two workers; every label that finished out of
    // plan order has reached labels.jsonl, so the arrived store is gone.
    assert!(log_a.contains("labels on 2 workers of"), "{log_a}");
    assert!(!a.join("labels.arrived.jsonl").exists());
    assert!(log_a.contains("final fine-tunes: "), "{log_a}");
    assert!(a.join("fit-sensitivity.json").is_file());
    // The protocol records the validation sample, and every label is a count out of 40.
    let sto = read_store(a.join("labels.jsonl")).unwrap();
    assert_eq!(sto.protocol.extra["val_images"], serde_json::json!(40));
    for r in &sto.records {
        let right = r.top1 * 40.0 / 100.0;
        assert!(
            (right - right.round()).abs() < 1e-9,
            "top-1 {} of 40 images",
            r.top1
        );
    }
    // More validation images than the split has: one clear error before any label.
    let o = run_child(
        &data_root,
        &td.path().join("val-too-many"),
        &[
            (
                "IT_BASELINE",
                a.join("baseline.safetensors").display().to_string(),
            ),
            ("IT_VAL_IMAGES", "1000000".into()),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("1000000 validation images")
            && err.contains("the validation split has"),
        "{err}"
    );
    // Issue 15: the summary's figures per budget and for the run.
    let sj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    for b in sj["budgets"].as_array().unwrap() {
        let used = b["budget_used"].as_f64().unwrap();
        assert!(used > 0.0 && used <= 1.0, "{b}");
        assert!(b.get("margin_points").is_some(), "{b}");
        // A policy using less than 90% of its budget says why.
        assert_eq!(used < 0.9, b["budget_note"].is_string(), "{b}");
    }
    assert_eq!(sj["labels"].as_u64(), Some(sa.labels as u64));
    assert!(sj["run_seconds"].as_f64().unwrap() > 0.0, "{sj}");
    for k in ["predictor_tau", "label_fidelity_tau"] {
        assert!(sj.get(k).is_some(), "summary.json lacks {k}");
    }
    // The chosen policy is a labelled one within the budget, and the report says where from.
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("report.json")).unwrap()).unwrap();
    let chosen = &rep["budgets"][0];
    assert!(chosen["label_val_top1"].is_number(), "{chosen}");
    assert!(chosen["selected_from"].is_string(), "{chosen}");
    assert!(chosen["bops"].as_u64().unwrap() <= chosen["max_bops"].as_u64().unwrap());
    // The final pick (docs/method.md §7): no uniform anchor within a BOPs budget validated
    // higher after the final fine-tune than the policy the budget returns (a size budget's
    // report shows the user's limit, not the searched one, so it is left out).
    for b in rep["budgets"].as_array().unwrap() {
        let own = b["final_val_top1"].as_f64().unwrap();
        if let Some(m) = b["max_bops"]
            .as_u64()
            .filter(|_| b["max_size_bits"].is_null())
        {
            for u in rep["uniform"].as_array().unwrap() {
                if u["bops"].as_u64().unwrap() <= m {
                    assert!(
                        u["final_val_top1"].as_f64().unwrap() <= own,
                        "{u} beats {b}"
                    );
                }
            }
        }
        // The policy file holds the policy the budget returns (rewritten by a final pick).
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(a.join(b["policy_file"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        assert_eq!(file["units"], b["policy"]["units"], "{b}");
    }
    let md = std::fs::read_to_string(a.join("report.md")).unwrap();
    assert!(
        md.contains("Chosen from:"),
        "report.md lacks the choice's origin"
    );
    // Predictions stay in [0, 100]; the report marks exactly the flagged ones (issue 13, case 4).
    let pct = |v: &serde_json::Value| (0.0..=100.0).contains(&v.as_f64().unwrap());
    assert!(pct(&chosen["predicted_top1"]), "{chosen}");
    let front = rep["front"].as_array().unwrap();
    assert!(!front.is_empty());
    for p in front {
        assert!(
            pct(&p["predicted_top1"]) && p["extrapolates"].is_boolean(),
            "{p}"
        );
    }
    let flagged = chosen["extrapolation"].is_string();
    assert!(flagged || chosen["extrapolation"].is_null(), "{chosen}");
    assert_eq!(md.contains("† The prediction extrapolates"), flagged);
    let front_flagged = front.iter().filter(|p| p["extrapolates"] == true).count();
    assert_eq!(
        md.contains(&format!(
            "{front_flagged} of the {} points of the predicted front extrapolate",
            front.len()
        )),
        front_flagged > 0,
        "{md}"
    );
    for f in ["report.md", "report.html", "labels.jsonl"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    let pa = policies(&a);
    assert_eq!(pa.len(), 2, "one policy per budget");
    for (name, _) in &pa {
        let model = name
            .replace("policy-", "model-")
            .replace(".json", ".safetensors");
        assert!(a.join(&model).is_file(), "{model} missing");
    }
    // The size budget holds for the file the user gets (issue 13, case 3), and the report's
    // size is the engine's storage.
    let sized = &rep["budgets"][1];
    assert_eq!(sized["max_size_bits"].as_u64(), Some(16_000 * 8), "{sized}");
    let file = a.join(sized["model_file"].as_str().unwrap());
    let bytes = std::fs::metadata(&file).unwrap().len();
    assert!(bytes <= 16_000, "{} is {bytes} bytes", file.display());
    let engine = seernet::int::format::IntModel::load(&file).unwrap();
    assert_eq!(
        8 * engine.storage_bytes() as u64,
        sized["size_bits"].as_u64().unwrap()
    );

    // Run B on A's baseline, one label at a time, killed with SIGKILL once it has stored 2
    // labels, then resumed.
    let b = td.path().join("b");
    let base = [
        (
            "IT_BASELINE",
            a.join("baseline.safetensors").display().to_string(),
        ),
        ("IT_WORKERS", "1".into()),
    ];
    let store = b.join("labels.jsonl");
    kill_when(
        child(&data_root, &b, &base).spawn().unwrap(),
        "run B",
        || file_hashes(&store).len() >= 2,
    );
    let before = read_store(&store).unwrap().records;
    assert!(
        before.len() >= 2 && before.len() < sa.labels,
        "{} labels before the kill",
        before.len()
    );
    let sb = run_ok(&data_root, &b, &base, "resumed run B");
    assert_eq!(sb.labels, sa.labels);
    // A budget that returns a uniform anchor (its choice, or the winner of its final pick)
    // exports the model that anchor's final fine-tune made for the report: run B (one worker,
    // no final cache, its final stage in one invocation) never fine-tunes it a second time.
    // Run A is not checked: its shared final cache holds every float model.
    let log_b = std::fs::read_to_string(b.join("run.log")).unwrap();
    let rep_b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("report.json")).unwrap()).unwrap();
    assert!(
        rep_b["budgets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["selected_from"]
                .as_str()
                .unwrap()
                .contains("uniform anchor")),
        "no budget of run B returns a uniform anchor, so the check below tests nothing: {rep_b}"
    );
    assert!(!log_b.contains("fine-tuned again"), "run B: {log_b}");
    assert_eq!(
        sb.labels_computed,
        sa.labels - before.len(),
        "labels recomputed after resume"
    );
    let after = read_store(&store).unwrap().records;
    assert_eq!(after.len(), sa.labels);
    for r in &before {
        let now = after.iter().find(|x| x.hash == r.hash).expect("label lost");
        assert_eq!(now, r, "label {} changed after resume", r.hash);
    }
    // Same seed (and an interrupted run, and one worker instead of two) -> identical labels,
    // policies and final results.
    let labels_a = read_store(a.join("labels.jsonl")).unwrap().records;
    for r in &after {
        let ra = labels_a
            .iter()
            .find(|x| x.hash == r.hash)
            .expect("same plan");
        assert_eq!(ra.top1, r.top1, "label {} differs with workers", r.hash);
    }
    assert_eq!(
        policies(&b),
        pa,
        "policy-*.json differ between runs A and B"
    );
    for key in ["budgets", "uniform"] {
        let finals = |r: &serde_json::Value| -> Vec<(f64, f64)> {
            r[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["measured_top1"].as_f64().unwrap(),
                        x["final_val_top1"].as_f64().unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            finals(&rep),
            finals(&rep_b),
            "final {key} differ with workers"
        );
    }

    // The label store keeps plan order whatever the workers: B (one worker) wrote A's order.
    let hashes = |recs: &[seernet::store::LabelRecord]| -> Vec<String> {
        recs.iter().map(|r| r.hash.clone()).collect()
    };
    assert_eq!(
        hashes(&after),
        hashes(&labels_a),
        "store order differs with workers"
    );

    // Run D: run B's settings on two workers, killed with SIGKILL once a label finished out of
    // plan order (the workers start the largest networks first, so the smallest, first in plan
    // order, finishes last) sits in `labels.arrived.jsonl` only, then resumed: no finished label
    // is computed again, and the store ends in plan order.
    let d = td.path().join("d");
    let base_d = [base[0].clone(), ("IT_WORKERS", "2".into())];
    let arrived = d.join("labels.arrived.jsonl");
    kill_when(
        child(&data_root, &d, &base_d).spawn().unwrap(),
        "run D",
        || {
            let main = file_hashes(&d.join("labels.jsonl"));
            file_hashes(&arrived).iter().any(|h| !main.contains(h))
        },
    );
    let stored = hashes(&read_store(d.join("labels.jsonl")).unwrap().records);
    // (Gone only if the batch ended between the check and the kill: then nothing waits in it.)
    let in_arrived = match arrived.exists() {
        true => hashes(&read_store(&arrived).unwrap().records),
        false => Vec::new(),
    };
    let only_arrived = in_arrived
        .into_iter()
        .filter(|h| !stored.contains(h))
        .count();
    let kept_len = stored.len() + only_arrived;
    assert!(kept_len >= 1 && kept_len < sa.labels, "{kept_len} kept");
    let sd = run_ok(&data_root, &d, &base_d, "resumed run D");
    assert_eq!(
        sd.labels_computed,
        sa.labels - kept_len,
        "labels finished before the kill were computed again"
    );
    let log_d = std::fs::read_to_string(d.join("run.log")).unwrap();
    assert_eq!(
        log_d.contains(&format!("{only_arrived} labels taken from")),
        only_arrived > 0,
        "{log_d}"
    );
    assert!(!arrived.exists(), "the arrived store outlived its batch");
    let labels_d = read_store(d.join("labels.jsonl")).unwrap().records;
    assert_eq!(hashes(&labels_d), hashes(&labels_a), "run D's store order");
    for r in &labels_d {
        let ra = labels_a.iter().find(|x| x.hash == r.hash).unwrap();
        assert_eq!(ra.top1, r.top1, "label {} differs after the resume", r.hash);
    }
    assert_eq!(
        policies(&d),
        pa,
        "policy-*.json differ between runs A and D"
    );

    // Run C: run A's settings on A's baseline with A's label and final caches, one worker:
    // every label and every final fine-tune is taken from the caches (none computed), the
    // exports are made from the cached float models, and everything equals run A's.
    let c = td.path().join("c");
    let o = run_child(
        &data_root,
        &c,
        &[
            base[0].clone(),
            base[1].clone(),
            caches[0].clone(),
            caches[1].clone(),
        ],
    );
    assert!(
        o.status.success(),
        "run C failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sc: Summary =
        serde_json::from_str(&std::fs::read_to_string(c.join("summary.json")).unwrap()).unwrap();
    assert_eq!((sc.labels, sc.labels_computed), (sa.labels, 0));
    let log_c = std::fs::read_to_string(c.join("run.log")).unwrap();
    assert!(
        log_c.contains("labels taken from the label cache"),
        "{log_c}"
    );
    assert!(log_c.contains("exported from its stored model"), "{log_c}");
    assert!(
        !log_c.contains("final fine-tunes: "),
        "run C fine-tuned: {log_c}"
    );
    // Every final result of run C is the shared cache's, copied (a fine-tune made again would
    // record its own wall time).
    let proto_dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("final"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(proto_dirs.len(), 1, "one protocol: {proto_dirs:?}");
    let mut finals_c = 0;
    for e in std::fs::read_dir(c.join("final")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let shared = proto_dirs[0].join(p.file_name().unwrap());
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                std::fs::read_to_string(&shared).unwrap(),
                "{} was fine-tuned again",
                p.display()
            );
            finals_c += 1;
        }
    }
    assert!(finals_c >= 3, "{finals_c} final results");
    assert_eq!(policies(&c), pa, "policy-*.json differ with the caches");
    for (name, _) in &pa {
        let model = name
            .replace("policy-", "model-")
            .replace(".json", ".safetensors");
        assert!(
            std::fs::read(a.join(&model)).unwrap() == std::fs::read(c.join(&model)).unwrap(),
            "{model} differs when exported from the cached float model"
        );
    }
    let labels_c = read_store(c.join("labels.jsonl")).unwrap().records;
    assert_eq!(labels_c.len(), labels_a.len());
    for r in &labels_c {
        let ra = labels_a
            .iter()
            .find(|x| x.hash == r.hash)
            .expect("same plan");
        assert_eq!(ra.top1, r.top1, "label {} differs from the cache", r.hash);
    }
    // The label cache cannot be the run's own store.
    let own = td.path().join("own");
    let o = run_child(
        &data_root,
        &own,
        &[
            base[0].clone(),
            (
                "IT_LABEL_CACHE",
                own.join("labels.jsonl").display().to_string(),
            ),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("is this run's own label store"),
        "{err}"
    );

    // The other acquisitions run the same loop.
    for acq in ["counterfactual", "random"] {
        let dir = td.path().join(acq);
        let o = run_child(&data_root, &dir, &[base[0].clone(), ("IT_ACQ", acq.into())]);
        assert!(
            o.status.success(),
            "{acq}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let s: Summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert!(s.labels >= 7, "{acq}: {} labels", s.labels);
        assert_eq!(policies(&dir).len(), 2, "{acq}");
    }

    // Accuracy first (issue 17, case 10): the cheapest labelled policy whose validation top-1
    // is within the allowed drop of the baseline's, and the report says whether the test drop
    // held. On this tiny synthetic run the labels are coarse, so P is large.
    let dir = td.path().join("max-drop");
    let o = run_child(
        &data_root,
        &dir,
        &[base[0].clone(), ("IT_MAX_DROP", "30".into())],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pol = policies(&dir);
    assert_eq!(pol.len(), 1, "{pol:?}");
    assert_eq!(pol[0].0, "policy-max-drop-30.json");
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let out = &rep["budgets"][0];
    let t = &out["accuracy_target"];
    let threshold = t["label_threshold"].as_f64().unwrap();
    let val = rep["baseline"]["top1_val"].as_f64().unwrap();
    // The labels' reference is the protocol's own (the w8a8 label), at most the baseline's.
    assert!(threshold <= val - 30.0 + 1e-9, "{t}");
    let tried = t["tried"].as_array().unwrap();
    assert!((1..=3).contains(&tried.len()), "{t}");
    let first_bops = tried[0]["bops"].as_u64().unwrap();
    let first_label = tried[0]["label_val_top1"].as_f64().unwrap();
    let recs = read_store(dir.join("labels.jsonl")).unwrap().records;
    if t["reached_on_labels"] == true {
        assert!(first_label >= threshold);
        // No cheaper labelled policy reached the threshold.
        assert!(
            !recs
                .iter()
                .any(|r| r.bops < first_bops && r.top1 >= threshold),
            "a cheaper label reached the threshold"
        );
    } else {
        assert!(recs.iter().all(|r| r.top1 <= first_label));
    }
    // Tries walk up in BOPs; the accepted one (if any) is the last, within P on validation,
    // and is the model the run returns.
    for w in tried.windows(2) {
        assert!(w[0]["bops"].as_u64() < w[1]["bops"].as_u64(), "{t}");
        assert_eq!(w[0]["accepted"], false);
    }
    let last = tried.last().unwrap();
    if last["accepted"] == true {
        assert!(val - last["final_val_top1"].as_f64().unwrap() <= 30.0);
        assert_eq!(out["bops"].as_u64(), last["bops"].as_u64());
        assert_eq!(out["measured_top1"], last["test_top1"]);
    }
    // Every unpruned uniform bit-width is measured for comparison.
    let uniform: Vec<&str> = rep["uniform"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert!(
        uniform.contains(&"w8a8") && uniform.contains(&"w2a2"),
        "{uniform:?}"
    );
    let measured = out["measured_top1"].as_f64().unwrap();
    let reference = t["reference_test_top1"].as_f64().unwrap();
    let held = reference - measured <= 30.0;
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("Accuracy target (max drop 30 points)"), "{md}");
    assert!(
        md.contains(if held {
            "the target held"
        } else {
            "the target did NOT hold"
        }),
        "{md}"
    );
    assert!(md.contains("test top-1 ≥ "), "{md}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["budgets"][0]["accuracy_target"]["held"].as_bool(),
        Some(held)
    );

    // Bad input: infeasible budget, missing dataset, corrupt store.
    let o = run_child(
        &data_root,
        &td.path().join("c"),
        &[base[0].clone(), ("IT_MAX_BOPS", "1K".into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("budget bops-1K cannot be met: 1000 BOPs is below the cheapest policy")
            && !err.contains("budget budget"),
        "{err}"
    );
    let o = run_child(
        &data_root,
        &td.path().join("d"),
        &[base[0].clone(), ("IT_DATASET", "cifar10".into())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.to_lowercase().contains("cifar"),
        "{err}"
    );
    let text = std::fs::read_to_string(&store).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"hash\": garbage";
    std::fs::write(&store, lines.join("\n") + "\n").unwrap();
    let o = run_child(&data_root, &b, &base);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 3"), "{err}");
}

/// `--method fit-ilp` and `--method random` on the same tiny LeNet-5 run (issue 16): each writes
/// one exported policy per budget within its limit, says which method ran in `summary.json`
/// and the report; fit-ilp labels only its optima (one per budget at most), random exactly the
/// label budget of the default method.
#[test]
fn methods_fit_ilp_and_random() {
    let td = tempfile::tempdir().unwrap();
    let data_root = td.path().join("data");
    synthetic_data(&data_root, 800);
    let fit = td.path().join("fit");
    let o = run_child(&data_root, &fit, &[("IT_METHOD", "fit-ilp".into())]);
    assert!(
        o.status.success(),
        "fit-ilp failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let baseline = fit.join("baseline.safetensors");
    let rnd = td.path().join("random");
    let o = run_child(
        &data_root,
        &rnd,
        &[
            ("IT_METHOD", "random".into()),
            ("IT_BASELINE", baseline.display().to_string()),
        ],
    );
    assert!(
        o.status.success(),
        "random failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (dir, method) in [(&fit, "fit-ilp"), (&rnd, "random")] {
        let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
        let js: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(js["method"], method, "{text}");
        let budgets = js["budgets"].as_array().unwrap();
        assert_eq!(budgets.len(), 2);
        for b in budgets {
            assert!(b["test_top1"].is_number(), "{b}");
            if let Some(m) = b["max_bops"].as_u64() {
                assert!(b["bops"].as_u64().unwrap() <= m, "{b}");
            }
            if let Some(m) = b["max_size_bits"].as_u64() {
                assert!(b["size_bits"].as_u64().unwrap() <= m, "{b}");
            }
            assert!(dir.join(b["model_file"].as_str().unwrap()).is_file());
        }
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains(&format!("(method {method})")), "{md}");
        let log = std::fs::read_to_string(dir.join("run.log")).unwrap();
        let labels = js["labels"].as_u64().unwrap();
        if method == "fit-ilp" {
            assert!((1..=2).contains(&labels), "{labels} labels");
            assert_eq!(log.matches(": fit-ilp optimum").count(), 2, "{log}");
            assert!(dir.join("fit-sensitivity.json").is_file());
        } else {
            // "(label budget N)" in the log: random labels all of it.
            let n: u64 = log
                .split("(label budget ")
                .nth(1)
                .and_then(|t| t.split(')').next())
                .and_then(|t| t.parse().ok())
                .expect("the label budget is logged");
            assert_eq!(labels, n, "{log}");
        }
    }
    // The random method's labels as a fixed held-out set of a predictor method's run: scored
    // on the ones it did not plan.
    let sn = td.path().join("seernet");
    let held = rnd.join("labels.jsonl");
    let o = run_child(
        &data_root,
        &sn,
        &[
            ("IT_BASELINE", baseline.display().to_string()),
            ("IT_HELDOUT", held.display().to_string()),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: Summary =
        serde_json::from_str(&std::fs::read_to_string(sn.join("summary.json")).unwrap()).unwrap();
    let held_recs = read_store(&held).unwrap().records;
    let mut values: Vec<f64> = held_recs.iter().map(|r| r.top1).collect();
    values.dedup();
    assert!(
        values.len() > 1,
        "the random labels can be ranked: {values:?}"
    );
    let q = s.predictor_heldout.expect("scored on the held-out labels");
    let planned: std::collections::HashSet<String> = read_store(sn.join("labels.jsonl"))
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.hash)
        .collect();
    let unseen = held_recs
        .iter()
        .filter(|r| !planned.contains(&r.hash))
        .count();
    assert_eq!(q.n_test, unseen);
    assert_eq!(q.n_train, s.labels);
    assert!(
        (-1.0..=1.0).contains(&q.kendall_tau) && q.rmse.is_finite(),
        "{q:?}"
    );
    // Not for a method without a predictor.
    let o = run_child(
        &data_root,
        &td.path().join("uniform"),
        &[
            ("IT_METHOD", "uniform".into()),
            ("IT_BASELINE", baseline.display().to_string()),
            ("IT_HELDOUT", held.display().to_string()),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fits none"), "{err}");
}
