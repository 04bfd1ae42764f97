//! seer-policy through its public API: reference complexity totals, the documented example
//! network file, and the peer-data ResNet-20 policies mapped onto the masked search space.

use seer_policy::{
    NetworkSpec, Policy, ResidualPruning, SearchSpace, SpaceConfig, UnitPolicy, builtin,
};

#[test]
fn reference_totals_method_md_section_2() {
    for (arch, input, macs) in [
        ("resnet18", None, 1_814_073_344u64),
        ("resnet50", None, 4_089_184_256),
        ("mobilenetv2", None, 300_774_272),
        ("resnet20", Some("32x32x3"), 40_551_040),
    ] {
        let spec = builtin(arch, input.map(|s| s.parse().unwrap()), None).unwrap();
        for mode in [ResidualPruning::Tied, ResidualPruning::Masked] {
            let space = SearchSpace::new(
                spec.clone(),
                SpaceConfig {
                    residual_pruning: mode,
                    ..Default::default()
                },
            )
            .unwrap();
            let c = space.cost(&space.uniform(8, 8, 0.0).unwrap()).unwrap();
            assert_eq!(c.total_macs, macs, "{arch} {mode}");
            assert_eq!(c.total_bops, 64 * macs, "{arch} {mode}");
            // The relaxation agrees at the unpruned w8a8 point.
            let r = space
                .relaxed_cost(&space.encode(&space.uniform(8, 8, 0.0).unwrap()).unwrap())
                .unwrap();
            assert_eq!(r.macs, macs as f64);
        }
    }
}

#[test]
fn documented_example_network_loads_and_matches_the_worked_example() {
    let path = seernet_tests::workspace_root().join("docs/examples/tiny-net.json");
    let spec = NetworkSpec::from_json_file(&path).unwrap();
    assert_eq!(spec.name, "tiny-net");
    let space = SearchSpace::new(spec, SpaceConfig::default()).unwrap();
    let units: Vec<_> = space.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(units, ["expand+1", "project+1", "down"]);
    let p = Policy {
        arch: "tiny-net".into(),
        input: "9x9x3".parse().unwrap(),
        units: vec![
            UnitPolicy {
                prune: 0.5,
                wbits: 4,
                abits: 6,
            },
            UnitPolicy {
                prune: 0.25,
                wbits: 3,
                abits: 5,
            },
            UnitPolicy {
                prune: 0.25,
                wbits: 2,
                abits: 8,
            },
        ],
    };
    let c = space.cost(&p).unwrap();
    assert_eq!(
        (c.total_macs, c.total_bops, c.total_size_bits),
        (15_530, 531_380, 6_960)
    );
    let full = space.cost(&space.uniform(8, 8, 0.0).unwrap()).unwrap();
    assert_eq!(full.total_macs, 22_068);
}

#[test]
fn peer_data_policies_fit_the_masked_resnet20_space() {
    let csv = seernet_tests::peer_data("seernet-resnet20-cifar10/samples.csv");
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let space = SearchSpace::new(
        builtin("resnet20", Some("32x32x3".parse().unwrap()), None).unwrap(),
        SpaceConfig::peer_resnet20(),
    )
    .unwrap();
    assert_eq!(space.units().len(), 18);
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (mut lo, mut hi, mut n) = (u64::MAX, 0u64, 0);
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let units = (0..18)
            .map(|i| {
                let bits: u32 = cells[col(&format!("bits_{i}"))].parse().unwrap();
                UnitPolicy {
                    prune: cells[col(&format!("prune_{i}"))].parse().unwrap(),
                    wbits: bits,
                    abits: bits,
                }
            })
            .collect();
        let p = Policy {
            arch: "resnet20".into(),
            input: "32x32x3".parse().unwrap(),
            units,
        };
        let idx = space.to_indices(&p).unwrap();
        assert_eq!(
            space.decode(&space.encode_indices(&idx).unwrap()).unwrap(),
            p
        );
        let t = space.totals_indices(&idx).unwrap();
        let min = space.totals_indices(&space.cheapest()).unwrap().bops;
        let max = space.totals_indices(&space.most_expensive()).unwrap().bops;
        assert!(min <= t.bops && t.bops <= max);
        (lo, hi, n) = (lo.min(t.bops), hi.max(t.bops), n + 1);
    }
    assert_eq!(n, 400);
    assert!(lo < hi);
}
