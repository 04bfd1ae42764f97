//! Predictor on the real peer data: a small-config fit ranks held-out policies well, save/load
//! round-trips, and the CSV reader rejects the real file with a missing target column.

use seer_predictor::{Config, CsvTable, Predictor, Samples, fit, kendall_tau_b, rmse};

const PEER: &str = "seernet-resnet20-cifar10/samples.csv";

#[test]
fn small_ensemble_ranks_held_out_peer_policies() {
    let path = seernet_tests::peer_data(PEER);
    let all = Samples::from_csv(&path, "top1").unwrap();
    assert_eq!((all.len(), all.n_features()), (400, 36));
    // A fixed interleaved split: every 5th sample held out.
    let test_idx: Vec<usize> = (0..all.len()).filter(|i| i % 5 == 0).collect();
    let train_idx: Vec<usize> = (0..all.len()).filter(|i| i % 5 != 0).collect();
    let (train, test) = (all.subset(&train_idx), all.subset(&test_idx));
    let cfg = Config {
        members: 3,
        hidden: vec![16, 16],
        max_epochs: 200,
        ..Config::default()
    };
    let p = fit(&train, &cfg).unwrap();
    let pred = p.predict(test.x()).unwrap();
    let tau = kendall_tau_b(&pred.mean, test.y()).unwrap();
    let err = rmse(&pred.mean, test.y()).unwrap();
    // The full defaults reach τ ≈ 0.77 (docs/benchmarks.md); this small config must still rank well.
    assert!(tau > 0.65, "Kendall tau {tau}");
    assert!(err < 0.6, "RMSE {err}");

    let dir = std::env::temp_dir().join(format!("seer-predictor-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p.safetensors");
    p.save(&file).unwrap();
    let q = Predictor::load(&file).unwrap();
    assert_eq!(q.predict(test.x()).unwrap(), pred);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_target_on_peer_file_names_the_columns() {
    let path = seernet_tests::peer_data(PEER);
    let e = CsvTable::read(&path)
        .unwrap()
        .into_samples("top5")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("samples.csv")
            && e.contains("no column named \"top5\"")
            && e.contains("bits_17"),
        "{e}"
    );
}
