//! Crate tests: hand-computed costs of a small net, gradients against finite differences,
//! properties (monotonicity, encode/decode round trips), policy JSON, and the ResNet-20 table.

use proptest::prelude::*;

use crate::*;

const TINY: &str = include_str!("../../../docs/examples/tiny-net.json");

fn tiny() -> NetworkSpec {
    NetworkSpec::from_json_str(TINY, "tiny-net.json").unwrap()
}

fn space(spec: NetworkSpec, mode: ResidualPruning) -> SearchSpace {
    SearchSpace::new(
        spec,
        SpaceConfig {
            residual_pruning: mode,
            ..SpaceConfig::default()
        },
    )
    .unwrap()
}

fn up(prune: f64, wbits: u32, abits: u32) -> UnitPolicy {
    UnitPolicy {
        prune,
        wbits,
        abits,
    }
}

fn policy(s: &SearchSpace, units: Vec<UnitPolicy>) -> Policy {
    Policy {
        arch: s.spec().name.clone(),
        input: s.spec().input,
        units,
    }
}

/// (name, c_in_kept, c_out_kept, macs, bops, size_bits) of every weighted layer.
fn rows(c: &Costs) -> Vec<(&str, usize, usize, u64, u64, u64)> {
    c.layers
        .iter()
        .map(|l| {
            (
                l.name.as_str(),
                l.c_in_kept,
                l.c_out_kept,
                l.macs,
                l.bops,
                l.size_bits,
            )
        })
        .collect()
}

#[test]
fn tiny_net_shapes_units_and_ties() {
    let spec = tiny();
    let shape = |n: &str| spec.layers[spec.layer_index(n).unwrap()].out_shape;
    assert_eq!(shape("stem"), [8, 5, 5]); // (9 + 2 − 3)/2 + 1 = 5 on an odd input
    assert_eq!(shape("dw"), [12, 5, 5]);
    assert_eq!(shape("down"), [6, 2, 2]); // (5 − 3)/2 + 1 = 2
    assert_eq!(shape("flatten"), [24, 1, 1]);
    let idx = |n: &str| spec.layer_index(n).unwrap();
    assert_eq!(spec.tie_groups(), vec![vec![idx("project"), idx("side")]]);

    let tied = space(spec.clone(), ResidualPruning::Tied);
    let names: Vec<&str> = tied.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["expand+1", "project+1", "down"]);
    assert_eq!(tied.units()[0].layers, [idx("expand"), idx("dw")]); // depthwise follows its producer
    assert_eq!(tied.fixed_layers(), [idx("stem"), idx("fc")]);
    assert_eq!(tied.dim(), 9);

    let masked = space(spec, ResidualPruning::Masked);
    let names: Vec<&str> = masked.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["expand+1", "project", "side", "down"]);
    assert!(masked.tie_groups().is_empty());
}

#[test]
fn tiny_net_hand_computed_tied() {
    let s = space(tiny(), ResidualPruning::Tied);
    let p = policy(&s, vec![up(0.5, 4, 6), up(0.25, 3, 5), up(0.25, 2, 8)]);
    let c = s.cost(&p).unwrap();
    // Worked by hand (docs/network-spec.md, "Worked example").
    assert_eq!(
        rows(&c),
        vec![
            // stem: 8·3·9 = 216 weights × 25 positions, 8/8 bits; 8 rows of 27 bytes + 32·8.
            ("stem", 3, 8, 5400, 345_600, 1984),
            // expand 1×1: keeps 6 of 12; 6·8 = 48 weights; 48·4 + 32·6.
            ("expand", 8, 6, 1200, 28_800, 384),
            // depthwise follows expand: 6 channels · 9 = 54 weights (not 6·6·9/12); a row of
            // 9 4-bit codes takes 5 bytes: 6·40 + 32·6.
            ("dw", 6, 6, 1350, 32_400, 432),
            // project: 6 → 6 of 8 (tied with side, prune 0.25); rows of 6·3 bits in 3 bytes.
            ("project", 6, 6, 900, 13_500, 6 * 24 + 32 * 6),
            // grouped conv g=2: 6 · 8 · 9 / 2 = 216 weights; rows of 36·3 = 108 bits in 14 bytes.
            ("side", 8, 6, 5400, 81_000, 6 * 112 + 32 * 6),
            // down: reads the tied stream (6 of 8), keeps round(4.5) = 5 of 6; 2×2 output.
            ("down", 6, 5, 1080, 17_280, 5 * 112 + 32 * 5),
            // fc: 5 kept channels × 2·2 positions = 20 of 24 inputs; bias 32 bits × 10.
            ("fc", 20, 10, 200, 12_800, 2240),
        ]
    );
    assert_eq!(
        (c.total_macs, c.total_bops, c.total_size_bits),
        (15_530, 531_380, 6960)
    );
    let t = s.totals_indices(&s.to_indices(&p).unwrap()).unwrap();
    assert_eq!((t.macs, t.bops, t.size_bits), (15_530, 531_380, 6960));
}

#[test]
fn tiny_net_one_pruned_channel_removes_hw_linear_inputs() {
    let s = SearchSpace::new(
        tiny(),
        SpaceConfig {
            prune_ratios: vec![0.0, 1.0 / 6.0],
            ..Default::default()
        },
    )
    .unwrap();
    let full = s.cost(&s.uniform(8, 8, 0.0).unwrap()).unwrap();
    let mut p = s.uniform(8, 8, 0.0).unwrap();
    p.units[2].prune = 1.0 / 6.0; // "down": 6 → 5 channels
    let c = s.cost(&p).unwrap();
    let fc = |c: &Costs| c.layers.last().unwrap().clone();
    assert_eq!(fc(&full).c_in_kept, 24);
    assert_eq!(fc(&c).c_in_kept, 20); // one channel = its 2·2 = 4 flattened inputs
    assert_eq!(fc(&full).macs - fc(&c).macs, 4 * 10);
}

#[test]
fn tiny_net_hand_computed_masked() {
    let s = space(tiny(), ResidualPruning::Masked);
    let p = policy(
        &s,
        vec![up(0.5, 4, 6), up(0.25, 3, 5), up(0.5, 3, 5), up(0.25, 2, 8)],
    );
    let c = s.cost(&p).unwrap();
    let r = rows(&c);
    assert_eq!(r[3], ("project", 6, 6, 900, 13_500, 336));
    // side keeps 4 of 8: 4 · 8 · 9 / 2 = 144 weights, rows of 108 bits in 14 bytes.
    assert_eq!(r[4], ("side", 8, 4, 3600, 54_000, 4 * 112 + 32 * 4));
    // down reads the full-width residual stream: keep_in = 1 (8 channels).
    assert_eq!(
        r[5],
        (
            "down",
            8,
            5,
            4 * 5 * 8 * 9,
            4 * 5 * 8 * 9 * 16,
            5 * 8 * 9 * 2 + 32 * 5
        )
    );
    assert_eq!(c.layers[5].keep_in, 1.0);
}

#[test]
fn relaxed_equals_exact_when_counts_are_integral() {
    let s = space(tiny(), ResidualPruning::Tied);
    let p = policy(&s, vec![up(0.5, 4, 6), up(0.25, 3, 5), up(0.5, 2, 8)]);
    let c = s.cost(&p).unwrap();
    let r = s.relaxed_cost(&s.encode(&p).unwrap()).unwrap();
    assert_eq!(r.macs, c.total_macs as f64);
    assert_eq!(r.bops, c.total_bops as f64);
    // The relaxed size counts 7 bits of row padding per kept output channel.
    let pad: f64 = c.layers.iter().map(|l| 7.0 * l.c_out_kept as f64).sum();
    let padding_exact: u64 = c
        .layers
        .iter()
        .map(|l| {
            let cols = (l.macs / (l.out_shape[1] * l.out_shape[2]) as u64) / l.c_out_kept as u64;
            l.c_out_kept as u64 * (8 * (cols * l.wbits as u64).div_ceil(8) - cols * l.wbits as u64)
        })
        .sum();
    assert_eq!(
        r.size_bits,
        c.total_size_bits as f64 - padding_exact as f64 + pad
    );
}

fn fd_check(s: &SearchSpace, x: &[f64]) {
    let r = s.relaxed_cost(x).unwrap();
    let h = 1e-5;
    for g in 0..s.dim() {
        let (mut a, mut b) = (x.to_vec(), x.to_vec());
        a[g] += h;
        b[g] -= h;
        let (ra, rb) = (s.relaxed_cost(&a).unwrap(), s.relaxed_cost(&b).unwrap());
        for (name, fd, an, scale) in [
            (
                "bops",
                (ra.bops - rb.bops) / (2.0 * h),
                r.grad_bops[g],
                r.bops,
            ),
            (
                "size",
                (ra.size_bits - rb.size_bits) / (2.0 * h),
                r.grad_size_bits[g],
                r.size_bits,
            ),
            (
                "macs",
                (ra.macs - rb.macs) / (2.0 * h),
                r.grad_macs[g],
                r.macs,
            ),
        ] {
            // The relaxation is a polynomial of degree ≤ 4 per coordinate: central
            // differences are exact up to h² terms and rounding.
            assert!(
                (fd - an).abs() <= 1e-6 * scale + 1e-6 * an.abs(),
                "{} gene {g} {name}: fd {fd} vs analytic {an}",
                s.spec().name
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut seed = 7u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 11) as f64) / ((1u64 << 53) as f64)
    };
    let specs = [
        tiny(),
        builtin("resnet20", None, None).unwrap(),
        builtin("mobilenetv2", None, None).unwrap(),
    ];
    for spec in specs {
        for mode in [ResidualPruning::Tied, ResidualPruning::Masked] {
            for shared_bits in [false, true] {
                let cfg = SpaceConfig {
                    residual_pruning: mode,
                    shared_bits,
                    ..Default::default()
                };
                let s = SearchSpace::new(spec.clone(), cfg).unwrap();
                let x: Vec<f64> = (0..s.dim()).map(|_| 0.05 + 0.9 * rnd()).collect();
                fd_check(&s, &x);
            }
        }
    }
}

#[test]
fn resnet20_masked_matches_the_peer_data_columns() {
    // assets/peer-data/seernet-resnet20-cifar10: 18 block convs, stage 1 block 1 conv 1 first.
    let s = SearchSpace::new(
        builtin("resnet20", Some("32x32x3".parse().unwrap()), None).unwrap(),
        SpaceConfig::peer_resnet20(),
    )
    .unwrap();
    let names: Vec<String> = s.units().iter().map(|u| u.name.clone()).collect();
    let mut want = Vec::new();
    for stage in 1..=3 {
        for blk in 0..3 {
            for conv in 1..=2 {
                want.push(format!("layer{stage}.{blk}.conv{conv}"));
            }
        }
    }
    assert_eq!(names, want);
    assert_eq!(s.dim(), 36);
    assert!(
        s.genes()
            .iter()
            .step_by(2)
            .all(|g| g.kind == GeneKind::Prune)
    );
    assert!(
        s.genes()
            .iter()
            .skip(1)
            .step_by(2)
            .all(|g| g.kind == GeneKind::Bits)
    );
}

#[test]
fn resnet20_tied_stage1_group_is_locked_by_the_stem() {
    let s = space(
        builtin("resnet20", None, None).unwrap(),
        ResidualPruning::Tied,
    );
    assert_eq!(s.units().len(), 12);
    let g = s
        .units()
        .iter()
        .find(|u| u.name == "layer1.0.conv2+2")
        .unwrap();
    assert!(!g.prunable);
    assert!(
        s.units()
            .iter()
            .find(|u| u.name == "layer2.0.conv2+2")
            .unwrap()
            .prunable
    );
    let u = s
        .units()
        .iter()
        .position(|u| u.name == "layer1.0.conv2+2")
        .unwrap();
    assert_eq!(s.genes()[s.unit_genes(u).prune].candidates, [0.0]);
    // Its bits stay searchable; the stem itself stays at 8/8.
    let mut p = s.uniform(8, 8, 0.0).unwrap();
    p.units[u].wbits = 2;
    let c = s.cost(&p).unwrap();
    assert_eq!(c.layers[0].wbits, 8);
    assert_eq!(
        c.layers
            .iter()
            .find(|l| l.name == "layer1.1.conv2")
            .unwrap()
            .wbits,
        2
    );
    p.units[u].prune = 0.25;
    let e = s.validate(&p).unwrap_err().to_string();
    assert!(
        e.contains("unit 1 (layer1.0.conv2+2)") && e.contains("cannot be pruned"),
        "{e}"
    );
}

#[test]
fn resnet20_per_layer_table_snapshot() {
    let s = space(
        builtin("resnet20", Some("32x32x3".parse().unwrap()), None).unwrap(),
        ResidualPruning::Tied,
    );
    let mut p = s.uniform(4, 4, 0.0).unwrap();
    for (i, u) in p.units.iter_mut().enumerate() {
        if s.units()[i].prunable {
            u.prune = [0.0, 0.25, 0.5, 0.75][i % 4];
        }
        u.wbits = [2, 3, 4, 5, 6, 8][i % 6];
    }
    insta::assert_snapshot!(s.cost(&p).unwrap().table());
}

#[test]
fn policy_json_round_trip_and_errors() {
    let s = space(
        builtin("resnet20", None, None).unwrap(),
        ResidualPruning::Tied,
    );
    let p = s.uniform(4, 5, 0.25).unwrap();
    let back = Policy::from_json_str(&p.to_json(), "p.json").unwrap();
    assert_eq!(back, p);
    let future = p.to_json().replace("\"version\": 1", "\"version\": 2");
    let e = Policy::from_json_str(&future, "p.json")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "p.json: seernet-policy version 2 is not supported (this build reads version 1)"
    );
    let e = Policy::from_json_str("{\"format\":\"other\",\"version\":1}", "p.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("format is 'other'"), "{e}");
    let e = Policy::from_json_str("{", "p.json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("p.json: "), "{e}");

    let mut bad = p.clone();
    bad.units[3].abits = 7;
    let e = s.validate_named(&bad, "p.json").unwrap_err().to_string();
    assert_eq!(
        e,
        "p.json: unit 3 (layer1.2.conv1): activation bit-width 7 is not a candidate [2, 3, 4, 5, 6, 8]"
    );
    bad = p.clone();
    bad.units[0].prune = 1.0;
    assert!(
        s.validate_named(&bad, "p.json")
            .unwrap_err()
            .to_string()
            .contains("pruning ratio 1 is outside [0, 1)")
    );
    bad = p.clone();
    bad.units.pop();
    assert!(
        s.validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("11 units")
    );
    bad = p.clone();
    bad.arch = "resnet56".into();
    assert!(
        s.validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("'resnet56'")
    );
    bad = p;
    bad.input = InputShape::new(28, 28, 1);
    assert!(
        s.validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("28x28x1")
    );
}

#[test]
fn network_json_errors_name_file_and_layer() {
    let e = NetworkSpec::from_json_str(&TINY.replace("\"groups\": 2", "\"groups\": 3"), "net.json")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "net.json: layer 'side': groups 3 must divide in_ch 8 and out_ch 8"
    );
    let e = NetworkSpec::from_json_str(
        &TINY.replace("\"version\": 1", "\"version\": 9"),
        "net.json",
    )
    .unwrap_err();
    assert!(matches!(e, Error::UnsupportedVersion { found: 9, .. }));
    let e = NetworkSpec::from_json_str(
        &TINY.replace("\"op\": \"flatten\"", "\"op\": \"flaten\""),
        "net.json",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("layer 'flatten': unknown op 'flaten'"),
        "{e}"
    );
    let e = NetworkSpec::from_json_str(
        &TINY.replace(
            "\"inputs\": [\"project\", \"side\"]",
            "\"inputs\": [\"project\", \"expand\"]",
        ),
        "n.json",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("layer 'add': add inputs have different shapes"),
        "{e}"
    );
    let e = NetworkSpec::from_json_str(
        &TINY.replace("\"out_features\": 10", "\"out_features\": 11"),
        "n.json",
    )
    .unwrap_err();
    assert!(e.to_string().contains("expected [10, 1, 1]"), "{e}");
    assert!(matches!(
        SearchSpace::new(
            tiny(),
            SpaceConfig {
                wbits: vec![0],
                ..Default::default()
            }
        ),
        Err(Error::InvalidConfig(_))
    ));
    let big = TINY.replace(
        "\"out_ch\": 12, \"kernel\": 1",
        "\"out_ch\": 1048577, \"kernel\": 1",
    );
    let e = NetworkSpec::from_json_str(&big, "n.json").unwrap_err();
    assert!(
        e.to_string()
            .contains("layer 'expand': size parameter 1048577 exceeds"),
        "{e}"
    );
    let huge = TINY
        .replace("9x9x3", "1048576x1048576x3")
        .replace("\"out_ch\": 12", "\"out_ch\": 100000");
    let e = NetworkSpec::from_json_str(&huge, "n.json").unwrap_err();
    assert!(e.to_string().contains("overflow 64 bits"), "{e}");
    assert!("9x9x2000000".parse::<InputShape>().is_err());
}

#[test]
fn user_json_round_trips_every_builtin() {
    for name in builtin_names() {
        let spec = builtin(name, None, None).unwrap();
        let back = NetworkSpec::from_json_str(&spec.to_json(), name).unwrap();
        assert_eq!(back, spec, "{name}");
    }
    assert_eq!(
        NetworkSpec::from_json_str(&tiny().to_json(), "t").unwrap(),
        tiny()
    );
}

#[test]
fn full_spec_serde_round_trip() {
    let spec = builtin("mobilenetv2", None, None).unwrap();
    let back: NetworkSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    back.check().unwrap();
}

/// Asymmetric conv and pool padding (`padding_end`): output sizes and MACs from `H + p + p_end`, the
/// user JSON and serde forms round trip, an end equal to the begin is the symmetric form, and
/// a spec serialised without the field (older files) reads as symmetric.
#[test]
fn asymmetric_conv_padding_counts_exactly_and_round_trips() {
    let json = r#"{"format": "seernet-network", "version": 1, "name": "asym",
        "input": "8x8x1", "num_classes": 3, "layers": [
        {"name": "c1", "op": "conv2d", "out_ch": 2, "kernel": 3, "stride": 2, "padding": 0,
         "padding_end": 1},
        {"name": "mp", "op": "max_pool", "kernel": 2, "stride": 1, "padding_end": 1},
        {"name": "c2", "op": "conv2d", "out_ch": 2, "kernel": 3, "padding": 1, "padding_end": 1},
        {"name": "gap", "op": "global_avg_pool"},
        {"name": "fc", "op": "linear", "out_features": 3}]}"#;
    let spec = NetworkSpec::from_json_str(json, "asym.json").unwrap();
    // TF "SAME" on 8 at stride 2: ⌊(8 + 0 + 1 − 3)/2⌋ + 1 = 4 (symmetric 0 would give 3).
    assert_eq!(spec.layers[0].out_shape, [2, 4, 4]);
    assert_eq!(spec.layers[0].kind.conv_pads(), Some(([0, 0], [1, 1])));
    // Max pooling 2×2 at stride 1 padded after only keeps the size: 4 + 0 + 1 − 2 + 1 = 4.
    assert_eq!(spec.layers[1].out_shape, [2, 4, 4]);
    assert_eq!(spec.layers[1].kind.pads(), Some(([0, 0], [1, 1])));
    // An end padding equal to the begin one is stored as symmetric.
    assert!(matches!(
        spec.layers[2].kind,
        LayerKind::Conv2d {
            padding_end: None,
            ..
        }
    ));
    let s = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let c = s.cost(&s.uniform(8, 8, 0.0).unwrap()).unwrap();
    // c1: 4·4·(2·1·9) = 288; c2: 4·4·(2·2·9) = 576; fc: 2·3 = 6.
    assert_eq!(c.total_macs, 288 + 576 + 6);
    assert_eq!(
        NetworkSpec::from_json_str(&spec.to_json(), "t").unwrap(),
        spec
    );
    let full = serde_json::to_string(&spec).unwrap();
    assert_eq!(full.matches("padding_end").count(), 2, "{full}");
    let back: NetworkSpec = serde_json::from_str(&full).unwrap();
    assert_eq!(back, spec);
    // Older full specs have no field: symmetric, and their serialisation is unchanged.
    let old = builtin("resnet20", None, None).unwrap();
    let text = serde_json::to_string(&old).unwrap();
    assert!(!text.contains("padding_end"));
    assert_eq!(serde_json::from_str::<NetworkSpec>(&text).unwrap(), old);
    assert_eq!(conv_out_padded(8, 3, 2, [0, 1], 1), Some(4));
    assert_eq!(conv_out_padded(2, 3, 1, [0, 0], 1), None);
}

fn arb_space() -> impl Strategy<Value = SearchSpace> {
    (0usize..3, any::<bool>(), any::<bool>()).prop_map(|(net, masked, shared_bits)| {
        let spec = match net {
            0 => tiny(),
            1 => builtin("resnet20", None, None).unwrap(),
            _ => builtin("mobilenetv2", Some(InputShape::new(64, 64, 3)), None).unwrap(),
        };
        let mode = if masked {
            ResidualPruning::Masked
        } else {
            ResidualPruning::Tied
        };
        SearchSpace::new(
            spec,
            SpaceConfig {
                residual_pruning: mode,
                shared_bits,
                ..Default::default()
            },
        )
        .unwrap()
    })
}

fn arb_indices() -> impl Strategy<Value = (SearchSpace, Vec<usize>, usize)> {
    arb_space().prop_flat_map(|s| {
        let idx: Vec<_> = s.genes().iter().map(|g| 0..g.candidates.len()).collect();
        let d = s.dim();
        (Just(s), idx, 0..d)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encode_decode_is_identity_on_candidates((s, idx, _g) in arb_indices()) {
        let p = s.from_indices(&idx).unwrap();
        let x = s.encode(&p).unwrap();
        prop_assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        prop_assert_eq!(&x, &s.encode_indices(&idx).unwrap());
        prop_assert_eq!(s.decode(&x).unwrap(), p.clone());
        prop_assert_eq!(s.to_indices(&p).unwrap(), idx.clone());
        for g in 0..s.dim() {
            prop_assert_eq!(s.gene_coords(g)[idx[g]], x[g]);
        }
        let back = Policy::from_json_str(&p.to_json(), "p").unwrap();
        prop_assert_eq!(back, p);
    }

    #[test]
    fn costs_are_monotone_in_bits_and_keep((s, idx, g) in arb_indices()) {
        let gene = &s.genes()[g];
        prop_assume!(idx[g] + 1 < gene.candidates.len());
        let mut up = idx.clone();
        up[g] += 1;
        let (a, b) = (s.totals_indices(&idx).unwrap(), s.totals_indices(&up).unwrap());
        match gene.kind {
            GeneKind::Prune => {
                // More pruning never costs more.
                prop_assert!(b.macs <= a.macs && b.bops <= a.bops && b.size_bits <= a.size_bits);
            }
            GeneKind::WBits | GeneKind::Bits => {
                // Row padding may absorb one more bit per weight, never shrink.
                prop_assert!(b.macs == a.macs && b.bops > a.bops && b.size_bits >= a.size_bits);
            }
            GeneKind::ABits => {
                prop_assert!(b.macs == a.macs && b.bops > a.bops && b.size_bits == a.size_bits);
            }
        }
        prop_assert_eq!(s.cost_indices(&idx).unwrap().total_bops, a.bops);
    }

    #[test]
    fn relaxed_equals_exact_on_resnet20_candidates((s, idx, _g) in arb_indices()) {
        // ResNet-20's channel counts (16, 32, 64) times every keep ratio are integers.
        prop_assume!(s.spec().name == "resnet20");
        let c = s.cost_indices(&idx).unwrap();
        let r = s.relaxed_cost(&s.encode_indices(&idx).unwrap()).unwrap();
        prop_assert_eq!(r.bops, c.total_bops as f64);
        let pad_bound: f64 = c.layers.iter().map(|l| 7.0 * l.c_out_kept as f64).sum();
        prop_assert!(r.size_bits >= c.total_size_bits as f64);
        prop_assert!(r.size_bits <= c.total_size_bits as f64 + pad_bound);
        prop_assert_eq!(r.macs, c.total_macs as f64);
    }
}

#[test]
fn w8a8_reference_bops_ignore_candidates_and_flags() {
    // Unpruned, every layer at w8a8: 64 · MACs (LeNet-5 416,520 MACs; ResNet-20 40,551,040).
    for (arch, want) in [("lenet5", 416_520u64 * 64), ("resnet20", 40_551_040 * 64)] {
        let spec = builtin(arch, None, None).unwrap();
        for (prune, bits, mode, shared, fix_first, fix_last, fixed_bits) in [
            (
                vec![0.0],
                vec![8],
                ResidualPruning::Tied,
                false,
                true,
                true,
                8,
            ),
            (
                vec![0.25, 0.5],
                vec![2, 4],
                ResidualPruning::Tied,
                true,
                false,
                true,
                4,
            ),
            (
                vec![0.5],
                vec![3],
                ResidualPruning::Masked,
                false,
                true,
                false,
                2,
            ),
            (
                vec![0.75],
                vec![5, 6],
                ResidualPruning::Masked,
                true,
                false,
                false,
                6,
            ),
        ] {
            let cfg = SpaceConfig {
                prune_ratios: prune,
                wbits: bits.clone(),
                abits: bits,
                residual_pruning: mode,
                shared_bits: shared,
                fix_first,
                fix_last,
                fixed_bits,
            };
            let s = SearchSpace::new(spec.clone(), cfg.clone()).unwrap();
            assert_eq!(s.w8a8_bops().unwrap(), want, "{arch} {cfg:?}");
        }
    }
}

#[test]
fn gene_kind_names_and_feature_names() {
    for k in GeneKind::ALL {
        assert_eq!(GeneKind::from_name(k.name()), Some(k));
        assert_eq!(k.to_string(), k.name());
    }
    assert_eq!(GeneKind::from_name("Prune"), None);
    assert_eq!(
        GeneKind::parse_feature("wbits_12"),
        Some((GeneKind::WBits, 12))
    );
    assert_eq!(GeneKind::parse_feature("bits_x"), None);
    assert_eq!(GeneKind::parse_feature("width_3"), None);
    let spec = builtin("lenet5", None, None).unwrap();
    let s = space(spec.clone(), ResidualPruning::Tied);
    let names = s.feature_names();
    assert_eq!(names.len(), s.dim());
    assert_eq!(&names[..3], ["prune_0", "wbits_0", "abits_0"]);
    for (g, n) in s.genes().iter().zip(&names) {
        assert_eq!(GeneKind::parse_feature(n), Some((g.kind, g.unit)));
    }
    let shared = SearchSpace::new(
        spec,
        SpaceConfig {
            shared_bits: true,
            ..SpaceConfig::default()
        },
    )
    .unwrap();
    assert_eq!(
        &shared.feature_names()[..4],
        ["prune_0", "bits_0", "prune_1", "bits_1"]
    );
}

/// Issue 13, case 6: the space accepted 1- to 32-bit candidates (`complexity --wbits 1,2,8
/// --uniform w1a1` priced them) while the quantizers and the integer engine implement only
/// 2..=8: one range, checked where the space is built, with a clear error.
#[test]
fn bit_widths_outside_what_the_kernels_implement_are_refused() {
    let with = |wbits: Vec<u32>, abits: Vec<u32>, fixed_bits: u32| {
        SearchSpace::new(
            tiny(),
            SpaceConfig {
                wbits,
                abits,
                fixed_bits,
                ..Default::default()
            },
        )
    };
    for (w, a, f, bad) in [
        (vec![1, 2, 8], vec![8], 8, 1),
        (vec![8], vec![2, 16], 8, 16),
        (vec![8], vec![8], 32, 32),
    ] {
        let e = with(w, a, f).unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("bit-width {bad} is outside 2..=8")),
            "{e}"
        );
    }
    assert!(with(vec![2, 8], vec![2, 8], 8).is_ok());
    assert_eq!((MIN_BITS, MAX_BITS), (2, 8));
}

/// Issue 13, case 1: with the first layer searchable, the stem's input bit-width changed its
/// BOPs (884,736 / 442,368 / 221,184 at 8/4/2 bits; ResNet-20 at 8×8×3, 4-bit weights) but the
/// models never quantize the image, so the saving did not exist. The image is priced at 8 bits;
/// a unit that only reads it has no activation choice.
#[test]
fn the_image_is_priced_at_eight_bits_whatever_the_gene_says() {
    let first_searchable = |spec: NetworkSpec| {
        SearchSpace::new(
            spec,
            SpaceConfig {
                fix_first: false,
                ..Default::default()
            },
        )
        .unwrap()
    };
    // ResNet-20: the stem shares its unit with the stage-1 stream, so the gene stays.
    let s = first_searchable(builtin("resnet20", Some("8x8x3".parse().unwrap()), None).unwrap());
    let stem_unit = s.unit_of_layer(0).unwrap();
    let g = s.unit_genes(stem_unit);
    assert!(s.genes()[g.abits].candidates.len() > 1);
    let mut stem_bops = Vec::new();
    for ab in [8, 4, 2] {
        let mut p = s.uniform(8, 8, 0.0).unwrap();
        p.units[stem_unit].wbits = 4;
        p.units[stem_unit].abits = ab;
        let c = s.cost(&p).unwrap();
        assert_eq!(c.layers[0].abits, 8);
        stem_bops.push(c.layers[0].bops);
        // Other layers of the unit still follow the gene.
        assert!(
            c.layers
                .iter()
                .any(|l| s.unit_of_layer(l.layer) == Some(stem_unit)
                    && l.layer != 0
                    && l.abits == ab)
        );
    }
    assert_eq!(
        stem_bops,
        vec![884_736; 3],
        "was 884,736 / 442,368 / 221,184"
    );

    // LeNet-5: conv1 is a unit of its own; its activation gene holds only 8.
    let s = first_searchable(builtin("lenet5", None, None).unwrap());
    let u = s.unit_of_layer(0).unwrap();
    assert!(s.reads_only_image(u));
    assert_eq!(s.genes()[s.unit_genes(u).abits].candidates, vec![8.0]);
    let w2a2 = s.uniform(2, 2, 0.0).unwrap();
    assert_eq!((w2a2.units[u].wbits, w2a2.units[u].abits), (2, 8));
    assert!(w2a2.units.iter().skip(1).all(|p| p.abits == 2));
    // The relaxed cost gives that gene no gradient.
    let r = s.relaxed_cost(&s.encode(&w2a2).unwrap()).unwrap();
    assert_eq!(r.grad_bops[s.unit_genes(u).abits], 0.0);
    let mut bad = w2a2.clone();
    bad.units[u].abits = 2;
    let e = s.validate(&bad).unwrap_err().to_string();
    assert!(
        e.contains("reads the image") && e.contains("activation bit-width is 8"),
        "{e}"
    );
    // With shared bits the gene still sets the stem's weights; its input stays at 8 bits.
    let shared = SearchSpace::new(
        builtin("lenet5", None, None).unwrap(),
        SpaceConfig {
            fix_first: false,
            shared_bits: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!shared.reads_only_image(0));
    let c = shared.cost(&shared.uniform(2, 2, 0.0).unwrap()).unwrap();
    assert_eq!((c.layers[0].wbits, c.layers[0].abits), (2, 8));
}

/// Issue 13, case 3: a 1×1 layer with 3 inputs and 3 outputs at 4 bits was priced at 132 bits
/// (`9·4 + 3·32`), but the engine packs each row of 3 codes into 2 bytes: 144 bits.
#[test]
fn size_counts_whole_bytes_per_packed_row() {
    let json = r#"{"format": "seernet-network", "version": 1, "name": "one-by-one",
        "input": "2x2x3", "num_classes": 2, "layers": [
        {"name": "mix", "op": "conv2d", "out_ch": 3, "kernel": 1},
        {"name": "mix_bn", "op": "batch_norm"},
        {"name": "pool", "op": "global_avg_pool"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out_features": 2}]}"#;
    let spec = NetworkSpec::from_json_str(json, "one-by-one.json").unwrap();
    let s = SearchSpace::new(
        spec,
        SpaceConfig {
            fix_first: false,
            ..Default::default()
        },
    )
    .unwrap();
    let mut p = s.uniform(8, 8, 0.0).unwrap();
    p.units[0].wbits = 4;
    let c = s.cost(&p).unwrap();
    // 3 rows of 2 bytes, then per channel the scale and the folded BatchNorm's multiplier
    // and bias (f32 each).
    assert_eq!(c.layers[0].size_bits, 3 * 16 + 3 * 3 * 32);
    assert_eq!(c.layers[0].size_bits - 2 * 3 * 32, 144, "was 132");
    // The classifier: 2 rows of 3 bytes and a scale each.
    assert_eq!(c.layers[1].size_bits, 2 * 24 + 2 * 32);
}

/// `stem` (fixed, 8 channels) → `a` (conv 8, prunable) → `g` (3×3, pad 1, `g_opts`) → global
/// average pool → `fc`, on a 10×10×3 input.
fn grouped_net(a_out: usize, g_opts: ConvOpts) -> NetworkSpec {
    let mut b = SpecBuilder::new("grouped", InputShape::new(10, 10, 3), 10);
    let stem = b.conv("stem", None, ConvOpts::new(8, 3).pad(1)).unwrap();
    let a = b
        .conv("a", Some(stem), ConvOpts::new(a_out, 3).pad(1))
        .unwrap();
    let g = b.conv("g", Some(a), g_opts.pad(1)).unwrap();
    let p = b.op("pool", Some(g), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(p), 10, false).unwrap();
    b.finish().unwrap()
}

/// Issue 13, case 2: a grouped conv with one input channel per group (in 8, out 16, groups 8)
/// was its own prunable unit, priced at 16 outputs after its producer was cut to 7 (12,600
/// MACs), though no conv with 8 groups reads 7 channels. Cutting one input channel removes
/// the pair of outputs that read it: in 7, out 14, groups 7, still 12,600 MACs; the conv has
/// no prune gene of its own.
#[test]
fn multiplier_conv_follows_its_producer() {
    let spec = grouped_net(8, ConvOpts::new(16, 3).groups(8));
    assert_eq!(spec.layers[2].kind.channel_multiplier(), Some(2));
    let s = SearchSpace::new(
        spec,
        SpaceConfig {
            prune_ratios: vec![0.0, 0.125],
            ..Default::default()
        },
    )
    .unwrap();
    let names: Vec<&str> = s.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a+1"]);
    assert_eq!((s.units()[0].channels, s.units()[0].blocks), (8, 1));
    let g = |c: &Costs| c.layers[2].clone();
    let full = s.cost(&s.uniform(8, 8, 0.0).unwrap()).unwrap();
    assert_eq!((g(&full).c_in_kept, g(&full).c_out_kept), (8, 16));
    assert_eq!(g(&full).macs, 14_400); // 16 · 9 · 10·10
    let cut = s.cost(&s.uniform(8, 8, 0.125).unwrap()).unwrap();
    assert_eq!((g(&cut).c_in_kept, g(&cut).c_out_kept), (7, 14));
    assert_eq!(g(&cut).macs, 12_600); // 14 · 9 · 10·10
    // The classifier reads the 14 channels left.
    assert_eq!(cut.layers[3].c_in_kept, 14);
    assert_eq!(s.units()[0].kept(0.125), 7);
}

/// A grouped conv with several inputs per group keeps channels evenly over its groups: its
/// own outputs and the domain it reads split into blocks (here 4 blocks of 3 channels), and
/// every block keeps `max(1, round((1 − p)·3))`: 8 of 12 at p = 0.25, not 9.
#[test]
fn grouped_conv_prunes_in_blocks() {
    let s = SearchSpace::new(
        grouped_net(12, ConvOpts::new(12, 3).groups(4)),
        SpaceConfig::default(),
    )
    .unwrap();
    let names: Vec<&str> = s.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a", "g"]);
    for u in s.units() {
        assert!(u.prunable);
        assert_eq!((u.channels, u.blocks), (12, 4));
    }
    let mut p = s.uniform(8, 8, 0.25).unwrap();
    let c = s.cost(&p).unwrap();
    let g = &c.layers[2];
    assert_eq!((g.c_in_kept, g.c_out_kept), (8, 8));
    assert_eq!(g.macs, 8 * 2 * 9 * 100); // 8 outputs reading 8/4 = 2 inputs each
    p.units[0].prune = 0.5;
    p.units[1].prune = 0.75;
    let g = s.cost(&p).unwrap().layers[2].clone();
    assert_eq!((g.c_in_kept, g.c_out_kept), (8, 4)); // 4·round(1.5) = 8; 4·max(1, 0.75) = 4
    assert_eq!(g.macs, 4 * 2 * 9 * 100);
    // The continuous relaxation keeps counting (1 − p)·C.
    let r = s.relaxed_cost(&s.encode(&p).unwrap()).unwrap();
    assert!(r.macs > 0.0);
    fd_check(&s, &s.encode(&p).unwrap());
}

/// Domains no kept set can serve stay whole: a grouped conv whose groups split a domain
/// channel's run, blocks of one channel, and a tied add of a multiplier conv's output with
/// a plain one.
#[test]
fn grouped_convs_lock_domains_they_cannot_prune() {
    // a (4) → multiplier 3 (12 = 4 × 3) → grouped conv with 6 groups: a group boundary
    // falls inside the 3 channels of one of a's channels.
    let mut b = SpecBuilder::new("split", InputShape::new(6, 6, 3), 10);
    let stem = b.conv("stem", None, ConvOpts::new(4, 3).pad(1)).unwrap();
    let a = b.conv("a", Some(stem), ConvOpts::new(4, 1)).unwrap();
    let m = b
        .conv("m", Some(a), ConvOpts::new(12, 1).groups(4))
        .unwrap();
    let g = b
        .conv("g", Some(m), ConvOpts::new(12, 1).groups(6))
        .unwrap();
    let g2 = b.conv("g2", Some(g), ConvOpts::new(4, 1)).unwrap();
    // 2 groups with one output each: the output cannot lose a channel; g2's 4 channels
    // split into 2 blocks.
    let one = b
        .conv("one", Some(g2), ConvOpts::new(2, 1).groups(2))
        .unwrap();
    let p = b.op("pool", Some(one), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(p), 10, false).unwrap();
    let s = SearchSpace::new(b.finish().unwrap(), SpaceConfig::default()).unwrap();
    let unit = |n: &str| s.units().iter().find(|u| u.name == n).unwrap().clone();
    assert!(!unit("a+1").prunable, "groups of g split a's channels");
    assert!(!unit("one").prunable, "2 blocks of 1 channel");
    assert!(unit("g").prunable && unit("g").blocks == 6);
    assert!(unit("g2").prunable && unit("g2").blocks == 2);
    for u in s.units().iter().filter(|u| !u.prunable) {
        assert_eq!(u.blocks, 1);
    }

    // Tied add of a multiplier conv's output (4 channels × 2) and a plain conv's 8 outputs.
    let mut b = SpecBuilder::new("mixed", InputShape::new(6, 6, 3), 10);
    let stem = b.conv("stem", None, ConvOpts::new(4, 3).pad(1)).unwrap();
    let a = b.conv("a", Some(stem), ConvOpts::new(4, 1)).unwrap();
    let m = b.conv("m", Some(a), ConvOpts::new(8, 1).groups(4)).unwrap();
    let c = b.conv("c", Some(stem), ConvOpts::new(8, 1)).unwrap();
    let add = b.add("add", &[m, c]).unwrap();
    let p = b.op("pool", Some(add), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(p), 10, false).unwrap();
    let s = SearchSpace::new(b.finish().unwrap(), SpaceConfig::default()).unwrap();
    assert_eq!(s.units().len(), 1);
    assert!(!s.units()[0].prunable);
}

/// A policy written and read again is the same policy, to the last bit of every float: the
/// number from the fuzz target `policy` (tests/fuzz-regressions/policy/) read back one ulp off
/// before serde_json's `float_roundtrip` feature was on.
#[test]
fn policy_json_round_trip_is_exact_for_every_float() {
    let text = r#"{"format": "seernet-policy", "version": 1, "arch": "lenet5", "input": "28x28x1",
        "units": [{"prune": 166666666666666666666666666666666666666660, "wbits": 2, "abits": 2},
                  {"prune": 0.30000000000000004, "wbits": 4, "abits": 8}]}"#;
    let p = Policy::from_json_str(text, "t").unwrap();
    assert_eq!(p.units[0].prune, 1.6666666666666667e41);
    let back = Policy::from_json_str(&p.to_json(), "again").unwrap();
    assert_eq!(back, p);
    assert_eq!(
        back.units[1].prune.to_bits(),
        0.30000000000000004f64.to_bits()
    );
}

/// Channel concatenation (issue 20): output channels add up, spatial sizes must agree, at
/// least two inputs; pruning stops at it (its producers cannot prune, a conv reading it sees
/// every channel) while the layers around it still prune; the JSON form reads back equal;
/// 0 MACs for the concat itself.
#[test]
fn concat_shapes_locks_and_json() {
    let mut b = SpecBuilder::new("cat", InputShape::new(8, 8, 1), 10);
    let stem = b.conv("stem", None, ConvOpts::new(6, 3).pad(1)).unwrap();
    let mid = b
        .conv("mid", Some(stem), ConvOpts::new(8, 3).pad(1))
        .unwrap();
    let a = b.conv("a", Some(mid), ConvOpts::new(3, 1)).unwrap();
    let c = b.conv("c", Some(mid), ConvOpts::new(5, 3).pad(1)).unwrap();
    let down = b
        .conv("down", Some(mid), ConvOpts::new(2, 3).stride(2).pad(1))
        .unwrap();
    let e = b.concat("bad", &[a, down]).unwrap_err().to_string();
    assert!(
        e.contains("spatial sizes") && e.contains("8x8") && e.contains("4x4"),
        "{e}"
    );
    let e = b.concat("one", &[a]).unwrap_err().to_string();
    assert!(e.contains("at least two inputs"), "{e}");
    let cat = b.concat("cat", &[a, c]).unwrap();
    let after = b
        .conv("after", Some(cat), ConvOpts::new(4, 3).pad(1))
        .unwrap();
    let p = b.op("pool", Some(after), LayerKind::GlobalAvgPool).unwrap();
    b.linear("fc", Some(p), 10, false).unwrap();
    let spec = b.finish().unwrap();
    assert_eq!(spec.layers[cat].out_shape, [8, 8, 8]);
    let s = SearchSpace::new(spec.clone(), SpaceConfig::default()).unwrap();
    let unit = |n: &str| s.units().iter().find(|u| u.name == n).unwrap().clone();
    assert!(
        !unit("a").prunable && !unit("c").prunable,
        "they feed the concat"
    );
    assert!(unit("mid").prunable && unit("after").prunable);
    // Pruning `mid` by half shrinks the inputs of a, c and down; `after` reads all 8.
    let pol = s.uniform(8, 8, 0.0).unwrap();
    let mut units = pol.units.clone();
    let k = s.units().iter().position(|u| u.name == "mid").unwrap();
    units[k].prune = 0.5;
    let costs = s.cost(&policy(&s, units)).unwrap();
    let row = |n: &str| costs.layers.iter().find(|l| l.name == n).unwrap();
    assert_eq!((row("a").c_in_kept, row("a").c_out_kept), (4, 3));
    assert_eq!((row("after").c_in_kept, row("after").c_out_kept), (8, 4));
    assert_eq!(row("after").macs, 64 * 4 * 8 * 9);
    let back = NetworkSpec::from_json_str(&spec.to_json(), "cat.json").unwrap();
    assert_eq!(back, spec);
    let json = spec.to_json();
    assert!(
        json.contains(r#"{"inputs":["a","c"],"name":"cat","op":"concat"}"#),
        "{json}"
    );
}
